"""Per-sample noise streams (as in EDM): the noise of sample k depends on (seed, k) alone, so a sample is the same
whatever the batch size, the batch it lands in, or the process that draws it."""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["NoiseSource", "DrawnNoise", "SeededNoise", "FixedNoise", "sample_seed", "derived_seed", "derived_rng",
           "epoch_shuffle_seed", "STEP_SALT", "EPOCH_SALT", "LABEL_SALT"]


class NoiseSource(Protocol):
    def initial(self) -> Tensor:
        """x_T."""

    def step(self, i: int) -> Tensor:
        """The fresh Gaussian noise of sampler step i (drawn once per step, in order T'−1 … 0)."""


# Every seed the library derives, in one place. Streams of different purposes are kept apart by a salt word.
STEP_SALT = 0x7124
"""training: the draws of step k on process r come from (seed, STEP_SALT, r, k)."""
EPOCH_SALT = 0xDA7A
"""training: the data order of epoch e comes from (seed, EPOCH_SALT, e)."""
LABEL_SALT = 0x1ABE1
"""sampling: the labels of a run (``--labels uniform``) come from (seed, LABEL_SALT)."""


def derived_seed(*words: int) -> int:
    """A 63-bit generator seed mixed from non-negative integers (NumPy ``SeedSequence``): e.g. (seed, index)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def derived_rng(*words: int) -> np.random.Generator:
    """A NumPy generator seeded with the ``SeedSequence`` of ``words`` (the labels of a sampling run)."""
    return np.random.default_rng(np.random.SeedSequence(list(words)))


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s order in :class:`diffguide.calibration.EpochBatches`: seed·1000003 + epoch
    (kept as it was: the committed toy calibration study depends on it)."""
    return seed * 1_000_003 + epoch


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of a run seeded with ``seed`` (NumPy SeedSequence mixing)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be non-negative, got seed={seed}, index={index}")
    return derived_seed(seed, index)


class DrawnNoise:
    """A noise source whose x_T and each step's noise are consecutive draws of ``_next()`` (one per call, in order)."""

    def _next(self) -> Tensor:
        raise NotImplementedError

    def initial(self) -> Tensor:
        return self._next()

    def step(self, i: int) -> Tensor:
        return self._next()


class SeededNoise(DrawnNoise):
    """Noise for samples ``indices`` of a run seeded with ``seed``.

    Sample k's stream is its own ``torch.Generator`` (seeded by :func:`sample_seed`) read in blocks of ``chunk``
    draws of one sample's shape; x_T is the stream's first draw, the noise of each step the next ones. The block
    size depends only on the per-sample shape, never on the batch, so streams are batch-invariant.
    """

    def __init__(self, seed: int, indices: Iterable[int], shape: Sequence[int], *, device="cpu",
                 dtype=torch.float32, chunk: int | None = None):
        self.indices = [int(k) for k in indices]
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.dtype = dtype
        numel = int(np.prod(self.shape))
        self.chunk = chunk or max(1, min(64, (1 << 18) // max(numel, 1)))
        self.generators = []
        for k in self.indices:
            g = torch.Generator(device=self.device)
            g.manual_seed(sample_seed(seed, k))
            self.generators.append(g)
        self._buffer: Tensor | None = None
        self._used = 0

    def _next(self) -> Tensor:
        if self._buffer is None or self._used == self.chunk:
            self._buffer = torch.stack([
                torch.randn((self.chunk, *self.shape), generator=g, device=self.device, dtype=torch.float32)
                for g in self.generators
            ]).to(self.dtype)
            self._used = 0
        out = self._buffer[:, self._used]
        self._used += 1
        return out


class FixedNoise:
    """Replays given noise: ``x_T`` [B, ...] and ``steps`` [T', B, ...] with ``steps[k]`` used at loop step k
    (k = 0 is the noisiest step), as the guided-diffusion reference vectors record it."""

    def __init__(self, x_T: Tensor, steps: Tensor):
        self.x_T = x_T
        self.steps = steps
        self._k = 0

    def initial(self) -> Tensor:
        return self.x_T

    def step(self, i: int) -> Tensor:
        out = self.steps[self._k]
        self._k += 1
        return out
