"""diffusers models through diffguide: the scheduler mapping, step-by-step equality with diffusers' own DDPM / DDIM
scheduler loops and pipelines, guidance on diffusers models, and the refusals.

Tiny ``UNet2DModel`` s with random weights (no downloads), in float64. Errors are measured as
max |diffguide − diffusers| / max |diffusers| per step. Tolerance 1e-5 (the issue's bar): both sides evaluate the same
formulas on the same network outputs; the remaining difference is diffusers computing its step coefficients from its
float32 ᾱ table in float32 (relative rounding ~6e-8 per coefficient, over ≤ 40 steps), measured ≤ 2.2e-6
(DDIM, trailing, where x̂0 = x_t/sqrt(ᾱ_999) multiplies it by 150), 1e-7..3e-7 elsewhere; a wrong coefficient,
spacing or clipping rule gives errors of order 1 (e.g. leading vs trailing: 0.6).
diffusers is a test dependency (README set-up, .ci/run): a plain import, so a missing install fails loudly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from diffguide import ClassifierFree, ClassifierGuidance, FixedNoise, Guidance, ddim, ddpm
from diffguide.diffusers_adapter import DiffusersConfig, DiffusersUNet, SchedulerMapping
from diffguide.guidance import make_objective
from diffguide.schedule import named_betas

TOL = 1e-5
SHAPE = (2, 3, 8, 8)


def tiny_unet(seed: int = 0, out_channels: int = 3, **extra) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                       **extra).double().eval().requires_grad_(False)


def config_of(scheduler) -> dict:
    """The scheduler's config as ``scheduler_config.json`` holds it (with its ``_class_name``; diffusers' in-memory
    record of which fields took defaults left out)."""
    fields = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    return {"_class_name": type(scheduler).__name__, **fields}


def adapt(unet: UNet2DModel, scheduler, **class_options) -> tuple[DiffusersUNet, DiffusersConfig]:
    """What load_diffusers builds, from objects in memory."""
    learned = unet.config.out_channels == 2 * unet.config.in_channels
    mapping = SchedulerMapping(config_of(scheduler), "test", learned_variance=learned)
    num_classes = class_options.get("num_classes")
    net = DiffusersUNet(unet, mapping.alphas_cumprod, mapping.prediction_type, **class_options)
    return net, DiffusersConfig(mapping=mapping, kwargs={"in_channels": 3, "out_channels": unet.config.out_channels,
                                                        "image_size": 8, "num_classes": num_classes})


def replayed_noise(seed: int, num_draws: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x_T and the step noises in the order diffusers draws them from one generator (randn of the batch shape)."""
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return x_T, [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(num_draws)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def diffguide_trajectory(sampler, denoiser, x_T, steps, **options) -> list[torch.Tensor]:
    """x after each step: the callback's x_t at the next step, then the output."""
    seen = []
    out = sampler(denoiser, FixedNoise(x_T, torch.stack(steps)), None,
                  callback=lambda r: seen.append(r.x_t.clone()), **options)
    return seen[1:] + [out.samples]


def diffusers_trajectory(unet, scheduler, x_T, steps, num_steps, **step_options) -> list[torch.Tensor]:
    scheduler.set_timesteps(num_steps)
    x, out = x_T, []
    for k, t in enumerate(scheduler.timesteps):
        model_output = unet(x, t).sample
        if isinstance(scheduler, DDIMScheduler):
            step = scheduler.step(model_output, t, x, variance_noise=steps[k], **step_options)
        else:  # DDPMScheduler draws its own noise: a generator replaying the same draws
            step = scheduler.step(model_output, t, x, generator=step_options["generator"])
        x = step.prev_sample
        out.append(x)
    return out


def ddpm_error(unet, scheduler, num_steps: int) -> float:
    net, config = adapt(unet, scheduler)
    denoiser = config.denoiser(net, num_steps)
    scheduler.set_timesteps(num_steps)
    draws = sum(int(t) > 0 for t in scheduler.timesteps)  # diffusers draws noise at every t > 0
    x_T, noise = replayed_noise(7, draws)
    ours = diffguide_trajectory(ddpm, denoiser, x_T, noise + [torch.zeros(SHAPE, dtype=torch.float64)] * (num_steps - draws))
    g = torch.Generator().manual_seed(7)
    torch.randn(SHAPE, generator=g, dtype=torch.float64)  # x_T
    theirs = diffusers_trajectory(unet, scheduler, x_T, None, num_steps, generator=g)
    return max(relative_error(a, b) for a, b in zip(ours, theirs, strict=True))


def ddim_error(unet, scheduler, num_steps: int, eta: float = 0.0) -> float:
    net, config = adapt(unet, scheduler)
    x_T, noise = replayed_noise(11, num_steps)
    ours = diffguide_trajectory(ddim, config.denoiser(net, num_steps), x_T, noise, eta=eta)
    theirs = diffusers_trajectory(unet, scheduler, x_T, noise, num_steps, eta=eta, use_clipped_model_output=True)
    return max(relative_error(a, b) for a, b in zip(ours, theirs, strict=True))


PREDICTIONS = ["epsilon", "v_prediction", "sample"]


# --- the mapping ------------------------------------------------------------------------------------------------------


def test_beta_schedules_are_diffusers_float32_tables_and_match_diffguide_closed_forms():
    """diffguide uses diffusers' own ᾱ table (rebuilt exactly from its ratios); the tables are the closed forms up to
    diffusers' float32 arithmetic: α_t = 1 − β_t and each cumprod factor rounded to 2^-24 ≈ 6e-8, so the β recovered
    from two neighbouring ᾱ is within 3e-7 absolute (≈ 5 such roundings), and ᾱ itself within 1e-4 relative
    (1000 roundings of 6e-8)."""
    T = 1000
    closed = {"linear": named_betas("linear", T), "squaredcos_cap_v2": named_betas("cosine", T),
              "scaled_linear": np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2}
    for name, betas in closed.items():
        extra = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
        scheduler = DDPMScheduler(beta_schedule=name, **extra)
        schedule = SchedulerMapping(config_of(scheduler)).schedule(None)
        np.testing.assert_allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.double().numpy(), rtol=1e-12)
        np.testing.assert_allclose(schedule.betas, betas, rtol=0, atol=3e-7)
        np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-4)
    trained = np.linspace(1e-3, 0.3, 20)
    schedule = SchedulerMapping(config_of(DDPMScheduler(num_train_timesteps=20, trained_betas=trained.tolist()))).schedule(None)
    np.testing.assert_allclose(schedule.betas, trained, rtol=0, atol=3e-7)


