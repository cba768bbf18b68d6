"""A diffusers ``DDPMScheduler`` / ``DDIMScheduler`` config mapped onto diffguide's schedule, variance and clipping.

What maps, and how (every other value of these fields is refused with a message naming the field):

=========================  ============================================================================================
diffusers field            diffguide
=========================  ============================================================================================
``_class_name``            ``DDPMScheduler`` or ``DDIMScheduler`` (which step rule the timesteps are checked against)
``num_train_timesteps``    ``NoiseSchedule.num_train_timesteps``
``beta_schedule``          ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` (= diffguide's ``cosine``): the base
``beta_start/beta_end``    schedule is diffusers' own float32 ᾱ table (β from its ratios in float64: the same ᾱ_t to 1e-12)
``trained_betas``          (explicit betas, same float32 rounding as diffusers)
``timestep_spacing``       ``leading`` / ``trailing`` / ``linspace``: ``set_timesteps(N)``'s timesteps become the kept
``steps_offset``           original timesteps of a respaced schedule (β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}, as ADM respaces)
``prediction_type``        ``epsilon``; ``v_prediction`` and ``sample`` converted to ε in the network wrapper
``clip_sample``            ``Denoiser(clip_x0=...)`` (x̂0 clipped to [−1, 1])
``clip_sample_range``      1.0 only
``variance_type`` (DDPM)   ``fixed_small`` / ``fixed_small_log`` → ``fixed_small``; ``fixed_large`` → ``fixed_large``;
                           ``learned_range`` → ``learned_range``
``set_alpha_to_one`` (DDIM) true only (the last DDIM step ends at ᾱ = 1, x̂0)
``thresholding``           false only;  ``rescale_betas_zero_snr``: false only
=========================  ============================================================================================

The step rules that make the mapping exact: diffusers' DDPM step goes from ``timesteps[k]`` to ``timesteps[k+1]``
(``previous_timestep``) with exactly ADM's respaced posterior; its DDIM step goes from t to t − T//N, which is the next
timestep it evaluates only when the timesteps are evenly spaced by T//N; other DDIM spacings are refused. A DDPM
spacing ending above timestep 0 is refused with ``fixed_large`` / ``learned_range`` variance: diffusers adds noise at
that last step, diffguide returns the mean (with ``fixed_small`` diffusers' noise there has std 1e-10: equal).
"""

from __future__ import annotations

import numpy as np

from ..schedule import NoiseSchedule, space_timesteps

__all__ = ["SchedulerMapping", "SCHEDULER_CLASSES"]

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
              "learned_range": "learned_range"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SPACINGS = ("leading", "trailing", "linspace")


def _refuse(source: str, field: str, value, why: str) -> ValueError:
    return ValueError(f"{source}: {field}={value!r} cannot be mapped onto diffguide ({why})")


