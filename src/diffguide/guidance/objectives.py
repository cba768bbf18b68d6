"""Guidance objectives J: plain functions of (logits, labels[, step]) that guidance differentiates.

Contract: ``objective(logits [B, K], labels [B], step) -> Tensor`` — per-sample values [B] (J = their sum) or,
for batch-coupled objectives (:class:`Tilted`), a scalar J. ``step`` (a :class:`GuidanceStep` or ``None``) carries
i and T' for time-adaptive rules; most objectives ignore it.

Every objective is built on the temperature-decoupled log-likelihood ℓ_n = τ1·f_y − logsumexp(τ2·f) (EluCD) and
every open choice of the spec (``shared/spec/guidance.md`` §3) is a parameter with the spec's default:

- ``baseline`` / ``log_softmax``: J = Σ_n ℓ_n (τ2 = 0.5 / τ2 = 1);
- ``tilted``: J = N·(1/t̃)·log((1/N) Σ_n exp(t̃ ℓ_n)) (batch-level reweighting);
- ``entropy``: J = Σ_n [ℓ_n + λ_n H(p_n)], λ_n adaptive and detached;
- ``reverse_kl``, ``forward_kl``, ``js``, ``hellinger``: J = Σ_n [ℓ_n − α·D_f(q_{y_n} ‖ p_n)] against the
  label-smoothed target q_y.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..config import check_number

__all__ = [
    "DIVERGENCES", "EntropyRegularized", "FDivergence", "LAMBDA_RULES", "LogLikelihood", "OBJECTIVES", "Tilted",
    "check_logits", "confidence_adaptive_lambda", "entropy", "forward_kl", "inverse_entropy_lambda", "jensen_shannon",
    "log_likelihood", "make_objective", "reverse_kl", "smoothed_target", "squared_hellinger", "tilted_mean",
    "tilted_weights", "time_adaptive_lambda",
]


# ---------------------------------------------------------------------------------------------------------------------
# input checks


def check_logits(logits: Tensor, labels: Tensor, step=None) -> None:
    """Raise a ValueError for logits that are not [B, K], labels that are not integer [B], labels that do not index
    the logits or non-finite logits.

    The value checks read the tensors on the host (a synchronisation on a GPU), so they run only for a direct call
    (``step`` None). Inside a sampler (``step`` a GuidanceStep) the guided denoiser checks the run's labels once and
    catches non-finite logits as the non-finite gradient they give, without waiting on the GPU each step."""
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"logits: expected a tensor of shape [B, K], got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(labels, Tensor) or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels: expected shape [{logits.shape[0]}], got {getattr(labels, 'shape', type(labels))}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    if step is not None:
        return
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels: expected values in [0, {logits.shape[1] - 1}], got {labels.min()}..{labels.max()}")
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).any(1).nonzero().flatten().tolist()
        raise ValueError(f"logits: non-finite values for samples {bad[:8]}")


def _check_temperatures(tau1, tau2) -> None:
    check_number("tau1", tau1, low=0)
    check_number("tau2", tau2, low=0)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------------
# the baseline


def log_likelihood(logits: Tensor, labels: Tensor, tau1: float = 1.0, tau2: float = 0.5) -> Tensor:
    """ℓ_n = τ1·f_{y_n} − logsumexp_i(τ2·f_{n,i}) [B] (EluCD's temperature-decoupled log-likelihood).

    Computed as log_softmax(τ2·f)_{y_n} + (τ1 − τ2)·f_{y_n}: for τ1 = τ2 = 1 value and gradient are bit-for-bit ADM's
    ``log_softmax(f)[y]`` (the logsumexp form differs by an ulp, which 10 guided steps amplify past 1e-4).
    """
    index = labels[:, None].long()
    picked = logits.gather(1, index).squeeze(1)
    return torch.log_softmax(tau2 * logits, dim=1).gather(1, index).squeeze(1) + (tau1 - tau2) * picked


@dataclass(frozen=True, kw_only=True)
class _Temperatures:
    """τ1, τ2 of ℓ (keyword-only), validated; shared by the regularized objectives below."""

    tau1: float = 1.0
    tau2: float = 0.5

    def __post_init__(self):
        _check_temperatures(self.tau1, self.tau2)

    def log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        return log_likelihood(logits, labels, self.tau1, self.tau2)


@dataclass(frozen=True)
class LogLikelihood:
    """Temperature-decoupled log-likelihood (EluCD): J = Σ_n ℓ_n, ℓ_n = τ1·f_y − logsumexp_i(τ2·f_i).

    τ1 = τ2 = 1 is log softmax (ADM); EluCD's default τ1 = 1, τ2 = 0.5 keeps a gradient (τ1−τ2)∇f_y at one-hot p.
    Gradient: τ1∇f_y − τ2 Σ_i softmax(τ2 f)_i ∇f_i. Returns ℓ [B].
    """

    tau1: float = 1.0
    tau2: float = 0.5

    def __post_init__(self):
        _check_temperatures(self.tau1, self.tau2)

    def __call__(self, logits: Tensor, labels: Tensor, step=None) -> Tensor:
        check_logits(logits, labels, step)
        return log_likelihood(logits, labels, self.tau1, self.tau2)


# ---------------------------------------------------------------------------------------------------------------------
# tilted (batch-level reweighting)


def tilted_weights(values: Tensor, t_tilde: float) -> Tensor:
    """ω_n = softmax_n(t̃·ℓ_n) over the batch [B]: the weight of sample n in the tilted objective (Σ_n ω_n = 1)."""
    return torch.softmax(t_tilde * values, dim=0)


def tilted_mean(values: Tensor, t_tilde: float) -> Tensor:
    """Tilted mean (1/t̃)·log((1/N) Σ_n exp(t̃·v_n)) of a batch [B] -> scalar; t̃ = 0 gives its limit, the mean.

    Computed as a + log1p(mean_n expm1(t̃(v_n − a)))/t̃ with a = the detached max of t̃·v (divided by t̃): no overflow
    for large |t̃·v|, no cancellation for small t̃, and d/dv_n = ω_n = softmax_n(t̃·v) exactly.
    """
    if t_tilde == 0:
        return values.mean()
    anchor = (values.max() if t_tilde > 0 else values.min()).detach()
    return anchor + torch.log1p(torch.expm1(t_tilde * (values - anchor)).mean()) / t_tilde


@dataclass(frozen=True)
class Tilted(_Temperatures):
    """Tilted objective (batch-level reweighting): J = N·(1/t̃)·log((1/N) Σ_n exp(t̃·ℓ_n)), a scalar.

    Gradient: per sample ω_n·N·∇ℓ_n, ω = softmax_n(t̃·ℓ) (:func:`tilted_weights`). t̃ < 0 up-weights the
    low-likelihood samples of the batch (the laggards), t̃ > 0 the confident ones; t̃ = 0 is the limit, Σ_n ℓ_n —
    the baseline, exactly.

    Args:
        t_tilde: t̃ (paper's reported setting −0.2).
        times_batch_size: multiply by the batch size N (spec default, **open**), so that t̃ → 0 recovers the baseline
            Σ_n ℓ_n and each sample's gradient is ω_n·N·∇ℓ_n (= ∇ℓ_n at uniform weights). ``False``: the literal
            (1/t̃)·log((1/N) Σ_n exp(t̃·ℓ_n)), whose t̃ → 0 limit is the batch mean of ℓ (baseline / N).
        tau1, tau2: temperatures of ℓ.

    A batch of one sample: J = (1/t̃)·log(exp(t̃·ℓ)) = ℓ for every t̃ (with or without the factor N = 1) —
    there is nothing to reweight, so J is the baseline; a UserWarning says so (no error: it is well defined).
    """

    t_tilde: float = -0.2
    times_batch_size: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_number("t_tilde", self.t_tilde)
        if not isinstance(self.times_batch_size, bool):
            raise ValueError(f"times_batch_size: expected True or False, got {self.times_batch_size!r}")

    def weights(self, logits: Tensor, labels: Tensor) -> Tensor:
        """ω = softmax_n(t̃·ℓ_n) [B] for this batch."""
        check_logits(logits, labels)
        return tilted_weights(self.log_likelihood(logits, labels), self.t_tilde)

    def __call__(self, logits: Tensor, labels: Tensor, step=None) -> Tensor:
        check_logits(logits, labels, step)
        batch = logits.shape[0]
        if batch == 1 and self.t_tilde != 0:
            warnings.warn("Tilted: a batch of one sample has nothing to reweight; J = ℓ, the baseline", stacklevel=2)
        ell = self.log_likelihood(logits, labels)
        if self.t_tilde == 0 and self.times_batch_size:  # the limit, bit for bit the baseline
            return ell.sum()
        value = tilted_mean(ell, self.t_tilde)
        return value * batch if self.times_batch_size else value


# ---------------------------------------------------------------------------------------------------------------------
# entropy-regularized, adaptive


def entropy(log_p: Tensor) -> Tensor:
    """H(p_n) = −Σ_i p_i log p_i [B] from log p [B, K] (log_softmax); ∇_f H = −Σ_i p_i (log p_i + H) ∇f_i.

    Written around the most probable class m: H = −Σ_{i≠m} p_i log p_i − (1 − s)·log1p(−s), s = Σ_{i≠m} p_i, so
    that H and its autograd gradient stay accurate relative to H when p is nearly one-hot (the plain form loses
    both to cancellation: p_m log p_m and the softmax backward of the m-th component).
    """
    top = log_p.argmax(1, keepdim=True)
    others = torch.ones_like(log_p, dtype=torch.bool).scatter_(1, top, False)
    p_others = torch.where(others, log_p.exp(), 0)
    rest = p_others.sum(1)
    return -(p_others * torch.where(others, log_p, 0)).sum(1) - (1 - rest) * torch.log1p(-rest)


def confidence_adaptive_lambda(entropies: Tensor, num_classes: int, lambda0: float) -> Tensor:
    """Rule (a), confidence-adaptive: λ_n = λ0·(1 − H(p_n)/log K) — strong when overconfident (H → 0)."""
    return lambda0 * (1 - entropies / math.log(num_classes))


def inverse_entropy_lambda(entropies: Tensor, num_classes: int, lambda0: float) -> Tensor:
    """Rule (b), inverse entropy: λ_n = λ0·log K / max(H(p_n), H_min), H_min = √(smallest normal) of the dtype.

    As p → one-hot(m), λ_n·∇H → −λ0·log K·(e_m − p̃), p̃ = p renormalised off m: this rule's force does not vanish.
    """
    return lambda0 * math.log(num_classes) / entropies.clamp_min(_entropy_floor(entropies.dtype))


def _entropy_floor(dtype: torch.dtype) -> float:
    """H_min = √(smallest normal number): 1/H_min times any log p stays finite (1.5e-154 in float64)."""
    return torch.finfo(dtype).tiny ** 0.5


def time_adaptive_lambda(step, lambda0: float) -> float:
    """Rule (c), time-adaptive: λ = λ0·sin(π·u) on the guidance time axis u = t/T (``step.noise_level`` of a
    GuidanceStep, per sample; equal to the spec's i/T′ on the full grid and on DDIM's stride grids). A bare step that
    only knows ``i`` and ``num_steps`` gives u = i/T′."""
    if hasattr(step, "noise_level"):  # samplers step the whole batch at one t; objectives may see a part of it
        return lambda0 * math.sin(math.pi * float(step.noise_level.reshape(-1)[0]))
    if step is None or not hasattr(step, "i") or not hasattr(step, "num_steps"):
        raise ValueError("step: rule 'time' needs a GuidanceStep (its noise level t/T), got "
                         f"{type(step).__name__}")
    return lambda0 * math.sin(math.pi * step.i / step.num_steps)


LAMBDA_RULES = ("confidence", "inverse_entropy", "time")


@dataclass(frozen=True)
class EntropyRegularized(_Temperatures):
    """Adaptive entropy-regularized objective: J = Σ_n [ℓ_n + λ_n·H(p_n)], λ_n detached, p = softmax(f) (temperature 1).

    Gradient: ∇ℓ_n + λ_n ∇H(p_n), ∇H = −Σ_i p_i (log p_i + H) ∇f_i. Returns per-sample values [B].

    Args:
        lambda0: λ0 (spec grid {0.01, 0.05, 0.1, 0.5}, no default given; 0.1 chosen: mid-grid, an entropy bonus
            of at most 0.1·log K next to ℓ).
        rule: adaptive rule for λ_n (**open**): ``'confidence'`` (default) λ0·(1 − H/log K);
            ``'inverse_entropy'`` λ0·log K / H; ``'time'`` λ0·sin(π·t/T) (needs ``step``).
        tau1, tau2: temperatures of ℓ.

    H and λ_n·H_n are computed in float64 (the result has the logits' dtype; MPS, which has no float64, stays in
    float32). Rule ``'inverse_entropy'`` computes λ_n·H_n as λ0·log K·H_n/max(sg(H_n), H_min): no overflow for
    tiny H, the exact gradient λ0·log K·∇H/H down to H = H_min (1.5e-154, a logit gap of about 350), below that a
    force fading to 0, which it is at an exactly one-hot p (H = 0, ∇H = 0).
    """

    lambda0: float = 0.1
    rule: Literal["confidence", "inverse_entropy", "time"] = "confidence"

    def __post_init__(self):
        super().__post_init__()
        check_number("lambda0", self.lambda0, low=0.0)
        _check_choice("rule", self.rule, LAMBDA_RULES)

    def lambdas(self, entropies: Tensor, num_classes: int, step=None) -> Tensor | float:
        """λ_n [B] from H(p_n) [B] (rule ``'time'``: from the step's noise level), detached."""
        if self.rule == "time":
            return time_adaptive_lambda(step, self.lambda0)
        if self.rule == "confidence":
            return confidence_adaptive_lambda(entropies, num_classes, self.lambda0).detach()
        return inverse_entropy_lambda(entropies, num_classes, self.lambda0).detach()

    def __call__(self, logits: Tensor, labels: Tensor, step=None) -> Tensor:
        check_logits(logits, labels, step)
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"logits: the entropy objective needs K >= 2 classes, got K = {num_classes}")
        wide = logits if logits.device.type == "mps" else logits.double()
        h = entropy(torch.log_softmax(wide, dim=1))
        if self.rule == "inverse_entropy":
            bonus = self.lambda0 * math.log(num_classes) * (h / h.detach().clamp_min(_entropy_floor(h.dtype)))
        else:
            bonus = self.lambdas(h, num_classes, step) * h
        return self.log_likelihood(logits, labels) + bonus.to(logits.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# f-divergences against the label-smoothed target


def smoothed_target(labels: Tensor, num_classes: int, epsilon: float, *, dtype=torch.float32) -> Tensor:
    """q_y(i) = (1−ε)/K + ε·1[i = y] [B, K] (ε = 1: one-hot(y); ε → 0: uniform)."""
    q = torch.full((labels.shape[0], num_classes), (1 - epsilon) / num_classes, dtype=dtype, device=labels.device)
    return q.scatter_add_(1, labels[:, None].long(), torch.full_like(q[:, :1], epsilon))


def reverse_kl(log_p: Tensor, q: Tensor) -> Tensor:
    """Paper's "reverse KL", f(u) = −log u: D = KL(q‖p) = Σ_i q_i (log q_i − log p_i) [B].

    −∇_f D = Σ_i (q_i − p_i) ∇f_i: non-zero at p = one-hot(y) unless q is (ε < 1).
    """
    return (torch.xlogy(q, q) - q * log_p).sum(-1)


def forward_kl(log_p: Tensor, q: Tensor) -> Tensor:
    """Paper's "forward KL", f(u) = u log u: D = KL(p‖q) = Σ_i p_i (log p_i − log q_i) [B]; needs q > 0 (ε < 1).

    −∇_f D = −Σ_i p_i (log(p_i/q_i) − KL(p‖q)) ∇f_i: zero at p = one-hot(y).
    """
    return (log_p.exp() * (log_p - q.log())).sum(-1)


def jensen_shannon(log_p: Tensor, q: Tensor) -> Tensor:
    """f(u) = ½[u log u − (1+u) log((1+u)/2)]: D = ½KL(q‖m) + ½KL(p‖m), m = (p+q)/2 [B]; at most log 2.

    −∇_f D = −½ Σ_i p_i (log(p_i/m_i) − Σ_j p_j log(p_j/m_j)) ∇f_i: zero at p = one-hot(y).
    """
    log_m = torch.logaddexp(log_p, q.log()) - math.log(2.0)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (torch.xlogy(q, q) - q * log_m).sum(-1))


def squared_hellinger(log_p: Tensor, q: Tensor) -> Tensor:
    """f(u) = (√u − 1)²: D = Σ_i (√p_i − √q_i)² [B]; at most 2.

    −∇_f D = Σ_i (√(p_i q_i) − p_i·BC) ∇f_i, BC = Σ_j √(p_j q_j): zero at p = one-hot(y).
    """
    return ((0.5 * log_p).exp() - q.sqrt()).square().sum(-1)


DIVERGENCES = {
    "reverse_kl": reverse_kl,
    "forward_kl": forward_kl,
    "js": jensen_shannon,
    "hellinger": squared_hellinger,
}


@dataclass(frozen=True)
class FDivergence(_Temperatures):
    """f-divergence-regularized objective: J = Σ_n [ℓ_n − α·D_f(q_{y_n} ‖ p_n)], D_f(q‖p) = Σ_i q_i f(p_i/q_i).

    q_y(i) = (1−ε)/K + ε·1[i = y] (:func:`smoothed_target`), p = softmax(f) at temperature 1, D computed in log
    space (near one-hot p gives no NaN/inf). Gradient: ∇ℓ_n − α Σ_i w_f(q_i, p_i) g_i, w_f(q, p) = p·f'(p/q),
    g_i = ∇f_i − Σ_j p_j ∇f_j. Returns per-sample values [B].

    Args:
        divergence: ``'reverse_kl'`` (KL(q‖p), the paper's naming), ``'forward_kl'`` (KL(p‖q), needs ε < 1),
            ``'js'`` (Jensen–Shannon), ``'hellinger'`` (squared Hellinger).
        alpha: α ≥ 0 (**open**, grid {0.1, 0.25, 0.5, 1}; default 0.5).
        epsilon: ε ∈ (0, 1] (**open**, grid {0.5, 0.8, 0.9, 0.95, 0.99}; default 0.9).
        tau1, tau2: temperatures of ℓ.
    """

    divergence: Literal["reverse_kl", "forward_kl", "js", "hellinger"] = "reverse_kl"
    alpha: float = 0.5
    epsilon: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        _check_choice("divergence", self.divergence, DIVERGENCES)
        check_number("alpha", self.alpha, low=0.0)
        check_number("epsilon", self.epsilon, low=0.0, low_open=True, high=1.0)
        if self.divergence == "forward_kl" and self.epsilon == 1:
            raise ValueError("epsilon: forward KL needs epsilon < 1 (at epsilon = 1 the target q_y has zeros and "
                             "KL(p‖q_y) is infinite)")

    def divergence_term(self, logits: Tensor, labels: Tensor) -> Tensor:
        """D_f(q_{y_n} ‖ p_n) [B]."""
        q = smoothed_target(labels, logits.shape[1], self.epsilon, dtype=logits.dtype)
        return DIVERGENCES[self.divergence](torch.log_softmax(logits, dim=1), q)

    def __call__(self, logits: Tensor, labels: Tensor, step=None) -> Tensor:
        check_logits(logits, labels, step)
        return self.log_likelihood(logits, labels) - self.alpha * self.divergence_term(logits, labels)


# ---------------------------------------------------------------------------------------------------------------------
# registry


def _log_softmax() -> LogLikelihood:
    """ADM: J = Σ_n log p(y_n|x_n) (τ1 = τ2 = 1)."""
    return LogLikelihood(tau1=1.0, tau2=1.0)


OBJECTIVES = {
    "log_softmax": _log_softmax,  # ADM: log p(y|x)
    "baseline": LogLikelihood,    # EluCD: τ1 = 1, τ2 = 0.5
    "tilted": Tilted,
    "entropy": EntropyRegularized,
    **{name: functools.partial(FDivergence, divergence=name) for name in DIVERGENCES},
}


def _accepted_parameters(factory) -> list[str]:
    bound = getattr(factory, "keywords", {})
    return [name for name in inspect.signature(factory).parameters if name not in bound]


def make_objective(name: str, **params):
    """An objective by name with its parameters, e.g. ``make_objective('js', alpha=0.25, epsilon=0.95)``.

    ``discount`` (EluCD's ``margin_temperature_discount``) gives τ2 as a ratio, τ2 = τ1·discount, instead of ``tau2``.
    """
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {name!r}")
    factory = OBJECTIVES[name]
    accepted = _accepted_parameters(factory)
    if "discount" in params and "tau2" in accepted:
        if "tau2" in params:
            raise ValueError("discount, tau2: give τ2 either as a ratio (discount: τ2 = τ1·discount) or as tau2")
        discount = params.pop("discount")
        check_number("discount", discount, low=0)
        params["tau2"] = params.get("tau1", 1.0) * discount
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"objective {name!r}: unknown parameter(s) {unknown}; accepted: {accepted or 'none'}")
    return factory(**params)
