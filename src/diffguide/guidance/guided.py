"""The guidance transform: a denoiser in, a guided denoiser out (as k-diffusion wraps its models and diffusers puts
its guiders between the model and the scheduler step).

    model = GuidedDenoiser(denoiser, guidance, labels)   # one per sampler run: its state starts empty
    pred = model(x_t, i)                                 # a Prediction with guidance applied

Inside, in this order: classifier-free guidance on ε (one batched forward of [cond, null] when the model has a null
label), the model's x̂0 / variance / posterior mean, the running Σ_max, then the classifier term g = s·w(u)·∇J
(noise-aware on x_t, or off-the-shelf on the detached x̂0) entered by the update rule (:mod:`.rules`; default a
score shift). Samplers read ``pred.eps`` / ``pred.x0`` (or ``pred.mean``, ancestral) and never see guidance.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..adapter import Denoiser, Prediction, check_labels
from .cfg import cfg_output
from .classifier import Guidance
from .rules import VarianceState
from .step import GuidanceStep

__all__ = ["GuidedDenoiser", "NonFiniteGuidanceError"]


class NonFiniteGuidanceError(FloatingPointError):
    """The guidance gradient had NaN/inf entries; ``step`` and ``sample_indices`` say where."""

    def __init__(self, step: int, sample_indices: list[int]):
        self.step = step
        self.sample_indices = sample_indices
        super().__init__(
            f"non-finite guidance gradient at sampler step {step} for samples {sample_indices} (batch positions); "
            "pass on_nonfinite='zero' to zero those gradients and continue"
        )


class GuidedDenoiser:
    """``denoiser`` under ``guidance`` for one run of one batch with ``labels``; callable as ``model(x_t, i)``.

    Per-run state: the running maxima of the step variance (Σ_max) and, on the device, where gradients were
    non-finite. Nothing in a step waits on the GPU: a non-finite gradient is found by tensor ops, and with
    ``on_nonfinite='raise'`` the run raises at its end (:meth:`raise_if_nonfinite`, called by every sampler) naming
    the first step it happened at and the samples it happened to there.
    """

    def __init__(self, denoiser: Denoiser, guidance: Guidance | None, labels: Tensor | None,
                 on_nonfinite: str = "raise"):
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser: expected a diffguide Denoiser, got {type(denoiser).__name__}")
        if guidance is not None and not isinstance(guidance, Guidance):
            raise TypeError(f"guidance: expected a diffguide.guidance.Guidance, got {type(guidance).__name__}")
        if on_nonfinite not in ("raise", "zero"):
            raise ValueError(f"on_nonfinite: expected 'raise' or 'zero', got {on_nonfinite!r}")
        self.denoiser, self.labels, self.on_nonfinite = denoiser, labels, on_nonfinite
        self.guidance = guidance or Guidance()
        if self.guidance.classifier is not None and labels is None:
            raise ValueError("labels: classifier guidance needs class labels")
        self.max_variance: Tensor | None = None
        self.first_max_variance: Tensor | None = None
        self._nonfinite_count: Tensor | None = None  # (sample, step) pairs with a non-finite gradient
        self._first_nonfinite_call: Tensor | None = None  # per sample: the call (run order) it first happened in
        self._calls: list[int] = []  # step index i of each classifier-guided call, in run order
        self._labels_checked = False

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def shifts_mean(self) -> bool:
        """Whether the classifier term enters the ancestral mean (rules 'mean', 'elucd') rather than ε."""
        return self.guidance.classifier is not None and self.guidance.rule.shifts_mean

    def step(self, x: Tensor, i: int, prediction: Prediction | None) -> GuidanceStep:
        s = self.schedule
        return GuidanceStep(i=i, num_steps=len(s), num_train_timesteps=s.num_train_timesteps,
                            t=s.original_timesteps(i, x.shape[0], x.device), x_t=x, prediction=prediction,
                            labels=self.labels, max_variance=self.max_variance)

    def __call__(self, x: Tensor, i: int) -> Prediction:
        if not self._labels_checked:  # once per run: the check reads label values, a host sync on a GPU
            check_labels(self.labels, x.shape[0], self.denoiser.num_classes)
            self._labels_checked = True
        cfg = self.guidance.cfg
        if cfg is None:
            eps, v = self.denoiser.network_output(x, i, self.labels)
        else:
            eps, v = cfg_output(self.denoiser, x, i, self.labels, cfg, self.step(x, i, None))
        pred = self.denoiser.predict(x, i, eps, v)
        self._track_variance(pred.variance)
        classifier = self.guidance.classifier
        if classifier is None:
            return pred
        grad = self._finite(classifier.gradient(self.step(x, i, pred)), i)
        state = VarianceState(self.max_variance, self.first_max_variance)
        guided = self.guidance.rule.apply(self.denoiser, pred, x, i, grad, state)
        return replace(guided, guidance_grad=grad)

    def _track_variance(self, variance: Tensor) -> None:
        per_sample = variance.flatten(1).amax(1)
        self.max_variance = per_sample if self.max_variance is None else torch.maximum(self.max_variance, per_sample)
        first = variance.reshape(-1)[0].double()  # a 0-d tensor: no host sync per step
        self.first_max_variance = first if self.first_max_variance is None else \
            torch.maximum(self.first_max_variance, first)

    def _finite(self, grad: Tensor, i: int) -> Tensor:
        """``grad`` with non-finite samples zeroed (with ``on_nonfinite='raise'`` too: the run raises at its end, and
        zeroing keeps a NaN from spreading through batch-level objectives meanwhile); recorded on the device."""
        bad = ~torch.isfinite(grad.flatten(1)).all(1)
        if self._nonfinite_count is None:
            self._nonfinite_count = torch.zeros((), dtype=torch.long, device=bad.device)
            self._first_nonfinite_call = torch.full(bad.shape, -1, dtype=torch.long, device=bad.device)
        self._nonfinite_count += bad.sum()
        first = self._first_nonfinite_call
        self._first_nonfinite_call = torch.where(bad & (first < 0), len(self._calls), first)
        self._calls.append(i)
        return torch.where(bad.reshape(-1, *([1] * (grad.ndim - 1))), torch.zeros_like(grad), grad)

    @property
    def nonfinite_zeroed(self) -> int:
        """How many (sample, step) gradients were non-finite (and zeroed) so far: a host read, once per run."""
        return 0 if self._nonfinite_count is None else int(self._nonfinite_count)

    def raise_if_nonfinite(self) -> None:
        """With ``on_nonfinite='raise'``: a NonFiniteGuidanceError for the first step (in run order) that had a
        non-finite gradient, naming the samples that had one there."""
        if self.on_nonfinite != "raise" or not self.nonfinite_zeroed:
            return
        first = self._first_nonfinite_call
        call = int(first[first >= 0].min())
        raise NonFiniteGuidanceError(self._calls[call], (first == call).nonzero().flatten().tolist())
