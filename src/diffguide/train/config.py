"""Typed configuration of training runs, saved as JSON beside the weights and inside every checkpoint.

A run is resumable only with the configuration it was started with; the fields listed in ``RESUMABLE`` (how long to
run, how often to log / checkpoint / draw samples) may change between the start and a resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["check_time_limit", "DataConfig", "NetConfig", "LossConfig", "OptimConfig", "TrainConfig", "ClassifierTrainConfig",
           "config_differences", "LOSS_KINDS", "DIFFUSION_ARCHS", "CLASSIFIER_ARCHS"]

LOSS_KINDS = ("standard", "aligned")
DIFFUSION_ARCHS = ("small_unet", "adm_unet")
CLASSIFIER_ARCHS = ("small_classifier", "adm_classifier")


def _number(owner: str, name: str, value, *, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name}: expected a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{owner}.{name}: expected a number {'>' if low_open else '≥'} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{owner}.{name}: expected a number ≤ {high}, got {value!r}")


def _integer(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name}: expected an integer ≥ {minimum}, got {value!r}")


def _choice(owner: str, name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{owner}.{name}: expected one of {list(options)}, got {value!r}")


def check_time_limit(time_limit_s) -> None:
    """A ValueError unless ``time_limit_s`` is None or a finite number of seconds > 0 (nan would never trigger)."""
    if time_limit_s is not None:
        _number("train", "time_limit_s", time_limit_s, low=0, low_open=True)


class _Config:
    """JSON round trip for (nested) config dataclasses: unknown keys are an error, nested dicts become dataclasses."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown} (known: {sorted(fields)})")
        values = {}
        for name, value in data.items():
            nested = _NESTED.get((cls.__name__, name))
            values[name] = nested.from_dict(value) if nested is not None and isinstance(value, dict) else value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))


@dataclass
class DataConfig(_Config):
    """Where the images come from (read by :func:`diffguide.data.load_dataset`)."""

    source: str = ""
    """IDX file/folder, image folder, tarball of class folders, or ADM npz."""
    split: str | None = "train"
    """split folder / IDX split; None for sources without splits (npz)."""
    limit: int | None = None
    """keep N images spread evenly over the data set's order (every class represented): quick runs, smoke tests."""
    hflip: bool | None = None
    """random horizontal flips; None = automatic: on for RGB (CIFAR-like), off for grey (MNIST-like)."""

    def __post_init__(self):
        if not isinstance(self.source, str):
            raise ValueError(f"DataConfig.source: expected a path string, got {self.source!r}")
        if self.limit is not None:
            _integer("DataConfig", "limit", self.limit)
        if self.hflip not in (None, True, False):
            raise ValueError(f"DataConfig.hflip: expected true, false or null (automatic), got {self.hflip!r}")


@dataclass
class NetConfig(_Config):
    """The network. ``small_unet`` / ``small_classifier``: the presets of :mod:`diffguide.nets.small_unet` with the
    fields below; ``adm_unet``: ADM's UNet of any size from ``adm_kwargs`` (UNetModel's arguments) with the learned
    null label (a ``SmallUNet``); ``adm_classifier``: ADM's ``EncoderUNetModel`` from ``adm_kwargs``. Image size,
    channels and classes are filled in from the data."""

    arch: str = "small_unet"
    class_conditional: bool = True
    """diffusion only: a learned null label at index num_classes (classifier-free guidance) or unconditional."""
    model_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [4])
    """downsample rates (image_size // resolution) with self-attention."""
    dropout: float = 0.0
    adm_kwargs: dict | None = None

    def __post_init__(self):
        _choice("NetConfig", "arch", self.arch, DIFFUSION_ARCHS + CLASSIFIER_ARCHS)
        _integer("NetConfig", "model_channels", self.model_channels)
        _integer("NetConfig", "num_res_blocks", self.num_res_blocks)
        self.channel_mult = [int(m) for m in self.channel_mult]
        self.attention_resolutions = [int(r) for r in self.attention_resolutions]
        _number("NetConfig", "dropout", self.dropout, low=0, high=1)
        if self.dropout == 1:
            raise ValueError("NetConfig.dropout: expected a number in [0, 1) (1 drops every activation), got 1")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"NetConfig.channel_mult: expected one or more multipliers ≥ 1, got {self.channel_mult}")
        if any(r < 1 for r in self.attention_resolutions):
            raise ValueError(f"NetConfig.attention_resolutions: expected downsample rates ≥ 1, got "
                             f"{self.attention_resolutions}")
        if self.arch.startswith("adm") and not isinstance(self.adm_kwargs, dict):
            raise ValueError(f"NetConfig.adm_kwargs: arch={self.arch!r} needs the ADM constructor arguments as a dict "
                             "(e.g. model_channels, num_res_blocks, attention_resolutions, channel_mult)")
        if self.adm_kwargs is not None:
            self.adm_kwargs = json.loads(json.dumps(self.adm_kwargs))  # tuples -> lists: equal after a JSON round trip


