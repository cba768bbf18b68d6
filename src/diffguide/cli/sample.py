"""`diffguide sample`: a diffusion model + guidance + sampler -> ADM-format npz and a PNG grid; torchrun-aware, resumable."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import click

from ..guidance.rules import RULES
from ..guidance.schedules import SCHEDULES
from ..samplers import SAMPLERS
from ._common import finite


def _key_values(ctx, param, values) -> dict:
    """KEY=VALUE pairs -> dict, values parsed as JSON when they can be (numbers, true/false), else kept as strings."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


_finite = finite
_softplus_beta = functools.partial(finite, low=0, hint="or 0 to keep the ReLUs")


X0_KINDS = ("cifar-resnet:", "torchvision:")


def _x0_classifier(ctx, param, value):
    if value is not None and not value.startswith(X0_KINDS) and not Path(value).is_dir():
        kind = value.split(":", 1)[0] if ":" in value else None
        raise click.BadParameter(f"expected 'cifar-resnet:PATH.th', 'torchvision:NAME[:WEIGHTS]' or a diffguide "
                                 f"classifier folder, got {value!r}"
                                 + (f" (unknown kind {kind!r})" if kind else ""), ctx=ctx, param=param)
    return value


@click.command("sample")
@click.option("--model", required=True,
              help="Diffusion model: a diffguide checkpoint folder (config.json + model.safetensors), or a "
                   "guided-diffusion .pt state dict together with --preset.")
@click.option("--preset", default=None, help="Preset of a .pt --model (e.g. imagenet128, imagenet64, imagenet256).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: samples.npz (arr_0 uint8 NHWC, arr_1 labels), grid.png, run.json, shards/.")
@click.option("--num-samples", type=click.IntRange(min=1), default=64, show_default=True, help="How many samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per shard and per forward pass (results do not depend on it, except for the tilted objective).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run seed: sample k's noise comes from (seed, k) alone.")
@click.option("--labels", default="uniform", show_default=True,
              help="'uniform' (i.i.d. uniform, ADM's protocol), 'balanced' (k mod K), 'none', or one class index.")
@click.option("--sampler", type=click.Choice(sorted(SAMPLERS)), default="ddpm", show_default=True,
              help="A sampler of the registry (diffguide.samplers.SAMPLERS), run on the model's discrete schedule; "
                   "every guidance reaches every sampler.")
@click.option("--steps", default="250", show_default=True,
              help="Respacing of the training schedule: 'N', 'ddimN' (DDIM's exact stride) or per-section 'a,b,c'.")
@click.option("--eta", type=float, default=0.0, show_default=True, callback=_finite, help="DDIM η (0 = deterministic).")
@click.option("--guidance-rule", type=click.Choice(sorted(RULES)), default="score", show_default=True,
              help="How the classifier term enters the step: 'score' (ε −= sqrt(1−ᾱ)·s·w·g; every sampler), 'mean' "
                   "(ADM's ancestral μ += Σ·s·g; ddpm) or 'elucd' (EluCD's μ += (Σ + a_i)·s·g; ddpm).")
@click.option("--rule-param", "rule_params", multiple=True, callback=_key_values, metavar="KEY=VALUE",
              help="Rule parameter, repeatable: gamma=0.3, max_variance=per_sample|elucd (rule 'elucd').")
@click.option("--variance", type=click.Choice(["fixed_small", "fixed_large", "learned_range"]), default=None,
              help="DDPM step variance (default: the checkpoint's). For a fixed-variance model respaced to few steps, "
                   "fixed_small: fixed_large leaves noise of variance β'_1 after the last stochastic step.")
@click.option("--no-clip", "clip_x0", flag_value=False, default=None,
              help="Do not clip x̂0 to [-1, 1] (default: as the checkpoint's config says; on for images).")
@click.option("--classifier", default=None,
              help="Noise-aware classifier on x_t (ADM-G): a diffguide folder or an ADM .pt with --classifier-preset.")
@click.option("--classifier-preset", default=None, help="Preset of a .pt --classifier (e.g. imagenet128-classifier).")
@click.option("--x0-classifier", default=None, callback=_x0_classifier,
              help="Off-the-shelf classifier on x̂0 (EluCD): 'cifar-resnet:PATH.th' or 'torchvision:NAME[:WEIGHTS]'. "
                   "Its own preprocessing (range, normalisation, resize) is applied; ReLUs act as Softplus(β).")
@click.option("--classifier-scale", "-s", type=float, default=1.0, show_default=True, callback=_finite,
              help="Classifier guidance scale s.")
@click.option("--objective", default=None,
              help="Guidance objective: log_softmax, baseline, tilted, entropy, reverse_kl, forward_kl, js, hellinger "
                   "(default: log_softmax on x_t, baseline (τ1=1, τ2=0.5) on x̂0).")
