"""Paired comparisons of a study's runs, and the guidance study's rule for borderline claims (amendment 9).

A claim's comparison pairs two methods' runs by seed (:func:`comparison`, :func:`diffguide.studies.verdict.compare`).
The guidance study decides it on seeds 1–3; a comparison that is *borderline* there — within noise, with a
one-sided p-value in either direction below ``BORDERLINE_FACTOR``·α — is decided on seeds 1–6 instead, once both
methods' seeds 4–6 (``group='moreseeds'``) have run (:func:`claim_comparison`). The runner runs a method's seeds
4–6 only while a claim it is in is borderline (:func:`more_seeds_needed`).
"""

from __future__ import annotations

import math

from .. import verdict
from . import guidance_plan
from .runner import Study, runs

FIRST_GROUPS, SECOND_GROUPS = ("final",), ("final", "moreseeds")


def value(record: dict, metric: str) -> float:
    """A run's metric; a failed run (exception) scores FID/KID +inf and 0 on the others (a failure, never missing)."""
    if record.get("failed"):
        return math.inf if metric in ("fid", "kid") else 0.0
    if metric == "judge_consistency":
        return float(record["judge_consistency"])
    return float(record["metrics"][metric])


def comparison(study: Study, results: dict, favoured: dict, reference: dict, metric: str, sign: int,
               groups=None) -> dict | None:
    """A paired (by seed) comparison of two sets of runs (each a ``runs`` match; ``groups``: the runs of each of
    these groups instead of the match's own), or None until both have ≥ 2 common seeds. A failed favoured run makes
    the comparison 'diverged'; a failed reference run (the favoured did not fail) 'agrees'."""
    def by_seed(match):
        matches = [{**match, "group": g} for g in groups] if groups else [match]
        return {r["seed"]: r for m in matches for r in runs(study, results, **m)}

    fav, ref = by_seed(favoured), by_seed(reference)
    seeds = sorted(set(fav) & set(ref))
    if len(seeds) < 2:
        return None
    if any(fav[s].get("failed") for s in seeds):
        return {"outcome": verdict.DIVERGED, "delta": math.nan, "p": math.nan, "n": len(seeds)}
    if any(ref[s].get("failed") for s in seeds):
        return {"outcome": verdict.AGREES, "delta": math.nan, "p": math.nan, "n": len(seeds)}
    a, b = [value(fav[s], metric) for s in seeds], [value(ref[s], metric) for s in seeds]
    shares = ([fav[s].get("diverged_share", 0.0) for s in seeds], [ref[s].get("diverged_share", 0.0) for s in seeds])
    return {**verdict.compare(a, b, sign, divergence=shares), "favoured": a, "reference": b}


def is_borderline(result: dict | None, factor: float = guidance_plan.BORDERLINE_FACTOR,
                  alpha: float = verdict.ALPHA) -> bool:
    """Within noise, with the one-sided p in the claim's direction (``p``) or in the opposite one (1 − p: the
    t-distribution is continuous) below factor·α."""
    return result is not None and result["outcome"] == verdict.WITHIN_NOISE \
        and min(result["p"], 1.0 - result["p"]) < factor * alpha


def _first_stage(study: Study, results: dict, favoured: str, reference: str, metric: str, sign: int):
    """The seeds 1–3 comparison, and whether both sides have all of seeds 1–3."""
    result = comparison(study, results, {"method": favoured}, {"method": reference}, metric, sign, FIRST_GROUPS)
    return result, result is not None and result["n"] == len(guidance_plan.FINAL_SEEDS)


def claim_comparison(study: Study, results: dict, favoured: str, reference: str, metric: str, sign: int):
    """The comparison that decides a claim (amendment 9): on seeds 1–3; if that is borderline (:func:`is_borderline`),
    on seeds 1–6 once all have run — until then the seeds 1–3 result with ``pending`` set (no outcome counts yet)."""
    first, complete = _first_stage(study, results, favoured, reference, metric, sign)
    if not complete or not is_borderline(first):
        return first
    second = comparison(study, results, {"method": favoured}, {"method": reference}, metric, sign, SECOND_GROUPS)
    if second["n"] < len(guidance_plan.FINAL_SEEDS) + len(guidance_plan.MORE_SEEDS):
        return {**first, "pending": f"borderline (p < {guidance_plan.BORDERLINE_FACTOR:g}α): seeds 4–6 not yet run"}
    return {**second, "first_stage": first}


def more_seeds_needed(study: Study, unit, results: dict) -> bool | None:
    """Whether a method's seed 4–6 unit is asked for: True while a claim it is in is borderline on seeds 1–3, False
    once every such claim has all of seeds 1–3 and none is, None while undecided."""
    method, decided = unit.params["method"], True
    for _, favoured, reference, metric, sign in guidance_plan.CLAIMS:
        if method in (favoured, reference):
            first, complete = _first_stage(study, results, favoured, reference, metric, sign)
            if complete and is_borderline(first):
                return True
            decided &= complete
    return False if decided else None
