"""Smooth-ECE calibration of a learned noise-aware classifier on the exact Gaussian-mixture testbed: the runs.

A small MLP classifier(x_t, t) is trained with cross-entropy only on noised samples of the study mixture, then
fine-tuned from those weights in several arms — CE only (the control: same steps, same optimizer, no Smooth-ECE term)
and CE + λ·Smooth-ECE in the paper's per-sample form and in the bin form — all with ``diffguide.calibration``'s
``finetune_calibration`` (pre-training is the same routine with λ = 0). Reported before and after: accuracy, NLL,
binned ECE, smECE and ECE_t (per t) on fresh test data, and guided-sample metrics with noise-aware guidance by each
classifier, next to the exact p(y | x_t) as reference. Several seeds (each: its own training set, initialisation,
training noise, test set and sampling noise). Claims compare each Smooth-ECE arm with the CE-only control only
(:mod:`.calibration_report`).

The mixture is ``study_mixture()`` scaled by 1/6 so that the data lie in [−1, 1] (the calibration routine, like an
image pipeline, takes model-range inputs); the forward process then noises data of spread ≈ 0.6 with unit noise,
as for images.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffguide.calibration import EpochBatches, evaluate_calibration, plot_reliability_diagram
from diffguide.calibration.metrics import ReliabilityBins
from diffguide.guidance import ClassifierGuidance, Constant, Guidance, make_objective
from diffguide.nets.adm import timestep_embedding
from diffguide.train.calibrate import CalibrationConfig, finetune_calibration
from diffguide.toy import ExactEps, ExactNoisyClassifier, GaussianMixture, exact_distance_spread, study_mixture

from .calibration_report import evaluate_claims, markdown
from .metrics import precision_thresholds, summarize
from .plots import plot_ece_t, plot_noise_aware_gradients, plot_samples
from .report import environment, json_ready, write_text
from .sweep import BlockObjective, NoisyBlockClassifier, run_record, sample_blocks, seed_draws, study_labels

__all__ = ["COMMAND", "DEFAULT_SEEDS", "SCALE_DOWN", "calibration_mixture", "NoisyMLPClassifier", "Settings",
           "train_arms", "guided_samples", "calibration_table", "run_study", "render"]

COMMAND = "python scripts/toy_calibration_study.py --out docs/results"
DEFAULT_SEEDS = tuple(range(10))
SCALE_DOWN = 6.0


def calibration_mixture(dim: int = 2) -> GaussianMixture:
    """``study_mixture(dim)`` with means and stds divided by 6: every mode lies within [−0.8, 0.8] to > 5σ."""
    base = study_mixture(dim)
    return GaussianMixture(base.means / SCALE_DOWN, base.stds / SCALE_DOWN, base.weights, base.classes)


class NoisyMLPClassifier(nn.Module):
    """Noise-aware classifier logits(x_t, t): h = Linear(x_t) + Linear(sinusoid(t)); two SiLU hidden layers; K logits.

    Computes in float32 and answers in the input's dtype (the sampler runs in float64)."""

    def __init__(self, dim: int = 2, num_classes: int = 4, hidden: int = 64, time_channels: int = 32):
        super().__init__()
        self.time_channels = time_channels
        self.input = nn.Linear(dim, hidden)
        self.time = nn.Linear(time_channels, hidden)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.input(x.float()) + self.time(timestep_embedding(t, self.time_channels).to(x.device))
        return self.body(h).to(x.dtype)


@dataclass(frozen=True)
class Settings:
    """Everything fixed before the runs (``quick``: the smoke test's tiny version)."""

    train_points: int = 1000  # clean training points (re-noised at every step: t ~ U{0..999})
    test_points: int = 4000
    batch_size: int = 250
    hidden: int = 64
    pretrain_steps: int = 1500
    pretrain_lr: float = 1e-3
    finetune_steps: int = 500
    finetune_lr: float = 1e-4
    arms: tuple = (("CE only (control)", 0.0, "sample"), ("CE + 0.1·SECE (sample form)", 0.1, "sample"),
                   ("CE + 1·SECE (sample form)", 1.0, "sample"), ("CE + 1·SECE (bin form)", 1.0, "bin"))
    beta: float = 1e-3
    scales: tuple = (1.0, 3.0)
    samples: int = 1000
    steps: int = 100
    eval_timesteps: tuple | None = None  # None: 0, 100, ..., 900, 999

    @classmethod
    def quick(cls) -> "Settings":
        return cls(train_points=200, test_points=400, batch_size=100, hidden=16, pretrain_steps=20, finetune_steps=10,
                   arms=(("CE only (control)", 0.0, "sample"), ("CE + 1·SECE (sample form)", 1.0, "sample")),
                   scales=(1.0,), samples=40, steps=10, eval_timesteps=(0, 500, 999))


