"""Calibration of a classifier module on data: logits over batches, a summary (accuracy, ECE, smECE), and ECE_t —
the calibration of a noise-aware classifier ``classifier(x_t, t)`` on inputs noised at each original timestep t."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..schedule import NoiseSchedule
from .metrics import reliability_bins, smooth_ece, top_label

__all__ = [
    "ece_per_timestep",
    "module_device",
    "check_batch",
    "step_indices",
    "collect_logits",
    "collect_noised_logits",
    "calibration_summary",
    "ece_over_timesteps",
    "evaluate_calibration",
    "default_timesteps",
]

Batches = Iterable[tuple[Tensor, Tensor]]


def check_batch(x, y, *, where: str = "batch") -> None:
    """A batch is (x float [B, ...] with values in [−1, 1], y integer [B])."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"{where}: expected x as a float tensor [B, ...] in [-1, 1], got {getattr(x, 'dtype', type(x))} "
                         f"of shape {list(getattr(x, 'shape', []))}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.shape != (x.shape[0],):
        raise ValueError(f"{where}: expected y as an integer tensor of shape [{x.shape[0]}], "
                         f"got {getattr(y, 'dtype', type(y))} of shape {list(getattr(y, 'shape', []))}")
    if x.numel() and (x.min() < -1 - 1e-4 or x.max() > 1 + 1e-4):
        raise ValueError(f"{where}: expected x in [-1, 1] (use diffguide.data.to_model_range on uint8 images), "
                         f"got range [{float(x.min()):.4g}, {float(x.max()):.4g}]")


