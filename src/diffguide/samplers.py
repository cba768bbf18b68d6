"""Samplers: plain, stateless functions with one shared signature (as in k-diffusion), in one registry.

    sampler(denoiser, noise, labels=None, *, guidance=None, steps=None, callback=None, progress=False,
            on_nonfinite="raise", **options) -> SampleOutput

- ``denoiser``: a :class:`~diffguide.adapter.Denoiser` (network + schedule + variance type);
- ``noise``: a :class:`~diffguide.noise.NoiseSource`; x_T is its first draw, each stochastic step's noise the next;
- ``guidance``: a :class:`~diffguide.guidance.Guidance`; the sampler wraps the denoiser once into a per-run
  :class:`~diffguide.guidance.GuidedDenoiser` and reads its predictions — guidance enters there and nowhere else;
- ``steps``: the explicit step grid — ``None`` (the denoiser's own kept timesteps), a respacing string ('20',
  'ddim25') or a list of original timesteps, a subset of the denoiser's;
- ``callback(record)`` receives a :class:`StepRecord` (x_t, x̂0, t, guidance gradient) at each step.

σ-samplers (Euler, Heun, DPM-Solver++(2M)) run on the model's discrete ᾱ schedule: σ_i = sqrt((1 − ᾱ_i)/ᾱ_i) at the
kept timesteps, then σ = 0, in the variable x̃ = x_t/sqrt(ᾱ_i) = x̂0 + σ·ε (Karras et al. 2022), where dx̃/dσ = ε̂.
Samplers run without autograd; only a classifier gradient enables it, for the classifier input alone.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .adapter import Denoiser, Prediction
from .guidance.classifier import Guidance
from .guidance.guided import GuidedDenoiser, NonFiniteGuidanceError
from .noise import NoiseSource
from .schedule import NoiseSchedule, space_timesteps, x0_to_eps

__all__ = ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "SampleOutput", "StepRecord", "NonFiniteGuidanceError",
           "SAMPLERS", "sampler_options", "step_grid"]


@dataclass
class StepRecord:
    i: int
    t: Tensor
    x_t: Tensor
    x0: Tensor
    guidance_grad: Tensor | None


@dataclass
class SampleOutput:
    samples: Tensor
    labels: Tensor | None
    nonfinite_zeroed: int = 0
    """How many (sample, step) guidance gradients were non-finite and zeroed (``on_nonfinite='zero'``)."""


def step_grid(schedule: NoiseSchedule, steps: str | int | Sequence[int] | None) -> NoiseSchedule:
    """``schedule`` restricted to the original timesteps ``steps`` (a respacing of the training schedule or a list),
    which must be kept by ``schedule``; β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}} as in ADM's respacing."""
    if steps is None:
        return schedule
    if isinstance(steps, (str, int)):
        keep = space_timesteps(schedule.num_train_timesteps, steps)
    else:
        keep = sorted({int(t) for t in steps})
    position = {int(t): k for k, t in enumerate(schedule.timesteps)}
    missing = [t for t in keep if t not in position]
    if missing or not keep:
        raise ValueError(f"steps: the grid {steps!r} needs timesteps {missing[:6]} that this denoiser's schedule does "
                         "not keep; build the denoiser on the full training schedule to respace freely")
    alpha_bar = schedule.alphas_cumprod[[position[t] for t in keep]]
    betas = 1 - alpha_bar / np.append(1.0, alpha_bar[:-1])
    return NoiseSchedule(betas=betas, timesteps=np.array(keep, dtype=np.int64),
                         num_train_timesteps=schedule.num_train_timesteps, name=schedule.name,
                         spacing=str(steps) if isinstance(steps, (str, int)) else None)


