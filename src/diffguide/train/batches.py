"""Training data: the data set of a run and its mini-batches, seeded per (seed, epoch) and per step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data import check_uint8_images, load_dataset, to_model_range
from ..io import spread_indices
from ..noise import EPOCH_SALT, derived_seed

__all__ = ["StepBatches"]


# ----------------------------------------------------------------------------------------------- data

class StepBatches:
    """Mini-batches of an in-memory uint8 NHWC image set addressed by training step (``batch(step)``), as float NCHW in
    [−1, 1] on ``device`` (an epoch iterable for calibration: :class:`diffguide.calibration.EpochBatches`).

    Global batch k of epoch e = positions [k·B, (k+1)·B) of a permutation seeded by (seed, e) (the last partial batch
    of an epoch is dropped); process r of W takes its B/W slice. Step s is batch s mod (N // B) of epoch s // (N // B),
    so any step's batch is known without replaying the ones before it. With ``hflip`` each image is mirrored with
    probability 1/2 (one uniform draw per image from the step's generator).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, batch_size: int, *, seed: int, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", hflip: bool = False):
        check_uint8_images(images, "dataset.images")
        if batch_size % world:
            raise ValueError(f"batch_size: the global batch ({batch_size}) must divide evenly over {world} processes")
        if len(images) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the data set ({len(images)} images)")
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        self.batch_size, self.seed, self.rank, self.world, self.hflip = batch_size, seed, rank, world, hflip
        self.per_epoch = len(images) // batch_size
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, EPOCH_SALT, epoch))
            order = torch.randperm(len(self.images), generator=generator)
            self._order, self._epoch = order.to(self.device), epoch  # one copy per epoch, none per step
        return self._order

    def batch(self, step: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        epoch, k = divmod(step, self.per_epoch)
        local = self.batch_size // self.world
        start = k * self.batch_size + self.rank * local
        index = self.order(epoch)[start:start + local]
        x = to_model_range(self.images[index])
        if self.hflip:
            flip = torch.rand(local, generator=generator, device=generator.device if generator else "cpu")
            x = torch.where((flip < 0.5).to(self.device)[:, None, None, None], x.flip(3), x)
        return x, None if self.labels is None else self.labels[index]


def _training_data(config, dataset):
    """(data set, images, labels, image shape (C, H, W), hflip) of a run: ``dataset`` or the configured source,
    ``data.limit`` applied, flips on for RGB unless configured."""
    data = dataset if dataset is not None else _load(config.data.source, config.data.split)
    images, labels = _select(data, config.data.limit)
    check_uint8_images(images, "dataset.images")
    image_shape = (images.shape[3], images.shape[1], images.shape[2])
    hflip = config.data.hflip if config.data.hflip is not None else image_shape[0] == 3
    return data, images, labels, image_shape, hflip


def _num_classes(dataset) -> int | None:
    """K from the class names (or the largest label + 1); a ValueError for labels outside [0, K)."""
    if dataset.labels is None:
        return None
    labels = np.asarray(dataset.labels)
    names = getattr(dataset, "class_names", None)
    count = len(names) if names else int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= count:
        raise ValueError(f"dataset.labels: expected values in [0, {count}) ({count} class names), got "
                         f"[{labels.min()}, {labels.max()}]")
    return count


def _load(source: str, split: str | None):
    if not source:
        raise ValueError("data.source: expected a data set path (IDX files, image folder, tarball or npz)")
    return load_dataset(source, split)


def _select(dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels) of ``dataset``, or ``limit`` of them spread evenly over its order (image folders are sorted by
    class, so taking the first N would keep one class)."""
    images, labels = dataset.images, dataset.labels
    if limit is not None and limit < len(images):
        keep = spread_indices(len(images), limit)  # the one meaning of --limit (diffguide.io)
        images, labels = images[keep], None if labels is None else np.asarray(labels)[keep]
    return images, labels
