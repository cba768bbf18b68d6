"""Guidance = one transform from a denoiser to a guided denoiser (:class:`GuidedDenoiser`), configured by
:class:`Guidance`: classifier-free guidance × classifier guidance (where the classifier looks × objective ×
strength schedule) × update rule.

- :mod:`.cfg` — :class:`ClassifierFree` (ε̃ = (1+w)ε_c − wε_∅, one batched forward with a null label);
- :mod:`.classifier` — :class:`ClassifierGuidance` (noise-aware on x_t, or off-the-shelf on x̂0) and :class:`Guidance`;
- :mod:`.objectives` — J(logits, labels): log softmax, EluCD baseline, tilted, entropy-regularized, f-divergences;
- :mod:`.schedules` — strength w(u) on the noise level u = t/T: constant, sine bump, interval;
- :mod:`.rules` — how g enters the step: score shift (default), ADM's ancestral mean, EluCD's ancestral rule;
- :mod:`.guided` — the transform itself.
"""

from .cfg import ClassifierFree
from .classifier import ClassifierGuidance, Guidance, SoftplusForReLU
from .guided import GuidedDenoiser, NonFiniteGuidanceError
from .objectives import OBJECTIVES, make_objective
from .rules import RULES, EluCDMeanShift, MeanShift, ScoreShift, make_rule
from .schedules import SCHEDULES, Constant, Interval, SineBump, make_schedule
from .step import GuidanceStep

__all__ = [
    "ClassifierFree", "ClassifierGuidance", "Constant", "EluCDMeanShift", "Guidance", "GuidanceStep", "GuidedDenoiser",
    "Interval", "MeanShift", "NonFiniteGuidanceError", "OBJECTIVES", "RULES", "SCHEDULES", "ScoreShift", "SineBump",
    "SoftplusForReLU", "make_objective", "make_rule", "make_schedule",
]
