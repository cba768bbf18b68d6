"""Block-batched sampling for the testbed sweeps: many (configuration, seed) blocks in one sampler call.

Every (configuration, seed) is a block of n samples with its own per-sample noise streams
(``SeededNoise(seed, range(n))``); the same streams serve every configuration of a seed (common random numbers, so
differences between configurations are paired by seed). Blocks do not interact: each block's samples are exactly
those of a separate run (tilted's batch is its own block).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffguide.adapter import Denoiser
from diffguide.noise import DrawnNoise, SeededNoise
from diffguide.samplers import ddpm
from diffguide.schedule import NoiseSchedule
from diffguide.toy import GaussianMixture

__all__ = ["VANISHED", "JointLogitClassifier", "BlockClassifier", "NoisyBlockClassifier", "BlockObjective",
           "RecordingSchedule", "BlockNoise", "seed_draws", "BlockNormRecorder", "study_labels", "sample_blocks",
           "run_record"]

VANISHED = 1e-3  # ‖∇J‖ below this counts as a vanished guidance gradient


class JointLogitClassifier(nn.Module):
    """Logits f_k = log p(x, y=k)/T = logsumexp_{m ∈ k}[log π_m + log N(x; μ_m, σ_m²I)]/T — the unnormalised
    logits of Proposition 3 (f_k = −‖x − μ_k‖²/(2σ²) + const for one mode per class). Same softmax as
    :class:`BayesClassifier` at the same T; only terms that are not shift-invariant in f (ℓ with τ1 ≠ τ2) differ."""

    def __init__(self, mixture: GaussianMixture, temperature: float):
        super().__init__()
        self.mixture, self.temperature = mixture, temperature

    def forward(self, x: Tensor) -> Tensor:
        joint = self.mixture.log_joint(x, 1.0)
        per_class = [torch.logsumexp(joint[:, self.mixture.classes == k], 1) for k in range(self.mixture.num_classes)]
        return torch.stack(per_class, 1) / self.temperature


class BlockClassifier(nn.Module):
    """One classifier per block of ``block_size`` consecutive samples (each block: its own temperature and logits).

    Logits of a diverged sample (x̂0 non-finite or so far out that every log-density underflows) are set to 0, so
    that it cannot stop the run; its gradient is non-finite and the sampler zeroes it (``on_nonfinite='zero'``)."""

    def __init__(self, classifiers: list[nn.Module], block_size: int):
        super().__init__()
        self.classifiers, self.block_size = nn.ModuleList(classifiers), block_size

    def forward(self, x: Tensor) -> Tensor:
        n = self.block_size
        logits = torch.cat([c(x[k * n:(k + 1) * n]) for k, c in enumerate(self.classifiers)])
        return torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)


class BlockObjective:
    """J = Σ_k s_k·J_k(logits of block k, labels of block k): blocks do not interact, so each block's gradient is
    that of a separate run with objective J_k and scale s_k (tilted's batch is its block)."""

    def __init__(self, objectives: list, scales: list[float], block_size: int):
        self.objectives, self.scales, self.block_size = objectives, scales, block_size

    def __call__(self, logits: Tensor, labels: Tensor, step=None) -> Tensor:
        n = self.block_size
        total = logits.new_zeros(())
        for k, (objective, scale) in enumerate(zip(self.objectives, self.scales)):
            part = slice(k * n, (k + 1) * n)
            total = total + scale * objective(logits[part], labels[part], step).sum()
        return total


class NoisyBlockClassifier(nn.Module):
    """One noise-aware classifier(x_t, t) per block of ``block_size`` consecutive samples."""

    def __init__(self, classifiers: list, block_size: int):
        super().__init__()
        self.classifiers, self.block_size = classifiers, block_size

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = self.block_size
        return torch.cat([c(x[k * n:(k + 1) * n], t[k * n:(k + 1) * n]) for k, c in enumerate(self.classifiers)])


class RecordingSchedule:
    """Wraps a schedule and keeps its last weight w_i, so that ∇J can be recovered from the applied s·w_i·∇J."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def __call__(self, step):
        self.last = self.inner(step)
        return self.last


class BlockNoise(DrawnNoise):
    """The noise of ``blocks`` blocks, block k drawing the per-sample streams of seed ``block_seeds[k]``; the draws
    of each seed are made once (``SeededNoise(seed, range(n))``) and shared by every block of that seed."""

    def __init__(self, draws: dict[int, list[Tensor]], block_seeds: list[int]):
        self.draws, self.block_seeds, self.k = draws, block_seeds, 0

    def _next(self) -> Tensor:
        out = torch.cat([self.draws[s][self.k] for s in self.block_seeds])
        self.k += 1
        return out


def seed_draws(seeds, n: int, dim: int, steps: int) -> dict[int, list[Tensor]]:
    """x_T and the ``steps`` step noises of samples 0..n−1 of each seed."""
    draws = {}
    for seed in seeds:
        noise = SeededNoise(seed, range(n), (dim,), dtype=torch.float64)
        draws[seed] = [noise.initial()] + [noise.step(i) for i in range(steps)]
    return draws


class BlockNormRecorder:
    """Per block and sampler step: the median over its samples of ‖∇J‖ and the share of samples with
    ‖∇J‖ < VANISHED, where ∇J = (applied gradient)/(s_k·w_i) is the objective's own gradient (without scale and
    schedule weight). Samples whose x_t is no longer finite are left out (the median resists the few that are about
    to diverge)."""

    def __init__(self, scales: Tensor, schedule: RecordingSchedule | None, num_blocks: int):
        self.scales, self.schedule, self.num_blocks = scales, schedule, num_blocks
        self.t, self.median, self.vanished = [], [], []

    def __call__(self, record) -> None:
        if record.guidance_grad is None:
            return
        weight = self.schedule.last if self.schedule is not None else 1.0
        weight = torch.as_tensor(weight, dtype=torch.float64).reshape(-1)
        norms = record.guidance_grad.flatten(1).norm(dim=1) / (self.scales * weight)
        alive = torch.isfinite(record.x_t.flatten(1)).all(1) & torch.isfinite(norms)
        blocks = torch.where(alive, norms, torch.nan).reshape(self.num_blocks, -1)
        alive = alive.reshape(self.num_blocks, -1)
        self.t.append(int(record.t[0]))
        self.median.append(blocks.nanmedian(1).values.tolist())
        vanished = ((blocks < VANISHED) & alive).double().sum(1) / alive.double().sum(1).clamp_min(1)
        self.vanished.append(vanished.tolist())


def study_labels(n: int, num_classes: int) -> Tensor:
    return torch.arange(n) % num_classes


def sample_blocks(mixture: GaussianMixture, net, guidance_for, blocks: list, draws, n: int, steps: int,
                  schedule=None, scales=None):
    """One DDPM call for ``blocks`` = [(payload, seed)]; returns (samples [blocks, n, d], recorder)."""
    labels = study_labels(n, mixture.num_classes).repeat(len(blocks))
    noise = BlockNoise(draws, [seed for _, seed in blocks])
    scales = torch.as_tensor(scales if scales is not None else [1.0] * len(blocks), dtype=torch.float64)
    recorder = BlockNormRecorder(scales.repeat_interleave(n), schedule, len(blocks))
    denoiser = Denoiser(net, NoiseSchedule.create("linear", str(steps)), clip_x0=False)
    out = ddpm(denoiser, noise, labels, guidance=guidance_for(blocks), callback=recorder, on_nonfinite="zero")
    return out.samples.reshape(len(blocks), n, -1), recorder


def run_record(x: Tensor, recorder: BlockNormRecorder, k: int) -> dict:
    return {"x": x, "t": recorder.t, "norm": [row[k] for row in recorder.median],
            "vanished": [row[k] for row in recorder.vanished]}