class _Run:
    """What every sampler does besides its update: the grid, the guided model, x_T, progress, records, output."""

    def __init__(self, name: str, denoiser: Denoiser, noise: NoiseSource, labels, guidance, steps, callback,
                 progress, on_nonfinite, *, ancestral: bool = False):
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser: expected a diffguide Denoiser, got {type(denoiser).__name__}")
        self.model = GuidedDenoiser(denoiser.with_grid(step_grid(denoiser.schedule, steps)), guidance, labels,
                                    on_nonfinite)
        if self.model.shifts_mean and not ancestral:
            raise ValueError(f"guidance.rule: {type(self.model.guidance.rule).__name__} shifts the ancestral (ddpm) "
                             f"mean; sampler {name!r} takes the default score shift, rule='score'")
        self.schedule = self.model.schedule
        self.callback, self.labels = callback, labels
        self.x = noise.initial()
        n = len(self.schedule)
        self.indices = tqdm(range(n - 1, -1, -1), disable=not progress, desc=name, leave=False)

    def coefficient(self, name: str, i: int) -> Tensor:
        return self.schedule.gather(name, i, self.x)

    def sigma(self, i: int) -> float:
        """σ_i = sqrt((1 − ᾱ_i)/ᾱ_i); σ_{−1} = 0."""
        if i < 0:
            return 0.0
        alpha_bar = float(self.schedule.alphas_cumprod[i])
        return math.sqrt((1 - alpha_bar) / alpha_bar)

    def predict_sigma(self, x_tilde: Tensor, i: int) -> Prediction:
        """The guided prediction at grid point i from x̃ (x_t = x̃/sqrt(1 + σ_i²))."""
        return self.model(x_tilde / math.sqrt(1 + self.sigma(i) ** 2), i)

    def report(self, i: int, x_t: Tensor, pred: Prediction) -> None:
        if self.callback is not None:
            t = self.schedule.original_timesteps(i, x_t.shape[0], x_t.device)
            self.callback(StepRecord(i=i, t=t, x_t=x_t, x0=pred.x0, guidance_grad=pred.guidance_grad))

    def output(self, samples: Tensor) -> SampleOutput:
        self.model.raise_if_nonfinite()
        return SampleOutput(samples=samples, labels=self.labels, nonfinite_zeroed=self.model.nonfinite_zeroed)


Callback = Callable[[StepRecord], None] | None
Steps = str | int | Sequence[int] | None


@torch.no_grad()
def ddpm(denoiser: Denoiser, noise: NoiseSource, labels: Tensor | None = None, *, guidance: Guidance | None = None,
         steps: Steps = None, callback: Callback = None, progress: bool = False,
         on_nonfinite: Literal["raise", "zero"] = "raise") -> SampleOutput:
    """Ancestral DDPM (Ho et al. 2020): x_{i−1} = μ_i + sqrt(Σ_i)·z (no noise at i = 0).

    Σ_i is the denoiser's variance (fixed small β̃, fixed large β, or learned range); μ_i its posterior mean, as the
    guidance transform left it (score shift by default; ADM's ``condition_mean`` or EluCD's rule when chosen).
    """
    run = _Run("ddpm", denoiser, noise, labels, guidance, steps, callback, progress, on_nonfinite, ancestral=True)
    for i in run.indices:
        pred = run.model(run.x, i)
        z = noise.step(i)
        run.report(i, run.x, pred)
        run.x = pred.mean + (torch.exp(0.5 * pred.log_variance) * z if i > 0 else 0.0)
    return run.output(run.x)


@torch.no_grad()
def ddim(denoiser: Denoiser, noise: NoiseSource, labels: Tensor | None = None, *, guidance: Guidance | None = None,
         steps: Steps = None, callback: Callback = None, progress: bool = False,
         on_nonfinite: Literal["raise", "zero"] = "raise", eta: float = 0.0) -> SampleOutput:
    """DDIM (Song et al. 2021): x_{i−1} = sqrt(ᾱ_{i−1})·x̂0 + sqrt(1 − ᾱ_{i−1} − σ²)·ε + σ·z,
    σ = η·sqrt((1 − ᾱ_{i−1})/(1 − ᾱ_i))·sqrt(1 − ᾱ_i/ᾱ_{i−1}); ε re-derived from x̂0 (as ADM)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 <= eta < math.inf):
        raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
    run = _Run("ddim", denoiser, noise, labels, guidance, steps, callback, progress, on_nonfinite)
    for i in run.indices:
        x = run.x
        pred = run.model(x, i)
        alpha_bar, alpha_bar_prev = run.coefficient("alphas_cumprod", i), run.coefficient("alphas_cumprod_prev", i)
        eps = x0_to_eps(x, pred.x0, alpha_bar)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        z = noise.step(i) if eta > 0 else None
        run.report(i, x, pred)
        mean = pred.x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        run.x = mean + (sigma * z if i > 0 and z is not None else 0.0)
    return run.output(run.x)


@torch.no_grad()
def euler(denoiser: Denoiser, noise: NoiseSource, labels: Tensor | None = None, *, guidance: Guidance | None = None,
          steps: Steps = None, callback: Callback = None, progress: bool = False,
          on_nonfinite: Literal["raise", "zero"] = "raise") -> SampleOutput:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 1 without the correction):
    x̃_{i−1} = x̃_i + (σ_{i−1} − σ_i)·ε̂(x̃_i, σ_i). (Equal to DDIM with η = 0 in exact arithmetic.)"""
    run = _Run("euler", denoiser, noise, labels, guidance, steps, callback, progress, on_nonfinite)
    x = run.x * math.sqrt(1 + run.sigma(len(run.schedule) - 1) ** 2)
    for i in run.indices:
        pred = run.predict_sigma(x, i)
        run.report(i, x / math.sqrt(1 + run.sigma(i) ** 2), pred)
        x = x + (run.sigma(i - 1) - run.sigma(i)) * pred.eps
    return run.output(x)


