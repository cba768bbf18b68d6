"""Report templating shared by the testbed studies: the environment, the protocol, the claims table, the per-method
table and number formatting; figures without pyplot.

Both reports open with the environment (CPU model, torch version, the kernel set torch dispatches to) and the
protocol (seeds, test, α, the false-positive bound, what each verdict means) before any number.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from diffguide.io import atomic_write, atomic_write_text

from .metrics import DIVERGED_RADIUS, PHASES
from .verdict import (ALPHA, FAILED_SHARE, HELD_SHARE, NOISE_SHARE, OUTCOMES, claim_verdict, held_false_positive_bound,
                      outcome_counts)

__all__ = ["environment", "environment_markdown", "protocol_markdown", "claim_record", "claims_markdown",
           "kernel_comparison_markdown", "comparison_text", "fmt", "fmt_g", "TABLE_HEADER", "COLUMN_DEFINITIONS",
           "table_row", "json_ready", "write_text", "figure", "save_figure"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Hardware and software that the numbers' last bits depend on."""
    return {"cpu": cpu_model(), "machine": platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", "(unset: the best the CPU supports)"),
            "threads": torch.get_num_threads()}


def environment_markdown(env: dict) -> str:
    return (f"**Environment**: CPU {env['cpu']} ({env['machine']}), torch {env['torch']}, kernel set (torch."
            f"backends.cpu.get_cpu_capability()) **{env['cpu_capability']}** (ATEN_CPU_CAPABILITY = "
            f"{env['ATEN_CPU_CAPABILITY']}), {env['threads']} thread(s). Wall-clock times are not reported (the "
            "machine was shared).")


def protocol_markdown(seeds: list[int], comparisons_per_claim: list[int], unit: str) -> list[str]:
    """The protocol, written before the numbers: pairing, test, α, false-positive rates, verdict rule."""
    n = len(seeds)
    bounds = sorted({round(held_false_positive_bound(k), 4) for k in comparisons_per_claim}) or [ALPHA / HELD_SHARE]
    lines = [
        "## Protocol (fixed before the runs)",
        "",
        f"- **Seeds**: {seeds} ({n} seeds; {unit}). Every comparison is paired by seed: both sides ran on the same "
        "seeds, so their shared seed-to-seed variation cancels in the difference.",
        f"- **Test**: one-sided paired t-test on the per-seed differences d = sign·(favoured − reference) (sign from "
        f"the claim's direction): t = mean(d)/(sd(d)/√n), sd with ddof 1, df = {n - 1}; p = P(T_{n - 1} ≥ t). "
        f"Level **α = {ALPHA:g}** one-sided.",
        "- **Outcome of a comparison**: *agrees* when p < α; *contradicts* when the opposite one-sided p-value is "
        "< α; *within noise* otherwise; *diverged* when the favoured configuration diverges more often than the "
        "reference (the same test on the per-seed shares of diverged samples agrees): a failure of that method "
        "whatever its metric says. Where this divergence rule decides a verdict, the claims table also gives the "
        "verdict from the metrics' own tests (the metrics already score every diverged sample as a failure).",
        f"- **False-positive rate**: a comparison with no true difference agrees with probability α = {ALPHA:g} "
        "(exactly, for normal differences; the unit tests check it by simulation). A claim is **HELD** when at least "
        f"{HELD_SHARE:.0%} of its k comparisons agree; with no true effect anywhere, Markov's inequality bounds "
        f"P(HELD) by k·α/⌈{HELD_SHARE:g}k⌉ ≤ α/{HELD_SHARE:g} = {ALPHA / HELD_SHARE:.3f} for any dependence between "
        f"the comparisons (for the claims here: {', '.join(f'{b:.3f}' for b in bounds)}).",
        f"- **Verdicts**, checked in this order: **HELD** (≥ {HELD_SHARE:.0%} agree); **DID NOT HOLD** (≥ "
        f"{FAILED_SHARE:.0%} contradict or diverged: the data speak against the claim); **WITHIN NOISE** (≥ "
        f"{NOISE_SHARE:.0%} within noise: at this number of seeds the data cannot tell); **MIXED** otherwise. A "
        "verdict is a statement about this testbed at these seeds and settings, not about the paper's image "
        "experiments: HELD means the claimed direction was detected at level α in most comparisons; WITHIN NOISE "
        "means no detectable effect either way, which is not evidence of no effect.",
        f"- **Diverged samples** (a coordinate beyond ±{DIVERGED_RADIUS:g} or not finite) are never dropped: each "
        "is a failure in every metric (wrong class, outside the 95 % region, in no mode, clamped onto the box for "
        "the distance), so every metric is finite at every seed and moves continuously with the divergence rate.",
        "",
    ]
    return lines


def comparison_text(label: str, c: dict, digits: int = 4) -> str:
    """'label: Δ +0.0123, t = 3.10, p = 0.006 → agrees' (a conjunction lists its parts)."""
    if "value" in c:  # an exact (deterministic) check
        return f"{label}: {c['value']:.4g} → {c['outcome']}"
    if "parts" in c:
        parts = " & ".join(f"Δ {p['delta']:+.{digits}f} (t = {p['t']:.2f})" for p in c["parts"])
        return f"{label}: {parts} → {c['outcome']}"
    return f"{label}: Δ {c['delta']:+.{digits}f}, t = {c['t']:.2f}, p = {c['p']:.3g} → {c['outcome']}"


