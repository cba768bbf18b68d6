"""The testbed studies' verdict rule (diffguide.studies.verdict): the paired t-test against scipy and a closed form,
its false-positive rate on pure noise by simulation, and the claim-level aggregation."""

import math

import numpy as np
import pytest
from scipy import stats

from diffguide.studies.report import kernel_comparison_markdown
from diffguide.studies.verdict import (AGREES, ALPHA, CONTRADICTS, DIVERGED, WITHIN_NOISE, both, claim_verdict,
                                       compare, held_false_positive_bound, paired_t_test)


def test_paired_t_test_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1.0, 10), rng.normal(0.0, 1.0, 10)
    ours = compare(a, b, +1)
    reference = stats.ttest_rel(a, b, alternative="greater")
    # same formula, float64: agreement to rounding (1e-12 relative is ~10^4 ulps of slack)
    assert ours["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert ours["p"] == pytest.approx(reference.pvalue, rel=1e-12)
    assert ours["df"] == 9 and ours["delta"] == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    lower = compare(a, b, -1)  # the claim "a is lower": the same test on b − a
    assert lower["p"] == pytest.approx(stats.ttest_rel(a, b, alternative="less").pvalue, rel=1e-12)


def test_paired_t_test_closed_form_with_two_degrees_of_freedom():
    # d = (1, 2, 3): mean 2, sd 1, t = 2/(1/√3) = 2√3; for df = 2 the t survival function is
    # P(T ≥ t) = 1/2 − t/(2·sqrt(t² + 2)), an independent closed form
    result = paired_t_test([1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert result["t"] == pytest.approx(t, rel=1e-12)
    assert result["p"] == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), rel=1e-10)
    assert result["outcome"] == AGREES  # p = 0.0370 < 0.05
    # d = (0, 2, 4): mean 2, sd 2, t = √3, p = 1/2 − √3/(2·√5) = 0.1127 > α → within noise
    wide = paired_t_test([0.0, 2.0, 4.0])
    assert wide["p"] == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)), rel=1e-10)
    assert wide["outcome"] == WITHIN_NOISE
    assert paired_t_test([-1.0, -2.0, -3.0])["outcome"] == CONTRADICTS


def test_critical_value_separates_outcomes():
    # differences with mean m and sd 1 over n = 10 seeds give t = m·√10; the one-sided 5 % critical value of T_9
    crit = stats.t.ppf(1 - ALPHA, 9)  # 1.8331
    base = np.array([-1.5, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5, 0.25, -0.25])
    base = (base - base.mean()) / base.std(ddof=1)  # mean 0, sd 1 exactly
    just_above = base + 1.001 * crit / math.sqrt(10)
    just_below = base + 0.999 * crit / math.sqrt(10)
    assert paired_t_test(just_above)["outcome"] == AGREES
    assert paired_t_test(just_below)["outcome"] == WITHIN_NOISE
    assert paired_t_test(-just_above)["outcome"] == CONTRADICTS


def test_false_positive_rate_on_pure_noise_is_alpha():
    """Pure noise: 10 seeds of N(0, 1) differences, 10000 replications. The count of 'agrees' is Binomial(M, α):
    sd of the rate sqrt(α(1−α)/M) = 0.00218; a 4.5-sd band (±0.0098) fails by chance with probability < 1e-5, while
    a wrong level (a two-sided test at α: 0.025; the old rule: 0.146) lies far outside it."""
    rng = np.random.default_rng(12345)
    m, n = 10000, 10
    draws = rng.normal(size=(m, n))
    outcomes = [paired_t_test(d)["outcome"] for d in draws]
    band = 4.5 * math.sqrt(ALPHA * (1 - ALPHA) / m)
    assert abs(outcomes.count(AGREES) / m - ALPHA) < band
    assert abs(outcomes.count(CONTRADICTS) / m - ALPHA) < band  # symmetric: the other tail
    # heavy-tailed pure noise (t with 3 df, still symmetric about 0): the rate stays near α (t-test robustness);
    # the band is wider (±0.02, 6.5 sd of the rate at 5000 replications) because normality no longer holds exactly
    heavy = rng.standard_t(3, size=(5000, n))
    rate = [paired_t_test(d)["outcome"] for d in heavy].count(AGREES) / 5000
    assert abs(rate - ALPHA) < 0.02


def test_old_rule_false_positive_rate_was_about_15_percent():
    """The rule this replaces ('mean > population sd' over 3 seeds) is t > √2 with 2 df: P = 1/2 − √2/(2·2) =
    0.1464 under pure noise (closed form above) — checked here so the report's claim about it is a tested fact."""
    t = math.sqrt(2)
    assert 0.5 - t / (2 * math.sqrt(t * t + 2)) == pytest.approx(stats.t.sf(t, 2), rel=1e-12)
    assert stats.t.sf(t, 2) == pytest.approx(0.1464, abs=1e-4)


