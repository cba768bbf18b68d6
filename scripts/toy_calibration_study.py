#!/usr/bin/env python
"""Smooth-ECE calibration of a learned noise-aware classifier on the exact testbed (issue 3, item 4; issue 18).

The study lives in ``diffguide.studies.calibration_study``; this script parses the arguments and calls it.
Regenerate: ``OMP_NUM_THREADS=1 python scripts/toy_calibration_study.py --out docs/results``. Kernel-set comparison:
run once with ``ATEN_CPU_CAPABILITY=avx2`` into another folder (``--no-figures``) and pass its toy_calibration.json
with ``--compare-with``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from diffguide.studies.calibration_study import DEFAULT_SEEDS, render, run_study
from diffguide.studies.options import parse_seeds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="docs/results", show_default=True, type=click.Path(file_okay=False),
              help="Directory for toy_calibration.md, toy_calibration.json and toy_calibration_*.png.")
@click.option("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), show_default=True,
              help="Comma-separated seeds (training set, initialisation, noise, test set, sampling noise); at least 2.")
@click.option("--quick", is_flag=True, help="A tiny version (for the smoke test; not a result).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (1 avoids oversubscription on a shared machine).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the PNG figures.")
@click.option("--compare-with", type=click.Path(exists=True, dir_okay=False), default=None,
              help="toy_calibration.json of a run on another CPU kernel set: its verdicts are listed next to these.")
@click.option("--render-only", is_flag=True,
              help="Recompute the claims and rewrite the .md/.json in --out from its JSON (no sampling, figures kept).")
def main(out, seeds, quick, threads, figures, compare_with, render_only):
    """Smooth-ECE fine-tuning of a noise-aware classifier on the exact mixture; writes markdown, JSON and figures."""
    torch.set_num_threads(threads)
    if render_only:
        if not (Path(out) / "toy_calibration.json").is_file():
            raise click.BadParameter(f"no toy_calibration.json in {out} to render from", param_hint="--out")
        data = render(Path(out), compare_with)
    else:
        data = run_study(Path(out), parse_seeds(seeds), quick, figures=figures, compare_with=compare_with)
    for c in data["claims"]:
        print(f"[{c['verdict'].upper()}] {c['claim']}: {c['counts']}")
    print(f"wrote {out}/toy_calibration.md (+ .json{', figures' if figures and not render_only else ''})")


if __name__ == "__main__":
    sys.exit(main())
