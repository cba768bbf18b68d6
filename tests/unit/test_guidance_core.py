"""Guidance parts: where the classifier looks, schedules, Softplus substitution, CFG conventions, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from diffguide import ClassifierFree, ClassifierGuidance, Denoiser, Guidance, NoiseSchedule, SeededNoise, ddim, ddpm
from diffguide.adapter import Prediction
from diffguide.guidance import (Constant, EluCDMeanShift, GuidanceStep, Interval, SineBump, SoftplusForReLU,
                                make_schedule)
from diffguide.guidance.rules import VarianceState
from diffguide.guidance.objectives import LogLikelihood
from diffguide.samplers import NonFiniteGuidanceError
from diffguide.toy import ExactEps, demo_mixture


def _step(i=5, num_steps=10, variance=0.1, max_variance=0.4, x0=None, t=None, batch=3):
    x = torch.zeros(batch, 2, dtype=torch.float64)
    var = torch.full_like(x, variance)
    pred = Prediction(eps=x, x0=x if x0 is None else x0, variance=var, log_variance=var.log(), mean=x)
    t = torch.full((batch,), 500) if t is None else t
    return GuidanceStep(i=i, num_steps=num_steps, num_train_timesteps=1000, t=t, x_t=x, prediction=pred,
                        labels=torch.zeros(batch, dtype=torch.long),
                        max_variance=torch.full((batch,), max_variance, dtype=torch.float64))


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 4)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.lin(x))
        h = F.relu(h - 0.1) + torch.relu(h) + h.relu()
        return self.out(h)


def test_softplus_replaces_module_and_functional_relus():
    torch.manual_seed(0)
    net = _Mixed().double()
    x = torch.randn(5, 2, dtype=torch.float64)
    with SoftplusForReLU(beta=3.0):
        got = net(x)
    h = F.softplus(net.lin(x), beta=3.0)
    expected = net.out(F.softplus(h - 0.1, beta=3.0) + 2 * F.softplus(h, beta=3.0))
    torch.testing.assert_close(got, expected)
    # outside the context ReLUs are ReLUs again
    h = torch.relu(net.lin(x))
    torch.testing.assert_close(net(x), net.out(F.relu(h - 0.1) + 2 * h))


def test_sine_bump_is_a_strength_on_the_noise_level():
    """w(u) = 1 + γ·max(sin(π·u), 0) with u = t/T (not i/T′: here i/T′ = 0.3 and t/T = 0.5, 0.1, 0.9)."""
    w = SineBump(0.3)(_step(i=3, num_steps=10, t=torch.tensor([500, 100, 900])))
    expected = 1 + 0.3 * torch.sin(math.pi * torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64))
    torch.testing.assert_close(w, expected)


def test_elucd_rule_is_elucd_formula():
    """EluCD's ancestral rule on one step: mean += (Σ_i + a_i)·g with a_i = max(sin(π·i/T′)·Σ_max·γ, 0) added to
    every element of Σ; per-sample Σ_max by default, EluCD's single number (sample 0, first element) by name."""
    step = _step(i=3, num_steps=10, variance=0.1, batch=2)
    variance = torch.tensor([[0.1, 0.2], [0.05, 0.3]], dtype=torch.float64)
    pred = Prediction(eps=step.x_t, x0=step.x_t, variance=variance, log_variance=variance.log(),
                      mean=torch.ones(2, 2, dtype=torch.float64))
    grad = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    state = VarianceState(per_sample=torch.tensor([0.4, 0.6], dtype=torch.float64),
                          first_element=torch.tensor(0.25, dtype=torch.float64))
    sin = math.sin(math.pi * 3 / 10)
    denoiser = Denoiser(lambda x, t, y: x, NoiseSchedule.create("linear", "10"), clip_x0=False)
    got = EluCDMeanShift(0.3).apply(denoiser, pred, step.x_t, 3, grad, state).mean
    a = torch.tensor([[sin * 0.4 * 0.3], [sin * 0.6 * 0.3]], dtype=torch.float64)
    torch.testing.assert_close(got, 1 + (variance + a) * grad)
    got = EluCDMeanShift(0.3, max_variance="elucd").apply(denoiser, pred, step.x_t, 3, grad, state).mean
    torch.testing.assert_close(got, 1 + (variance + sin * 0.25 * 0.3) * grad)
    with pytest.raises(ValueError, match="max_variance"):
        EluCDMeanShift(0.3, max_variance="sample0")


def test_interval_schedule():
    t = torch.tensor([100, 500, 900])
    w = Interval(0.2, 0.6)(_step(t=t))
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="start <= stop"):
        Interval(0.7, 0.2)
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("cosine")


