"""Classifier-free guidance (Ho & Salimans 2022) as part of the guidance transform, not of the model adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import check_number
from .schedules import Constant, as_weights
from .step import GuidanceStep

__all__ = ["ClassifierFree", "cfg_output", "guided_eps"]


def guided_eps(eps_cond: Tensor, eps_null: Tensor, w: float | Tensor) -> Tensor:
    """ε̃ = (1 + w)·ε(x_t, c) − w·ε(x_t, ∅) — the one CFG formula, of the sampler and of the aligned training loss."""
    return (1 + w) * eps_cond - w * eps_null


@dataclass(frozen=True)
class ClassifierFree:
    """Classifier-free guidance: ε̃ = (1 + w·w(u))·ε(x, c) − w·w(u)·ε(x, ∅) (Ho & Salimans).

    Give exactly one of ``w`` (the paper convention, w = 0 is plain conditional) or ``guidance_scale``
    (s = 1 + w, the diffusers / Stable Diffusion convention). ``null_label``: the label index the model was
    trained with for ∅; ``None`` uses the network's own ``null_label`` attribute when it has one (one batched forward
    of [cond, null]), else calls the network with ``y=None``. ``schedule``: a strength schedule w(u) on the noise level
    u = t/T (e.g. ``Interval(0.2, 0.8)``: guidance in a limited interval, Kynkäänniemi et al. 2024).
    """

    w: float | None = None
    guidance_scale: float | None = None
    null_label: int | None = None
    schedule: object = field(default_factory=Constant)

    def __post_init__(self):
        if (self.w is None) == (self.guidance_scale is None):
            raise ValueError("ClassifierFree: give exactly one of w (ε̃ = (1+w)ε_c − wε_∅) or guidance_scale (s = 1 + w)")
        value = self.w if self.w is not None else self.guidance_scale
        name = "w" if self.w is not None else "guidance_scale"
        check_number(f"ClassifierFree.{name}", value)
        if self.null_label is not None and (isinstance(self.null_label, bool) or not isinstance(self.null_label, int)):
            raise ValueError(f"ClassifierFree.null_label: expected an integer label or None, got {self.null_label!r}")
        if not callable(self.schedule):
            raise TypeError(f"ClassifierFree.schedule: expected a schedule (e.g. Interval(0.2, 0.8)), got "
                            f"{type(self.schedule).__name__}")

    @property
    def weight(self) -> float:
        """w of ε̃ = (1 + w)·ε_c − w·ε_∅."""
        return float(self.w) if self.w is not None else float(self.guidance_scale) - 1.0

    def combine(self, eps_cond: Tensor, eps_uncond: Tensor, weight: float | Tensor | None = None) -> Tensor:
        """(1 + w)·ε_c − w·ε_∅, with w = ``weight`` (a number or a per-sample tensor [B]) or :attr:`weight`."""
        w = self.weight if weight is None else weight
        if isinstance(w, Tensor):
            w = w.reshape(-1, *([1] * (eps_cond.ndim - 1)))
        return guided_eps(eps_cond, eps_uncond, w)


def cfg_output(denoiser, x: Tensor, i: int, labels: Tensor | None, cfg: ClassifierFree,
               step: GuidanceStep) -> tuple[Tensor, Tensor | None]:
    """(ε̃, v of the conditional pass) under classifier-free guidance at step ``i`` of ``denoiser``'s grid."""
    if labels is None:
        raise ValueError("labels: classifier-free guidance needs class labels")
    scheduled = cfg.schedule(step)
    weight = cfg.weight if isinstance(scheduled, (int, float)) and scheduled == 1.0 else \
        cfg.weight * as_weights(scheduled, step)
    null_label = cfg.null_label if cfg.null_label is not None else getattr(denoiser.net, "null_label", None)
    if null_label is None:
        eps_c, v = denoiser.network_output(x, i, labels)
        eps_u, _ = denoiser.network_output(x, i, None)
    else:
        null = torch.full_like(labels, int(null_label))
        eps, v = denoiser.network_output(torch.cat([x, x]), i, torch.cat([labels, null]))
        eps_c, eps_u = eps.chunk(2)
        v = None if v is None else v.chunk(2)[0]
    return cfg.combine(eps_c, eps_u, weight), v
