"""``diffguide train-classifier``: train a noise-aware classifier f(x_t, t) (cross-entropy, optionally + λ·Smooth-ECE)
and report its accuracy and ECE per noise level."""

from __future__ import annotations

import os

import click

from .train import RUN_FIELDS, _finite, run_options, run_training

__all__ = ["command"]

CLASSIFIER_FIELDS = {
    "ece_weight": (None, "ece_weight"), "ece_form": (None, "ece_form"), "ece_beta": (None, "ece_beta"),
    "eval_split": (None, "eval_split"), "eval_limit": (None, "eval_limit"), "eval_timesteps": (None, "eval_timesteps"),
}


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated timesteps, e.g. 0,250,500,750,999; got {value!r}") from None


@click.command("train-classifier")
@run_options
@click.option("--net", type=click.Choice(["small_classifier", "adm_classifier"]),
              help="small_classifier (a small EncoderUNetModel preset) or adm_classifier (ADM EncoderUNetModel from "
                   "--adm-kwargs). [default: small_classifier]")
@click.option("--ece-weight", type=float, callback=_finite, help="λ of CE + λ·Smooth-ECE (diffguide.calibration.smooth_ece_loss); "
                                               "0 = cross-entropy only. [default: 0]")
@click.option("--ece-form", type=click.Choice(["sample", "bin"]), help="Smooth-ECE loss form. [default: sample]")
@click.option("--ece-beta", type=float, callback=_finite, help="Pseudo-Huber β of the Smooth-ECE loss. [default: 1e-3]")
@click.option("--eval-split", help="Split of the per-noise-level report ('none': no report). [default: test]")
@click.option("--eval-limit", type=click.IntRange(min=1), help="Evaluate on N images spread evenly over the split.")
@click.option("--eval-timesteps", callback=_int_list,
              help="Original timesteps of the report, e.g. 0,250,500,750,999. [default: 0, T/10, ..., T−1]")
def command(**values):
    """Train a noise-aware classifier on x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, t ~ U{0..T−1}, with cross-entropy
    (+ λ·Smooth-ECE); then print accuracy, ECE and smECE per noise level on --eval-split. Writes checkpoint.pt
    (resumed when present), log.jsonl, loss.png, model/ (safetensors + config.json), report.json, ece_t.png and
    summary.json to --out."""
    from diffguide.train import ClassifierTrainConfig, train_classifier

    summary = run_training(train_classifier, ClassifierTrainConfig, values, {**RUN_FIELDS, **CLASSIFIER_FIELDS})
    report = summary.get("report")
    if report and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"\nper noise level ({report['ece_t'][0]['n']} images each):")
        click.echo(f"{'t':>5} {'accuracy':>9} {'confidence':>10} {'ECE':>8} {'smECE':>8}")
        for row in report["ece_t"]:
            click.echo(f"{row['t']:>5} {row['accuracy']:>9.4f} {row['mean_confidence']:>10.4f} {row['ece']:>8.4f} "
                       f"{row['smece']:>8.4f}")
        pooled = report["summary"]
        click.echo(f"{'all':>5} {pooled['accuracy']:>9.4f} {pooled['mean_confidence']:>10.4f} {pooled['ece']:>8.4f} "
                   f"{pooled['smece']:>8.4f}")


if __name__ == "__main__":  # torchrun --nproc_per_node N -m diffguide.cli.train_classifier ...
    command()
