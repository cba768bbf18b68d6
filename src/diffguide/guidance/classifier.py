"""Classifier guidance: where the classifier looks × what objective is differentiated × schedule; and
:class:`Guidance`, the config of the whole guidance transform (classifier-free + classifier guidance + update rule).

The classifier term is a gradient g_i = s·w(u)·∇J; the update rule (:mod:`.rules`) says how it enters the step —
by default as a score shift ε̃ = ε − sqrt(1−ᾱ_i)·g_i, which every sampler receives without knowing it.

EluCD defines off-the-shelf x̂0 guidance for the ancestral DDPM sampler only (rule ``'elucd'``; its DDIM path has no
working x̂0 guidance): x̂0 guidance under DDIM, Euler, Heun and DPM-Solver++ (through the score shift) is this project's
extension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..config import check_number
from .cfg import ClassifierFree
from .objectives import LogLikelihood, make_objective
from .rules import make_rule
from .schedules import Constant, make_schedule
from .step import GuidanceStep

__all__ = ["ClassifierGuidance", "Guidance", "SoftplusForReLU"]

_RELUS = {F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu_}


class SoftplusForReLU(TorchFunctionMode):
    """Inside this context every ReLU — ``nn.ReLU`` modules and functional ``F.relu``/``torch.relu`` calls alike —
    computes Softplus(β) instead (EluCD: smooth input gradients for an off-the-shelf classifier).
    """

    def __init__(self, beta: float = 3.0):
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            return F.softplus(args[0], beta=self.beta)
        return func(*args, **(kwargs or {}))


@dataclass
class ClassifierGuidance:
    """Guidance by a classifier.

    Args:
        classifier: a module returning logits [B, K]. Called as ``classifier(x_t, t)`` with original timesteps when
            ``on='x_t'`` (noise-aware, ADM-G), as ``classifier(x̂0)`` when ``on='x0'`` (off-the-shelf, EluCD). Input
            preprocessing (range, normalisation, resize) belongs to the classifier module.
        on: ``'x_t'`` — gradient with respect to x_t through the classifier; ``'x0'`` — gradient with respect to the
            detached, clipped x̂0 (no backprop through the diffusion network).
        objective: J(logits, labels, step), or an objective's name (``'js'``: :func:`make_objective` defaults);
            default log softmax for ``x_t`` and EluCD's τ1 = 1, τ2 = 0.5 for ``x0``.
        scale: s.
        schedule: strength w(u) on the noise level u = t/T (default constant), or a schedule's name.
        softplus_beta: for ``on='x0'``, ReLUs are computed as Softplus(β) (EluCD: 3; must be > 0); ``None`` keeps
            ReLUs.
    """

    classifier: Callable[..., Tensor]
    on: Literal["x_t", "x0"] = "x0"
    objective: Callable | None = None
    scale: float = 1.0
    schedule: Callable = field(default_factory=Constant)
    softplus_beta: float | None = 3.0

    def __post_init__(self):
        if isinstance(self.classifier, str) or not callable(self.classifier):
            raise TypeError(f"classifier: expected a module returning logits, got {type(self.classifier).__name__} "
                            f"{self.classifier!r:.60}; load it first (e.g. diffguide.api.load_guidance_classifier)")
        if self.on not in ("x_t", "x0"):
            raise ValueError(f"on: expected 'x_t' (noise-aware classifier) or 'x0' (off-the-shelf on x̂0), got {self.on!r}")
        check_number("scale", self.scale)
        if self.softplus_beta is not None:
            check_number("softplus_beta", self.softplus_beta, low=0, low_open=True, hint="or None to keep ReLUs")
        if isinstance(self.objective, str):
            self.objective = make_objective(self.objective)
        elif self.objective is not None and not callable(self.objective):
            raise TypeError(f"objective: expected a callable J(logits, labels, step) or a name, got "
                            f"{type(self.objective).__name__}")
        if isinstance(self.schedule, str):
            self.schedule = make_schedule(self.schedule)
        elif not callable(self.schedule):
            raise TypeError(f"schedule: expected a schedule w(step) or a name, got {type(self.schedule).__name__}")
        if self.objective is None:
            self.objective = LogLikelihood(1.0, 1.0) if self.on == "x_t" else LogLikelihood(1.0, 0.5)

    def logits(self, x_in: Tensor, step: GuidanceStep) -> Tensor:
        if self.on == "x_t":
            return self.classifier(x_in, step.t)
        if self.softplus_beta is None:
            return self.classifier(x_in)
        with SoftplusForReLU(self.softplus_beta):
            return self.classifier(x_in)

    def gradient(self, step: GuidanceStep) -> Tensor:
        """g = s·w(u)·∇_{input} J(classifier(input), y); input = x_t or the detached x̂0."""
        source = step.x_t if self.on == "x_t" else step.prediction.x0
        with torch.enable_grad():
            x_in = source.detach().requires_grad_(True)
            objective = self.objective(self.logits(x_in, step), step.labels, step)
            (grad,) = torch.autograd.grad(objective.sum(), x_in)
        weight = self.schedule(step)
        if isinstance(weight, Tensor):
            weight = weight.to(grad.dtype).reshape(-1, *([1] * (grad.ndim - 1)))
        return grad * (self.scale * weight)


@dataclass(frozen=True)
class Guidance:
    """The guidance transform's config: classifier-free guidance on the model output, classifier guidance, or both
    (a class-conditional model guided by both), and the update rule by which the classifier term enters the step.

    ``rule``: ``'score'`` (default; every sampler), ``'mean'`` (ADM's ancestral ``condition_mean``) or ``'elucd'``
    (EluCD's ancestral rule), or a rule object (:mod:`.rules`, e.g. ``EluCDMeanShift(0.3, max_variance='elucd')``).
    The config is stateless; each sampler run builds its own :class:`~.guided.GuidedDenoiser` with fresh state.
    """

    classifier: ClassifierGuidance | None = None
    cfg: ClassifierFree | None = None
    rule: object = "score"

    def __post_init__(self):
        if self.classifier is not None and not isinstance(self.classifier, ClassifierGuidance):
            raise TypeError(f"classifier: expected a ClassifierGuidance, got {type(self.classifier).__name__}; wrap a "
                            "module as Guidance(classifier=ClassifierGuidance(module, on='x0' or 'x_t'))")
        if self.cfg is not None and not isinstance(self.cfg, ClassifierFree):
            raise TypeError(f"cfg: expected a ClassifierFree, got {type(self.cfg).__name__}")
        object.__setattr__(self, "rule", make_rule(self.rule))