class SchedulerMapping:
    """What a diffusers scheduler config means for diffguide: the training ᾱ table, the timesteps of
    ``set_timesteps(N)``, the variance type, x̂0 clipping and the prediction type.

    Args:
        config: the scheduler config (the dict of ``scheduler_config.json``).
        source: where it came from (for messages).
        learned_variance: the network outputs 2C channels (ε and the ADM variance interpolant v).
    """

    def __init__(self, config: dict, source: str = "scheduler config", *, learned_variance: bool = False):
        from diffusers import DDIMScheduler, DDPMScheduler

        self.source = source
        self.class_name = config.get("_class_name")
        if self.class_name not in SCHEDULER_CLASSES:
            raise _refuse(source, "_class_name", self.class_name,
                          f"diffguide maps {' and '.join(SCHEDULER_CLASSES)} configs; save the model's training "
                          "schedule as one of them")
        cls = DDPMScheduler if self.class_name == "DDPMScheduler" else DDIMScheduler
        self.scheduler = cls.from_config(config)
        c = self.scheduler.config
        self._check_fields(c)
        self.num_train_timesteps = int(c.num_train_timesteps)
        self.prediction_type = c.prediction_type
        self.clip_sample = bool(c.clip_sample)
        self.variance = self._variance(c, learned_variance)
        # diffusers' ᾱ table is float32; betas recovered from its ratios in float64 rebuild it exactly.
        alphas_cumprod = self.scheduler.alphas_cumprod.double().numpy()
        self.alphas_cumprod = alphas_cumprod
        self.base_betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])

    def _check_fields(self, c) -> None:
        s = self.source
        if c.trained_betas is None and c.beta_schedule not in _BETA_SCHEDULES:
            raise _refuse(s, "beta_schedule", c.beta_schedule, f"expected one of {', '.join(_BETA_SCHEDULES)} "
                          "or trained_betas")
        if c.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise _refuse(s, "prediction_type", c.prediction_type, "expected epsilon, v_prediction or sample")
        if c.timestep_spacing not in _SPACINGS:
            raise _refuse(s, "timestep_spacing", c.timestep_spacing, f"expected one of {', '.join(_SPACINGS)}")
        if c.thresholding:
            raise _refuse(s, "thresholding", True, "dynamic thresholding of x̂0 is not a diffguide clipping rule")
        if c.rescale_betas_zero_snr:
            raise _refuse(s, "rescale_betas_zero_snr", True, "zero terminal SNR has no finite ε-parameterisation")
        if c.clip_sample and float(c.clip_sample_range) != 1.0:
            raise _refuse(s, "clip_sample_range", c.clip_sample_range, "diffguide clips x̂0 to [-1, 1] only")
        if self.class_name == "DDIMScheduler" and not c.set_alpha_to_one:
            raise _refuse(s, "set_alpha_to_one", False, "the last DDIM step would end at ᾱ_0 instead of x̂0; "
                          "diffguide's last step returns x̂0 (set_alpha_to_one: true)")

    def _variance(self, c, learned_variance: bool) -> str:
        name = c.get("variance_type", "fixed_small") if self.class_name == "DDPMScheduler" else None
        if learned_variance:
            if name not in (None, "learned_range"):
                raise _refuse(self.source, "variance_type", name, "the network outputs 2C channels (ε and a "
                              "variance interpolant), which needs variance_type='learned_range'")
            return "learned_range"
        if name is None:
            return "fixed_small"
        if name == "learned_range":
            raise _refuse(self.source, "variance_type", name, "the network outputs only C channels (no variance)")
        if name not in _VARIANCES:
            raise _refuse(self.source, "variance_type", name,
                          "expected fixed_small, fixed_small_log, fixed_large or learned_range")
        return _VARIANCES[name]

    # --- timesteps ---------------------------------------------------------------------------------------------

    def inference_timesteps(self, num_inference_steps: int) -> list[int]:
        """The original timesteps diffusers' ``set_timesteps(N)`` gives, in sampling order (descending), after
        checking that diffguide's respaced step between them is the scheduler's step."""
        T = self.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or not 1 <= num_inference_steps <= T:
            raise ValueError(f"steps: expected a number of inference steps in [1, {T}], got {num_inference_steps!r}")
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = [int(t) for t in self.scheduler.timesteps]
        c = self.scheduler.config
        where = f"{self.class_name} with timestep_spacing={c.timestep_spacing!r}, steps_offset={c.steps_offset}"
        if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or timesteps[0] >= T or timesteps[-1] < 0:
            raise ValueError(f"steps: {where} and {num_inference_steps} steps gives timesteps {timesteps[:6]}... "
                             f"that are not distinct, decreasing and within [0, {T})")
        if self.class_name == "DDIMScheduler":
            self._check_ddim_targets(timesteps, num_inference_steps, where)
        elif timesteps[-1] > 0 and self.variance != "fixed_small":
            raise ValueError(f"steps: {where} and {num_inference_steps} steps ends at timestep {timesteps[-1]} > 0, "
                             f"where diffusers' DDPM step adds noise of variance_type={c.variance_type!r}; "
                             "diffguide's DDPM returns the mean at its last step; use a spacing ending at 0")
        return timesteps

    def _check_ddim_targets(self, timesteps: list[int], n: int, where: str) -> None:
        """DDIMScheduler steps from t to t − T//N (ᾱ = 1 below 0): it must be the next timestep it evaluates."""
        stride = self.num_train_timesteps // n
        for k, t in enumerate(timesteps):
            target = t - stride
            if (k + 1 < len(timesteps) and target != timesteps[k + 1]) or (k + 1 == len(timesteps) and target >= 0):
                raise ValueError(f"steps: {where} and {n} steps goes from timestep {t} to {target} (t − T//N), "
                                 "which is not the next timestep it evaluates; diffguide's DDIM cannot take that step "
                                 "(choose evenly spaced timesteps: leading or trailing spacing with N dividing "
                                 f"{self.num_train_timesteps}, steps_offset < T//N)")

    def schedule(self, steps: int | str | list[int] | None) -> NoiseSchedule:
        """The sampling schedule: ``N`` (an int or a digit string) → diffusers' ``set_timesteps(N)`` timesteps;
        ``'ddimN'`` / ``'a,b,c'`` → diffguide's own respacing of the same training schedule; a list → those
        timesteps; ``None`` → all T."""
        if isinstance(steps, str) and steps.strip().isdigit():
            steps = int(steps)
        if isinstance(steps, int) and not isinstance(steps, bool):
            keep = self.inference_timesteps(steps)
        elif steps is None or isinstance(steps, (str, list, tuple)):
            keep = space_timesteps(self.num_train_timesteps, steps)
        else:
            raise ValueError(f"steps: expected a number of steps, 'ddimN', 'a,b,c' or a list of timesteps, "
                             f"got {steps!r}")
        return NoiseSchedule.from_betas(self.base_betas, sorted(keep), name=f"diffusers:{self._beta_name()}")

    def _beta_name(self) -> str:
        c = self.scheduler.config
        return "trained_betas" if c.trained_betas is not None else c.beta_schedule
