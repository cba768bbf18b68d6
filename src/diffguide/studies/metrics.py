"""Sample metrics of the testbed studies, per (configuration, seed), and their summaries over seeds.

A *diverged* sample (a coordinate beyond ±DIVERGED_RADIUS, twice the data's extent, or not finite) is a failure in
every metric, never dropped: wrong class for accuracy, outside the 95 % region for precision, in no mode for the mode
shares and the coverage, and clamped onto the box [−R, R]^d (non-finite coordinates to +R) for the distance. Every
metric is therefore finite and moves continuously with the divergence rate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffguide.toy import GaussianMixture, class_accuracy, conditional_distance, mode_coverage

from .sweep import study_labels

__all__ = ["PHASES", "DIVERGED_RADIUS", "minority_modes", "log_conditional_density", "precision_thresholds",
           "diverged_mask", "clamp_diverged", "sample_metrics", "phase_summary", "summarize", "per_seed"]

PHASES = {"early": (700, 1000), "mid": (300, 700), "late": (0, 300)}  # original t in [lo, hi)
DIVERGED_RADIUS = 12.0  # a final sample with a coordinate beyond ±12 (twice the data's extent) or non-finite diverged


def minority_modes(mixture: GaussianMixture) -> dict[int, int]:
    """For each multi-modal class, its lowest-weight mode."""
    out = {}
    for k in range(mixture.num_classes):
        own = mixture.modes_of(k)
        if len(own) > 1:
            out[k] = int(own[mixture.weights[own].argmin()])
    return out


def log_conditional_density(mixture: GaussianMixture, x: Tensor, labels: Tensor) -> Tensor:
    """log p(x | y) = logsumexp_{m ∈ y} log π_m N(x; μ_m, σ_m²) − log p(y) (clean data)."""
    joint = mixture.log_joint(x.double(), 1.0)
    same = mixture.classes[None, :] == labels[:, None]
    return torch.logsumexp(joint.masked_fill(~same, -math.inf), 1) - mixture.class_prior.log()[labels]


def precision_thresholds(mixture: GaussianMixture, level: float = 0.95, n: int = 20000, seed: int = 12345) -> Tensor:
    """Per class, the (1 − level) quantile of log p(x | y) under exact samples of p(x | y): a sample whose density
    exceeds it lies in the region holding ``level`` of the true conditional's mass."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(mixture.num_classes, dtype=torch.float64)
    for k in range(mixture.num_classes):
        x, y = mixture.sample(n, torch.full((n,), k), generator=g)
        out[k] = torch.quantile(log_conditional_density(mixture, x, y), 1 - level)
    return out


def diverged_mask(x: Tensor) -> Tensor:
    """Samples that are not finite or have a coordinate beyond ±DIVERGED_RADIUS."""
    return ~torch.isfinite(x).all(1) | (x.abs().amax(1) > DIVERGED_RADIUS)


def clamp_diverged(x: Tensor) -> Tensor:
    """x with every coordinate clamped to [−R, R] (NaN to +R, ±inf to ±R): where a diverged sample is scored."""
    return torch.nan_to_num(x.double(), nan=DIVERGED_RADIUS).clamp(-DIVERGED_RADIUS, DIVERGED_RADIUS)


def sample_metrics(mixture: GaussianMixture, x: Tensor, labels: Tensor, thresholds: Tensor, seed: int) -> dict:
    """Diverged share; accuracy and precision@95; mode coverage, the minority-mode shares (and their observed/true
    ratio, mean over multi-modal classes) and the mode-share total variation; the sliced-Wasserstein distance to the
    exact conditional — all over every sample, a diverged one counting as a failure (module docstring)."""
    x = x.double()
    ok = ~diverged_mask(x)
    placed = clamp_diverged(x)
    coverage = mode_coverage(mixture, placed, labels, valid=ok)
    observed, true = np.array(coverage["mode_share"]), np.array(coverage["true_share"])
    minority = minority_modes(mixture)
    tv = [0.5 * np.abs(observed[mixture.modes_of(k).numpy()] - true[mixture.modes_of(k).numpy()]).sum()
          for k in minority]
    inside = (log_conditional_density(mixture, placed, labels) >= thresholds[labels]) & ok
    kept = float(ok.double().mean())
    return {
        "diverged": float((~ok).double().mean()),
        "accuracy": class_accuracy(mixture, placed[ok], labels[ok]) * kept if kept > 0 else 0.0,
        "precision": float(inside.double().mean()),
        "coverage": coverage["coverage"],
        "minority_ratio": float(np.mean([observed[m] / true[m] for m in minority.values()])),
        **{f"minority_c{k}": float(observed[m]) for k, m in minority.items()},
        "mode_share_tv": float(np.mean(tv)),
        "distance": conditional_distance(mixture, placed, labels, seed=seed),
    }


def phase_summary(t: list[int], values: list[float]) -> dict:
    """Mean of a per-step quantity over the early (t ≥ 700), mid and late (t < 300) phases."""
    t, values = np.asarray(t), np.asarray(values)
    return {name: float(np.nanmean(values[(t >= lo) & (t < hi)])) if ((t >= lo) & (t < hi)).any() else None
            for name, (lo, hi) in PHASES.items()}


def summarize(runs: dict, keys: list, seeds, mixture: GaussianMixture, n: int, thresholds: Tensor) -> dict:
    """Per key: per-seed metrics, mean and sample standard deviation over seeds (ddof 1; 0 for one seed), and the
    gradient-norm curve (per step, mean over seeds of the per-run median)."""
    labels = study_labels(n, mixture.num_classes)
    out = {}
    for key in keys:
        rows = []
        for seed in seeds:
            run = runs[(key, seed)]
            metrics = sample_metrics(mixture, run["x"], labels, thresholds, seed)
            for prefix, series in (("grad", run["norm"]), ("vanished", run["vanished"])):
                if run["t"]:
                    for phase, value in phase_summary(run["t"], series).items():
                        metrics[f"{prefix}_{phase}"] = value
            rows.append(metrics)
        numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
        ddof = 1 if len(rows) > 1 else 0
        curve = np.nanmean([runs[(key, s)]["norm"] for s in seeds], 0).tolist() if runs[(key, seeds[0])]["t"] else []
        out[key] = {
            "per_seed": rows,
            "mean": {k: float(np.mean([m[k] for m in rows])) for k in numeric},
            "std": {k: float(np.std([m[k] for m in rows], ddof=ddof)) for k in numeric},
            "grad_t": runs[(key, seeds[0])]["t"], "grad_curve": curve,
        }
    return out


def per_seed(result: dict, metric: str) -> list[float]:
    """The per-seed values of one metric of a summarized configuration (seed order of the study)."""
    return [m[metric] for m in result["per_seed"]]