def train_arms(mixture: GaussianMixture, settings: Settings, seed: int, progress: bool = False) -> dict:
    """Pre-train with CE only, then fine-tune a copy per arm; returns the classifiers and calibration reports."""
    g = torch.Generator().manual_seed(10_000 + seed)
    x_train, y_train = mixture.sample(settings.train_points, generator=g)
    x_test, y_test = mixture.sample(settings.test_points, generator=g)
    if x_train.abs().max() > 1 or x_test.abs().max() > 1:
        raise ValueError("calibration mixture: a sample left [-1, 1]; the routine needs model-range inputs")
    train = EpochBatches(x_train.float(), y_train, settings.batch_size, seed=seed)
    test = EpochBatches(x_test.float(), y_test, 1000, shuffle=False)
    torch.manual_seed(seed)
    base = NoisyMLPClassifier(mixture.dim, mixture.num_classes, settings.hidden)
    timesteps = list(settings.eval_timesteps) if settings.eval_timesteps else None
    common = dict(noise_aware=True, seed=seed, beta=settings.beta, eval_timesteps=timesteps)
    pre = finetune_calibration(base, train, test, CalibrationConfig(
        steps=settings.pretrain_steps, lr=settings.pretrain_lr, ece_weight=0.0,
        checkpoint_every=max(settings.pretrain_steps // 5, 1), **common), progress=progress, diagrams=False)
    classifiers = {"CE only (before)": base}
    reports = {"CE only (before)": pre["after"]}
    histories = {"pretrain": pre["history"]}
    for name, weight, form in settings.arms:
        model = copy.deepcopy(base)
        report = finetune_calibration(model, train, test, CalibrationConfig(
            steps=settings.finetune_steps, lr=settings.finetune_lr, ece_weight=weight, ece_form=form,
            checkpoint_every=max(settings.finetune_steps // 5, 1), **common), progress=progress, diagrams=False)
        classifiers[name], reports[name], histories[name] = model, report["after"], report["history"]
    exact = ExactNoisyClassifier(mixture)
    reports["exact p(y|x_t)"] = evaluate_calibration(exact, test, noise_aware=True, seed=seed, timesteps=timesteps)
    classifiers["exact p(y|x_t)"] = exact
    for model in classifiers.values():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return {"classifiers": classifiers, "reports": reports, "histories": histories}


def guided_samples(mixture: GaussianMixture, classifiers: dict, settings: Settings, seed: int) -> dict:
    """Noise-aware guidance (on x_t, log p(y|x_t), constant schedule) with each classifier at each s, plus the unguided
    and exact-conditional references; one sampler call per seed (blocks of ``settings.samples``)."""
    n, steps = settings.samples, settings.steps
    draws = seed_draws([seed], n, mixture.dim, steps)
    uncond = ExactEps(mixture)
    unconditional = lambda x, t, y: uncond(x, t, None)  # noqa: E731
    blocks = [((name, s), seed) for s in settings.scales for name in classifiers]
    scales = [s for (_, s), _ in blocks]

    def guidance_for(blocks):
        classifier = NoisyBlockClassifier([classifiers[name] for (name, _), _ in blocks], n)
        objective = BlockObjective([make_objective("log_softmax")] * len(blocks), scales, n)
        return Guidance(classifier=ClassifierGuidance(classifier, on="x_t", objective=objective, scale=1.0,
                                                      schedule=Constant()))

    samples, recorder = sample_blocks(mixture, unconditional, guidance_for, blocks, draws, n, steps,
                                            scales=scales)
    runs = {(f"{name}, s={s:g}", seed): run_record(samples[k], recorder, k)
            for k, (((name, s), _)) in enumerate(blocks)}
    for name, net in (("unguided", unconditional), ("exact conditional", uncond)):
        x, rec = sample_blocks(mixture, net, lambda _: None, [(name, seed)], draws, n, steps)
        runs[(name, seed)] = run_record(x[0], rec, 0)
    return runs


# ---------------------------------------------------------------------------------------------------------------------
# summaries and claims


CALIBRATION_KEYS = ("accuracy", "nll", "ece", "smece", "mean_confidence")


def calibration_table(per_seed_reports: list[dict], names: list[str], high_t: int = 500) -> dict:
    """Per classifier: pooled accuracy/NLL/ECE/smECE, ECE over t ≥ ``high_t`` and the ECE_t rows, each as mean and
    sample standard deviation over seeds (ddof 1; 0 for one seed)."""
    out, ddof = {}, 1 if len(per_seed_reports) > 1 else 0
    for name in names:
        rows = []
        for reports in per_seed_reports:
            r = reports[name]
            values = {k: r["summary"][k] for k in CALIBRATION_KEYS}
            high = [row for row in r["ece_t"] if row["t"] >= high_t]
            values["ece_high_t"] = float(np.mean([row["ece"] for row in high]))
            values["smece_high_t"] = float(np.mean([row["smece"] for row in high]))
            values["gap_high_t"] = float(np.mean([row["mean_confidence"] - row["accuracy"] for row in high]))
            rows.append(values)
        t = [row["t"] for row in per_seed_reports[0][name]["ece_t"]]
        curves = {k: np.array([[row[k] for row in reports[name]["ece_t"]] for reports in per_seed_reports])
                  for k in ("ece", "smece", "mean_confidence", "accuracy")}
        out[name] = {
            "per_seed": rows,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
            "std": {k: float(np.std([r[k] for r in rows], ddof=ddof)) for k in rows[0]},
            "ece_t": {"t": t, **{f"{k}_mean": v.mean(0).tolist() for k, v in curves.items()},
                      **{f"{k}_std": v.std(0, ddof=ddof).tolist() for k, v in curves.items()}},
        }
    return out


def slug(name: str) -> str:
    """A file-name stem: 'CE + 0.1·SECE (sample form)' -> 'ce_0_1_sece_sample_form'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def run_study(out: Path, seeds=DEFAULT_SEEDS, quick: bool = False, progress: bool = True, figures: bool = True,
              compare_with: Path | None = None) -> dict:
    """Train, fine-tune and sample for every seed; write toy_calibration.{md,json} (and, with ``figures``,
    toy_calibration_*.png) into ``out``; return the JSON data. ``compare_with``: the toy_calibration.json of a run on
    another CPU kernel set, whose verdicts the report lists next to these."""
    out = Path(out)
    settings = Settings.quick() if quick else Settings()
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"seeds: the paired t-test needs at least 2 seeds, got {seeds}")
    other = json.loads(Path(compare_with).read_text()) if compare_with is not None else None
    mixture = calibration_mixture()
    per_seed_reports, runs, histories = [], {}, []
    for seed in tqdm(seeds, desc="seeds", disable=not progress):
        trained = train_arms(mixture, settings, seed)
        per_seed_reports.append(trained["reports"])
        histories.append(trained["histories"])
        runs.update(guided_samples(mixture, trained["classifiers"], settings, seed))
    names = list(per_seed_reports[0])
    calibration = calibration_table(per_seed_reports, names)
    thresholds = precision_thresholds(mixture, n=2000 if quick else 20000)
    keys = list(dict.fromkeys(key for key, _ in runs))
    sampling = summarize(runs, keys, seeds, mixture, settings.samples, thresholds)
    floor = exact_distance_spread(mixture, study_labels(settings.samples, mixture.num_classes), repeats=5)
    claims = evaluate_claims(calibration, sampling, settings)
    reliability = {slug(name): name for name in names}
    data = {
        "command": COMMAND + (" --quick" if quick else ""), "environment": environment(), "seeds": seeds,
        "settings": asdict(settings), "exact_floor": {"mean": floor[0], "std": floor[1]}, "scale_down": SCALE_DOWN,
        "classifier_parameters": sum(p.numel() for p in NoisyMLPClassifier(hidden=settings.hidden).parameters()),
        "calibration": calibration, "sampling": sampling, "training_history": histories, "claims": claims,
        "reliability_figures": list(reliability),
        "per_seed_reports": [{name: {"summary": {k: v for k, v in r["summary"].items() if k != "reliability"},
                                     "reliability": r["summary"]["reliability"], "ece_t": r["ece_t"]}
                              for name, r in reports.items()} for reports in per_seed_reports],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "toy_calibration.json", json.dumps(json_ready(data), indent=1, allow_nan=False) + "\n")
    if figures:
        plot_ece_t(calibration, out / "toy_calibration_ece_t.png")
        for stem, name in reliability.items():
            summary = per_seed_reports[0][name]["summary"]
            plot_reliability_diagram(ReliabilityBins.from_dict(summary["reliability"]),
                                     out / f"toy_calibration_reliability_{stem}.png",
                                     title=f"{name}, seed {seeds[0]}, pooled over t", smece=summary["smece"])
        plot_noise_aware_gradients(sampling, names, settings.scales, out / "toy_calibration_gradnorm.png")
        for s in settings.scales:
            panels = [(key, runs[(key, seeds[0])]["x"], sampling[key]) for key in keys
                      if key.endswith(f"s={s:g}") or "," not in key]
            plot_samples(mixture, panels, settings.samples, out / f"toy_calibration_samples_s{s:g}.png",
                         extent=(-5.5 / SCALE_DOWN, 6 / SCALE_DOWN))
    write_text(out / "toy_calibration.md", markdown(data, settings, other))
    return data


def render(out: Path, compare_with: Path | None = None) -> dict:
    """Recompute the claims and rewrite toy_calibration.{json,md} in ``out`` from its toy_calibration.json alone
    (no training or sampling; figures untouched)."""
    out = Path(out)
    data = json.loads((out / "toy_calibration.json").read_text())
    other = json.loads(Path(compare_with).read_text()) if compare_with is not None else None
    fields = {k: tuple(tuple(a) if isinstance(a, list) else a for a in v) if isinstance(v, list) else v
              for k, v in data["settings"].items()}
    settings = Settings(**fields)
    data["claims"] = evaluate_claims(data["calibration"], data["sampling"], settings)
    write_text(out / "toy_calibration.json", json.dumps(json_ready(data), indent=1, allow_nan=False) + "\n")
    write_text(out / "toy_calibration.md", markdown(data, settings, other))
    return data
