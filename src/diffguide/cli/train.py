"""``diffguide train``: train a class-conditional (or unconditional) ε-prediction diffusion model with the standard or
the CFG-aligned loss; resumable, data-parallel under torchrun."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ._common import finite

__all__ = ["command", "run_options", "apply_options", "check_run_folder", "load_json_option", "read_json_file"]

# flag -> (config section or None, field); every flag defaults to None = "keep the config's value".
RUN_FIELDS = {
    "data": ("data", "source"), "split": ("data", "split"), "limit": ("data", "limit"), "hflip": ("data", "hflip"),
    "steps": (None, "steps"), "batch_size": ("optim", "batch_size"), "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"), "warmup": ("optim", "warmup_steps"), "grad_clip": ("optim", "grad_clip"),
    "ema_decay": ("optim", "ema_decay"), "bf16": ("optim", "bf16"), "schedule": (None, "schedule"),
    "timesteps": (None, "num_train_timesteps"), "seed": (None, "seed"), "log_every": (None, "log_every"),
    "checkpoint_every": (None, "checkpoint_every"), "net": ("net", "arch"), "model_channels": ("net", "model_channels"),
    "channel_mult": ("net", "channel_mult"), "num_res_blocks": ("net", "num_res_blocks"),
    "attention_resolutions": ("net", "attention_resolutions"), "dropout": ("net", "dropout"),
    "adm_kwargs": ("net", "adm_kwargs"),
}
TRAIN_FIELDS = {
    "loss": ("loss", "kind"), "p_uncond": ("loss", "p_uncond"), "w_train": ("loss", "w_train"),
    "w_range": ("loss", "w_range"), "stop_grad_null": ("loss", "stop_grad_null"), "mix_lambda": ("loss", "mix_lambda"),
    "sample_every": (None, "sample_every"), "sample_w": (None, "sample_w"), "sample_steps": (None, "sample_steps"),
    "samples_per_class": (None, "samples_per_class"), "init_from": (None, "init_from"),
}


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = [int(v) for v in str(value).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers (e.g. 1,2,2), got {value!r}") from None
    if any(v < 1 for v in values):
        raise click.BadParameter(f"expected integers ≥ 1 (e.g. 1,2,2), got {value!r}")
    return values


def read_json_file(path, param_hint: str) -> dict:
    """The JSON object in the file ``path``, or a click error naming the flag (binary, not JSON, not an object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not a text file (expected a JSON object)", param_hint=param_hint) from None
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{path} is not valid JSON ({err})", param_hint=param_hint) from None
    except OSError as err:
        raise click.BadParameter(f"cannot read {path} ({err.strerror or err})", param_hint=param_hint) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a JSON object, got {type(data).__name__}", param_hint=param_hint)
    return data


def load_json_option(ctx, param, value):
    """A JSON object given inline or as a path to a .json file."""
    if value is None:
        return None
    if Path(value).is_file():
        return read_json_file(value, param.opts[0] if param is not None else "--adm-kwargs")
    try:
        data = json.loads(value)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"expected a JSON object or a path to one ({err})") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"expected a JSON object, got {type(data).__name__}")
    return data


_finite = finite


def check_run_folder(out_dir, device) -> str:
    """Before training: the device exists (one resolution, clear error), --out can be written, and temporaries of
    killed writers there are removed. Returns the device name."""
    from diffguide.io import clean_stale_temporaries

    from ._common import device_or_fail, writable_or_fail

    device = device_or_fail(device) if device is not None else None
    writable_or_fail(out_dir, is_dir=True)
    clean_stale_temporaries(out_dir)
    return device


