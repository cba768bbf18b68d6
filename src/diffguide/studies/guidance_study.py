"""Regularized classifier guidance on the exact Gaussian-mixture testbed: the runs and the study's JSON.

Tests the claims of the guidance paper (Javid, Bagheri, González-Prelcic, "Enhancing Diffusion Model Guidance
through Calibration and Regularization", 2025, arXiv 2511.05844; spec ``shared/spec/guidance.md`` §3,
"Proposition 3") where every quantity is exact: an unconditional exact ε*, an off-the-shelf clean-data Bayes
classifier made overconfident by a temperature (T = 0.1; T = 1 is the calibrated control), EluCD-style guidance on
x̂0 (DDPM, linear schedule respaced to 100 steps, EluCD sine-bump schedule γ = 0.3), and every guidance objective
over a grid fixed up front (no tuning on the reported numbers). References: exact conditional sampling and
noise-aware guidance with the exact p(y | x_t). Blocks of many methods × seeds run in one sampler call
(:mod:`.sweep`); metrics in :mod:`.metrics`; claims in :mod:`.guidance_claims`; the report in
:mod:`.guidance_report`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from diffguide.guidance import ClassifierGuidance, Constant, EluCDMeanShift, Guidance, make_objective
from diffguide.toy import (BayesClassifier, ExactEps, ExactNoisyClassifier, GaussianMixture, exact_distance_spread,
                           study_mixture)

from .guidance_claims import evaluate_claims
from .guidance_grid import Grid, Method, method_grid, onehot_gradient_table, tilted_effective_batch
from .guidance_report import markdown, write_figures
from .metrics import PHASES, precision_thresholds, summarize
from .report import environment, json_ready, write_text
from .sweep import (VANISHED, BlockClassifier, BlockObjective, JointLogitClassifier, RecordingSchedule,
                    run_record, sample_blocks, seed_draws, study_labels)

__all__ = ["COMMAND", "DEFAULT_SEEDS", "classifier_of", "guided_runs", "reference_runs", "run_study", "render"]

COMMAND = "python scripts/toy_guidance_study.py --out docs/results"
DEFAULT_SEEDS = tuple(range(10))


def classifier_of(mixture: GaussianMixture, method: Method) -> nn.Module:
    if method.logits == "joint":
        return JointLogitClassifier(mixture, method.temperature)
    return BayesClassifier(mixture, method.temperature)


def guided_runs(mixture: GaussianMixture, methods: list[Method], seeds, n: int, steps: int, draws, gamma: float = 0.3,
                group_size: int = 12, progress: bool = True) -> dict:
    """Sample every method × seed (x̂0 guidance, sine-bump schedule) in groups of ``group_size`` methods per call."""
    uncond = ExactEps(mixture)
    net = lambda x, t, y: uncond(x, t, None)  # noqa: E731 — unconditional ε*
    results = {}
    groups = [methods[k:k + group_size] for k in range(0, len(methods), group_size)]
    for group in tqdm(groups, desc="guided sampling (groups)", disable=not progress):
        blocks = [(m, seed) for m in group for seed in seeds]
        schedule = RecordingSchedule(Constant())  # EluCD's sine bump is its ancestral rule (below), not a schedule

        def guidance_for(blocks):
            classifier = BlockClassifier([classifier_of(mixture, m) for m, _ in blocks], n)
            objective = BlockObjective([m.build_objective() for m, _ in blocks], [m.scale for m, _ in blocks], n)
            return Guidance(classifier=ClassifierGuidance(classifier, on="x0", objective=objective, scale=1.0,
                                                          schedule=schedule, softplus_beta=None),
                            rule=EluCDMeanShift(gamma))

        samples, recorder = sample_blocks(mixture, net, guidance_for, blocks, draws, n, steps, schedule,
                                          [m.scale for m, _ in blocks])
        for k, (m, seed) in enumerate(blocks):
            results[(m, seed)] = run_record(samples[k], recorder, k)
    return results


def reference_runs(mixture: GaussianMixture, seeds, n: int, steps: int, draws) -> dict:
    """Unguided, exact conditional ε*(x, t, y), and noise-aware guidance with the exact p(y | x_t) (s = 1, constant)."""
    uncond = ExactEps(mixture)
    unconditional = lambda x, t, y: uncond(x, t, None)  # noqa: E731
    noise_aware = Guidance(classifier=ClassifierGuidance(ExactNoisyClassifier(mixture), on="x_t",
                                                         objective=make_objective("log_softmax"), scale=1.0,
                                                         schedule=Constant()))
    specs = {"unguided": (unconditional, None), "exact conditional": (uncond, None),
             "noise-aware exact p(y|x_t), s=1": (unconditional, noise_aware)}
    results = {}
    for name, (net, guidance) in specs.items():
        blocks = [(name, seed) for seed in seeds]
        samples, recorder = sample_blocks(mixture, net, lambda _: guidance, blocks, draws, n, steps)
        for k, (_, seed) in enumerate(blocks):
            results[(name, seed)] = run_record(samples[k], recorder, k)
    return results


def run_study(out: Path, seeds=DEFAULT_SEEDS, quick: bool = False, samples: int | None = None,
              steps: int | None = None, progress: bool = True, figures: bool = True, dim: int = 2,
              compare_with: Path | None = None) -> dict:
    """Run everything, write toy_guidance.{md,json} (and, with ``figures``, toy_guidance_*.png) into ``out``;
    return the JSON data. ``compare_with``: the toy_guidance.json of a run on another CPU kernel set, whose
    verdicts the report lists next to these."""
    out = Path(out)
    grid = Grid.quick() if quick else Grid()
    n = samples or (40 if quick else 1000)
    steps = steps or (10 if quick else 100)
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"seeds: the paired t-test needs at least 2 seeds, got {seeds}")
    other = json.loads(Path(compare_with).read_text()) if compare_with is not None else None
    mixture = study_mixture(dim)
    methods = method_grid(grid)

    table = onehot_gradient_table()
    tilted = tilted_effective_batch(mixture, (grid.temperature, grid.control_temperature), grid.t_tilde, n)
    draws = seed_draws(seeds, n, mixture.dim, steps)
    runs = guided_runs(mixture, methods, seeds, n, steps, draws, progress=progress)
    refs = reference_runs(mixture, seeds, n, steps, draws)
    thresholds = precision_thresholds(mixture, n=2000 if quick else 20000)
    keyed = {(m.key, seed): run for (m, seed), run in runs.items()}
    results = summarize(keyed, [m.key for m in methods], seeds, mixture, n, thresholds)
    references = summarize(refs, list(dict.fromkeys(name for name, _ in refs)), seeds, mixture, n, thresholds)
    floor = exact_distance_spread(mixture, study_labels(n, mixture.num_classes), repeats=5)
    claims = evaluate_claims(table, results, methods, grid)

    settings = {
        "mixture": f"diffguide.toy.study_mixture({dim}) — 4 classes, 7 modes; class 0: modes weighted 0.16/0.08, "
                   "class 3: 0.14/0.14/0.10",
        "samples_per_run": n, "seeds": seeds, "per_sample_noise": "SeededNoise(seed, range(n)), shared by all methods",
        "labels": "y_i = i mod 4 (equal counts per class)",
        "sampler": f"DDPM, linear schedule respaced to {steps} steps of 1000, fixed-small variance, no x̂0 clipping",
        "model": "exact unconditional ε* (ExactEps)",
        "guidance": "ClassifierGuidance(on='x0'): gradient w.r.t. the detached x̂0; EluCD sine-bump schedule γ = 0.3 "
                    "(mean += (Σ_i + a_i)·s·∇J)",
        "classifier": "BayesClassifier(mixture, T): logits log p(y|x)/T of the clean data; T = 0.1 overconfident, "
                      "T = 1 calibrated control",
        "grid": asdict(grid), "vanished_threshold": VANISHED, "phases": PHASES,
        "precision": "share of samples with log p(x|y) above the 5 % quantile of exact samples of p(x|y) (20000 per "
                     "class): inside the true 95 % highest-density region",
        "minority_ratio": "observed share of the lowest-weight mode of each multi-modal class divided by its true "
                          "share (1/3 for class 0, 0.263 for class 3), mean over the two classes",
        "distance": "conditional_distance: per class sliced W2 to an exact sample of p(x|y) of the same size, "
                    "weighted by class counts",
        "std": "sample standard deviation over seeds (ddof = 1)",
    }
    data = {
        "command": COMMAND + ("" if not quick else " --quick"), "environment": environment(), "settings": settings,
        "guided_configurations": len(methods), "exact_floor": {"mean": floor[0], "std": floor[1]},
        "onehot_table": table, "tilted_effective_batch": tilted,
        "methods": [{"key": m.key, **asdict(m)} for m in methods],
        "results": results, "references": references, "claims": claims,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "toy_guidance.json", json.dumps(json_ready(data), indent=1, allow_nan=False) + "\n")
    if figures:
        write_figures(out, mixture, grid, methods, runs, results, references, refs, table, floor, n, seeds)
    write_text(out / "toy_guidance.md", markdown(data, grid, methods, other))
    return data


def render(out: Path, compare_with: Path | None = None) -> dict:
    """Recompute the claims and rewrite toy_guidance.{json,md} in ``out`` from its toy_guidance.json alone (no
    sampling; figures untouched): the per-seed metrics there are all the claims and tables need."""
    out = Path(out)
    data = json.loads((out / "toy_guidance.json").read_text())
    other = json.loads(Path(compare_with).read_text()) if compare_with is not None else None
    grid = Grid(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["settings"]["grid"].items()})
    methods = [Method(m["family"], m["objective"], tuple(tuple(p) for p in m["params"]), m["temperature"], m["scale"],
                      m["logits"]) for m in data["methods"]]
    data["claims"] = evaluate_claims(data["onehot_table"], data["results"], methods, grid)
    write_text(out / "toy_guidance.json", json.dumps(json_ready(data), indent=1, allow_nan=False) + "\n")
    write_text(out / "toy_guidance.md", markdown(data, grid, methods, other))
    return data
