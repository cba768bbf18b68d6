"""Whole guided sampling loops of guided-diffusion, reproduced step by step by the core (Denoiser + Guidance +
samplers) with the fixture networks: DDPM 'linear/10' with guidance on the mean, DDIM 'cosine/ddim10' (η = 0) with
guidance on the score; learned-range variance, clipped x̂0, classifier gradient × 30 at the original timestep.

Tolerance, derived per step i (not one number for the whole loop). The reference vectors are a float32 computation; so
is ours. Both differ from the exact result of the same semantics by their own rounding, so

    |ours32 − ref32| ≤ |ours32 − exact| + |ref32 − exact|.

``exact`` is our loop run in float64 (its own rounding, ~1e-16 relative, is negligible). |ours32 − exact| is measured
(``own``); the reference's rounding is of the same kind but happens in another operation order, so it is bounded by a
factor 4 of ours (the measured ratio is at most 1.9 over all 80 steps of the four loops) plus the irreducible
cancellation of x̂0 = c1·x_t − c2·ε with c1 = sqrt(1/ᾱ_t), c2 = sqrt(1/ᾱ_t − 1): at t = 999 of the linear schedule
c1·max|x_t| ≈ 157·4.4 ≈ 700, so a one-ulp difference in either product (u = 2^-24 relative) is 4e-5 in a value of
about 1 — which CPU vector paths do produce differently (issue 9: 2.4e-4 seen at that step on an AVX-512 machine). We
allow K = 16 such roundings per step:

    tol_i = 5·own_i + 16·u·(c1_i·max|x_t| + c2_i·max|ε|)

The same bound holds for the step's output x_{t−1} (its x̂0 coefficient in the posterior mean is ≤ 1). A real
semantic error is orders of magnitude above it: the last test runs three (wrong QKV order, respaced instead of original
timestep for the classifier, wrong variance) and requires each to exceed the bound by at least 10x at some step.
"""

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from diffguide import ClassifierGuidance, Denoiser, FixedNoise, Guidance, NoiseSchedule, ddim, ddpm
from diffguide.checkpoints import NetworkConfig, load_adm_checkpoint
from diffguide.guidance.objectives import LogLikelihood

LOOPS = [(unet, schedule, respacing) for unet in ("unet_legacy_attn", "unet_new_attn")
         for schedule, respacing in (("linear", "10"), ("cosine", "ddim10"))]
UNIT_ROUNDOFF = 2.0**-24  # float32
CANCELLATION_ROUNDINGS = 16
REFERENCE_ROUNDING_FACTOR = 4  # the reference's own float32 error, relative to ours (measured: at most 1.9)


@pytest.fixture(scope="module")
def manifest():
    return json.loads(shared_path("fixtures/guided-diffusion/manifest.json").read_text())


def load(manifest, case, dtype=torch.float32, **override):
    spec = manifest["cases"][case]
    path = shared_path(f"fixtures/guided-diffusion/{spec['state_dict']}")
    return load_adm_checkpoint(path, NetworkConfig(kind=spec["kind"], kwargs={**spec["config"], **override})).to(dtype)


def run_loop(manifest, vectors, unet, schedule, respacing, dtype=torch.float32, *, unet_override=None,
             classifier_wrapper=None, net_wrapper=None, variance="learned_range"):
    """The loop's per-step x̂0, outputs x_{t−1}, inputs x_t and ε, as float64 arrays [10, ...]."""
    key = f"sample/{unet}/{schedule}/{respacing}"
    tensor = lambda name: torch.tensor(vectors[f"{key}/{name}"], dtype=dtype)  # noqa: E731
    net = load(manifest, unet, dtype, **(unet_override or {}))
    if net_wrapper is not None:
        net = net_wrapper(net)
    classifier = load(manifest, "classifier", dtype)
    if classifier_wrapper is not None:
        classifier = classifier_wrapper(classifier)
    denoiser = Denoiser(net, NoiseSchedule.create(schedule, respacing), variance=variance, clip_x0=True,
                        num_classes=10)
    guidance = Guidance(classifier=ClassifierGuidance(classifier, on="x_t", objective=LogLikelihood(1.0, 1.0),
                                                      scale=30.0),
                        rule="mean" if respacing == "10" else "score")  # ADM: condition_mean / condition_score
    sampler = ddpm if respacing == "10" else ddim
    records = []
    out = sampler(denoiser, FixedNoise(tensor("x_T"), tensor("noise")), torch.tensor(vectors[f"{key}/y"]),
                  guidance=guidance, callback=records.append)
    assert len(records) == 10
    as_np = lambda t: t.double().numpy()  # noqa: E731
    x0 = np.stack([as_np(r.x0) for r in records])
    x_in = np.stack([as_np(r.x_t) for r in records])
    samples = np.stack([as_np(r.x_t) for r in records[1:]] + [as_np(out.samples)])
    return x0, samples, x_in


