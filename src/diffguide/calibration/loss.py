"""Smooth-ECE calibration loss (Javid et al. 2025, contribution A): a differentiable pseudo-Huber surrogate of ECE.

Notation: p̂_i = max_c softmax(f(x_i))_c, the top-label confidence (differentiable); a_i = 1[argmax_c f_c(x_i) = y_i],
its correctness (a constant: no gradient flows through argmax); β > 0 the pseudo-Huber smoothing.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check_number
from .metrics import bin_index

__all__ = ["top_label_confidence", "pseudo_huber_sample_loss", "pseudo_huber_bin_loss", "smooth_ece_loss",
           "calibration_loss", "LOSS_FORMS"]

LOSS_FORMS = ("sample", "bin")


def top_label_confidence(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """p̂_i = max_c softmax(f(x_i))_c (differentiable) and a_i = 1[argmax_c f_c(x_i) = y_i] (float, no gradient)."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor of shape [n, K], got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(labels, Tensor) or labels.shape != (logits.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor of shape [{logits.shape[0]}], "
                         f"got {getattr(labels, 'shape', type(labels))}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits: expected finite values")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels: expected class indices in [0, {logits.shape[1] - 1}], "
                         f"got range [{int(labels.min())}, {int(labels.max())}]")
    confidence, prediction = torch.softmax(logits, dim=1).max(dim=1)
    return confidence, (prediction == labels).to(logits.dtype).detach()


def pseudo_huber_sample_loss(confidence: Tensor, correct: Tensor, beta: float = 1e-3) -> Tensor:
    """Per-sample form: L = (1/n) Σ_i sqrt((p̂_i − a_i)² + β).

    An empty batch (n = 0) gives 0 (a zero tensor that still depends on ``confidence``, so backward works and the
    gradient is zero): there is nothing to calibrate, and the mean of nothing is not taken.
    """
    check_number("beta", beta, low=0, low_open=True, hint="the pseudo-Huber smoothing")
    if confidence.numel() == 0:
        return confidence.sum() * 0
    return torch.sqrt((confidence - correct) ** 2 + beta).mean()


def pseudo_huber_bin_loss(confidence: Tensor, correct: Tensor, beta: float = 1e-3, num_bins: int = 10) -> Tensor:
    """Bin form: L = Σ_b (|B_b|/n)·sqrt((conf_b − acc_b)² + β), over the non-empty bins only.

    B_b holds the samples with p̂ in (b/B, (b+1)/B] (assignment by the detached p̂); conf_b = mean of p̂ over B_b
    (differentiable), acc_b = mean of a over B_b. Empty bins are skipped, never divided by; all samples in one bin
    give the single term sqrt((conf − acc)² + β); an empty batch gives 0 as :func:`pseudo_huber_sample_loss` does.
    With exactly one sample per non-empty bin the two forms are equal.
    """
    check_number("beta", beta, low=0, low_open=True, hint="the pseudo-Huber smoothing")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins: expected a positive integer, got {num_bins!r}")
    n = confidence.numel()
    if n == 0:
        return confidence.sum() * 0
    index = bin_index(confidence.detach(), num_bins)
    zeros = confidence.new_zeros(num_bins)
    counts = zeros.index_add(0, index, torch.ones_like(confidence))
    confidence_sums = zeros.index_add(0, index, confidence)
    correct_sums = zeros.index_add(0, index, correct.to(confidence.dtype))
    filled = counts > 0
    gap = (confidence_sums[filled] - correct_sums[filled]) / counts[filled]
    return (counts[filled] / n * torch.sqrt(gap ** 2 + beta)).sum()


def smooth_ece_loss(logits: Tensor, labels: Tensor, *, form: Literal["sample", "bin"] = "sample",
                    beta: float = 1e-3, num_bins: int = 10) -> Tensor:
    """The Smooth-ECE loss of logits [n, K] and labels [n]: :func:`pseudo_huber_sample_loss` (``form='sample'``,
    the paper's L_ECE) or :func:`pseudo_huber_bin_loss` (``form='bin'``) of (p̂, a) from :func:`top_label_confidence`."""
    if form not in LOSS_FORMS:
        raise ValueError(f"form: expected one of {LOSS_FORMS}, got {form!r}")
    confidence, correct = top_label_confidence(logits, labels)
    if form == "sample":
        return pseudo_huber_sample_loss(confidence, correct, beta)
    return pseudo_huber_bin_loss(confidence, correct, beta, num_bins)


def calibration_loss(logits: Tensor, labels: Tensor, *, ece_weight: float, form: str = "sample", beta: float = 1e-3,
                     num_bins: int = 10, measure_ece: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """(L, CE, L_ECE) with L = CE(f, y) + λ·L_ECE(f, y), λ = ``ece_weight`` and L_ECE = :func:`smooth_ece_loss`
    (``form``, ``beta``, ``num_bins``) — the one objective of ``diffguide train-classifier`` and ``calibrate``.

    L_ECE is computed when λ > 0 or ``measure_ece`` (then reported, not added, at λ = 0); else it is None and L = CE.
    """
    cross_entropy = F.cross_entropy(logits, labels)
    if ece_weight <= 0 and not measure_ece:
        return cross_entropy, cross_entropy, None
    ece_loss = smooth_ece_loss(logits, labels, form=form, beta=beta, num_bins=num_bins)
    if ece_weight <= 0:
        return cross_entropy, cross_entropy, ece_loss
    return cross_entropy + ece_weight * ece_loss, cross_entropy, ece_loss