def test_zero_spread_differences():
    assert paired_t_test([0.5, 0.5, 0.5])["outcome"] == AGREES and paired_t_test([0.5] * 3)["t"] == math.inf
    assert paired_t_test([-0.5, -0.5])["outcome"] == CONTRADICTS
    zero = paired_t_test([0.0, 0.0, 0.0])
    assert zero["outcome"] == WITHIN_NOISE and zero["t"] == 0 and zero["p"] == 0.5


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="differences"):
        paired_t_test([1.0])
    with pytest.raises(ValueError, match="differences"):
        paired_t_test([1.0, math.nan, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        paired_t_test([1.0, 2.0], alpha=0.7)
    with pytest.raises(ValueError, match="favoured and reference"):
        compare([1.0, 2.0], [1.0, 2.0, 3.0], +1)
    with pytest.raises(ValueError, match="sign"):
        compare([1.0, 2.0], [1.0, 2.0], 0)


def test_divergence_makes_a_comparison_a_failure_of_the_favoured_method():
    better = [0.1, 0.2, 0.15, 0.12]  # favoured clearly lower (sign −1) in the metric ...
    worse = [1.0, 1.1, 1.05, 1.2]
    assert compare(better, worse, -1)["outcome"] == AGREES
    # ... but it diverges more often than the reference at every seed: a failure whatever the metric says
    failed = compare(better, worse, -1, divergence=([0.3, 0.31, 0.29, 0.35], [0.01, 0.0, 0.02, 0.01]))
    assert failed["outcome"] == DIVERGED and failed["diverged_more"]["t"] > 0
    assert failed["metric_outcome"] == AGREES  # what the metric alone said, kept for the report
    # the reference diverging more is no failure of the favoured method
    kept = compare(better, worse, -1, divergence=([0.0] * 4, [0.3, 0.31, 0.29, 0.35]))
    assert kept["outcome"] == AGREES


def test_conjunction():
    agree, noise, against = ({"outcome": o} for o in (AGREES, WITHIN_NOISE, CONTRADICTS))
    assert both(agree, agree)["outcome"] == AGREES
    assert both(agree, noise)["outcome"] == WITHIN_NOISE
    assert both(agree, against)["outcome"] == CONTRADICTS
    assert both(noise, {"outcome": DIVERGED})["outcome"] == DIVERGED
    overridden = {"outcome": DIVERGED, "metric_outcome": AGREES}
    assert both(agree, overridden)["metric_outcome"] == AGREES


@pytest.mark.parametrize("outcomes, verdict", [
    ([AGREES] * 3 + [WITHIN_NOISE], "held"),  # 3/4 agree
    ([AGREES] * 2 + [WITHIN_NOISE], "mixed"),  # 2/3 agree < 3/4, none failed, 1/3 within noise < 1/2
    ([AGREES, CONTRADICTS, DIVERGED, WITHIN_NOISE], "did not hold"),  # 2/4 contradict or diverged
    ([WITHIN_NOISE] * 2 + [AGREES] * 2, "within noise"),
    ([AGREES, AGREES, CONTRADICTS, WITHIN_NOISE, WITHIN_NOISE, WITHIN_NOISE, WITHIN_NOISE, AGREES], "within noise"),
    ([AGREES] * 5 + [CONTRADICTS] * 3 + [WITHIN_NOISE] * 2, "mixed"),
    ([], "not measurable"),
])
def test_claim_verdict(outcomes, verdict):
    assert claim_verdict(outcomes) == verdict


def test_held_false_positive_bound_by_simulation():
    """Markov bound k·α/⌈3k/4⌉ on P(HELD) under the global null, and a simulation of k = 4 independent null
    comparisons: P(≥ 3 of 4 agree) = 4α³(1−α) + α⁴ = 4.8e-4 (binomial), far below the bound 4α/3 = 0.0667."""
    assert held_false_positive_bound(12) == pytest.approx(12 * 0.05 / 9, rel=1e-12)
    assert held_false_positive_bound(1) == pytest.approx(0.05, rel=1e-12)
    assert held_false_positive_bound(4) == pytest.approx(4 * 0.05 / 3, rel=1e-12)
    rng = np.random.default_rng(7)
    m = 4000
    held = sum(claim_verdict([paired_t_test(d)["outcome"] for d in rng.normal(size=(4, 10))]) == "held"
               for _ in range(m))
    exact = 4 * ALPHA ** 3 * (1 - ALPHA) + ALPHA ** 4
    # count ~ Binomial(4000, 4.8e-4): mean 1.9; P(count ≥ 12) < 1e-5 (Poisson tail), and 12/4000 = 0.003 < 0.0667
    assert held / m <= held_false_positive_bound(4) and held < 12 and exact == pytest.approx(4.8e-4, rel=0.02)


def test_kernel_comparison_table():
    def claim(text, verdict, agrees):
        return {"claim": text, "verdict": verdict, "counts": {AGREES: agrees, WITHIN_NOISE: 1, CONTRADICTS: 0,
                                                              DIVERGED: 0}}
    here = [claim("a", "held", 3), claim("b", "within noise", 0)]
    other = {"claims": [claim("a", "held", 3), claim("b", "mixed", 1)],
             "environment": {"cpu_capability": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
    lines = kernel_comparison_markdown(here, {"cpu_capability": "AVX512"}, other)
    assert "| b | WITHIN NOISE (1/1 within noise) | MIXED (1/2 agrees, 1/2 within noise) |" in lines
    assert "1 of 2 verdicts differ between the two kernel sets." in lines
    assert kernel_comparison_markdown(here, {"cpu_capability": "AVX512"}, None) == []