def claim_record(text: str, test: str, comparisons: list[tuple[str, dict]], verdict: str,
                 numbers: str = "") -> dict:
    """A claim's JSON record: its comparisons (label, test result), outcome counts and verdict."""
    outcomes = [c["outcome"] for _, c in comparisons]
    without_rule = claim_verdict([c.get("metric_outcome", c["outcome"]) for _, c in comparisons])
    return {"claim": text, "test": test, "verdict": verdict, "counts": outcome_counts(outcomes),
            "verdict_without_divergence_rule": without_rule,
            "comparisons": [{"label": label, **c} for label, c in comparisons], "numbers": numbers}


def counts_text(counts: dict) -> str:
    k = sum(counts.values())
    return ", ".join(f"{counts[o]}/{k} {o}" for o in OUTCOMES if counts[o]) or "no comparisons"


def claims_markdown(claims: list[dict]) -> list[str]:
    """The claims table: claim, test, outcome counts, the comparisons' statistics, verdict."""
    lines = ["| claim | test | outcomes | comparisons (Δ = favoured − reference, mean over seeds; t and one-sided p in "
             "the claimed direction: t > 0 leans the claimed way) | verdict |",
             "|---|---|---|---|---|"]
    for c in claims:
        details = "; ".join(comparison_text(x["label"], x) for x in c["comparisons"])
        if c["numbers"]:
            details = f"{c['numbers']}; {details}" if details else c["numbers"]
        note = c.get("verdict_without_divergence_rule", c["verdict"])
        note = f" (without the divergence rule: {note.upper()})" if note != c["verdict"] else ""
        lines.append(f"| {c['claim']} | {c['test']} | {counts_text(c['counts'])} | {details} | "
                     f"**{c['verdict'].upper()}**{note} |")
    return lines


def claims_sections_markdown(claims: list[dict], env: dict, other: dict | None, notes: list[str]) -> list[str]:
    """The sections every testbed report shares: claims table, verdicts across kernel sets, observations."""
    return ["## Claims", "", *claims_markdown(claims), "", *kernel_comparison_markdown(claims, env, other),
            "## Observations", "", *[f"- {note}" for note in notes], ""]


def kernel_comparison_markdown(claims: list[dict], env: dict, other: dict | None) -> list[str]:
    """Each claim's verdict and counts here and in another run of the same study on another kernel set."""
    if other is None:
        return []
    theirs = {c["claim"]: c for c in other["claims"]}
    here, there = env["cpu_capability"], other["environment"]["cpu_capability"]
    lines = ["## Verdicts across CPU kernel sets", "",
             "The same study, seeds and code run with "
             f"`ATEN_CPU_CAPABILITY={other['environment']['ATEN_CPU_CAPABILITY']}`"
             f" (kernel set {there}; its JSON is committed next to this report) against this report's {here}: "
             "the kernels round differently in the last bits, which guided sampling at T = 0.1 amplifies.", "",
             f"| claim | {here}: verdict (outcomes) | {there}: verdict (outcomes) |", "|---|---|---|"]
    for c in claims:
        o = theirs.get(c["claim"])
        lines.append(f"| {c['claim']} | {c['verdict'].upper()} ({counts_text(c['counts'])}) | " +
                     (f"{o['verdict'].upper()} ({counts_text(o['counts'])})" if o else "–") + " |")
    moved = sum(1 for c in claims if c["claim"] in theirs and theirs[c["claim"]]["verdict"] != c["verdict"])
    return lines + ["", f"{moved} of {len(claims)} verdicts differ between the two kernel sets.", ""]


def fmt(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_g(mean, std=None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3g}" if std is None else f"{mean:.3g} ± {std:.2g}"


COLUMN_DEFINITIONS = (
    "Columns: **diverged** — share of samples beyond ±{r:g} or not finite (scored as failures in every other "
    "column); **acc** — share whose exact clean posterior argmax is the target class; **precision@95** — share inside "
    "the true 95 % highest-density region of p(x | y); **coverage** — *mode coverage*: per class, the share of its "
    "modes that receive at least 10 % of their expected number of samples, averaged over classes (1 = every mode "
    "visited; this is not the k-NN 'coverage' of Naeem et al., 2020); **minority c0/c3** — observed share of the "
    "lowest-weight mode of class 0 / class 3 among that class's samples; **SW distance** — per class sliced W2 to an "
    "exact sample of p(x | y) of the same size, weighted by class counts; **‖∇J‖** — per step the median over the "
    "run's samples, averaged over the steps of a phase (early t ≥ 700, mid 300 ≤ t < 700, late t < 300); "
    "**vanished late** — share of samples with ‖∇J‖ below 1e-3 in the late steps. Cells: mean ± sd over seeds "
    "(ddof 1).").format(r=DIVERGED_RADIUS)

TABLE_HEADER = ("| method | diverged | acc | precision@95 | coverage | minority c0 (true 0.333) | minority c3 "
                "(true 0.263) | SW distance | ‖∇J‖ early | ‖∇J‖ mid | ‖∇J‖ late | vanished late |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(name: str, r: dict) -> str:
    m, s = r["mean"], r["std"]
    cells = [fmt(m[k], s[k]) for k in ("diverged", "accuracy", "precision", "coverage", "minority_c0", "minority_c3",
                                         "distance")]
    cells += [fmt_g(m.get(f"grad_{p}"), s.get(f"grad_{p}")) for p in PHASES]
    cells.append(fmt(m.get("vanished_late"), s.get("vanished_late"), 2) if "vanished_late" in m else "–")
    return f"| {name} | " + " | ".join(cells) + " |"


def json_ready(value):
    """NaN/inf → None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value




def write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def save_figure(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def figure(rows: int = 1, columns: int = 1, figsize=(6, 4)):
    """(Figure, axes [rows, columns]) with its own Agg canvas — no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)