def step_max(a, b):
    return np.abs(a - b).reshape(len(a), -1).max(1)


def cancellation_scale(schedule, respacing, x_in, x0):
    """c1·max|x_t| + c2·max|ε| per step, in loop order (first entry: the noisiest step)."""
    alpha_bar = NoiseSchedule.create(schedule, respacing).alphas_cumprod[::-1]
    c1, c2 = np.sqrt(1 / alpha_bar), np.sqrt(1 / alpha_bar - 1)
    x_max = np.abs(x_in).reshape(10, -1).max(1)
    eps = (c1[:, None] * x_in.reshape(10, -1) - x0.reshape(10, -1)) / np.maximum(c2[:, None], 1e-12)
    return c1 * x_max + c2 * np.abs(eps).max(1)


@pytest.fixture(scope="module")
def exact_loops(manifest, vectors):
    """Our loops in float64 (the 'exact' result of our semantics) and in float32, for every case."""
    return {case: (run_loop(manifest, vectors, *case, torch.float64), run_loop(manifest, vectors, *case))
            for case in LOOPS}


def tolerances(case, exact, ours):
    (x0_64, s_64, x_in64), (x0_32, s_32, _) = exact, ours
    scale = CANCELLATION_ROUNDINGS * UNIT_ROUNDOFF * cancellation_scale(case[1], case[2], x_in64, x0_64)
    factor = 1 + REFERENCE_ROUNDING_FACTOR
    return factor * step_max(x0_32, x0_64) + scale, factor * step_max(s_32, s_64) + scale


@pytest.mark.parametrize("unet, schedule, respacing", LOOPS)
def test_guided_loop_matches_guided_diffusion(exact_loops, vectors, unet, schedule, respacing):
    case = (unet, schedule, respacing)
    key = f"sample/{unet}/{schedule}/{respacing}"
    exact, ours = exact_loops[case]
    tol_x0, tol_samples = tolerances(case, exact, ours)
    x0_error = step_max(ours[0], vectors[f"{key}/pred_xstart"])
    sample_error = step_max(ours[1], vectors[f"{key}/samples"])
    # The reference itself against our semantics in float64: the reference's own rounding only.
    reference_rounding = step_max(vectors[f"{key}/pred_xstart"], exact[0])
    print(f"{key}: max |x0 error| {x0_error.max():.3g} (worst step at {(x0_error / tol_x0).max():.2f} of its "
          f"bound), max |sample error| {sample_error.max():.3g} ({(sample_error / tol_samples).max():.2f})")
    assert np.all(x0_error <= tol_x0), (x0_error, tol_x0)
    assert np.all(sample_error <= tol_samples), (sample_error, tol_samples)
    assert np.all(reference_rounding <= tol_x0), (reference_rounding, tol_x0)


def _respaced_timestep(schedule, respacing):
    """A classifier wrapper that sees the respaced step index instead of the original timestep (a real bug)."""
    kept = torch.as_tensor(NoiseSchedule.create(schedule, respacing).timesteps)

    def wrap(classifier):
        return lambda x, t: classifier(x, torch.searchsorted(kept, t.contiguous()))
    return wrap


def _fixed_small_variance(net):
    """The network's learned-variance channels dropped: Σ = fixed small instead of learned range (a real bug)."""
    return lambda x, t, y: net(x, t, y)[:, :3]


@pytest.mark.parametrize("unet, schedule, respacing", LOOPS)
def test_the_bound_catches_semantic_errors(manifest, vectors, exact_loops, unet, schedule, respacing):
    case = (unet, schedule, respacing)
    key = f"sample/{unet}/{schedule}/{respacing}"
    tol_x0, tol_samples = tolerances(case, *exact_loops[case])
    legacy = manifest["cases"][unet]["config"]["use_new_attention_order"] is False
    errors = {"wrong QKV order": dict(unet_override={"use_new_attention_order": legacy}),
              "respaced timestep for the classifier": dict(classifier_wrapper=_respaced_timestep(schedule, respacing))}
    if respacing == "10":  # the variance enters the ancestral step only (DDIM with η = 0 does not use it)
        errors["fixed-small instead of learned-range variance"] = dict(net_wrapper=_fixed_small_variance,
                                                                       variance="fixed_small")
    for name, kwargs in errors.items():
        x0, samples, _ = run_loop(manifest, vectors, *case, **kwargs)
        worst = max((step_max(x0, vectors[f"{key}/pred_xstart"]) / tol_x0).max(),
                    (step_max(samples, vectors[f"{key}/samples"]) / tol_samples).max())
        print(f"{key}: {name}: worst step at {worst:.3g}x the bound")
        assert worst > 10, f"{name} is not caught by the bound ({worst:.2f}x)"
