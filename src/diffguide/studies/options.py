"""Command-line pieces shared by the study scripts (scripts/toy_*_study.py)."""

from __future__ import annotations

import click

__all__ = ["parse_seeds"]


def parse_seeds(value: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; at least two distinct non-negative integers (the verdicts are paired t-tests), else a
    click.BadParameter naming --seeds."""
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected at least two distinct non-negative integers, e.g. 0,1,2; got {value!r}",
                                 param_hint="--seeds")
    return seeds
