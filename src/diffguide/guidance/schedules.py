"""Guidance strength schedules w(u): a per-sample multiplier of the guidance strength (s·w·g, or CFG's w).

A schedule is a callable ``weight(step) -> Tensor [B] or float`` of a :class:`~.step.GuidanceStep`. Every schedule
here reads ONE time axis, the noise level u = t/T of the original timestep (``step.noise_level``: ≈ 1 at pure noise,
0 at the clean end), so a schedule means the same at 10 or 1000 sampler steps, under any sampler, for classifier
guidance and classifier-free guidance alike. EluCD's own step rule (its i/T′ sine bump added to the DDPM variance)
is the ancestral update rule ``'elucd'`` of :mod:`.rules`, not a schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import check_number
from .step import GuidanceStep

__all__ = ["Constant", "SineBump", "Interval", "make_schedule", "SCHEDULES"]


@dataclass(frozen=True)
class Constant:
    """w(u) = 1."""

    def __call__(self, step: GuidanceStep) -> float:
        return 1.0


@dataclass(frozen=True)
class SineBump:
    """EluCD's sine bump as a strength multiplier: w(u) = 1 + γ·max(sin(π·u), 0), u = t/T.

    Strongest mid-trajectory, 1 at both ends. EluCD's exact form — a_i = max(sin(π·i/T′)·Σ_max·γ, 0) added to the DDPM
    step variance — is the ancestral update rule ``EluCDMeanShift`` (``rule='elucd'``).
    """

    gamma: float = 0.3

    def __post_init__(self):
        check_number("gamma", self.gamma)

    def __call__(self, step: GuidanceStep) -> Tensor:
        return 1 + self.gamma * torch.sin(math.pi * step.noise_level).clamp_min(0).to(step.x_t.dtype)


@dataclass(frozen=True)
class Interval:
    """Guidance only while the noise level u = t/T lies in [start, stop] (Kynkäänniemi et al. 2024, "Applying guidance
    in a limited interval"); ``inner`` is the schedule used inside the interval."""

    start: float = 0.0
    stop: float = 1.0
    inner: object = Constant()

    def __post_init__(self):
        check_number("start", self.start)
        check_number("stop", self.stop)
        if not (0.0 <= self.start <= self.stop <= 1.0):
            raise ValueError(f"Interval: expected 0 <= start <= stop <= 1, got start={self.start}, stop={self.stop}")

    def __call__(self, step: GuidanceStep) -> Tensor:
        level = step.noise_level
        inside = ((level >= self.start) & (level <= self.stop)).to(step.x_t.dtype)
        return inside * as_weights(self.inner(step), step)


def as_weights(weight, step: GuidanceStep) -> Tensor:
    """A schedule's answer as a tensor [B] in x_t's dtype."""
    if isinstance(weight, Tensor):
        return weight.to(step.x_t.dtype).reshape(-1).expand(step.x_t.shape[0])
    return torch.full((step.x_t.shape[0],), float(weight), dtype=step.x_t.dtype, device=step.x_t.device)


SCHEDULES = {"constant": Constant, "sine": SineBump, "interval": Interval}


def make_schedule(name: str, **params):
    """A schedule by name: 'constant', 'sine' (gamma), 'interval' (start, stop; fractions u = t/T)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](**params)
