"""EluCD's own guided DDPM loop (AlexMaOLS/EluCD, DDPM/guided_diffusion/gaussian_diffusion.py ``p_sample`` with the
guidance of DDPM/scripts/classifier_sample.py), reproduced step by step: tiny random class-conditional ADM UNet with
learned-range variance (Σ differs per element), off-the-shelf conv classifier with Softplus(β), γ > 0, three settings.
Vectors recorded by scripts/make_elucd_fixture.py (EluCD's code is not in this repository).

Tolerance, relative per step: max|ours − EluCD| / max|EluCD|. Both loops are float32 (ADM's UNet casts to float32;
unit roundoff u = 6e-8). Each step's output x_{i−1} (the loop's state) must agree to 1e-5 at every step. x̂0 =
sqrt(1/ᾱ)·x_t − sqrt(1/ᾱ − 1)·ε cancels: at the noisiest steps sqrt(1/ᾱ) ≈ 100–157, so a one-ulp difference in either
product (other CPU vector paths, other operation order) is u·sqrt(1/ᾱ)·max|x_t| ≈ 2e-5 absolute on values of at most
1; x̂0 gets 1e-5 plus K = 4 such roundings at each step. A real error is far above both: without the sine bump the
outputs differ by 0.9–16 %, with EluCD's bump as a per-sample multiplier (diffguide's earlier rule) by far more than
the tolerance (both checked at the end).
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffguide import ClassifierGuidance, Denoiser, FixedNoise, Guidance, NoiseSchedule, ddpm
from diffguide.checkpoints import NetworkConfig
from diffguide.guidance import EluCDMeanShift, make_objective
from diffguide.guidance.rules import sine_bump

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "elucd" / "elucd_ddpm.npz"
UNET = dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=[1],
            dropout=0.0, channel_mult=[1], num_classes=4, use_checkpoint=False, num_heads=2, num_head_channels=-1,
            num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False)
RELATIVE = 1e-5
UNIT_ROUNDOFF = 2.0**-24
CANCELLATION_ROUNDINGS = 4


@pytest.fixture(scope="module")
def vectors():
    with np.load(FIXTURE) as data:
        return dict(data)


def _weights(vectors, prefix):
    return {k[len(prefix) + 1:]: torch.from_numpy(v) for k, v in vectors.items() if k.startswith(prefix + "/")}


@pytest.fixture(scope="module")
def networks(vectors):
    unet = NetworkConfig(kind="UNetModel", kwargs=UNET).build()
    unet.load_state_dict(_weights(vectors, "unet"))
    classifier = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    classifier.load_state_dict(_weights(vectors, "classifier"))
    return unet.eval(), classifier


CASES = ["case0", "case1", "case2"]


def _run(vectors, networks, case, rule):
    setting = {k.rsplit("/", 1)[1]: vectors[k].item() for k in vectors if k.startswith(f"{case}/setting/")}
    unet, classifier = networks
    denoiser = Denoiser(unet, NoiseSchedule.create("linear", setting["respacing"]), variance="learned_range",
                        clip_x0=True, num_classes=4)
    objective = make_objective("baseline", tau1=setting["tau1"], discount=setting["discount"])
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x0", objective=objective, scale=setting["scale"],
                                                      softplus_beta=setting["beta"]),
                        rule=rule(setting["gamma"]))
    tensor = lambda name: torch.from_numpy(vectors[f"{case}/{name}"])  # noqa: E731
    records = []
    out = ddpm(denoiser, FixedNoise(tensor("x_T"), tensor("noise")), tensor("y"), guidance=guidance,
               callback=records.append)
    x0 = np.stack([r.x0.double().numpy() for r in records])
    samples = np.stack([r.x_t.double().numpy() for r in records[1:]] + [out.samples.double().numpy()])
    c1 = np.sqrt(1 / denoiser.schedule.alphas_cumprod[::-1])  # loop order: the noisiest step first
    x_max = np.array([float(r.x_t.abs().max()) for r in records])
    return x0, samples, RELATIVE + CANCELLATION_ROUNDINGS * UNIT_ROUNDOFF * c1 * x_max


def _relative(ours, reference):
    n = len(reference)
    return np.abs(ours - reference).reshape(n, -1).max(1) / np.abs(reference).reshape(n, -1).max(1)


@pytest.mark.parametrize("case", CASES)
def test_elucd_loop_reproduced_per_step(vectors, networks, case):
    x0, samples, x0_tolerance = _run(vectors, networks, case, lambda gamma: EluCDMeanShift(gamma, max_variance="elucd"))
    x0_error = _relative(x0, vectors[f"{case}/pred_xstart"])
    sample_error = _relative(samples, vectors[f"{case}/samples"])
    print(f"{case}: per-step relative error: x0 max {x0_error.max():.2e} (worst at {(x0_error / x0_tolerance).max():.2f}"
          f" of its bound), samples max {sample_error.max():.2e}; samples per step "
          f"{np.array2string(sample_error, precision=1, max_line_width=400)}")
    assert np.all(x0_error <= x0_tolerance), (x0_error, x0_tolerance)
    assert sample_error.max() <= RELATIVE, sample_error


class _MultiplicativeBump(EluCDMeanShift):
    """diffguide's earlier reading of EluCD: mean += Σ·((Σ̄ + a_i)/Σ̄)·g with Σ̄ the sample's mean variance."""

    def apply(self, denoiser, pred, x, i, grad, state):
        mean_variance = pred.variance.flatten(1).mean(1).reshape(-1, 1, 1, 1)
        bump = sine_bump(i, len(denoiser.schedule), state.first_element, self.gamma)
        return replace(pred, mean=pred.mean + pred.variance * ((mean_variance + bump) / mean_variance) * grad)


@pytest.mark.parametrize("case", CASES)
def test_fixture_tells_wrong_rules_apart(vectors, networks, case):
    """The vectors catch a missing sine bump and a multiplicative bump by far more than the tolerance."""
    for rule, factor in ((lambda gamma: EluCDMeanShift(0.0, max_variance="elucd"), 100),
                         (lambda gamma: _MultiplicativeBump(gamma, max_variance="elucd"), 10)):
        _, samples, _ = _run(vectors, networks, case, rule)
        error = _relative(samples, vectors[f"{case}/samples"]).max()
        print(f"{case}: {rule(0.3)}: {error:.2e}")
        assert error > factor * RELATIVE
