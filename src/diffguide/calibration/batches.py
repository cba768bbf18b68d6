"""In-memory (x, y) batches iterated one epoch at a time: calibration fine-tuning and calibration evaluation."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..noise import epoch_shuffle_seed

__all__ = ["EpochBatches"]


class EpochBatches:
    """Shuffled mini-batches (x in [−1, 1], y) of an in-memory dataset, iterated one epoch at a time (calibration and
    evaluation; the trainer's batches, addressed by step, are :class:`diffguide.train.batches.StepBatches`); epoch e
    is shuffled by a generator seeded with (seed, e) (:func:`diffguide.noise.epoch_shuffle_seed`), so a fresh object
    replays exactly the same sequence (what resuming needs).

    ``inputs`` [N, ...] are indexed per batch and passed through ``convert`` (e.g. ``diffguide.data.to_model_range``
    for uint8 NHWC images); ``labels`` [N] integers.
    """

    def __init__(self, inputs, labels, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 convert: Callable | None = None, drop_last: bool = False):
        if len(inputs) != len(labels) or len(inputs) == 0:
            raise ValueError(f"inputs and labels: expected the same non-zero length, got {len(inputs)} and {len(labels)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.convert = convert or (lambda x: torch.as_tensor(x))
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_shuffle_seed(self.seed, self.epoch)))
            order = order.numpy()
        else:
            order = np.arange(n)
        self.epoch += 1
        for k in range(len(self)):
            picked = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.convert(self.inputs[picked]), torch.as_tensor(np.asarray(self.labels)[picked]).long()