@dataclass
class LossConfig(_Config):
    """The diffusion loss (spec cfg-loss.md). ``standard``: L_std with label dropout; ``aligned``: L_ours, the guided
    combination at w_train regressed onto ε (optionally mixed: L_std + λ·L_ours)."""

    kind: str = "standard"
    p_uncond: float = 0.1
    """probability of replacing a label by the null label ∅."""
    w_train: float = 1.0
    """guidance weight of the aligned loss (paper convention: ε̃ = (1+w)ε_c − wε_∅)."""
    w_range: list[float] | None = None
    """[w_min, w_max]: draw w_train ~ U[w_min, w_max] once per batch instead of the fixed w_train."""
    stop_grad_null: bool = False
    """stop the gradient through ε_θ(x_t, ∅) inside the guided term."""
    mix_lambda: float | None = None
    """None: L_ours alone; λ: L_std + λ·L_ours."""

    def __post_init__(self):
        _choice("LossConfig", "kind", self.kind, LOSS_KINDS)
        _number("LossConfig", "p_uncond", self.p_uncond, low=0, high=1)
        _number("LossConfig", "w_train", self.w_train, low=0)
        if self.w_range is not None:
            if not isinstance(self.w_range, (list, tuple)) or len(self.w_range) != 2:
                raise ValueError(f"LossConfig.w_range: expected [w_min, w_max], got {self.w_range!r}")
            self.w_range = [float(w) for w in self.w_range]
            _number("LossConfig", "w_range[0] (w_min)", self.w_range[0], low=0)
            _number("LossConfig", "w_range[1] (w_max)", self.w_range[1], low=self.w_range[0])
        if self.mix_lambda is not None:
            _number("LossConfig", "mix_lambda", self.mix_lambda, low=0)
        if not isinstance(self.stop_grad_null, bool):
            raise ValueError(f"LossConfig.stop_grad_null: expected true or false, got {self.stop_grad_null!r}")
        if self.kind == "aligned" and self.p_uncond == 0:
            raise ValueError("LossConfig.p_uncond: the aligned loss needs p_uncond > 0 — without dropped labels "
                             "nothing pins ε_θ(x_t, ∅) to E[ε | x_t] and the optimum is not identified")


@dataclass
class OptimConfig(_Config):
    """AdamW with linear warm-up, gradient clipping, EMA of the weights, bf16 autocast on GPU."""

    batch_size: int = 128
    """global batch (split evenly over DDP processes)."""
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int | None = None
    """lr_k = lr · min(1, (k + 1)/W) with W = warmup_steps; None (the default) scales it to the run: W =
    min(500, steps // 10), so a 50-step run warms up over 5 steps instead of never reaching the learning rate."""
    grad_clip: float = 1.0
    """max global gradient norm; 0 turns clipping off."""
    ema_decay: float = 0.9999
    """EMA of the weights; 0 turns it off (the raw weights are released)."""
    ema_warmup: bool = True
    """decay_k = min(ema_decay, (1 + k)/(10 + k)), so short runs are not dominated by the initial weights."""
    bf16: bool = True
    """bf16 autocast of the forward pass on CUDA (no effect on CPU)."""

    def __post_init__(self):
        _integer("OptimConfig", "batch_size", self.batch_size)
        _number("OptimConfig", "lr", self.lr, low=0, low_open=True)
        _number("OptimConfig", "weight_decay", self.weight_decay, low=0)
        self.betas = [float(b) for b in self.betas]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.warmup_steps is not None:
            _integer("OptimConfig", "warmup_steps", self.warmup_steps, minimum=0)
        _number("OptimConfig", "grad_clip", self.grad_clip, low=0)
        _number("OptimConfig", "ema_decay", self.ema_decay, low=0, high=1)
        if self.ema_decay == 1:
            raise ValueError("OptimConfig.ema_decay: expected a number < 1 (1 would never move the EMA)")

    def warmup(self, total_steps: int | None = None) -> int:
        """The warm-up length W: ``warmup_steps``, or min(500, total_steps // 10) when it is None (500 without
        ``total_steps``)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return 500 if total_steps is None else min(500, total_steps // 10)


@dataclass
class _RunConfig(_Config):
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 10_000
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000

    RESUMABLE = ("steps", "log_every", "checkpoint_every")

    def _check_run(self, archs) -> None:
        owner = type(self).__name__
        _choice(owner, "net.arch", self.net.arch, archs)
        _integer(owner, "steps", self.steps, minimum=0)
        _choice(owner, "schedule", self.schedule, ("linear", "cosine"))
        _integer(owner, "num_train_timesteps", self.num_train_timesteps, minimum=2)
        if self.schedule == "linear" and self.num_train_timesteps <= 20:
            raise ValueError(f"{owner}.num_train_timesteps: the linear schedule's largest β is 0.02·1000/T, which must "
                             f"be < 1, so T ≥ 21; got {self.num_train_timesteps} (or use the cosine schedule)")
        _integer(owner, "seed", self.seed, minimum=0)
        _integer(owner, "log_every", self.log_every)
        _integer(owner, "checkpoint_every", self.checkpoint_every)


@dataclass
class TrainConfig(_RunConfig):
    """A diffusion training run (ε-prediction) — ``diffguide train``."""

    loss: LossConfig = field(default_factory=LossConfig)
    sample_every: int = 0
    """write a sample grid every this many steps (0: only at the end)."""
    sample_w: float = 1.0
    """CFG weight w of the sample grids (paper convention)."""
    sample_steps: int = 50
    """DDIM steps (η = 0) of the sample grids."""
    samples_per_class: int = 10
    init_from: str | None = None
    """fine-tune: start from the weights of a released model folder (model.safetensors + config.json), e.g. a
    standard-loss run's ``model/``; None trains from scratch."""

    RESUMABLE = _RunConfig.RESUMABLE + ("sample_every", "sample_w", "sample_steps", "samples_per_class")

    def __post_init__(self):
        self._check_run(DIFFUSION_ARCHS)
        _integer("TrainConfig", "sample_every", self.sample_every, minimum=0)
        _number("TrainConfig", "sample_w", self.sample_w)
        _integer("TrainConfig", "sample_steps", self.sample_steps)
        if self.sample_steps > self.num_train_timesteps:
            raise ValueError(f"TrainConfig.sample_steps: {self.sample_steps} sampling steps of a "
                             f"{self.num_train_timesteps}-step schedule; expected at most {self.num_train_timesteps}")
        _integer("TrainConfig", "samples_per_class", self.samples_per_class)
        if not self.net.class_conditional and self.loss.kind == "aligned":
            raise ValueError("LossConfig.kind: the aligned CFG loss needs a class-conditional network "
                             "(net.class_conditional = true)")


