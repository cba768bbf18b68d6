"""``diffguide calibrate``: fine-tune a classifier with CE + λ·Smooth-ECE and report its calibration before and after."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

from ._common import dashed, device_or_fail, finite, with_flag_names, writable_or_fail

__all__ = ["command", "load_classifier", "load_split", "print_summary_table"]

SOURCE = "classifier_source.json"


def load_classifier(path: str, weights: str | None = None, device: str = "cpu"):
    """:func:`diffguide.classifiers.load_architecture` of ``path`` (a CIFAR ResNet file or a noise-aware classifier
    folder), with its weights replaced by ``weights`` (:func:`diffguide.classifiers.load_weights`) when given. Every
    unreadable, empty, truncated or foreign file is one click error naming its flag."""
    from diffguide import classifiers

    try:
        model = classifiers.load_architecture(path)
    except (ValueError, FileNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="--classifier") from None
    if weights is not None:
        try:
            classifiers.load_weights(model, weights)
        except (ValueError, FileNotFoundError) as err:
            raise click.BadParameter(str(err), param_hint="--weights") from None
    return model.to(device)


def load_split(source: str, split: str | None, limit: int | None, classifier=None):
    """:func:`diffguide.classifiers.labelled_images`, its errors as one ``--data`` error."""
    from diffguide.classifiers import labelled_images

    try:
        return labelled_images(source, split, limit, classifier)
    except (ValueError, FileNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from None


def check_calibrate_folder(out: Path, record: dict) -> None:
    """Refuse ``out`` unless it is empty or a calibrate run of the same classifier, data and settings (only steps
    and checkpoint_every may change): the one resumable-settings check, made before anything is written."""
    from diffguide.train.calibrate import CalibrationConfig
    from diffguide.io import check_same_settings

    if not out.exists() or not any(out.iterdir()):
        return
    source = out / SOURCE
    if not source.is_file():
        raise click.ClickException(f"--out: {out} is not empty and holds no {SOURCE} of a calibrate run; calibrate "
                                   "never writes into another run's folder: choose a new or empty --out")
    try:
        saved = json.loads(source.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise click.ClickException(f"--out: {source} is not readable JSON ({err}); choose another --out") from None
    try:
        check_same_settings(saved, record, where=f"the calibrate run in {out}",
                            ignore=CalibrationConfig.RESUMABLE + ("train_images", "eval_images"),
                            hint="only --steps and --checkpoint-every may change; use another --out")
    except ValueError as err:
        raise click.ClickException(f"--out: {err}") from None


def print_summary_table(rows: dict[str, dict]) -> None:
    """One line per named summary: n, accuracy, mean confidence, ECE, smECE, NLL."""
    click.echo(f"{'':>8} {'n':>7} {'accuracy':>9} {'confidence':>10} {'ECE':>8} {'smECE':>8} {'NLL':>8}")
    for name, s in rows.items():
        click.echo(f"{name:>8} {s['n']:>7} {s['accuracy']:>9.4f} {s['mean_confidence']:>10.4f} {s['ece']:>8.4f} "
                   f"{s['smece']:>8.4f} {s['nll']:>8.4f}")


@click.command("calibrate")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(exists=True),
              help="CIFAR ResNet weights (.th, e.g. shared/assets/classifiers/cifar10-resnet20-*.th, or .safetensors), "
                   "or the model/ folder of `diffguide train-classifier` (noise-aware: fine-tuned on x_t).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled dataset for diffguide.data.load_dataset (image folder, tarball, IDX, npz).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: classifier.safetensors, configs, report JSON, reliability PNGs, checkpoint. "
                   "A checkpoint there is resumed.")
@click.option("--train-split", default="train", show_default=True, help="Split to fine-tune on.")
@click.option("--eval-split", default="test", show_default=True, help="Split for the before/after report.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None, help="Use this many training images (spread evenly).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None, help="Use this many evaluation images (spread evenly).")
@click.option("--steps", type=click.IntRange(min=0), default=500, show_default=True, help="Optimizer steps (one batch each).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Training batch size.")
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=500, show_default=True, help="Evaluation batch size.")
@click.option("--lr", type=float, callback=finite, default=1e-5, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, callback=finite, default=0.0, show_default=True, help="AdamW weight decay.")
@click.option("--ece-weight", type=float, callback=finite, default=0.1, show_default=True, help="λ in CE + λ·Smooth-ECE.")
@click.option("--ece-form", type=click.Choice(["sample", "bin"]), default="sample", show_default=True,
              help="Smooth-ECE form: per-sample pseudo-Huber (the paper's) or per-bin.")
@click.option("--beta", type=float, callback=finite, default=1e-3, show_default=True, help="Pseudo-Huber β.")
@click.option("--bins", "num_bins", type=int, default=10, show_default=True, help="Bins of the loss (bin form) and ECE.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True, help="Checkpoint interval in steps.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the batch order.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def command(classifier_path, data, out_dir, train_split, eval_split, train_limit, eval_limit, steps, batch_size,
            eval_batch_size, lr, weight_decay, ece_weight, ece_form, beta, num_bins, checkpoint_every, seed,
            device, no_progress):
    """Fine-tune a classifier with CE + λ·Smooth-ECE (AdamW) and write its weights, config, before/after calibration
    report (accuracy, ECE, smECE, NLL; ECE_t for a noise-aware one) and reliability diagrams. An off-the-shelf CIFAR
    ResNet is fine-tuned on clean images; a noise-aware classifier folder (`diffguide train-classifier`) on x_t with
    t ~ U{0..T−1} of its own noise schedule.

    The classifier stays in eval mode (frozen batch-norm statistics); all its parameters are trained. The weights
    (classifier.safetensors) load back with `diffguide eval-classifier --classifier OUT/classifier.safetensors`, or,
    for a noise-aware folder, `--classifier FOLDER --weights OUT/classifier.safetensors --noise-aware`; a noise-aware
    classifier is also written as the network folder OUT/model (config.json + model.safetensors, e.g. for
    `diffguide sample --classifier OUT/model`)."""
    from diffguide.calibration import EpochBatches
    from diffguide.train.calibrate import CalibrationConfig, finetune_calibration
    from diffguide.classifiers import noise_settings
    from diffguide.data import to_model_range
    from diffguide.io import atomic_write_text, clean_stale_temporaries

    device = device_or_fail(device)
    try:
        noise = noise_settings(classifier_path)
    except (ValueError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="--classifier") from None
    try:
        config = CalibrationConfig(steps=steps, lr=lr, weight_decay=weight_decay, ece_weight=ece_weight,
                                   ece_form=ece_form, beta=beta, num_bins=num_bins,
                                   checkpoint_every=checkpoint_every, seed=seed,
                                   **({} if noise is None else {"noise_aware": True, **noise}))
    except ValueError as err:
        flags = {**dashed(f.name for f in dataclasses.fields(CalibrationConfig)), "num_bins": "--bins"}
        raise click.UsageError(with_flag_names(str(err), flags)) from None
    out = Path(out_dir)
    loader = "diffguide.checkpoints.load_network" if noise is not None else "diffguide.classifiers.load_cifar_resnet"
    source = {"classifier": os.path.abspath(classifier_path), "loader": loader,
              "data": os.path.abspath(data), "train_split": train_split, "eval_split": eval_split,
              "train_limit": train_limit, "eval_limit": eval_limit, "batch_size": batch_size,
              "eval_batch_size": eval_batch_size}
    check_calibrate_folder(out, {**source, **config.to_dict()})
    writable_or_fail(out, is_dir=True)
    clean_stale_temporaries(out)
    model = load_classifier(classifier_path, device=device).requires_grad_(True)  # loaded frozen, for guidance
    train_images, train_labels = load_split(data, train_split, train_limit, model)
    eval_images, eval_labels = load_split(data, eval_split, eval_limit, model)
    try:
        train = EpochBatches(train_images, train_labels, batch_size, seed=seed, convert=to_model_range)
        evaluation = EpochBatches(eval_images, eval_labels, eval_batch_size, shuffle=False, convert=to_model_range)
    except (ValueError, FileNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from None
    source.update(train_images=int(len(train_labels)), eval_images=int(len(eval_labels)))
    atomic_write_text(out / SOURCE, json.dumps({**source, **config.to_dict()}, indent=2) + "\n")
    try:
        report = finetune_calibration(model, train, evaluation, config, out_dir=out, progress=not no_progress)
    except ValueError as err:  # e.g. a checkpoint in --out written with another configuration
        raise click.ClickException(str(err)) from None
    print_summary_table({"before": report["before"]["summary"], "after": report["after"]["summary"]})
    click.echo(f"wrote {out / 'classifier.safetensors'}, calibration_report.json, reliability_{{before,after}}.png")