def test_x0_guidance_gradient_is_gradient_wrt_x0():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype=torch.float64)
    classifier = lambda x: x @ w  # noqa: E731
    x0 = torch.randn(3, 2, dtype=torch.float64)
    step = _step(x0=x0)
    step.labels = torch.tensor([0, 1, 2])
    guidance = ClassifierGuidance(classifier, on="x0", scale=2.0, objective=LogLikelihood(1.0, 0.5))
    x = x0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(LogLikelihood(1.0, 0.5)(x @ w, step.labels).sum(), x)
    torch.testing.assert_close(guidance.gradient(step), 2.0 * expected)


@pytest.mark.parametrize("max_variance", ["per_sample", "elucd"])
def test_ddpm_mean_shift_uses_elucd_rule(max_variance):
    """Every DDPM step with EluCD's rule moves the mean by (Σ_i + a_i)·s·g exactly (Σ_max running from the first step,
    i/T′ axis); with a fixed variance both Σ_max rules agree."""
    mix = demo_mixture()
    schedule = NoiseSchedule.create("linear", "10")
    denoiser = Denoiser(lambda x, t, y: ExactEps(mix)(x, t, None), schedule, clip_x0=False)
    grad_const = torch.tensor([0.3, -0.2], dtype=torch.float64)

    class ConstantGradient(nn.Module):
        def forward(self, x):  # J = x·c  ->  ∇J = c
            return torch.stack([x @ grad_const, torch.zeros(len(x), dtype=x.dtype)], 1)

    objective = lambda logits, labels, step: logits[:, 0]  # noqa: E731
    records = []
    guided = Guidance(classifier=ClassifierGuidance(ConstantGradient(), on="x0", scale=1.5, objective=objective,
                                                    softplus_beta=None),
                      rule=EluCDMeanShift(0.3, max_variance=max_variance))
    out = ddpm(denoiser, SeededNoise(0, range(2), (2,), dtype=torch.float64), torch.zeros(2, dtype=torch.long),
               guidance=guided, callback=records.append)
    replay = SeededNoise(0, range(2), (2,), dtype=torch.float64)
    replay.initial()
    var = schedule.posterior_variance
    running_max = 0.0
    outputs = [r.x_t for r in records[1:]] + [out.samples]
    for record, x_next in zip(records, outputs):
        i = record.i
        running_max = max(running_max, var[i])
        a = max(math.sin(math.pi * i / 10) * running_max * 0.3, 0)
        unguided = denoiser(record.x_t, i)
        z = replay.step(i)
        expected = unguided.mean + (var[i] + a) * 1.5 * grad_const + (math.sqrt(var[i]) * z if i > 0 else 0)
        torch.testing.assert_close(x_next, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(record.guidance_grad, (1.5 * grad_const).expand(2, 2))


def test_cfg_conventions():
    assert ClassifierFree(w=2.0).weight == 2.0
    assert ClassifierFree(guidance_scale=7.5).weight == 6.5
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierFree(w=1.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="finite"):
        ClassifierFree(w=float("nan"))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "2"])
def test_guidance_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match="scale"):
        ClassifierGuidance(lambda x: x, scale=scale)


def test_on_must_be_known():
    with pytest.raises(ValueError, match="on"):
        ClassifierGuidance(lambda x: x, on="xt")


def _toy_denoiser(steps="5"):
    mix = demo_mixture()
    return Denoiser(lambda x, t, y: ExactEps(mix)(x, t, None), NoiseSchedule.create("linear", steps), clip_x0=False,
                    num_classes=3)


class _NaNForSample(nn.Module):
    """Logits that are NaN for batch position 2 at every step."""

    def forward(self, x):
        factor = torch.ones_like(x)
        factor[2] = float("nan")
        x = x * factor
        return torch.stack([x[:, 0], x[:, 1], -x[:, 0]], 1)


class _HostReads(TorchFunctionMode):
    """Counts the tensor operations that read values on the host (on a GPU each one waits for the device)."""

    READS = {Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.nonzero,
             torch.nonzero, Tensor.cpu, Tensor.numpy, Tensor.unique, torch.unique}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 3).double()

    def forward(self, x):
        return self.lin(x)


class _NoiseAwareLinear(_Linear):
    def forward(self, x, t):
        return self.lin(x) * (1 - t[:, None] / 1000)


@pytest.mark.parametrize("sampler, rule", [(ddpm, "score"), (ddpm, "mean"), (ddpm, "elucd"), (ddim, "score")])
@pytest.mark.parametrize("on, objective, schedule", [("x0", "baseline", "constant"), ("x0", "reverse_kl", "sine"),
                                                     ("x0", "js", "constant"), ("x0", "tilted", "constant"),
                                                     ("x0", "entropy", "constant"), ("x_t", None, "constant")])