@pytest.mark.parametrize("spacing, offset, expected", [
    ("leading", 0, list(range(0, 1000, 100))),
    ("leading", 1, list(range(1, 1000, 100))),
    ("trailing", 0, list(range(99, 1000, 100))),
    ("linspace", 0, [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
])
def test_timestep_spacing_and_offset_become_the_kept_original_timesteps(spacing, offset, expected):
    """set_timesteps(10) over T = 1000: leading k·100 + offset, trailing round(1000 − k·100) − 1, linspace
    round(k·999/9); the respaced β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} (ADM's respacing)."""
    scheduler = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    schedule = SchedulerMapping(config_of(scheduler)).schedule(10)
    assert schedule.timesteps.tolist() == expected
    full = scheduler.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(schedule.alphas_cumprod, full[expected], rtol=1e-12)


# --- step loops and pipelines -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddpm_loop_equals_ddpm_scheduler_at_every_step(prediction, spacing):
    scheduler = DDPMScheduler(prediction_type=prediction, timestep_spacing=spacing)
    assert ddpm_error(tiny_unet(), scheduler, 10) < TOL


@pytest.mark.parametrize("variance, out_channels, offset", [("fixed_large", 3, 0), ("fixed_small_log", 3, 1),
                                                            ("learned_range", 6, 0)])
def test_ddpm_variance_types_equal_ddpm_scheduler(variance, out_channels, offset):
    scheduler = DDPMScheduler(variance_type=variance, steps_offset=offset)
    assert ddpm_error(tiny_unet(out_channels=out_channels), scheduler, 10) < TOL


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing, T, N", [("leading", 1000, 10), ("trailing", 1000, 10), ("linspace", 40, 40)])
def test_ddim_loop_equals_ddim_scheduler_at_every_step(prediction, spacing, T, N):
    """linspace is DDIM-exact only with N = T (its step goes to t − T//N); clip_sample on, so x̂0 clipping is hit
    (diffusers with use_clipped_model_output=True, which re-derives ε from the clipped x̂0 as diffguide and ADM do)."""
    scheduler = DDIMScheduler(num_train_timesteps=T, prediction_type=prediction, timestep_spacing=spacing)
    assert ddim_error(tiny_unet(), scheduler, N) < TOL


def test_ddim_with_eta_and_offset_equals_ddim_scheduler():
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False, beta_schedule="squaredcos_cap_v2")
    assert ddim_error(tiny_unet(), scheduler, 20, eta=0.7) < TOL


def test_unguided_samples_equal_ddpm_and_ddim_pipelines():
    """The pipelines draw x_T = randn(shape, generator) and then the step noises from the same generator, in the
    order replayed here; their output is (x/2 + 0.5).clamp(0, 1), NHWC."""
    unet = tiny_unet(3)
    for pipe_cls, sched, sampler, kwargs, pipe_kwargs in [
        (DDPMPipeline, DDPMScheduler(prediction_type="v_prediction"), ddpm, {}, {}),
        (DDIMPipeline, DDIMScheduler(timestep_spacing="trailing"), ddim, {"eta": 0.5},
         {"eta": 0.5, "use_clipped_model_output": True}),
    ]:
        pipe = pipe_cls(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=25,
                      output_type="np", **pipe_kwargs).images
        net, config = adapt(unet, pipe.scheduler)
        draws = 24 if sampler is ddpm else 25  # DDPM: no draw at t = 0; DDIM with η > 0: a draw every step
        x_T, noise = replayed_noise(5, draws)
        noise += [torch.zeros(SHAPE, dtype=torch.float64)] * (25 - draws)
        out = sampler(config.denoiser(net, 25), FixedNoise(x_T, torch.stack(noise)), **kwargs).samples
        ours = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - theirs).max() / np.abs(theirs).max() < TOL