def default_timesteps(num_train_timesteps: int = 1000, count: int = 11) -> list[int]:
    """Original timesteps 0, T/(count−1), 2T/(count−1), ... and T−1 (0, 100, ..., 900, 999 for T = 1000)."""
    stride = max(1, num_train_timesteps // max(count - 1, 1))
    return sorted(set(range(0, num_train_timesteps, stride)) | {num_train_timesteps - 1})


def step_indices(schedule: NoiseSchedule, timesteps: Sequence[int]) -> list[int]:
    """The step index i of each original timestep t (``schedule.timesteps[i] == t``); a ValueError for a t that a
    respaced schedule does not keep."""
    lookup = {int(t): i for i, t in enumerate(schedule.timesteps)}
    missing = [int(t) for t in timesteps if int(t) not in lookup]
    if missing:
        raise ValueError(f"timesteps: {missing[:8]} are not steps of the schedule ({len(schedule)} steps of "
                         f"{schedule.num_train_timesteps}); use an unrespaced schedule or timesteps it keeps")
    return [lookup[int(t)] for t in timesteps]


def module_device(module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    parameter = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


class _EvalMode:
    """Puts a module in eval mode for the block and restores its previous mode afterwards."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.was_training = getattr(self.module, "training", False)
        if hasattr(self.module, "eval"):
            self.module.eval()

    def __exit__(self, *exc):
        if hasattr(self.module, "train"):
            self.module.train(self.was_training)


@torch.no_grad()
def collect_logits(classifier: Callable[[Tensor], Tensor], batches: Batches, *, progress: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """Logits of an off-the-shelf classifier ``classifier(x)`` on clean batches, in eval mode:
    (logits float64 [N, K] on the CPU, labels int64 [N])."""
    device = module_device(classifier)
    logits, labels = [], []
    with _EvalMode(classifier):
        for x, y in tqdm(batches, desc="logits", disable=not progress, leave=False):
            check_batch(x, y)
            logits.append(classifier(x.to(device, torch.float32)).double().cpu())
            labels.append(y.long().cpu())
    if not logits:
        raise ValueError("batches: expected at least one batch, got none")
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def collect_noised_logits(classifier: Callable[[Tensor, Tensor], Tensor], batches: Batches, schedule: NoiseSchedule,
                          timesteps: Sequence[int], *, seed: int = 0, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Logits of a noise-aware classifier ``classifier(x_t, t)`` at each original timestep t of ``timesteps``:
    x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, with one ε per sample (drawn from a generator seeded with ``seed``, in
    batch order) shared by every t, so the curves over t differ only by the noise level.
    Returns (logits float64 [len(timesteps), N, K] on the CPU, labels int64 [N])."""
    indices = step_indices(schedule, timesteps)
    device = module_device(classifier)
    generator = torch.Generator().manual_seed(seed)
    per_batch, labels = [], []
    with _EvalMode(classifier):
        for x, y in tqdm(batches, desc="noised logits", disable=not progress, leave=False):
            check_batch(x, y)
            x0 = x.to(device, torch.float32)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            rows = []
            for i, t in zip(indices, timesteps):
                step = torch.full((x0.shape[0],), i, dtype=torch.long, device=device)
                x_t = schedule.q_sample(x0, step, noise)
                rows.append(classifier(x_t, torch.full_like(step, int(t))).double().cpu())
            per_batch.append(torch.stack(rows))
            labels.append(y.long().cpu())
    if not per_batch:
        raise ValueError("batches: expected at least one batch, got none")
    return torch.cat(per_batch, dim=1), torch.cat(labels)


def calibration_summary(logits: Tensor, labels: Tensor, *, num_bins: int = 10) -> dict:
    """n, accuracy, mean confidence, binned ECE, smECE (and its bandwidth σ*), NLL, and the reliability bins."""
    confidences, correct = top_label(logits, labels)
    bins = reliability_bins(confidences, correct, num_bins)
    smece, sigma = smooth_ece(confidences, correct, return_sigma=True)
    nll = F.cross_entropy(logits.double(), labels.long().to(logits.device)).item()
    return {
        "n": int(len(correct)),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidences.mean()),
        "ece": bins.ece,
        "smece": smece,
        "smece_sigma": sigma,
        "nll": nll,
        "num_bins": num_bins,
        "reliability": bins.to_dict(),
    }


def ece_over_timesteps(classifier, batches: Batches, schedule: NoiseSchedule, timesteps: Sequence[int], *,
                       num_bins: int = 10, seed: int = 0, progress: bool = False) -> list[dict]:
    """ECE_t: for each original timestep t, the accuracy, mean confidence, binned ECE and smECE of
    ``classifier(x_t, t)`` (see :func:`collect_noised_logits`)."""
    logits, labels = collect_noised_logits(classifier, batches, schedule, timesteps, seed=seed, progress=progress)
    return ece_per_timestep(logits, labels, timesteps, num_bins)


def ece_per_timestep(logits: Tensor, labels: Tensor, timesteps: Sequence[int], num_bins: int) -> list[dict]:
    """One calibration row (n, accuracy, mean confidence, ECE, smECE) per timestep of ``logits`` [T, N, K]."""
    rows = []
    for t, logits_t in zip(timesteps, logits):
        summary = calibration_summary(logits_t, labels, num_bins=num_bins)
        rows.append({"t": int(t), **{k: summary[k] for k in ("n", "accuracy", "mean_confidence", "ece", "smece")}})
    return rows


def evaluate_calibration(classifier, batches: Batches, *, noise_aware: bool = False,
                         schedule: NoiseSchedule | None = None, timesteps: Sequence[int] | None = None,
                         num_bins: int = 10, seed: int = 0, progress: bool = False) -> dict:
    """Calibration report of a classifier on (x in [−1, 1], y) batches.

    Off-the-shelf (``noise_aware=False``): ``classifier(x)`` on clean inputs → ``{"summary": ..., "ece_t": None}``.
    Noise-aware: ``classifier(x_t, t)`` at each t of ``timesteps`` (default :func:`default_timesteps`, schedule
    default: linear, 1000 steps) → ``"ece_t"``, one row per t, and ``"summary"`` pooled over all (sample, t) pairs.
    """
    if not noise_aware:
        logits, labels = collect_logits(classifier, batches, progress=progress)
        return {"noise_aware": False, "summary": calibration_summary(logits, labels, num_bins=num_bins), "ece_t": None}
    schedule = schedule or NoiseSchedule.create("linear")
    timesteps = list(timesteps) if timesteps is not None else default_timesteps(schedule.num_train_timesteps)
    logits, labels = collect_noised_logits(classifier, batches, schedule, timesteps, seed=seed, progress=progress)
    pooled = calibration_summary(logits.reshape(-1, logits.shape[-1]), labels.repeat(len(timesteps)),
                                 num_bins=num_bins)
    return {"noise_aware": True, "summary": pooled, "ece_t": ece_per_timestep(logits, labels, timesteps, num_bins),
            "timesteps": [int(t) for t in timesteps], "seed": seed}