@click.option("--objective-param", "objective_params", multiple=True, callback=_key_values, metavar="KEY=VALUE",
              help="Objective parameter, repeatable: e.g. alpha=0.5, epsilon=0.9, t_tilde=-0.2, lambda0=0.1, rule=time.")
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default="constant", show_default=True,
              help="Guidance strength w(u) on the noise level u = t/T, for classifier guidance and CFG alike: constant, "
                   "sine bump 1 + γ·sin(πu), or an interval [start, stop] of u.")
@click.option("--schedule-param", "schedule_params", multiple=True, callback=_key_values, metavar="KEY=VALUE",
              help="Schedule parameter, repeatable: gamma=0.3 (sine); start=0.2, stop=0.8 (interval, fractions of T).")
@click.option("--x0-preprocess", type=click.Choice(["weights", "raw"]), default="weights", show_default=True,
              help="How the --x0-classifier sees x̂0: its weights' preprocessing (range, mean/std, resize), or 'raw' "
                   "(values in [-1, 1] at the model's resolution, EluCD's set-up).")
@click.option("--softplus-beta", type=float, default=3.0, show_default=True, callback=_softplus_beta,
              help="β of the Softplus replacing ReLUs of an --x0-classifier (EluCD: 3, for an ImageNet ResNet-101); 0 keeps "
                   "ReLUs. CIFAR ResNets need 10: at 3 they are at chance accuracy (docs/guidance.md).")
@click.option("--cfg-w", type=float, default=None, callback=_finite,
              help="Classifier-free guidance weight w: ε̃ = (1+w)ε_c − wε_∅ (w = 0: plain conditional).")
@click.option("--cfg-scale", type=float, default=None, callback=_finite,
              help="Classifier-free guidance as s = 1 + w (diffusers' guidance_scale). Give --cfg-w or --cfg-scale.")
@click.option("--bf16", is_flag=True, help="bf16 autocast for the networks (GPU).")
@click.option("--on-nonfinite", type=click.Choice(["raise", "zero"]), default="raise", show_default=True,
              help="A NaN/inf guidance gradient: fail the batch, naming the first step and samples it happened at "
                   "(checked when the batch ends, so no step waits on the GPU), or zero it, count it, go on.")
@click.option("--resume", is_flag=True, help="Finish a run in --out started with the same arguments.")
@click.option("--overwrite", is_flag=True,
              help="Replace the sample run in --out: only a folder this command wrote (run.json, samples.npz, grid.png, "
                   "summary.json, shards/), never the current directory or a folder holding an input.")
@click.option("--device", default=None, help="Device (default: cuda:$LOCAL_RANK when there is a GPU, else cpu).")
@click.option("--eager", is_flag=True, help="Turn the GPU fast path off (compiled network; on by default "
              "on CUDA, off on the CPU). Samples agree within bf16/fp32 rounding either way.")
def command(out, resume, overwrite, device, softplus_beta, eager, **settings):
    """Sample a diffusion model with any guidance and sampler into ADM-format samples.npz and grid.png.

    Run it under `torchrun --nproc_per_node N` to split the samples over N processes: the output is the same whatever
    N. A killed run continues with --resume and ends with exactly the npz an uninterrupted run gives.
    """
    if settings["schedule_params"] and settings["schedule"] == "constant":
        raise click.BadParameter("the constant schedule has no parameters; give --schedule sine (gamma=...) or "
                                 "--schedule interval (start=..., stop=...)", param_hint="--schedule-param")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite: give one of them")
    from ..api import SampleSettings, sample
    from ._common import dashed, device_or_fail, with_flag_names, writable_or_fail

    device = device_or_fail(device) if device is not None else None
    writable_or_fail(out, is_dir=True)  # before the model is loaded
    start = time.perf_counter()
    try:
        settings = SampleSettings(softplus_beta=softplus_beta or None, **settings)
        result = sample(settings, out=out, resume=resume, overwrite=overwrite, device=device,
                        fast=False if eager else None)
    except ImportError as err:  # e.g. torchvision for --x0-classifier torchvision:NAME
        raise click.ClickException(str(err)) from None
    except (ValueError, OSError) as err:  # FileExistsError, FileNotFoundError, PermissionError are OSErrors
        flags = {**dashed(f.name for f in dataclasses.fields(SampleSettings)), "out": "--out", "clip_x0": "--no-clip",
                 "objective_params": "--objective-param", "schedule_params": "--schedule-param"}
        raise click.ClickException(with_flag_names(str(err), flags)) from None
    if result is not None:
        click.echo(f"{len(result.images)} samples {tuple(result.images.shape[1:])} -> {out / 'samples.npz'}, "
                   f"{out / 'grid.png'} in {time.perf_counter() - start:.1f} s"
                   + (f"; {result.nonfinite_zeroed} non-finite guidance gradients zeroed" if result.nonfinite_zeroed else ""))
