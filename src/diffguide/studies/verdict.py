"""The testbed studies' verdict rule: one-sided paired t-tests over seeds, aggregated per claim.

A *comparison* pits a favoured configuration against a reference on one metric, paired by seed (both ran on the
same per-sample noise streams, so the seed-to-seed variation they share cancels in the difference). With
d_s = sign·(a_s − b_s), s = 1..n (sign = +1 when the claim says "higher", −1 when it says "lower"):

    t = mean(d) / (sd(d) / sqrt(n)),   sd with ddof = 1,   df = n − 1

and the one-sided p-value P(T_{n−1} ≥ t). The comparison *agrees* with the claim when p < α, *contradicts* it when
the opposite one-sided p-value is below α, and is *within noise* otherwise. Under "no difference" with normal
differences, a comparison agrees with probability exactly α (the false-positive rate of one comparison).

A favoured configuration that diverges more often than its reference (the same test on the per-seed shares of
diverged samples agrees) makes the comparison a failure of that method (``diverged``), whatever the metric says.

A claim with k comparisons is HELD when at least 3/4 of them agree, DID NOT HOLD when at least half contradict or
diverged, WITHIN NOISE when at least half are within noise, MIXED otherwise. Under the global null (every comparison
a true zero difference), E[#agree] = k·α, so by Markov's inequality P(HELD) ≤ k·α/(⌈3k/4⌉) ≤ α/(3/4) whatever the
dependence between the comparisons (:func:`held_false_positive_bound`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "AGREES", "CONTRADICTS", "WITHIN_NOISE", "DIVERGED", "OUTCOMES", "paired_t_test", "compare",
           "both", "claim_verdict", "held_false_positive_bound", "outcome_counts"]

ALPHA = 0.05  # one-sided level of every comparison, fixed before the runs
AGREES, CONTRADICTS, WITHIN_NOISE, DIVERGED = "agrees", "contradicts", "within noise", "diverged"
OUTCOMES = (AGREES, WITHIN_NOISE, CONTRADICTS, DIVERGED)
HELD_SHARE = 0.75  # a claim holds when at least this share of its comparisons agree
FAILED_SHARE = 0.5  # ... did not hold when at least this share contradict or diverged
NOISE_SHARE = 0.5  # ... is within noise when at least this share are within noise


def paired_t_test(differences, alpha: float = ALPHA) -> dict:
    """One-sided one-sample t-test of H0: E[d] ≤ 0 against H1: E[d] > 0 on the paired differences ``d``.

    t = mean(d)/(sd(d)/sqrt(n)) (sd with ddof 1), p = P(T_{n−1} ≥ t); ``outcome`` is 'agrees' when p < α,
    'contradicts' when P(T_{n−1} ≤ t) < α, else 'within noise'. Differences with zero spread give t = ±inf
    (p = 0 or 1) or, when all are zero, t = 0 (p = 1/2). Needs n ≥ 2 finite differences."""
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if len(d) < 2:
        raise ValueError(f"differences: expected at least 2 paired values, got {len(d)}")
    if not np.isfinite(d).all():
        raise ValueError("differences: expected finite values (a diverged run must be scored, not dropped)")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: expected a level in (0, 0.5), got {alpha}")
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        t = mean / se
    else:
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
    p_greater, p_less = float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1))
    outcome = AGREES if p_greater < alpha else CONTRADICTS if p_less < alpha else WITHIN_NOISE
    return {"outcome": outcome, "n": n, "mean": mean, "sd": sd, "t": t, "df": n - 1, "p": p_greater}


def compare(favoured, reference, sign: int, alpha: float = ALPHA, divergence=None) -> dict:
    """Paired comparison of per-seed values: the claim says ``favoured`` is higher (sign +1) or lower (−1) than
    ``reference``. ``divergence`` = (favoured's, reference's per-seed diverged shares), optional: when the favoured
    configuration diverges more often than the reference (the same one-sided paired t-test on the shares agrees),
    the comparison is a failure of that method ('diverged'; the metric's test is still reported)."""
    if sign not in (1, -1):
        raise ValueError(f"sign: expected +1 or -1, got {sign}")
    favoured, reference = np.asarray(favoured, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if favoured.shape != reference.shape:
        raise ValueError(f"favoured and reference: expected the same seeds, got {favoured.shape} and "
                         f"{reference.shape}")
    result = paired_t_test(sign * (favoured - reference), alpha)
    result["delta"] = float(np.mean(favoured - reference))
    result["metric_outcome"] = result["outcome"]  # before the divergence rule (for the report's sensitivity note)
    if divergence is not None:
        more = paired_t_test(np.subtract(*np.asarray(divergence, dtype=np.float64)), alpha)
        result["diverged_more"] = {k: more[k] for k in ("mean", "t", "p")}
        if more["outcome"] == AGREES:
            result["outcome"] = DIVERGED
    return result


def both(first: dict, second: dict) -> dict:
    """A conjunction of two comparisons on the same configurations: agrees when both agree, diverged when either
    diverged, contradicts when either contradicts, else within noise (false-positive rate ≤ α: it needs the first
    to agree)."""
    def combine(outcomes: set) -> str:
        if DIVERGED in outcomes:
            return DIVERGED
        if CONTRADICTS in outcomes:
            return CONTRADICTS
        return AGREES if outcomes == {AGREES} else WITHIN_NOISE

    return {"outcome": combine({first["outcome"], second["outcome"]}), "parts": [first, second],
            "metric_outcome": combine({p.get("metric_outcome", p["outcome"]) for p in (first, second)})}


def outcome_counts(outcomes: list[str]) -> dict:
    """{outcome: count} over :data:`OUTCOMES` (every one present, zeros included)."""
    unknown = set(outcomes) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"outcomes: unknown {sorted(unknown)}; expected {OUTCOMES}")
    return {o: outcomes.count(o) for o in OUTCOMES}


def claim_verdict(outcomes: list[str]) -> str:
    """'held' (≥ 3/4 agree), 'did not hold' (≥ 1/2 contradict or diverged), 'within noise' (≥ 1/2 within noise),
    else 'mixed'; 'not measurable' without comparisons. Checked in that order."""
    counts, k = outcome_counts(outcomes), len(outcomes)
    if k == 0:
        return "not measurable"
    if counts[AGREES] >= HELD_SHARE * k:
        return "held"
    if counts[CONTRADICTS] + counts[DIVERGED] >= FAILED_SHARE * k:
        return "did not hold"
    if counts[WITHIN_NOISE] >= NOISE_SHARE * k:
        return "within noise"
    return "mixed"


def held_false_positive_bound(k: int, alpha: float = ALPHA) -> float:
    """Upper bound on P(claim HELD) when none of its k comparisons has a true effect: each agrees with
    probability ≤ α, so E[#agree] ≤ k·α and Markov gives P(#agree ≥ ⌈3k/4⌉) ≤ min(1, k·α/⌈3k/4⌉) (any dependence)."""
    if k < 1:
        raise ValueError(f"k: expected at least one comparison, got {k}")
    return min(1.0, k * alpha / math.ceil(HELD_SHARE * k))
