"""``diffguide eval-classifier``: accuracy, binned ECE, smECE (and ECE_t for a noise-aware classifier) with a
reliability diagram."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..io import atomic_write_text
from . import calibrate as shared
from ._common import device_or_fail, overwrite_option, refuse_existing, writable_or_fail

__all__ = ["command"]


def _parse_timesteps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--timesteps") from None


@click.command("eval-classifier")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True),
              help="CIFAR ResNet weights (a .th checkpoint or the classifier.safetensors of `diffguide calibrate`), "
                   "or a noise-aware classifier folder of `diffguide train-classifier` (with --noise-aware).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A safetensors state dict to load into the --classifier module (keys of that module).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled dataset for diffguide.data.load_dataset (image folder, tarball, IDX, npz).")
@click.option("--split", default="test", show_default=True,
              help="Split to evaluate ('none' for sources without splits, e.g. npz).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate this many images, spread evenly over the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Evaluation batch size.")
@click.option("--bins", "num_bins", type=click.IntRange(min=1), default=10, show_default=True,
              help="Equal-width bins of the ECE.")
@click.option("--noise-aware", is_flag=True,
              help="The classifier is noise-aware, called as classifier(x_t, t): report ECE_t over --timesteps.")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True,
              help="Noise schedule for --noise-aware (a classifier folder brings its own).")
@click.option("--timesteps", default=None,
              help="Comma-separated original timesteps for ECE_t (default 0,100,...,900,999).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the noise for ECE_t.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: eval_classifier.json, reliability.png (and ece_t.png).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@overwrite_option
def command(classifier_path, weights, data, split, limit, batch_size, num_bins, noise_aware, schedule, timesteps, seed,
            device, out_dir, no_progress, overwrite):
    """Calibration of a classifier on a labelled dataset: accuracy, binned ECE, smECE, NLL, a reliability diagram
    and, with --noise-aware, ECE_t (per-timestep accuracy, confidence and ECE on noised inputs)."""
    from diffguide.calibration import (EpochBatches, evaluate_calibration, plot_ece_over_timesteps,
                                       plot_reliability_diagram)
    from diffguide.calibration.metrics import ReliabilityBins
    from diffguide.data import to_model_range
    from diffguide.schedule import NoiseSchedule

    out = Path(out_dir)
    timesteps = _parse_timesteps(timesteps)
    from diffguide.classifiers import noise_settings, takes_timestep

    model = shared.load_classifier(classifier_path, weights, device_or_fail(device))
    if noise_aware and not takes_timestep(model):
        raise click.BadParameter(f"{classifier_path} does not take a timestep (it is called as classifier(x)); "
                                 "--noise-aware needs classifier(x_t, t)", param_hint="--noise-aware")
    refuse_existing([out / name for name in ("eval_classifier.json", "reliability.png", "ece_t.png")], overwrite)
    writable_or_fail(out, is_dir=True)
    images, labels = shared.load_split(data, split, limit, model)
    noise = noise_settings(classifier_path)  # a classifier folder: its own schedule and T, not --schedule's
    noise_schedule = NoiseSchedule.create(noise["schedule"], num_train_timesteps=noise["num_train_timesteps"]) \
        if noise is not None else NoiseSchedule.create(schedule)
    try:
        batches = EpochBatches(images, labels, batch_size, shuffle=False, convert=to_model_range)
        report = evaluate_calibration(model, batches, noise_aware=noise_aware,
                                      schedule=noise_schedule if noise_aware else None,
                                      timesteps=timesteps, num_bins=num_bins, seed=seed,
                                      progress=not no_progress)
    except ValueError as err:  # e.g. --timesteps not steps of the schedule, images of another size
        raise click.UsageError(str(err)) from None
    report["source"] = {"classifier": os.path.abspath(classifier_path),
                        "weights": os.path.abspath(weights) if weights else None, "data": os.path.abspath(data),
                        "split": split, "images": int(len(labels))}
    atomic_write_text(out / "eval_classifier.json", json.dumps(report, indent=2) + "\n")
    summary = report["summary"]
    plot_reliability_diagram(ReliabilityBins.from_dict(summary["reliability"]), out / "reliability.png",
                             title=f"{Path(classifier_path).name} on {split} (accuracy {summary['accuracy']:.4f})",
                             smece=summary["smece"])
    shared.print_summary_table({"pooled" if noise_aware else "clean": summary})
    if noise_aware:
        plot_ece_over_timesteps({Path(classifier_path).stem: report["ece_t"]}, out / "ece_t.png")
        click.echo(f"{'t':>6} {'accuracy':>9} {'confidence':>10} {'ECE':>8} {'smECE':>8}")
        for row in report["ece_t"]:
            click.echo(f"{row['t']:>6} {row['accuracy']:>9.4f} {row['mean_confidence']:>10.4f} {row['ece']:>8.4f} "
                       f"{row['smece']:>8.4f}")
    click.echo(f"wrote {out / 'eval_classifier.json'} and reliability.png")