def test_a_guided_step_reads_nothing_on_the_host(sampler, rule, on, objective, schedule):
    """The issue's CUDA-graph precondition: no host synchronisation inside a sampler step. The host reads of a run
    (labels checked once, the non-finite count read at the end) do not grow with its number of steps."""
    counts = []
    for steps in ("5", "10"):
        classifier = ClassifierGuidance(_Linear() if on == "x0" else _NoiseAwareLinear(), on=on, objective=objective,
                                        schedule=schedule, scale=0.5)
        guidance = Guidance(classifier=classifier, rule=rule)
        noise = SeededNoise(0, range(4), (2,), dtype=torch.float64)
        with _HostReads() as mode:
            out = sampler(_toy_denoiser(steps), noise, torch.tensor([0, 1, 2, 0]), guidance=guidance)
        assert torch.isfinite(out.samples).all() and out.nonfinite_zeroed == 0
        counts.append(len(mode.reads))
    assert counts[0] == counts[1], counts


def test_a_sample_call_reads_nothing_on_the_host_per_step(monkeypatch, tmp_path):
    """The same through ``sample()`` as the CLI runs it: the CIFAR model's network (its learned null label) under
    CFG (w = 1) and an x̂0 classifier, DDIM with 2 and with 4 steps: as many host reads either way. The network's
    own label check reads values only where that is free (``host_read_is_free``: on the CPU); here it is told it is
    not, as on a GPU."""
    import diffguide.api as api
    import diffguide.nets.small_unet as small_unet
    from diffguide.checkpoints import save_network
    from diffguide.classifiers import ImageClassifier, Preprocess
    from diffguide.nets.small_unet import SmallUNet

    monkeypatch.setattr(small_unet, "host_read_is_free", lambda tensor: False)
    torch.manual_seed(0)
    guide = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    monkeypatch.setattr(api, "load_guidance_classifier",
                        lambda spec, preset, device: (ImageClassifier(guide, Preprocess(), num_classes=10), "x0"))
    net = SmallUNet(image_size=8, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=(2,),
                    channel_mult=(1, 2), num_classes=10, num_head_channels=16, use_scale_shift_norm=True).eval()
    save_network(net, tmp_path / "model", schedule="linear")
    counts = []
    for steps in ("ddim2", "ddim4"):
        with _HostReads() as mode:
            api.sample(model=str(tmp_path / "model"), num_samples=2, batch_size=2, sampler="ddim", steps=steps,
                       labels="balanced", progress=False, fast=False, device="cpu", cfg_w=1.0,
                       x0_classifier="cifar-resnet:g.th", classifier_scale=1.0)
        counts.append(len(mode.reads))
    assert counts[0] == counts[1], counts


def test_nonfinite_gradient_raises_with_step_and_sample():
    guidance = Guidance(classifier=ClassifierGuidance(_NaNForSample(), on="x0", objective=lambda l, y, s: l[:, 0]))
    noise = SeededNoise(0, range(4), (2,), dtype=torch.float64)
    with pytest.raises(NonFiniteGuidanceError, match=r"step 4 for samples \[2\]"):
        ddpm(_toy_denoiser(), noise, torch.zeros(4, dtype=torch.long), guidance=guidance)


def test_nonfinite_gradient_zeroed_and_counted():
    guidance = Guidance(classifier=ClassifierGuidance(_NaNForSample(), on="x0", objective=lambda l, y, s: l[:, 0]))
    noise = SeededNoise(0, range(4), (2,), dtype=torch.float64)
    out = ddim(_toy_denoiser(), noise, torch.zeros(4, dtype=torch.long), guidance=guidance, on_nonfinite="zero")
    assert out.nonfinite_zeroed == 5  # one sample at each of 5 steps
    assert torch.isfinite(out.samples).all()


def test_labels_out_of_range():
    noise = SeededNoise(0, range(2), (2,), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        ddpm(_toy_denoiser(), noise, torch.tensor([0, 3]))


def test_labels_wrong_shape():
    noise = SeededNoise(0, range(2), (2,), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"labels: expected shape \[2\]"):
        ddpm(_toy_denoiser(), noise, torch.tensor([[0, 1]]))


def test_network_output_shape_checked():
    denoiser = Denoiser(lambda x, t, y: x[:, :1], NoiseSchedule.create("linear", "5"), clip_x0=False)
    with pytest.raises(ValueError, match="network output"):
        ddpm(denoiser, SeededNoise(0, range(2), (2,), dtype=torch.float64))


def test_classifier_guidance_needs_labels():
    guidance = Guidance(classifier=ClassifierGuidance(lambda x: x, on="x0"))
    with pytest.raises(ValueError, match="labels"):
        ddpm(_toy_denoiser(), SeededNoise(0, range(2), (2,), dtype=torch.float64), None, guidance=guidance)


def test_constant_schedule_and_zero_scale_is_unguided():
    mix = demo_mixture()
    from diffguide.toy import ExactNoisyClassifier

    labels = torch.tensor([0, 1, 2])
    zero = Guidance(classifier=ClassifierGuidance(ExactNoisyClassifier(mix), on="x_t", scale=0.0, schedule=Constant()))
    a = ddpm(_toy_denoiser(), SeededNoise(3, range(3), (2,), dtype=torch.float64), labels, guidance=zero).samples
    b = ddpm(_toy_denoiser(), SeededNoise(3, range(3), (2,), dtype=torch.float64), labels).samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)