@dataclass
class ClassifierTrainConfig(_RunConfig):
    """A noise-aware classifier run — ``diffguide train-classifier``: cross-entropy on x_t, t ~ U{0..T−1}, plus
    ``ece_weight``·Smooth-ECE (:func:`diffguide.calibration.smooth_ece_loss`) when ece_weight > 0."""

    net: NetConfig = field(default_factory=lambda: NetConfig(arch="small_classifier"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.05, ema_decay=0.0,
                                                                   warmup_steps=200))
    ece_weight: float = 0.0
    ece_form: str = "sample"
    ece_beta: float = 1e-3
    eval_split: str | None = "test"
    eval_limit: int | None = None
    eval_timesteps: list[int] | None = None
    """original timesteps of the per-noise-level report; None: 0, T/10, ..., T−1."""

    RESUMABLE = _RunConfig.RESUMABLE + ("eval_split", "eval_limit", "eval_timesteps")

    def __post_init__(self):
        self._check_run(CLASSIFIER_ARCHS)
        _number("ClassifierTrainConfig", "ece_weight", self.ece_weight, low=0)
        _choice("ClassifierTrainConfig", "ece_form", self.ece_form, ("sample", "bin"))
        _number("ClassifierTrainConfig", "ece_beta", self.ece_beta, low=0, low_open=True)
        if self.eval_limit is not None:
            _integer("ClassifierTrainConfig", "eval_limit", self.eval_limit)
        if self.eval_timesteps is not None:
            self.eval_timesteps = [int(t) for t in self.eval_timesteps]
            bad = [t for t in self.eval_timesteps if not 0 <= t < self.num_train_timesteps]
            if bad or not self.eval_timesteps:
                raise ValueError(f"ClassifierTrainConfig.eval_timesteps: expected timesteps in "
                                 f"[0, {self.num_train_timesteps - 1}], got {self.eval_timesteps!r}")


_NESTED = {(owner, name): kind for owner in ("TrainConfig", "ClassifierTrainConfig")
           for name, kind in (("data", DataConfig), ("net", NetConfig), ("optim", OptimConfig), ("loss", LossConfig))}


def config_differences(saved: dict, current: _RunConfig) -> dict[str, tuple]:
    """{field: (saved, current)} for every field that differs, ignoring the resumable ones (nested fields dotted)."""
    now = current.to_dict()
    changed = {}
    for key in sorted(set(saved) | set(now)):
        if key in type(current).RESUMABLE:
            continue
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key in ("data", "net", "optim", "loss"):
            changed.update({f"{key}.{k}": (a.get(k), b.get(k))
                            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
        elif a != b:
            changed[key] = (a, b)
    return changed
