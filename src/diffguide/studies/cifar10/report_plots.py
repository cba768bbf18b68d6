"""The curve figures of the two CIFAR-10 study reports (issues 13 and 14), from the metrics JSONs alone: thin
drawings over pure data functions (``*_points`` / ``*_curve``). Nothing to draw: no file, a "not yet run" line. A
failed run (FID +inf) or a record without the metric is never drawn, the caption lists it; a mean over seeds is drawn
only when none failed (the tables' "failed (k/n)"). PNGs next to the results (Agg, fixed dpi, no metadata: a rerun
on the same data writes the same bytes)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...io import atomic_write
from ..report import figure
from . import aligned_plan, guidance_plan
from .report_diagnostics import image_link
from .runner import Study, chosen_scale, grid_scales, unit_records

__all__ = ["metric_of", "seed0_curve", "wcurve_points", "control_points", "seed_summary", "steps_points",
           "grid_points", "final_points", "method_panels", "fid_vs_w_figure", "precision_recall_vs_w_figure",
           "fid_vs_steps_figure", "fid_vs_scale_figure", "precision_vs_recall_figure", "final_fid_figure"]

DPI = 110
ARM_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")  # aligned_plan.ARMS in order
METHOD_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:olive", "tab:cyan", "tab:gray")  # not a divergence's
DIVERGENCE_COLORS = {"reverse_kl": "tab:red", "forward_kl": "tab:purple", "js": "tab:brown", "hellinger": "tab:pink"}
BASELINE, UNGUIDED = "elucd_resnet32", "none"  # the same look in every panel: black; grey, the reference
SAMPLER_NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "ddpm": "DDPM"}
SAMPLER_LINES = {"ddim": "-", "dpmpp_2m": "--"}  # any other sampler (DDPM 250): markers only
DIVERGENCES = ("reverse_kl", "forward_kl", "js", "hellinger")
POINT_LINES = ("-", "--", ":")  # the (α, ε) points, in guidance_plan.DIVERGENCE_POINTS order


def metric_of(record: dict, metric: str) -> float | None:
    """A run's metric as a figure draws it: None (not drawn) for a failed run, a missing key or a non-finite value."""
    if record.get("failed"):
        return None
    value = (record.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def seed0_curve(study: Study, results: dict, method: str, group: str, metrics=("fid",)) -> tuple[dict, list]:
    """({scale: {metric: value}} of ``method``'s seed-0 ``group`` runs with every metric finite, sorted by scale;
    [the scales of the other runs: failed or a metric missing])."""
    points, missing = {}, []
    for unit, record in unit_records(study, results, method=method, group=group, seed=0):
        values = {m: metric_of(record, m) for m in metrics}
        if None in values.values():
            missing.append(unit.params["scale"])
        else:
            points[unit.params["scale"]] = values
    return dict(sorted(points.items())), sorted(missing)


def wcurve_points(study: Study, results: dict, arm: str, metric: str = "fid") -> tuple[dict, list]:
    """({w: metric} of ``arm``'s seed-0 w-curve on its grid, [w of its runs not drawn])."""
    grid = study.methods[arm]["grid"]
    points, missing = seed0_curve(study, results, arm, "wcurve", (metric,))
    return {w: v[metric] for w, v in points.items() if w in grid}, [w for w in missing if w in grid]


def control_points(study: Study, results: dict, arm: str) -> tuple[dict, list]:
    """The control of aligned ``arm`` as it is drawn: ({w′: the standard model's seed-0 FID at w_eff(w′)} for the
    w′ of the arm's grid whose control has run, [w′ whose control run failed]); ({}, []) for the standard arm."""
    if aligned_plan.w_train(arm) is None:
        return {}, []
    standard, missing = seed0_curve(study, results, "standard", "wcurve")
    grid = study.methods[arm]["grid"]
    effective = {w: aligned_plan.control_w(w, arm) for w in grid}
    return ({w: standard[e]["fid"] for w, e in effective.items() if e in standard},
            [w for w, e in effective.items() if e in missing])


def seed_summary(values: dict) -> dict:
    """{seed: value or None (failed)} → {'mean', 'std' (ddof 1; None for one seed), 'n', 'failed': [seeds]};
    mean and std are None when a seed failed (the point is not drawn)."""
    failed = sorted(s for s, v in values.items() if v is None)
    finite = [v for v in values.values() if v is not None]
    drawn = not failed and finite
    return {"mean": float(np.mean(finite)) if drawn else None,
            "std": float(np.std(finite, ddof=1)) if drawn and len(finite) > 1 else None,
            "n": len(values), "failed": failed}


def _by_seed(pairs, key) -> dict:
    """{key(unit): {seed: FID or None}} of (unit, record) pairs."""
    out = defaultdict(dict)
    for unit, record in pairs:
        out[key(unit)][unit.params["seed"]] = metric_of(record, "fid")
    return out


def steps_points(study: Study, results: dict, arm: str, scale) -> dict:
    """{(sampler, steps): :func:`seed_summary` of FID} of ``arm``'s FID-vs-steps runs at ``scale`` (None: the arm's
    best w), in plan order."""
    pairs = unit_records(study, results, method=arm, group="steps", scale=scale)
    return {k: seed_summary(v) for k, v in _by_seed(pairs, lambda u: (u.params["sampler"], u.params["steps"])).items()}


def final_points(study: Study, results: dict, group: str = "final") -> dict:
    """{method: :func:`seed_summary` of FID} of the methods with a finished run in ``group`` (seeds 1–3)."""
    by_method = _by_seed(unit_records(study, results, group=group), lambda u: u.params["method"])
    return {m: seed_summary(v) for m, v in by_method.items()}


def grid_points(study: Study, results: dict, method: str, metrics=("fid",)) -> dict:
    """``method``'s seed-0 grid as drawn: {'points': [{'scale', 'in_grid' (inside the grid the edge rule has
    settled so far; False: drawn hollow), metric: value, …}], 'missing': [scales not drawn], 'chosen': the chosen
    scale or None}."""
    points, missing = seed0_curve(study, results, method, "grid", metrics)
    scales = grid_scales(study, method, results)[0]
    return {"points": [{"scale": s, "in_grid": s in scales, **v} for s, v in points.items()], "missing": missing,
            "chosen": chosen_scale(study, method, results)}


def method_panels(methods: dict) -> list[tuple[str, list[str]]]:
    """(title, methods) of the guidance figures' panels; a method may sit in two panels."""
    alpha, epsilon = guidance_plan.DIVERGENCE_POINTS[0]

    def not_x0_guided(spec):
        return spec.get("guide") is None or spec.get("combine") or str(spec["guide"]).startswith("clf_")

    def objective_at_resnet32(spec):
        return (spec.get("guide") == "resnet32" and spec.get("softplus_beta") == guidance_plan.SOFTPLUS_BETA
                and (spec.get("objective") not in DIVERGENCES
                     or spec.get("objective_params") == {"alpha": alpha, "epsilon": epsilon}))

    return [("no guidance, CFG (w), ADM-G and best CG + CFG (classifier scale)",
             [m for m, s in methods.items() if not_x0_guided(s)]),
            (f"x̂0 objectives, ResNet-32 (divergences at α = {alpha:g}, ε = {epsilon:g})",
             [m for m, s in methods.items() if objective_at_resnet32(s)]),
            ("EluCD baseline: the guides", [m for m in methods if m.startswith("elucd_")]),
            ("divergences: the (α, ε) points", [m for m, s in methods.items() if s.get("objective") in DIVERGENCES])]


def panel_styles(methods: list[str], specs: dict) -> dict[str, tuple[str, str]]:
    """{method: (colour, line style)} of one panel: a divergence coloured by divergence, its line style by (α, ε)
    point; the EluCD baseline black, no guidance grey; the others through METHOD_PALETTE in turn."""
    out, others = {}, iter(METHOD_PALETTE * 4)
    for m in methods:
        spec = specs[m]
        if spec.get("objective") in DIVERGENCES:
            params = spec.get("objective_params", {})
            point = list(guidance_plan.DIVERGENCE_POINTS).index((params["alpha"], params["epsilon"]))
            out[m] = DIVERGENCE_COLORS[spec["objective"]], POINT_LINES[point]
        else:
            out[m] = {BASELINE: "black", UNGUIDED: "tab:gray"}.get(m) or next(others), "-"
    return out


def _save(fig, results_dir, name: str, report_path, caption: str) -> list[str]:
    """Write ``fig`` to results_dir/name (no metadata: byte-identical reruns) and return its report lines."""
    fig.tight_layout()
    atomic_write(Path(results_dir) / name,
                 lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
    return [caption, "", image_link(results_dir, name, report_path, caption.split(":")[0]), ""]


def _not_drawn(items: list[str]) -> str:
    return f" Not drawn (failed or without the metric): {', '.join(items)}." if items else ""


def _star(ax, x, y, color) -> None:
    ax.scatter([x], [y], marker="*", s=170, color=color, edgecolors="black", linewidths=0.6, zorder=4)


def _star_legend(ax, text: str, hollow: str | None = None, **legend) -> None:
    """The axes' legend plus a grey star for ``text`` (and a hollow circle for ``hollow``)."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", color="white", markerfacecolor="gray", markeredgecolor="black",
                          markersize=12))
    labels.append(text)
    if hollow:
        handles.append(Line2D([], [], marker="o", linestyle="none", color="gray", markerfacecolor="white"))
        labels.append(hollow)
    ax.legend(handles, labels, **legend)


def fid_vs_w_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 14: FID vs w per arm that has points, with its control (if aligned) dashed in its colour; each arm's
    best w starred."""
    arms = list(aligned_plan.ARMS)
    curves = {arm: wcurve_points(study, results, arm) for arm in arms}
    controls = {arm: control_points(study, results, arm) for arm in arms}
    if not any(c[0] for c in curves.values()):
        return ["Figure (FID vs w): not yet run (no seed-0 w-curve point).", ""]
    fig, axes = figure(1, 1, (7.5, 4.8))
    ax = axes[0, 0]
    for color, arm in zip(ARM_COLORS, arms):
        (points, _), (control, _) = curves[arm], controls[arm]
        if points:
            ax.plot(list(points), list(points.values()), "-o", color=color, markersize=4, label=arm)
        if points and control:  # an arm not yet run has nothing to compare its control with
            ax.plot(list(control), list(control.values()), "--", marker=".", color=color,
                    label=f"control of {arm}: standard at w_eff")
        best = chosen_scale(study, arm, results)
        if best in points:
            _star(ax, best, points[best], color)
    ax.set_xlabel("w (the arm's own CFG weight; control: plotted at the arm's w′)")
    ax.set_ylabel("FID (10k samples)")
    ax.set_title("FID vs w, DDIM-50, seed 0", fontsize=10)
    ax.grid(alpha=0.3)
    _star_legend(ax, "best w", fontsize=7)
    missing = [f"{arm} w={w:g}" for arm in arms for w in curves[arm][1]]
    missing += [f"control of {arm} at w′={w:g}" for arm in arms for w in controls[arm][1] if curves[arm][0]]
    return _save(fig, results_dir, "figure_fid_vs_w.png", report_path,
                 "FID vs w: solid, each arm's seed-0 curve (star: its best w); dashed, the same colour, the standard "
                 "model at w_eff = (w′ − w_train)/(1 + w_train) drawn at the aligned arm's w′ (for an arm with a "
                 "point)." + _not_drawn(missing))


def precision_recall_vs_w_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 14: precision and recall vs w (two panels), one line per arm."""
    arms = list(aligned_plan.ARMS)
    curves = {(arm, m): wcurve_points(study, results, arm, m) for arm in arms for m in ("precision", "recall")}
    if not any(points for points, _ in curves.values()):
        return ["Figure (precision and recall vs w): not yet run (no seed-0 w-curve point).", ""]
    fig, axes = figure(1, 2, (10, 4.2))
    for ax, metric in zip(axes[0], ("precision", "recall")):
        for color, arm in zip(ARM_COLORS, arms):
            points = curves[arm, metric][0]
            if points:
                ax.plot(list(points), list(points.values()), "-o", color=color, markersize=4, label=arm)
        ax.set_xlabel("w")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric.capitalize()} vs w, DDIM-50, seed 0", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    missing = sorted({f"{arm} w={w:g}" for (arm, _), (_, ws) in curves.items() for w in ws})
    return _save(fig, results_dir, "figure_precision_recall_vs_w.png", report_path,
                 "Precision and recall vs w: each arm's seed-0 curve (k-NN precision / recall, k = 3)."
                 + _not_drawn(missing))


def _steps_panel(ax, arms, series: dict, colors: dict) -> None:
    """One FID-vs-steps panel: per arm, a line per sampler in SAMPLER_LINES, any other sampler as markers; error
    bars where a point has more than one seed."""
    for arm in arms:
        points = series[arm]
        for sampler in dict.fromkeys(s for s, _ in points):
            drawn = sorted((n, p) for (s, n), p in points.items() if s == sampler and p["mean"] is not None)
            if not drawn:
                continue
            steps, means = [n for n, _ in drawn], [p["mean"] for _, p in drawn]
            line = SAMPLER_LINES.get(sampler)
            ax.plot(steps, means, linestyle=line or "none", marker="o" if line else "D", markersize=4 if line else 6,
                    color=colors[arm])
            spread = [(n, p) for n, p in drawn if p["std"] is not None]
            if spread:
                ax.errorbar([n for n, _ in spread], [p["mean"] for _, p in spread],
                            yerr=[p["std"] for _, p in spread], fmt="none", ecolor=colors[arm], capsize=3)
    from matplotlib.ticker import NullFormatter

    steps = sorted({n for arm in arms for (_, n), p in series[arm].items() if p["mean"] is not None})
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sampler steps (log)")
    ax.set_ylabel("FID (10k samples)")
    ax.grid(alpha=0.3, which="both")


def _steps_legend(ax, arms: dict, colors: dict) -> None:
    """A legend of the arms ({arm: label}) by colour and of the samplers by line."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[a], marker="o", markersize=4, label=text) for a, text in arms.items()]
    handles += [Line2D([], [], color="black", linestyle=line, label=SAMPLER_NAMES[s])
                for s, line in SAMPLER_LINES.items()]
    handles.append(Line2D([], [], color="black", linestyle="none", marker="D", label=SAMPLER_NAMES["ddpm"]))
    ax.legend(handles=handles, fontsize=7)


def fid_vs_steps_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 14: FID vs steps (log x) at each arm's best w and at the common w; mean ± std over seeds."""
    arms = list(aligned_plan.ARMS)
    colors = dict(zip(arms, ARM_COLORS))
    panels = (("each arm's best w", None), (f"the common w = {aligned_plan.COMMON_W:g}", aligned_plan.COMMON_W))
    series = {scale: {arm: steps_points(study, results, arm, scale) for arm in arms} for _, scale in panels}
    run = [p for by_arm in series.values() for points in by_arm.values() for p in points.values()]
    if not any(p["mean"] is not None for p in run):
        return [f"Figure (FID vs steps): not yet run (no step point{' drawn: every run failed' if run else ''}).", ""]
    fig, axes = figure(1, 2, (11, 4.5))
    notes, missing = [], []
    for ax, (label, scale) in zip(axes[0], panels):
        _steps_panel(ax, arms, series[scale], colors)
        best = {arm: chosen_scale(study, arm, results) for arm in arms}
        ax.set_title(f"FID vs steps at {label}", fontsize=9)
        drawn = {a: a if scale is not None or best[a] is None else f"{a} (w = {best[a]:g})" for a in arms
                 if any(p["mean"] is not None for p in series[scale][a].values())}
        if drawn:
            _steps_legend(ax, drawn, colors)
        else:
            ax.text(0.5, 0.5, "not yet run", transform=ax.transAxes, ha="center", va="center", color="gray")
        single = defaultdict(list)
        for arm in arms:
            for (sampler, steps), p in series[scale][arm].items():
                if p["mean"] is not None and p["n"] == 1:
                    single[f"{SAMPLER_NAMES[sampler]} {steps}"].append(arm)
                missing += [f"{arm} {SAMPLER_NAMES[sampler]} {steps} at {label} seed {s}" for s in p["failed"]]
        if single:
            notes.append(f"at {label}: " + "; ".join(f"{point} ({', '.join(a)})" for point, a in single.items()))
    one_seed = f" One seed, no error bar: {' — '.join(notes)}." if notes else ""
    return _save(fig, results_dir, "figure_fid_vs_steps.png", report_path,
                 "FID vs steps: DDIM solid, DPM-Solver++(2M) dashed, DDPM a diamond; mean over seeds 1–3 with ± 1 "
                 "std (ddof 1) where more than one seed has run." + one_seed + _not_drawn(missing))


def _grid_panels(study: Study, results: dict, metrics) -> tuple[list, dict]:
    """([(title, [(method, colour, line style)])] of the panels with a drawn point, {method: grid_points}). No
    guidance joins every panel as the reference once one other method of the panel has a point."""
    data = {m: grid_points(study, results, m, metrics) for m in study.methods}
    panels = []
    for title, methods in method_panels(study.methods):
        methods = list(dict.fromkeys([UNGUIDED, *methods])) if UNGUIDED in study.methods else methods
        styles = panel_styles(methods, study.methods)
        drawn = [m for m in methods if data[m]["points"]]
        if any(m != UNGUIDED for m in drawn) or (drawn and not panels):
            panels.append((title, [(m, *styles[m]) for m in drawn]))
    return panels, data


def _scale_and_fid_axes(ax, scales: list, fids: list) -> None:
    """x: log2, a tick at every drawn scale; y: FID, log (labelled 2, 3, 4, 6 × 10^k) beyond a ×4 span, else linear."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(scales)), [f"{s:g}" for s in sorted(set(scales))])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if fids and max(fids) > 4 * min(fids):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "2346" else ""))


def _panel_axes(panels: list, height: float):
    """(figure, one axes per panel) on a grid of two columns; the spare axes hidden."""
    columns, rows = min(2, len(panels)), (len(panels) + 1) // 2
    fig, axes = figure(rows, columns, (6.2 * columns, height * rows))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return fig, list(axes.flat)[:len(panels)]


def _grid_missing(data: dict) -> list[str]:
    return [f"{m} s={s:g}" for m, d in data.items() for s in d["missing"]]


def _markers(ax, xs, ys, filled, color, size=5) -> None:  # filled where ``filled``, hollow elsewhere
    for x, y, full in zip(xs, ys, filled):
        ax.plot([x], [y], "o", markersize=size, color=color, markerfacecolor=color if full else "white", zorder=3)


def fid_vs_scale_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 13: FID vs scale (seed-0 grids, log-x), a panel per method group; chosen scale starred, points
    outside the settled grid hollow; no guidance (scale 0) as a horizontal line."""
    panels, data = _grid_panels(study, results, ("fid",))
    if not panels:
        return ["Figure (FID vs scale): not yet run (no seed-0 grid point).", ""]
    fig, axes = _panel_axes(panels, 4.4)
    for ax, (title, methods) in zip(axes, panels):
        for method, color, line in methods:
            d = data[method]
            positive = [p for p in d["points"] if p["scale"] > 0]
            for p in d["points"]:
                if p["scale"] <= 0:  # no guidance: its one point, across the panel
                    ax.axhline(p["fid"], color=color, linestyle=":", label=f"{method} (FID {p['fid']:.4g})")
            inside = [p for p in positive if p["in_grid"]]
            if inside:
                ax.plot([p["scale"] for p in inside], [p["fid"] for p in inside], linestyle=line, color=color,
                        label=method)
            elif positive:
                ax.plot([], [], linestyle=line, color=color, label=method)
            _markers(ax, [p["scale"] for p in positive], [p["fid"] for p in positive],
                     [p["in_grid"] for p in positive], color)
            chosen = next((p for p in positive if p["scale"] == d["chosen"]), None)
            if chosen is not None:
                _star(ax, chosen["scale"], chosen["fid"], color)
        drawn = [p for m, _, _ in methods for p in data[m]["points"]]
        _scale_and_fid_axes(ax, [p["scale"] for p in drawn if p["scale"] > 0], [p["fid"] for p in drawn])
        ax.set_xlabel("scale (log)")
        ax.set_ylabel("FID (5k samples)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        _star_legend(ax, "chosen scale", "outside the grid", fontsize=6)
    return _save(fig, results_dir, "figure_fid_vs_scale.png", report_path,
                 "FID vs scale: each method's seed-0 grid (DDPM-100, 5k samples); star: the chosen scale; hollow: a "
                 "run outside the grid as the edge rule left it (it chooses nothing)."
                 + _not_drawn(_grid_missing(data)))


def precision_vs_recall_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 13: precision against recall of every seed-0 grid point, a colour per method, the scale written next
    to each point; the same panels as the FID figure."""
    panels, data = _grid_panels(study, results, ("precision", "recall"))
    if not panels:
        return ["Figure (precision vs recall): not yet run (no seed-0 grid point).", ""]
    fig, axes = _panel_axes(panels, 4.6)
    for ax, (title, methods) in zip(axes, panels):
        for method, color, line in methods:
            points = data[method]["points"]
            inside = [p for p in points if p["in_grid"]]
            ax.plot([p["recall"] for p in inside], [p["precision"] for p in inside], linestyle=line, color=color,
                    linewidth=1, label=method)
            _markers(ax, [p["recall"] for p in points], [p["precision"] for p in points],
                     [p["in_grid"] for p in points], color, size=4)
            for p in points:
                ax.annotate(f"{p['scale']:g}", (p["recall"], p["precision"]), fontsize=6.5, color=color,
                            xytext=(3, 2), textcoords="offset points")
            chosen = next((p for p in points if p["scale"] == data[method]["chosen"]), None)
            if chosen is not None and len(points) > 1:
                _star(ax, chosen["recall"], chosen["precision"], color)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        _star_legend(ax, "chosen scale", "outside the grid", fontsize=6)
    return _save(fig, results_dir, "figure_precision_vs_recall.png", report_path,
                 "Precision vs recall: every seed-0 grid point (k-NN, k = 3), the scale written next to it; hollow: "
                 "outside the settled grid." + _not_drawn(_grid_missing(data)))


def final_fid_figure(study: Study, results: dict, results_dir, report_path) -> list[str]:
    """Issue 13: FID mean ± std (seeds 1–3) per method at its chosen scale, once a final run exists."""
    finals = final_points(study, results)
    drawn = {m: p for m, p in finals.items() if p["mean"] is not None}
    if not drawn:
        return ["Figure (FID of the seed 1–3 runs): not yet run"
                + (" (every method with a run has a failed seed)." if finals else "."), ""]
    methods = [m for m in study.methods if m in drawn]
    fig, axes = figure(1, 1, (7, 0.8 + 0.32 * len(methods)))
    ax = axes[0, 0]
    ys = np.arange(len(methods))[::-1]
    for y, m in zip(ys, methods):
        p = drawn[m]
        ax.errorbar([p["mean"]], [y], xerr=None if p["std"] is None else [p["std"]], fmt="o",
                    color="black" if p["std"] is not None else "tab:gray", capsize=3)
    ax.set_yticks(ys, [f"{m} (n={drawn[m]['n']})" for m in methods], fontsize=7)
    ax.set_xlabel("FID (DDPM-100, 10k samples)")
    ax.set_title("FID at the chosen scale, seeds 1–3", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    failed = [f"{m} (seed {', '.join(map(str, p['failed']))} failed)" for m, p in finals.items() if p["failed"]]
    return _save(fig, results_dir, "figure_final_fid.png", report_path,
                 "FID of the seed 1–3 runs: mean ± 1 std (ddof 1) per method; grey, no error bar: one seed so far."
                 + (f" Not drawn: {', '.join(failed)}." if failed else ""))