def run_options(function):
    """The options ``train`` and ``train-classifier`` share (data, network, optimizer, run length, files)."""
    options = [
        click.option("--data", help="Data set for diffguide.data.load_dataset: IDX file/folder (MNIST, Fashion-MNIST), "
                                    "image folder or tarball of class folders (CIFAR-10 layout), or ADM npz."),
        click.option("--split", help="Split to train on (IDX: train/test; folders/tarballs: the split folder; "
                                     "'none' for sources without splits, e.g. npz). [default: train]"),
        click.option("--limit", type=click.IntRange(min=1),
                     help="Use N images spread evenly over the set (quick runs)."),
        click.option("--hflip/--no-hflip", default=None,
                     help="Random horizontal flips. [default: on for RGB (CIFAR-like), off for grey (MNIST-like)]"),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="Output folder: checkpoint, log, samples, released model. A checkpoint there is resumed "
                          "(with the same configuration; only run length and logging intervals may change)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="Start from this configuration JSON (e.g. a previous run's train_config.json); other flags "
                          "given on the command line override its fields."),
        click.option("--steps", type=click.IntRange(min=0), help="Optimizer steps. [default: 10000 / 5000]"),
        click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size (split over DDP processes). "
                                                                      "[default: 128]"),
        click.option("--lr", type=float, callback=_finite, help="AdamW learning rate. [default: 2e-4 / 3e-4]"),
        click.option("--weight-decay", type=float, callback=_finite, help="AdamW weight decay. [default: 0 / 0.05]"),
        click.option("--warmup", type=click.IntRange(min=0), help="Linear learning-rate warm-up steps. "
                                                                  "[default: min(500, steps/10) / 200]"),
        click.option("--grad-clip", type=float, callback=_finite, help="Max global gradient norm, 0 = off. [default: 1.0]"),
        click.option("--ema-decay", type=float, callback=_finite, help="EMA decay of the weights (released and sampled); 0 = no EMA. "
                                                     "[default: 0.9999 / 0]"),
        click.option("--bf16/--no-bf16", default=None, help="bf16 autocast on CUDA. [default: on]"),
        click.option("--schedule", type=click.Choice(["linear", "cosine"]), help="Noise schedule. [default: linear]"),
        click.option("--timesteps", type=click.IntRange(min=2),
                     help="T of the noise schedule (linear: T ≥ 21, so that β_T = 0.02·1000/T < 1). [default: 1000]"),
        click.option("--seed", type=click.IntRange(min=0), help="Seed of initialisation, data order and noise. "
                                                                "[default: 0]"),
        click.option("--log-every", type=click.IntRange(min=1), help="Steps per log.jsonl record. [default: 50]"),
        click.option("--checkpoint-every", type=click.IntRange(min=1), help="Steps per checkpoint. [default: 1000]"),
        click.option("--preset", type=click.Choice(["small", "tiny"]),
                     help="Small-network size preset (small: 64 channels, mult 1,2,2, 2 blocks, attention at 1/4; "
                          "tiny: 32 channels, mult 1,2, 1 block, no attention). [default: small]"),
        click.option("--model-channels", type=click.IntRange(min=1), help="Base channels of the small network."),
        click.option("--channel-mult", callback=_int_list, help="Channel multipliers per level, e.g. 1,2,2."),
        click.option("--num-res-blocks", type=click.IntRange(min=1), help="Residual blocks per level."),
        click.option("--attention-resolutions", callback=_int_list,
                     help="Downsample rates with self-attention, e.g. 4 (empty string: none)."),
        click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), callback=_finite,
                     help="Dropout probability in residual blocks, in [0, 1). [default: 0]"),
        click.option("--adm-kwargs", callback=load_json_option,
                     help="ADM constructor arguments (JSON or .json path) for --net adm_unet / adm_classifier; "
                          "image_size, channels and classes come from the data."),
        click.option("--device", help="Device [default: cuda:LOCAL_RANK if available, else cpu]."),
        click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), callback=_finite,
                     help="Stop after this many seconds of training (checkpoint, samples and release still written)."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bar."),
        click.option("--eager", is_flag=True, help="Turn the GPU fast path off (torch.compile, fused "
                     "AdamW; on by default on CUDA, off on the CPU)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def apply_options(config_cls, config_file, values: dict, fields: dict):
    """A ``config_cls`` from ``config_file`` (or defaults) with every non-None flag of ``values`` applied
    (``--preset`` first, so the single network flags override it)."""
    from diffguide.nets.small_unet import SMALL_UNET_PRESETS
    from diffguide.train.config import NetConfig

    try:
        data = config_cls.from_dict(read_json_file(config_file, "--config")).to_dict() if config_file \
            else config_cls().to_dict()
    except (ValueError, TypeError) as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    preset = values.get("preset")
    if preset is not None:
        data["net"].update({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_UNET_PRESETS[preset].items()})
    for flag, (section, name) in fields.items():
        value = values.get(flag)
        if value is None:
            continue
        if flag in ("split", "eval_split") and value == "none":
            value = None
        (data[section] if section else data)[name] = value
    if data["net"]["arch"] not in ("small_unet", "small_classifier") and preset is not None:
        raise click.BadParameter("--preset applies to the small networks only", param_hint="--preset")
    NetConfig.from_dict(data["net"])  # validate early, with the net's own messages
    return config_cls.from_dict(data)


def _fail(err: Exception, fields: dict | None = None):
    """A library error as a one-line click error; config field names (``NetConfig.dropout``) shown as their flags."""
    from ._common import with_flag_names

    flags = {name: "--" + flag.replace("_", "-") for flag, (_, name) in (fields or {}).items()}
    message = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
    raise click.ClickException(with_flag_names(message, flags, keep_names=True)) from None


@click.command("train")
@run_options
@click.option("--net", type=click.Choice(["small_unet", "adm_unet"]),
              help="small_unet (the small preset of diffguide.nets.small_unet.SmallUNet) or adm_unet (ADM's UNet of "
                   "any size from --adm-kwargs, with the learned null label). "
                   "[default: small_unet]")
@click.option("--unconditional", is_flag=True, default=False, help="Train an unconditional model (no labels).")
@click.option("--loss", type=click.Choice(["standard", "aligned"]),
              help="standard: L_std = E‖ε − ε_θ(x_t, c̃)‖²; aligned: "
                   "L_ours = E‖ε − [(1+w)ε_θ(x_t, c̃) − wε_θ(x_t, ∅)]‖² at w = w_train. [default: standard]")
@click.option("--p-uncond", type=float, help="Probability of replacing a label by the null label ∅. [default: 0.1]")
@click.option("--w-train", type=float, help="w_train of the aligned loss (ε̃ = (1+w)ε_c − wε_∅). [default: 1.0]")
@click.option("--w-range", type=(float, float), default=None,
              help="W_MIN W_MAX: draw w_train ~ U[w_min, w_max] once per batch instead of --w-train.")
@click.option("--stop-grad-null/--no-stop-grad-null", default=None,
              help="Stop the gradient through ε_θ(x_t, ∅) inside the guided term. [default: off]")
@click.option("--mix-lambda", type=float, help="Train on L_std + λ·L_ours instead of L_ours alone.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False),
              help="Fine-tune: start from a released model folder (e.g. a standard-loss run's model/) instead of "
                   "random weights; the network flags must describe the same network.")
@click.option("--sample-every", type=click.IntRange(min=0), help="Steps per sample grid (0: only at the end). "
                                                                 "[default: 0]")
@click.option("--sample-w", type=float, help="CFG weight w of the sample grids. [default: 1.0]")
@click.option("--sample-steps", type=click.IntRange(min=1), help="DDIM steps of the sample grids. [default: 50]")
@click.option("--samples-per-class", type=click.IntRange(min=1), help="Grid columns (samples per class). "
                                                                      "[default: 10]")
def command(**values):
    """Train an ε-prediction diffusion model (CFG with a learned null label, or unconditional) with the standard or
    the CFG-aligned loss. Writes checkpoint.pt (resumed when present), log.jsonl, loss.png, samples.png,
    model/ (model.safetensors + config.json + train_config.json) and summary.json to --out; prints a summary table.
    Several GPUs: torchrun --nproc_per_node N -m diffguide.cli.train ... (or `diffguide train` under torchrun)."""
    from diffguide.train import TrainConfig, train

    def unconditional(config):
        if not values["unconditional"]:
            return config
        data = config.to_dict()
        data["net"]["class_conditional"] = False
        return TrainConfig.from_dict(data)

    run_training(train, TrainConfig, values, {**RUN_FIELDS, **TRAIN_FIELDS}, unconditional)


def run_training(entry, config_type, values: dict, fields: dict, adjust=None) -> dict:
    """What ``train`` and ``train-classifier`` share: the config from the flags (``adjust``-ed), the run folder checked,
    ``entry(config, out_dir, ...)`` run, any error as a one-line message naming the flag, the summary printed."""
    try:
        config = apply_options(config_type, values.pop("config_file"), values, fields)
        if adjust is not None:
            config = adjust(config)
        device = check_run_folder(values["out_dir"], values["device"])
        summary = entry(config, values["out_dir"], device=device, progress=values["progress"],
                        time_limit_s=values["time_limit"], fast=False if values["eager"] else None)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(err, fields)
    print_train_summary(summary)
    return summary


def print_train_summary(summary: dict) -> None:
    """A one-line table of the run (rank 0 only under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    click.echo(f"{'steps':>8} {'first loss':>11} {'last loss':>10} {'steps/s':>8} {'train s':>8}  out")
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    click.echo(f"{summary['steps']:>8} {fmt(summary['first_loss'], '>11.5f')} {fmt(summary['last_loss'], '>10.5f')} "
               f"{fmt(summary['steps_per_s'], '>8.2f')} {summary['train_seconds']:>8.1f}  {summary['out']}")
    if summary.get("stopped_early"):
        click.echo("stopped early at the time limit; run the same command again to continue")


if __name__ == "__main__":  # torchrun --nproc_per_node N -m diffguide.cli.train ...
    command()
