"""How the classifier-guidance term g = s·w(u)·∇J enters the step: the update rules.

- ``'score'`` (:class:`ScoreShift`, the default): ε̃ = ε − sqrt(1 − ᾱ_i)·g, x̂0 and the posterior mean re-derived from ε̃
  (ADM's ``condition_score``). Every sampler reads ε̃ / x̂0, so every sampler is guided without knowing it.
- ``'mean'`` (:class:`MeanShift`): ADM's ancestral ``condition_mean``, μ ← μ̃ + Σ_i·g (ancestral DDPM only).
- ``'elucd'`` (:class:`EluCDMeanShift`): EluCD's ancestral rule μ ← μ̃ + (Σ_i + a_i)·g elementwise,
  a_i = max(sin(π·i/T′)·Σ_max·γ, 0) (ancestral DDPM only).

A rule is a stateless config object; the running Σ_max it reads belongs to the per-run guided denoiser
(:class:`~.guided.GuidedDenoiser`), which starts from nothing at every sampler run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..adapter import Prediction
from ..config import check_number
from ..schedule import eps_to_x0, x0_to_eps

__all__ = ["ScoreShift", "MeanShift", "EluCDMeanShift", "RULES", "make_rule", "MAX_VARIANCE_RULES"]


@dataclass(frozen=True)
class VarianceState:
    """Running maxima of the step variance since the run started: ``per_sample`` [B] (each sample's largest element)
    and ``first_element`` (EluCD's: Σ[sample 0, first element], one number for the whole batch)."""

    per_sample: Tensor
    first_element: Tensor


@dataclass(frozen=True)
class ScoreShift:
    """ε̃ = ε − sqrt(1 − ᾱ_i)·g; x̂0 = (x_t − sqrt(1 − ᾱ_i)·ε̃)/sqrt(ᾱ_i) (not re-clipped, as ADM), μ̃ from x̂0."""

    shifts_mean = False

    def apply(self, denoiser, pred: Prediction, x: Tensor, i: int, grad: Tensor, state: VarianceState) -> Prediction:
        alpha_bar = denoiser.schedule.gather("alphas_cumprod", i, x)
        x0 = eps_to_x0(x, pred.eps - torch.sqrt(1 - alpha_bar) * grad, alpha_bar)
        return replace(pred, eps=x0_to_eps(x, x0, alpha_bar), x0=x0, mean=denoiser.schedule.q_posterior_mean(x0, x, i))


@dataclass(frozen=True)
class MeanShift:
    """ADM's ``condition_mean``: μ ← μ̃_i + Σ_i·g (x̂0 and ε stay the model's). Ancestral DDPM only."""

    shifts_mean = True

    def apply(self, denoiser, pred: Prediction, x: Tensor, i: int, grad: Tensor, state: VarianceState) -> Prediction:
        return replace(pred, mean=pred.mean + pred.variance * grad)


MAX_VARIANCE_RULES = ("per_sample", "elucd")


def sine_bump(i: int, num_steps: int, max_variance: Tensor, gamma: float) -> Tensor:
    """EluCD's a_i = max(sin(π·i/T′)·Σ_max·γ, 0) (i the respaced index, T′ the number of sampler steps)."""
    return (math.sin(math.pi * i / num_steps) * max_variance * gamma).clamp_min(0)


@dataclass(frozen=True)
class EluCDMeanShift:
    """EluCD's ancestral rule: μ ← μ̃_i + (Σ_i + a_i)·g, a_i = max(sin(π·i/T′)·Σ_max·γ, 0) ADDED TO EVERY ELEMENT of
    the (per-element, learned) variance Σ_i.

    ``max_variance`` says which running maximum Σ_max is:
    - ``'per_sample'`` (default, batch-invariant): each sample's own running maximum of its largest Σ element;
    - ``'elucd'``: EluCD's code, the running maximum of ONE number, Σ[sample 0, first element] (channel 0, pixel
      (0, 0)), shared by the whole batch — a sample then depends on which batch it is in.
    The two agree whenever Σ is constant over the elements of an image and over the samples (fixed variances).
    """

    gamma: float = 0.3
    max_variance: str = "per_sample"
    shifts_mean = True

    def __post_init__(self):
        check_number("gamma", self.gamma)
        if self.max_variance not in MAX_VARIANCE_RULES:
            raise ValueError(f"max_variance: expected one of {list(MAX_VARIANCE_RULES)}, got {self.max_variance!r}")

    def apply(self, denoiser, pred: Prediction, x: Tensor, i: int, grad: Tensor, state: VarianceState) -> Prediction:
        num_steps = len(denoiser.schedule)
        if self.max_variance == "elucd":
            bump = sine_bump(i, num_steps, state.first_element, float(self.gamma))  # 0-d float64, one for the batch
            return replace(pred, mean=pred.mean + (pred.variance + bump) * grad)
        bump = sine_bump(i, num_steps, state.per_sample, float(self.gamma)).to(x.dtype)
        return replace(pred, mean=pred.mean + (pred.variance + bump.reshape(-1, *([1] * (x.ndim - 1)))) * grad)


RULES = {"score": ScoreShift, "mean": MeanShift, "elucd": EluCDMeanShift}


def make_rule(rule, **params):
    """An update rule by name ('score', 'mean', 'elucd' with gamma / max_variance) or an instance, returned as is."""
    if not isinstance(rule, str):
        if params or not hasattr(rule, "apply"):
            raise TypeError(f"rule: expected one of {sorted(RULES)} or a rule object, got {type(rule).__name__}")
        return rule
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    return RULES[rule](**params)
