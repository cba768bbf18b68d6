"""The contract of the sampler registry on the exact Gaussian-mixture testbed: every registered sampler runs under
every guidance family × objective × schedule × update rule, and every sampler reaches the exact conditional where the
score is exact. A sampler added to ``SAMPLERS`` is checked here without editing this file (at 100 steps unless it is
listed as a higher-order method below).

Margin. At N = 2000 samples the exact-vs-exact sliced-Wasserstein distance has mean m ≈ 0.107 and std σ ≈ 0.032 over
10 repeats (``exact_distance_spread``; σ/m barely changes with N), so 1.5·m = m + 1.7σ: a perfect sampler's distance is
one more draw of that distribution and lands below it (the seeds are fixed, so the outcome is too), while a sampler
off by half the floor does not — 10-step DDPM (≈ 1.8·m), 10-step DDIM (≈ 1.7·m) and the over-guided control below
(s = 2) all fail it.
"""

import pytest
import torch

from diffguide import ClassifierFree, ClassifierGuidance, Denoiser, Guidance, NoiseSchedule, SeededNoise
from diffguide.guidance import OBJECTIVES, RULES, SCHEDULES, make_objective, make_schedule
from diffguide.samplers import SAMPLERS
from diffguide.toy import (BayesClassifier, ExactEps, ExactNoisyClassifier, conditional_distance, demo_mixture,
                           exact_distance_spread)

MIX = demo_mixture()
N = 2000
LABELS = torch.arange(N) % MIX.num_classes
MARGIN = 1.5
HIGHER_ORDER_STEPS = {"heun": 20, "dpmpp_2m": 20}  # 2nd-order methods are checked at 20 steps, the rest at 100
EXACT = ExactEps(MIX)


def _unconditional(x, t, y):
    return EXACT(x, t, None)


def _run(name, net, guidance, labels, steps, seed=0):
    denoiser = Denoiser(net, NoiseSchedule.create("linear", str(steps)), clip_x0=False)
    noise = SeededNoise(seed, range(len(labels)), (MIX.dim,), dtype=torch.float64)
    return SAMPLERS[name](denoiser, noise, labels, guidance=guidance).samples


@pytest.fixture(scope="module")
def floor():
    mean, std = exact_distance_spread(MIX, LABELS, repeats=10)
    assert MARGIN * mean > mean + 1.5 * std, (mean, std)  # the margin is above the floor's own spread
    return mean


# exact-score ways to sample p(x | y): (network, guidance)
EXACT_CASES = {
    "conditional ε*(x, y)": (EXACT, None),
    "CFG w = 0": (EXACT, Guidance(cfg=ClassifierFree(w=0.0))),
    "unconditional ε* + exact noise-aware p(y | x_t), s = 1": (
        _unconditional, Guidance(classifier=ClassifierGuidance(ExactNoisyClassifier(MIX), on="x_t", scale=1.0))),
}


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_exact_score_reaches_the_exact_conditional(name, case, floor):
    net, guidance = EXACT_CASES[case]
    steps = HIGHER_ORDER_STEPS.get(name, 100)
    x = _run(name, net, guidance, LABELS, steps)
    distance = conditional_distance(MIX, x, LABELS)
    print(f"{name} {steps} steps, {case}: {distance:.4f} = {distance / floor:.2f} x floor")
    assert distance < MARGIN * floor


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_over_guidance_is_caught(name, floor):
    """The negative control: s = 2 samples p(x|y)·p(y|x)^1, not p(x|y) — the same check must fail it."""
    guidance = Guidance(classifier=ClassifierGuidance(ExactNoisyClassifier(MIX), on="x_t", scale=2.0))
    x = _run(name, _unconditional, guidance, LABELS, HIGHER_ORDER_STEPS.get(name, 100))
    assert conditional_distance(MIX, x, LABELS) > MARGIN * floor


def _guidances():
    """Every guidance family × objective × schedule (small runs: these check that everything composes and runs)."""
    yield "none", None
    for schedule in sorted(SCHEDULES):
        yield f"cfg/{schedule}", Guidance(cfg=ClassifierFree(w=1.0, schedule=make_schedule(schedule)))
        for objective in sorted(OBJECTIVES):
            for on, classifier in (("x_t", ExactNoisyClassifier(MIX)), ("x0", BayesClassifier(MIX, 0.5))):
                yield f"{on}/{objective}/{schedule}", Guidance(classifier=ClassifierGuidance(
                    classifier, on=on, objective=make_objective(objective), schedule=make_schedule(schedule),
                    softplus_beta=None))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_guidance_runs_with_every_sampler(name):
    labels = torch.arange(12) % MIX.num_classes
    for key, guidance in _guidances():
        x = _run(name, EXACT, guidance, labels, 4)
        assert x.shape == (12, MIX.dim) and torch.isfinite(x).all(), key


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_update_rules_run_or_are_refused_by_name(name):
    """The score shift runs everywhere; an ancestral-mean rule either runs or is refused with a message naming
    guidance.rule (it has no meaning for a sampler that does not step through the posterior mean)."""
    labels = torch.arange(6) % MIX.num_classes
    for rule in sorted(RULES):
        guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX, 0.5), on="x0", softplus_beta=None),
                            rule=rule)
        if rule == "score":
            assert torch.isfinite(_run(name, _unconditional, guidance, labels, 4)).all()
            continue
        try:
            x = _run(name, _unconditional, guidance, labels, 4)
        except ValueError as err:
            assert "guidance.rule" in str(err)
        else:
            assert torch.isfinite(x).all()


def test_the_ancestral_sampler_takes_every_rule():
    labels = torch.arange(6) % MIX.num_classes
    for rule in sorted(RULES):
        guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX, 0.5), on="x0", softplus_beta=None),
                            rule=rule)
        assert torch.isfinite(_run("ddpm", _unconditional, guidance, labels, 4)).all()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_sample_seeds_make_every_sampler_batch_invariant(name):
    """Sample k depends on (seed, k) alone: batches of 1, 7 or 64 give the same samples (float32 rounding only)."""
    guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(MIX, 0.5), on="x0", softplus_beta=None),
                        cfg=ClassifierFree(w=0.5))
    denoiser = Denoiser(EXACT, NoiseSchedule.create("linear", "12"), clip_x0=False)
    labels = torch.arange(64) % MIX.num_classes

    def in_batches(size):
        parts = []
        for start in range(0, 64, size):
            idx = list(range(start, min(start + size, 64)))
            parts.append(SAMPLERS[name](denoiser, SeededNoise(7, idx, (2,)), labels[idx], guidance=guidance).samples)
        return torch.cat(parts)

    reference = in_batches(64)
    for size in (1, 7):
        torch.testing.assert_close(in_batches(size), reference, rtol=0, atol=1e-5)
