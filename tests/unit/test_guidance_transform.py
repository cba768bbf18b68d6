"""The guidance transform and the sampler grid: composition, state per run, identities between samplers, bad input."""

import math

import pytest
import torch
from torch import nn

from diffguide import (ClassifierFree, ClassifierGuidance, Denoiser, FixedNoise, Guidance, GuidedDenoiser,
                       NoiseSchedule, SeededNoise, ddim, ddpm, dpmpp_2m, euler, heun)
from diffguide.guidance import EluCDMeanShift, Interval, make_objective
from diffguide.samplers import SAMPLERS, sampler_options
from diffguide.toy import BayesClassifier, ExactEps, ExactNoisyClassifier, GaussianMixture, demo_mixture

MIX = demo_mixture()
EXACT = ExactEps(MIX)


def _noise(n=40, seed=2):
    return SeededNoise(seed, range(n), (2,), dtype=torch.float64)


def _denoiser(steps="25", net=EXACT, **kw):
    return Denoiser(net, NoiseSchedule.create("linear", steps), clip_x0=False, **kw)


def test_euler_is_ddim_with_eta_zero():
    """x̃_{i−1} = x̃_i + (σ_{i−1} − σ_i)·ε̂ and DDIM(η = 0) are the same map (x̃ = x_t/sqrt(ᾱ)); float64 rounding only."""
    labels = torch.arange(40) % 3
    guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX, 0.5), on="x0", softplus_beta=None))
    a = euler(_denoiser(), _noise(), labels, guidance=guidance).samples
    b = ddim(_denoiser(), _noise(), labels, guidance=guidance).samples
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_step_grid_equals_a_respaced_denoiser():
    full = Denoiser(EXACT, NoiseSchedule.create("linear"), clip_x0=False)
    labels = torch.arange(40) % 3
    a = ddpm(full, _noise(), labels, steps="10").samples
    b = ddpm(_denoiser("10"), _noise(), labels).samples
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        ddpm(_denoiser("10"), _noise(), labels, steps="20")  # not a subset of the 10 kept timesteps


class _WithNullLabel(nn.Module):
    """ε*(x, y) of the mixture; label 3 is the learned null label (unconditional ε*)."""

    null_label = 3

    def forward(self, x, t, y):
        conditional = EXACT(x, t, y.clamp(max=2))
        return torch.where((y == 3)[:, None], EXACT(x, t, None), conditional)


def test_cfg_batched_null_label_pass_equals_two_passes():
    labels = torch.arange(40) % 3
    batched = ddim(_denoiser(net=_WithNullLabel()), _noise(), labels, guidance=Guidance(cfg=ClassifierFree(w=1.5)))
    two = ddim(_denoiser(net=lambda x, t, y: EXACT(x, t, y)), _noise(), labels,
               guidance=Guidance(cfg=ClassifierFree(w=1.5)))
    torch.testing.assert_close(batched.samples, two.samples, rtol=0, atol=1e-12)


def test_cfg_outside_its_interval_is_the_conditional():
    labels = torch.arange(40) % 3
    off = Guidance(cfg=ClassifierFree(w=3.0, schedule=Interval(0.9995, 1.0)))  # u = t/T <= 0.999 at every step
    plain = ddim(_denoiser(), _noise(), labels).samples
    torch.testing.assert_close(ddim(_denoiser(), _noise(), labels, guidance=off).samples, plain, rtol=0, atol=1e-12)
    on = Guidance(cfg=ClassifierFree(w=3.0, schedule=Interval(0.0, 1.0)))
    assert (ddim(_denoiser(), _noise(), labels, guidance=on).samples - plain).abs().max() > 0.05


def test_score_shift_is_the_default_and_reaches_every_sampler():
    """The same guided ε̃ under DDPM's default rule: μ from x̂0(ε̃), i.e. ADM's condition_score, not Σ·g."""
    labels = torch.arange(40) % 3
    guidance = Guidance(classifier=ClassifierGuidance(ExactNoisyClassifier(MIX), on="x_t", scale=1.0))
    model = GuidedDenoiser(_denoiser(net=lambda x, t, y: EXACT(x, t, None)), guidance, labels)
    x = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    conditional = _denoiser()(x, 12, labels)
    torch.testing.assert_close(model(x, 12).eps, conditional.eps, rtol=0, atol=1e-10)  # exact p(y|x_t): ε̃ = ε*(x|y)
    torch.testing.assert_close(model(x, 12).mean, conditional.mean, rtol=0, atol=1e-10)


def test_mean_rule_refused_by_a_sampler_without_a_mean():
    guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX), on="x0", softplus_beta=None), rule="mean")
    with pytest.raises(ValueError, match="guidance.rule"):
        ddim(_denoiser(), _noise(4), torch.zeros(4, dtype=torch.long), guidance=guidance)


class _LearnedVariance(nn.Module):
    """ε = 0 and a v channel that varies over samples, so Σ differs between samples (learned range)."""

    def forward(self, x, t, y):
        return torch.cat([torch.zeros_like(x), torch.tanh(x)], 1)


def test_elucd_max_variance_rules():
    """'per_sample' is batch-invariant; 'elucd' (Σ of sample 0) is not, and both reset at every run."""
    net = _LearnedVariance()
    labels = torch.arange(6) % 3

    def run(max_variance, indices):
        guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX, 0.5), on="x0", softplus_beta=None),
                            rule=EluCDMeanShift(0.3, max_variance=max_variance))
        noise = SeededNoise(0, indices, (2,), dtype=torch.float64)
        return ddpm(_denoiser("8", net, variance="learned_range"), noise, labels[list(indices)],
                    guidance=guidance).samples

    whole = run("per_sample", range(6))
    torch.testing.assert_close(torch.cat([run("per_sample", range(3)), run("per_sample", range(3, 6))]), whole)
    elucd = run("elucd", range(6))
    assert (torch.cat([run("elucd", range(3)), run("elucd", range(3, 6))]) - elucd).abs().max() > 1e-6
    torch.testing.assert_close(run("elucd", range(6)), elucd, rtol=0, atol=0)  # fresh Σ_max each run