@torch.no_grad()
def heun(denoiser: Denoiser, noise: NoiseSource, labels: Tensor | None = None, *, guidance: Guidance | None = None,
         steps: Steps = None, callback: Callback = None, progress: bool = False,
         on_nonfinite: Literal["raise", "zero"] = "raise") -> SampleOutput:
    """Heun's 2nd-order method, EDM Algorithm 1 (= Alg. 2 with S_churn = 0, deterministic): an Euler step to σ_{i−1},
    then, unless σ_{i−1} = 0, x̃_{i−1} = x̃_i + (σ_{i−1} − σ_i)·(ε̂(x̃_i, σ_i) + ε̂(x̃′, σ_{i−1}))/2. 2T′ − 1 evaluations."""
    run = _Run("heun", denoiser, noise, labels, guidance, steps, callback, progress, on_nonfinite)
    x = run.x * math.sqrt(1 + run.sigma(len(run.schedule) - 1) ** 2)
    for i in run.indices:
        pred = run.predict_sigma(x, i)
        run.report(i, x / math.sqrt(1 + run.sigma(i) ** 2), pred)
        h = run.sigma(i - 1) - run.sigma(i)
        x_euler = x + h * pred.eps
        if i == 0:
            x = x_euler
        else:
            x = x + h * 0.5 * (pred.eps + run.predict_sigma(x_euler, i - 1).eps)
    return run.output(x)


@torch.no_grad()
def dpmpp_2m(denoiser: Denoiser, noise: NoiseSource, labels: Tensor | None = None, *, guidance: Guidance | None = None,
             steps: Steps = None, callback: Callback = None, progress: bool = False,
             on_nonfinite: Literal["raise", "zero"] = "raise", lower_order_final: bool = True) -> SampleOutput:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; data prediction, multistep), with λ = −log σ and h = λ_{i−1} − λ_i:
    x̃_{i−1} = (σ_{i−1}/σ_i)·x̃_i − (e^{−h} − 1)·D_i, D_i = (1 + 1/(2r))·x̂0_i − x̂0_{i+1}/(2r), r = h_prev/h;
    D_i = x̂0_i (first order) at the first step and, with ``lower_order_final`` (the reference implementation's default),
    at the step onto the last grid point, where a uniform-t grid makes h several times h_prev; x̃ = x̂0 at σ = 0."""
    run = _Run("dpmpp_2m", denoiser, noise, labels, guidance, steps, callback, progress, on_nonfinite)
    x = run.x * math.sqrt(1 + run.sigma(len(run.schedule) - 1) ** 2)
    previous_x0, h_previous = None, None
    for i in run.indices:
        pred = run.predict_sigma(x, i)
        run.report(i, x / math.sqrt(1 + run.sigma(i) ** 2), pred)
        sigma, sigma_next = run.sigma(i), run.sigma(i - 1)
        if sigma_next == 0:
            x = pred.x0
            continue
        h = math.log(sigma) - math.log(sigma_next)
        data = pred.x0
        if previous_x0 is not None and not (lower_order_final and i == 1):
            r = h_previous / h
            data = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * previous_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * data
        previous_x0, h_previous = pred.x0, h
    return run.output(x)


SAMPLERS: dict[str, Callable[..., SampleOutput]] = {
    "ddpm": ddpm, "ddim": ddim, "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m,
}
"""THE sampler registry: the CLI, the API and the contract test read it; a sampler registered here is offered and
checked everywhere."""

_COMMON = {"guidance", "steps", "callback", "progress", "on_nonfinite"}


def sampler_options(name: str) -> dict[str, object]:
    """The extra keyword options of sampler ``name`` and their defaults (e.g. ddim: {'eta': 0.0})."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {name!r}")
    parameters = inspect.signature(SAMPLERS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON}
