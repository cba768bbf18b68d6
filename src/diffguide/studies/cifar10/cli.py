"""The command line shared by scripts/cifar10_guidance_study.py and scripts/cifar10_cfg_aligned_study.py."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import click

from . import aligned_plan, aligned_study, guidance_study
from .assets import real_assets, tiny_assets
from .report import aligned_report, guidance_report
from .runner import DEFAULT_CACHE, describe, run_next, selected

REPO = Path(__file__).resolve().parents[4]
STUDIES = {"cifar10_guidance": (guidance_study, guidance_report),
           "cifar10_cfg_aligned": (functools.partial(aligned_study,
                                                     setting_measurement=REPO / aligned_plan.SETTING_MEASUREMENT),
                                   aligned_report)}


def make_command(name: str) -> click.Command:
    build, write_report = STUDIES[name]

    @click.command(name=name)
    @click.option("--shared", type=click.Path(file_okay=False), default="/work/shared/assets", show_default=True,
                  help="the shared assets folder (model, data, inception, classifiers default under it)")
    @click.option("--model", type=click.Path(), default=None, help="the base diffusion model folder")
    @click.option("--data", type=click.Path(), default=None, help="the CIFAR-10 JPEG tarball")
    @click.option("--inception", type=click.Path(), default=None, help="the FID Inception TorchScript file")
    @click.option("--classifiers", type=click.Path(), default=None, help="folder of the CIFAR ResNet .th files")
    @click.option("--cache", type=click.Path(file_okay=False), default=str(DEFAULT_CACHE), show_default=True,
                  help="weights, sample arrays and reference statistics (never in the repo)")
    @click.option("--results", type=click.Path(file_okay=False), default=None,
                  help=f"metrics JSON folder [default: docs/results/{name}; --tiny: a temporary folder]")
    @click.option("--budget-s", type=click.FloatRange(min=1), default=540.0, show_default=True,
                  help="wall-clock budget of this command: units start only while their estimate fits")
    @click.option("--session-left-s", type=click.FloatRange(min=0), default=None,
                  help="device seconds left to this session (the lease's budget_left_s): a training not yet started "
                       "in --cache starts only if its estimate fits, since the cache does not outlive the machine "
                       "[default: no limit]")
    @click.option("--only", default=None, metavar="PATTERNS",
                  help="comma-separated shell patterns of unit ids (see --list) to run, e.g. "
                       "'reference,standard,wcurve__standard__*'; the plan order still holds")
    @click.option("--tiny", is_flag=True, help="the whole pipeline on tiny random stand-ins on the CPU (a check)")
    @click.option("--report-only", is_flag=True, help="regenerate the report from the JSONs; run nothing")
    @click.option("--list", "list_only", is_flag=True, help="print the plan and its status; run nothing")
    @click.option("--report", type=click.Path(dir_okay=False), default=None,
                  help=f"report path [default: docs/results/{name}.md; --tiny: beside the results]")
    def command(shared, model, data, inception, classifiers, cache, results, budget_s, session_left_s, only, tiny,
                report_only, list_only, report):
        if tiny and results and Path(results).resolve().is_relative_to((REPO / "docs" / "results").resolve()):
            raise click.BadParameter("--tiny never writes into docs/results", param_hint="--results")
        if tiny:
            work = Path(tempfile.mkdtemp(prefix=f"{name}_tiny_")) if results is None else Path(results).parent
            results = results or str(work / "results")
            cache = str(work / "cache") if cache == str(DEFAULT_CACHE) else cache
            assets = tiny_assets(work / "assets")
        else:
            results = results or str(REPO / "docs" / "results" / name)
            assets = {} if (report_only or list_only) else _real(shared, model, data, inception, classifiers)
        study = build(assets, tiny=tiny)
        patterns = [p.strip() for p in only.split(",") if p.strip()] if only else None
        if patterns and not any(selected(u, patterns) for u in study.units):
            raise click.BadParameter(f"no unit id matches {only!r} (see --list)", param_hint="--only")
        report = report or (str(Path(results).parent / f"{name}.md") if tiny
                            else str(REPO / "docs" / "results" / f"{name}.md"))
        if list_only:
            click.echo(describe(study, cache, results))
            return
        if not report_only:
            run_next(study, cache, results, budget_s, only=patterns, session_left_s=session_left_s)
        click.echo(f"report: {write_report(study, cache, results, report)}")

    return command


def _real(shared, model, data, inception, classifiers) -> dict:
    try:
        return real_assets(shared, model, data, inception, classifiers)
    except FileNotFoundError as error:
        raise click.UsageError(str(error)) from None
