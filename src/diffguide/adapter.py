"""Model adapter: one interface from any ε-prediction network to (ε, x̂0, step variance, posterior mean).

A network is any callable ``net(x, t, y)`` returning ε (C channels) or, for learned-range variance, ε and v
(2C channels, ADM). ``t`` is always the ORIGINAL timestep; this module is the only place where a step index of a
respaced schedule is mapped to it. ``y`` is ``None`` for an unconditional call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from .schedule import NoiseSchedule, eps_to_x0, x0_to_eps

VarianceType = Literal["fixed_small", "fixed_large", "learned_range"]
Network = Callable[..., Tensor]

__all__ = ["Denoiser", "Prediction", "check_labels"]


def __getattr__(name):
    # ClassifierFree moved to the guidance transform (diffguide.guidance.cfg); kept importable from here (lazily:
    # the guidance package imports this module).
    if name == "ClassifierFree":
        from .guidance.cfg import ClassifierFree

        return ClassifierFree
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Prediction:
    """What the diffusion model says at one step.

    ``eps`` is re-derived from ``x0`` after clipping (as ADM's samplers do), so the pair is consistent.
    ``variance``/``log_variance`` are Σ_i of the DDPM reverse step; ``mean`` is μ̃_i(x_t, x̂0) (shifted by an ancestral
    guidance rule when one is used). ``guidance_grad``: the classifier term g = s·w(u)·∇J that guidance applied, if any.
    """

    eps: Tensor
    x0: Tensor
    variance: Tensor
    log_variance: Tensor
    mean: Tensor
    guidance_grad: Tensor | None = None


def check_labels(labels: Tensor | None, batch: int, num_classes: int | None, name: str = "labels") -> None:
    """Raise a ValueError unless ``labels`` is None or an integer tensor [batch] with values in [0, num_classes)."""
    if labels is None:
        return
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name}: expected an integer tensor of shape [{batch}], got {type(labels).__name__} "
                         f"{getattr(labels, 'dtype', '')}")
    if labels.shape != (batch,):
        raise ValueError(f"{name}: expected shape [{batch}] (one label per sample), got {list(labels.shape)}")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)].unique().tolist()
        raise ValueError(f"{name}: expected values in [0, {num_classes}), got {bad[:8]}")


class Denoiser:
    """Wraps a network and a (respaced) schedule into per-step predictions. No guidance here: see
    :class:`diffguide.guidance.GuidedDenoiser`.

    Args:
        net: ``net(x, t, y) -> Tensor`` with ORIGINAL timesteps ``t``.
        schedule: the :class:`~diffguide.schedule.NoiseSchedule`, respaced or not; its kept timesteps are the default
            step grid of the samplers (``with_grid`` gives the same model on another grid).
        variance: ``fixed_small`` (β̃), ``fixed_large`` (β) or ``learned_range`` (ADM: the network's extra C channels v
            interpolate log Σ = ((v+1)/2)·log β + (1 − (v+1)/2)·log β̃).
        clip_x0: clip x̂0 to [−1, 1] (images); ``False`` for unbounded data such as the toy mixtures.
        num_classes: when given, labels are checked against [0, num_classes).
    """

    def __init__(self, net: Network, schedule: NoiseSchedule, *, variance: VarianceType = "fixed_small",
                 clip_x0: bool = True, num_classes: int | None = None):
        if isinstance(net, (str, bytes)) or not callable(net):
            raise TypeError(f"net: expected a network net(x, t, y), got {type(net).__name__} {net!r:.60}; load it "
                            "first (e.g. diffguide.api.load_diffusion)")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule (e.g. NoiseSchedule.create('linear', '250')), got "
                            f"{type(schedule).__name__} {schedule!r:.60}")
        if variance not in ("fixed_small", "fixed_large", "learned_range"):
            raise ValueError(f"variance: expected 'fixed_small', 'fixed_large' or 'learned_range', got {variance!r}")
        self.net = net
        self.schedule = schedule
        self.variance = variance
        self.clip_x0 = clip_x0
        self.num_classes = num_classes

    def network_output(self, x: Tensor, i: int | Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(ε, v or None) from one network call at step ``i`` (original timesteps looked up here)."""
        t = self.schedule.original_timesteps(i, x.shape[0], x.device)
        return self._split(self.net(x, t, labels), x)

    def with_grid(self, schedule: NoiseSchedule) -> "Denoiser":
        """The same network and settings on another step grid."""
        return Denoiser(self.net, schedule, variance=self.variance, clip_x0=self.clip_x0, num_classes=self.num_classes)

    def _split(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = out.to(x.dtype)  # networks under bf16 autocast answer in bf16; the sampler's arithmetic stays in x's dtype
        channels = x.shape[1]
        if self.variance == "learned_range":
            if out.shape[1] != 2 * channels:
                raise ValueError(f"variance='learned_range' needs a network output of {2 * channels} channels "
                                 f"(ε and v), got {out.shape[1]}")
            eps, v = out.split(channels, dim=1)
            return eps, v
        if out.shape != x.shape:
            raise ValueError(f"network output: expected shape {list(x.shape)} (ε), got {list(out.shape)}; "
                             "for a 2C-channel ADM model use variance='learned_range'")
        return out, None

    def __call__(self, x: Tensor, i: int | Tensor, labels: Tensor | None = None) -> Prediction:
        """The unguided prediction at step ``i``."""
        check_labels(labels, x.shape[0], self.num_classes)
        eps, v = self.network_output(x, i, labels)
        return self.predict(x, i, eps, v)

    def predict(self, x: Tensor, i: int | Tensor, eps: Tensor, v: Tensor | None) -> Prediction:
        """Prediction from the network's ε (and v for learned range): Σ_i, x̂0 (clipped, ε re-derived), μ̃_i."""
        s = self.schedule
        alpha_bar = s.gather("alphas_cumprod", i, x)
        if self.variance == "learned_range":
            min_log = s.gather("posterior_log_variance_clipped", i, x)
            max_log = s.gather("log_betas", i, x)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.variance == "fixed_large":
            variance = s.gather("large_variance", i, x).expand_as(x)
            log_variance = s.gather("log_large_variance", i, x).expand_as(x)
        else:
            variance = s.gather("posterior_variance", i, x).expand_as(x)
            log_variance = s.gather("posterior_log_variance_clipped", i, x).expand_as(x)
        x0 = eps_to_x0(x, eps, alpha_bar)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = x0_to_eps(x, x0, alpha_bar)
        mean = s.q_posterior_mean(x0, x, i)
        return Prediction(eps=eps, x0=x0, variance=variance, log_variance=log_variance, mean=mean)