# --- what is refused --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler, field", [
    (DDPMScheduler(beta_schedule="sigmoid"), "beta_schedule"),
    (DDPMScheduler(thresholding=True), "thresholding"),
    (DDPMScheduler(rescale_betas_zero_snr=True), "rescale_betas_zero_snr"),
    (DDPMScheduler(clip_sample_range=2.0), "clip_sample_range"),
    (DDPMScheduler(variance_type="fixed_large_log"), "variance_type"),
    (DDPMScheduler(variance_type="learned"), "variance_type"),
    (DDPMScheduler(variance_type="learned_range"), "variance_type"),  # a 3-channel network has no variance output
    (DDIMScheduler(set_alpha_to_one=False), "set_alpha_to_one"),
    (diffusers.PNDMScheduler(), "_class_name"),
])
def test_unmappable_scheduler_fields_are_refused_by_name(scheduler, field):
    with pytest.raises(ValueError, match=rf"^test: {field}="):
        SchedulerMapping(config_of(scheduler), "test")


@pytest.mark.parametrize("config, field", [
    ({"prediction_type": "flow"}, "prediction_type"),
    ({"timestep_spacing": "karras"}, "timestep_spacing"),
])
def test_unknown_field_values_are_refused_by_name(config, field):
    with pytest.raises(ValueError, match=rf"^test: {field}="):
        SchedulerMapping({**config_of(DDPMScheduler()), **config}, "test")


@pytest.mark.parametrize("scheduler, steps, message", [
    (DDIMScheduler(timestep_spacing="trailing"), 30, "goes from timestep 966 to 933"),  # 999, 966, 932: 33 then 34
    (DDIMScheduler(timestep_spacing="linspace"), 10, "goes from timestep 999 to 899"),  # 999/9 = 111 ≠ 1000//10
    (DDPMScheduler(timestep_spacing="trailing", variance_type="fixed_large"), 10, "ends at timestep 99 > 0"),
    (DDPMScheduler(), 1001, r"in \[1, 1000\]"),
])
def test_timesteps_diffguide_cannot_step_between_are_refused(scheduler, steps, message):
    mapping = SchedulerMapping(config_of(scheduler), "test")
    with pytest.raises(ValueError, match=rf"^steps: .*{message}"):
        mapping.schedule(steps)


def test_diffguide_respacings_of_a_diffusers_schedule_stay_available():
    """'ddimN' and 'a,b,c' are diffguide's own respacings (ADM's), applied to the diffusers training schedule."""
    mapping = SchedulerMapping(config_of(DDPMScheduler()), "test")
    assert mapping.schedule("ddim10").timesteps.tolist() == list(range(0, 1000, 100))
    assert mapping.schedule("2,2").timesteps.tolist() == [0, 499, 500, 999]


# --- guidance on diffusers models -------------------------------------------------------------------------------------