def test_registry_options():
    assert sampler_options("ddim") == {"eta": 0.0}
    assert sampler_options("ddpm") == {}
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "heun", "dpmpp_2m"}
    with pytest.raises(ValueError, match="sampler"):
        sampler_options("lms")


@pytest.mark.parametrize("make, error, name", [
    (lambda: Denoiser("x", NoiseSchedule.create("linear", "5")), TypeError, "net"),
    (lambda: Denoiser(EXACT, "linear"), TypeError, "schedule"),
    (lambda: ClassifierGuidance("resnet"), TypeError, "classifier"),
    (lambda: Guidance(classifier=BayesClassifier(MIX)), TypeError, "classifier"),
    (lambda: Guidance(cfg=1.5), TypeError, "cfg"),
    (lambda: Guidance(rule="sine"), ValueError, "rule"),
    (lambda: ClassifierGuidance(BayesClassifier(MIX), softplus_beta=0.0), ValueError, "softplus_beta"),
    (lambda: ClassifierGuidance(BayesClassifier(MIX), softplus_beta=-3.0), ValueError, "softplus_beta"),
    (lambda: ClassifierGuidance(BayesClassifier(MIX), softplus_beta=math.inf), ValueError, "softplus_beta"),
    (lambda: ClassifierGuidance(BayesClassifier(MIX), objective="kl"), ValueError, "objective"),
    (lambda: ClassifierGuidance(BayesClassifier(MIX), objective=3), TypeError, "objective"),
    (lambda: make_objective("baseline", tau2=-1), ValueError, "tau2"),
    (lambda: make_objective("baseline", tau1=-0.5), ValueError, "tau1"),
    (lambda: make_objective("baseline", tau2=0.5, discount=0.5), ValueError, "discount"),
    (lambda: ClassifierFree(w=1.0, null_label=1.5), ValueError, "null_label"),
])
def test_bad_input_names_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_objective_by_name_and_discount():
    by_name = ClassifierGuidance(BayesClassifier(MIX), objective="js")
    assert by_name.objective == make_objective("js")
    assert make_objective("baseline", tau1=2.0, discount=0.25) == make_objective("baseline", tau1=2.0, tau2=0.5)


GAUSSIAN = GaussianMixture(torch.tensor([[0.5]]), torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0]))


def _ode_error(sampler, n, **options):
    """max |x̃(σ_0) − exact| on one Gaussian N(0.5, 0.5²), whose probability-flow ODE keeps (x̃ − μ)/sqrt(s² + σ²)
    constant; measured at the last grid point σ_0 (before the final jump to σ = 0, whose size does not shrink)."""
    schedule = NoiseSchedule.create("linear", str(n))
    x_T = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    records = []
    sampler(Denoiser(lambda x, t, y: ExactEps(GAUSSIAN)(x, t), schedule, clip_x0=False),
            FixedNoise(x_T, torch.zeros(n, 9, 1, dtype=torch.float64)), callback=records.append, **options)
    alpha_bar = schedule.alphas_cumprod
    sigma_T, sigma_0 = (math.sqrt((1 - alpha_bar[k]) / alpha_bar[k]) for k in (-1, 0))
    exact = 0.5 + (x_T * math.sqrt(1 + sigma_T**2) - 0.5) * math.sqrt(0.25 + sigma_0**2) / math.sqrt(0.25 + sigma_T**2)
    return float((records[-1].x_t * math.sqrt(1 + sigma_0**2) - exact).abs().max())


@pytest.mark.parametrize("sampler, options, order", [(euler, {}, 1), (heun, {}, 2),
                                                     (dpmpp_2m, {"lower_order_final": False}, 2)])
def test_ode_solvers_converge_at_their_order(sampler, options, order):
    """Halving the steps divides the error by 2^order (measured at 100 → 200 steps: 2.00, 4.02, 4.00); the window
    ±12 % of 2^order separates first from second order. DPM-Solver++(2M)'s default first-order step onto the last grid
    point trades this clean order for a 5–8x smaller error at 25–50 steps."""
    ratio = _ode_error(sampler, 100, **options) / _ode_error(sampler, 200, **options)
    assert abs(ratio / 2**order - 1) < 0.12, ratio


def test_raw_x0_preprocess_is_the_identity(monkeypatch):
    """--x0-preprocess raw: the classifier sees x̂0 itself (EluCD), not the weights' range/normalisation/resize."""
    import diffguide.api as api
    from diffguide.classifiers import ImageClassifier, Preprocess

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    weights_preprocess = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), size=32, resize=True)
    monkeypatch.setattr(api, "load_guidance_classifier",
                        lambda spec, preset, device: (ImageClassifier(net, weights_preprocess), "x0"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    own = api._guidance(api.SampleSettings(model="unused", x0_classifier="any"), "cpu").classifier.classifier
    assert (own(x) - net(x)).abs().max() > 1e-3  # normalised and resized
    raw = api._guidance(api.SampleSettings(model="unused", x0_classifier="any", x0_preprocess="raw"), "cpu")
    torch.testing.assert_close(raw.classifier.classifier(x), net(x))
    with pytest.raises(ValueError, match="x0_preprocess"):
        api.SampleSettings(model="unused", x0_preprocess="imagenet")
    with pytest.raises(ValueError, match="x0_preprocess"):
        api.SampleSettings(model="unused", x0_preprocess="raw")  # no --x0-classifier to apply it to
