"""The ``diffguide`` command line. Each command lives in its own module of this package and is listed in COMMANDS."""

from __future__ import annotations

import importlib

import click

# module name -> command name; each module defines a click command called `command`.
COMMANDS = {
    "demo": "demo",
    "sample": "sample",
    "calibrate": "calibrate",
    "eval_classifier": "eval-classifier",
    "ref": "ref",
    "eval": "eval",
    "train": "train",
    "train_classifier": "train-classifier",
}


# command name -> the one-line help `diffguide --help` shows (so listing the commands imports none of them).
SHORT_HELP = {
    "demo": "Every guidance family on an exact 2-D mixture (the embedded default).",
    "sample": "Sample a diffusion model with any guidance and sampler into samples.npz and grid.png.",
    "calibrate": "Fine-tune a classifier with CE + λ·Smooth-ECE and report calibration before and after.",
    "eval-classifier": "Accuracy, ECE, smECE (and ECE_t) of a classifier, with a reliability diagram.",
    "ref": "Inception reference statistics of a data set, for `diffguide eval`.",
    "eval": "FID, KID, precision/recall, density/coverage of samples against a reference.",
    "train": "Train an ε-prediction diffusion model with the standard or the CFG-aligned loss.",
    "train-classifier": "Train a noise-aware classifier f(x_t, t) and report accuracy and ECE per noise level.",
}


class _LazyGroup(click.Group):
    """Imports a command's module only when that command runs; `diffguide --help` lists them from SHORT_HELP without
    importing any (no torch import: fast)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS.values())

    def format_commands(self, ctx, formatter):
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx, name):
        module = {v: k for k, v in COMMANDS.items()}.get(name)
        if module is None:
            return None
        return importlib.import_module(f"diffguide.cli.{module}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffguide")
def main():
    """diffguide: calibrated and regularized guidance for diffusion models, CFG-aligned training, and metrics."""


__all__ = ["main", "COMMANDS", "SHORT_HELP"]