LABELS = torch.tensor([0, 2])
T_STEP, T_NEXT = 150, 50  # a middle noise level (ᾱ_150 ≈ 0.79, sqrt(1 − ᾱ) ≈ 0.46), so every factor shows


class LinearClassifier(torch.nn.Module):
    """logits f = (W·x + b)·(1 + t/1000) (on x_t; the t factor checks that it sees original timesteps) or W·x + b
    (on x̂0): gradients in closed form."""

    def __init__(self, noise_aware: bool):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = torch.randn(3, math.prod(SHAPE[1:]), generator=g, dtype=torch.float64) * 0.1
        self.b = torch.randn(3, generator=g, dtype=torch.float64)
        self.noise_aware = noise_aware

    def scale(self, t):
        return (1 + t.double() / 1000)[:, None] if self.noise_aware else 1.0

    def forward(self, x, t=None):
        return (x.flatten(1) @ self.W.T + self.b) * self.scale(t)

    def log_likelihood_gradient(self, x, labels, t=None, tau1=1.0, tau2=1.0):
        """∇_x [τ1 f_y − logsumexp(τ2 f)] = c·(τ1 W_y − τ2 Σ_k softmax(τ2 f)_k W_k), c the t factor."""
        c = self.scale(t)
        p = torch.softmax(tau2 * self(x, t), dim=1)
        return (c * (tau1 * self.W[labels] - tau2 * p @ self.W)).reshape(x.shape)


def guided_first_step(sampler, net, config, guidance, labels=LABELS, x=None):
    """x after diffguide's first step from x at T_STEP (schedule T_STEP → T_NEXT), and the step noise it used."""
    x = replayed_noise(13, 0)[0] if x is None else x
    z = replayed_noise(14, 0)[0]
    seen = []
    sampler(config.denoiser(net, [T_NEXT, T_STEP]), FixedNoise(x, torch.stack([z, z])), labels, guidance=guidance,
            callback=lambda r: seen.append(r.x_t.clone()))
    return x, z, seen[1]


def ddim_scheduler_step(eps, x):
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)  # T//N = 100: its step from 150 goes to 50
    return scheduler.step(eps, T_STEP, x).prev_sample, float(scheduler.alphas_cumprod[T_STEP])


def test_noise_aware_classifier_guidance_under_ddim_is_the_score_shift():
    """ε̃ = ε − sqrt(1 − ᾱ_t)·s·∇_x log p(y | x_t, t), then diffusers' own DDIM step on ε̃."""
    unet, s = tiny_unet(), 4.0
    net, config = adapt(unet, DDIMScheduler(clip_sample=False))
    classifier = LinearClassifier(noise_aware=True)
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x_t", scale=s))
    x, _, ours = guided_first_step(ddim, net, config, guidance)
    t = torch.full((2,), T_STEP)
    eps = unet(x, t).sample
    alpha_bar = DDIMScheduler().alphas_cumprod[T_STEP].double()
    eps_guided = eps - torch.sqrt(1 - alpha_bar) * s * classifier.log_likelihood_gradient(x, LABELS, t)
    expected, _ = ddim_scheduler_step(eps_guided, x)
    unguided, _ = ddim_scheduler_step(eps, x)
    assert relative_error(expected, unguided) > 1e-2  # the shift is large enough to see
    assert relative_error(ours, expected) < TOL


def test_noise_aware_classifier_guidance_under_ddpm_shifts_the_mean_by_sigma_times_gradient():
    """x_{t'} = μ̃ + Σ·s·∇ log p(y | x_t, t) + sqrt(Σ)·z (ADM's condition_mean), μ̃ + sqrt(Σ)·z from diffusers' step."""
    unet, s = tiny_unet(), 4.0
    scheduler = DDPMScheduler(clip_sample=False)
    net, config = adapt(unet, scheduler)
    classifier = LinearClassifier(noise_aware=True)
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x_t", scale=s), rule="mean")
    x, z, ours = guided_first_step(ddpm, net, config, guidance)
    scheduler.set_timesteps(timesteps=[T_STEP, T_NEXT])
    generator = torch.Generator().manual_seed(14)  # replays z
    t = torch.full((2,), T_STEP)
    unguided = scheduler.step(unet(x, t).sample, T_STEP, x, generator=generator).prev_sample
    variance = scheduler._get_variance(T_STEP).double()
    expected = unguided + variance * s * classifier.log_likelihood_gradient(x, LABELS, t)
    assert relative_error(ours, expected) < TOL


