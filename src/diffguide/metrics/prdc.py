"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) from k-NN balls.

Real features X (N of them), generated features Y (M). NND_k(z) is the distance from z to its k-th nearest neighbour
in its own set (itself excluded). B(z, r) is the ball of radius r around z. The comparisons follow each paper's
reference code: ≤ for precision/recall (Kynkäänniemi; also ADM's evaluator), < for density/coverage (Naeem).

Distances come from ``torch.cdist`` on row chunks (never the full N x M matrix), so 50k x 50k fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["knn_radii", "PRDC", "prdc", "precision", "recall", "density", "coverage"]

DEFAULT_CHUNK_BYTES = 256 * 2**20


def _as_tensor(features, name: str, device, dtype) -> Tensor:
    array = features if isinstance(features, Tensor) else torch.from_numpy(np.asarray(features))
    if array.ndim != 2 or not array.is_floating_point():
        raise ValueError(f"{name}: expected a float array [N, D] of features, got {array.dtype} {tuple(array.shape)}")
    if not torch.isfinite(array).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return array.to(device=device, dtype=dtype)


def _rows_per_chunk(columns: int, dtype: torch.dtype, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (max(columns, 1) * torch.finfo(dtype).bits // 8))


def knn_radii(features: Tensor, k: int, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """NND_k(z) for every row z of ``features`` [N, D]: the (k+1)-th smallest distance to the set (the smallest is
    z itself, at 0)."""
    n = features.shape[0]
    if n < k + 1:
        raise ValueError(f"knn_radii: {n} features; the {k}-th nearest neighbour needs at least {k + 1}")
    rows = _rows_per_chunk(n, features.dtype, chunk_bytes)
    return torch.cat([torch.cdist(features[lo:lo + rows], features).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for lo in range(0, n, rows)])


def precision(fake_in_some_real_ball: Tensor) -> float:
    """precision = (1/M) Σⱼ 1[∃ i: ‖Yⱼ − Xᵢ‖ ≤ NND_k(Xᵢ)] — the fraction of generated samples on the real manifold."""
    return float(fake_in_some_real_ball.double().mean())


def recall(real_in_some_fake_ball: Tensor) -> float:
    """recall = (1/N) Σᵢ 1[∃ j: ‖Xᵢ − Yⱼ‖ ≤ NND_k(Yⱼ)] — the fraction of real samples on the generated manifold."""
    return float(real_in_some_fake_ball.double().mean())


def density(real_balls_holding_fake: Tensor, k: int) -> float:
    """density = (1/(kM)) Σⱼ Σᵢ 1[‖Yⱼ − Xᵢ‖ < NND_k(Xᵢ)] — how many real balls hold a generated sample, on average,
    over k (1 when Y is distributed like X; unbounded above)."""
    return float(real_balls_holding_fake.double().sum() / (k * real_balls_holding_fake.numel()))


def coverage(nearest_fake_distance: Tensor, real_radii: Tensor) -> float:
    """coverage = (1/N) Σᵢ 1[minⱼ ‖Xᵢ − Yⱼ‖ < NND_k(Xᵢ)] — the fraction of real balls that hold a generated sample."""
    return float((nearest_fake_distance < real_radii).double().mean())


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    num_real: int
    num_fake: int


def prdc(real, fake, *, k: int = 3, device=None, dtype: torch.dtype = torch.float64,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES, real_radii: Tensor | None = None) -> PRDC:
    """Precision, recall, density and coverage of generated features ``fake`` [M, D] against ``real`` [N, D].

    One pass over row chunks of the real-vs-fake distances, in ``dtype`` (float64 by default) on ``device``.
    ``real_radii``: NND_k of ``real`` [N] as :func:`knn_radii` returns them (the same for every ``fake`` set scored
    against one reference, so a caller may compute them once: :meth:`diffguide.metrics.Reference.real_radii`)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"prdc: k must be a positive integer, got {k!r}")
    x = _as_tensor(real, "real", device, dtype)
    y = _as_tensor(fake, "fake", x.device, dtype)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"prdc: feature dimensions differ: real {x.shape[1]}, fake {y.shape[1]}")
    if real_radii is None:
        real_radii = knn_radii(x, k, chunk_bytes=chunk_bytes)
    elif tuple(real_radii.shape) != (len(x),):
        raise ValueError(f"prdc: real_radii must be [{len(x)}] (one per real feature), got {tuple(real_radii.shape)}")
    real_radii = real_radii.to(device=x.device, dtype=dtype)
    fake_radii = knn_radii(y, k, chunk_bytes=chunk_bytes)
    fake_in_some_real_ball = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    real_balls_holding_fake = torch.zeros(len(y), dtype=torch.int64, device=x.device)
    real_in_some_fake_ball, nearest_fake = [], []
    rows = _rows_per_chunk(len(y), dtype, chunk_bytes)
    for lo in range(0, len(x), rows):
        distances = torch.cdist(x[lo:lo + rows], y)  # [rows, M]
        radii = real_radii[lo:lo + rows, None]
        fake_in_some_real_ball |= (distances <= radii).any(dim=0)
        real_balls_holding_fake += (distances < radii).sum(dim=0)
        real_in_some_fake_ball.append((distances <= fake_radii[None, :]).any(dim=1))
        nearest_fake.append(distances.min(dim=1).values)
    return PRDC(precision=precision(fake_in_some_real_ball), recall=recall(torch.cat(real_in_some_fake_ball)),
                density=density(real_balls_holding_fake, k), coverage=coverage(torch.cat(nearest_fake), real_radii),
                k=k, num_real=len(x), num_fake=len(y))