def test_off_the_shelf_classifier_guidance_on_x0_is_the_score_shift():
    """On x̂0 (EluCD): ε̃ = ε − sqrt(1 − ᾱ_t)·s·∇_{x̂0}[τ1 f_y − logsumexp(τ2 f)](x̂0), τ1 = 1, τ2 = 0.5 (the default)."""
    unet, s = tiny_unet(), 2.0
    net, config = adapt(unet, DDIMScheduler(clip_sample=False))
    classifier = LinearClassifier(noise_aware=False)
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x0", scale=s, softplus_beta=None))
    x, _, ours = guided_first_step(ddim, net, config, guidance)
    eps = unet(x, torch.full((2,), T_STEP)).sample
    alpha_bar = DDIMScheduler().alphas_cumprod[T_STEP].double()
    x0 = (x - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)
    grad = classifier.log_likelihood_gradient(x0, LABELS, tau1=1.0, tau2=0.5)
    expected, _ = ddim_scheduler_step(eps - torch.sqrt(1 - alpha_bar) * s * grad, x)
    assert relative_error(ours, expected) < TOL


@pytest.mark.parametrize("objective", ["tilted", "entropy", "reverse_kl", "forward_kl", "js", "hellinger"])
def test_every_objective_guides_a_diffusers_model_by_its_own_gradient(objective):
    """The other objectives: the same score shift, with ∇J taken by autograd of the objective at x̂0 (s = 30, so that
    each objective's step differs from the baseline's by > 1e-3 relative: a swapped objective fails)."""
    unet, s = tiny_unet(), 30.0
    net, config = adapt(unet, DDIMScheduler(clip_sample=False))
    classifier = LinearClassifier(noise_aware=False)
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x0", scale=s, softplus_beta=None,
                                                      objective=make_objective(objective)))
    x, _, ours = guided_first_step(ddim, net, config, guidance)
    eps = unet(x, torch.full((2,), T_STEP)).sample
    alpha_bar = DDIMScheduler().alphas_cumprod[T_STEP].double()
    x0 = ((x - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)).requires_grad_(True)
    step = SimpleNamespace(i=1, num_steps=2, num_train_timesteps=1000)  # the first of two steps
    (grad,) = torch.autograd.grad(make_objective(objective)(classifier(x0), LABELS, step).sum(), x0)
    expected, _ = ddim_scheduler_step(eps - torch.sqrt(1 - alpha_bar) * s * grad, x)
    assert relative_error(ours, expected) < TOL


def test_classifier_free_guidance_on_a_class_conditional_diffusers_model():
    """ε̃ = (1 + w)·ε(x, y) − w·ε(x, ∅), ∅ the named null label (the last class embedding)."""
    unet, w = tiny_unet(num_class_embeds=4), 2.0
    net, config = adapt(unet, DDIMScheduler(clip_sample=False), num_classes=3, null_label=3)
    x, _, ours = guided_first_step(ddim, net, config, Guidance(cfg=ClassifierFree(w=w)))
    t = torch.full((2,), T_STEP)
    eps_c = unet(x, t, class_labels=LABELS).sample
    eps_u = unet(x, t, class_labels=torch.full((2,), 3)).sample
    expected, _ = ddim_scheduler_step((1 + w) * eps_c - w * eps_u, x)
    assert relative_error(expected, ddim_scheduler_step(eps_c, x)[0]) > 1e-2
    assert relative_error(ours, expected) < TOL


def test_classifier_free_guidance_is_refused_without_a_null_label():
    unet = tiny_unet(num_class_embeds=4)
    net, config = adapt(unet, DDIMScheduler(clip_sample=False), num_classes=4)
    with pytest.raises(ValueError, match="no null label"):
        guided_first_step(ddim, net, config, Guidance(cfg=ClassifierFree(w=1.0)))


def test_schedule_respacing_by_an_explicit_timestep_list():
    """schedule.py's list form, which carries diffusers' timesteps: kept as given (sorted); bad lists refused."""
    from diffguide.schedule import NoiseSchedule, space_timesteps

    assert space_timesteps(10, [7, 1, 3]) == [1, 3, 7]
    base = named_betas("linear", 100)
    schedule = NoiseSchedule.from_betas(base, [7, 1, 3])
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - base)[[1, 3, 7]], rtol=1e-14)
    assert schedule.to_dict()["spacing"] == "timesteps:7,1,3"
    for bad in ([], [1, 1], [10], [-1], [1.5]):
        with pytest.raises(ValueError, match="^spacing: "):
            space_timesteps(10, bad)
