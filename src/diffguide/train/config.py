"""Typed configuration of training runs, saved as JSON beside the weights and inside every checkpoint.

A run is resumable only with the configuration it was started with; the fields listed in ``RESUMABLE`` (how long to
run, how often to log / checkpoint / draw samples) may change between the start and a resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import Config, check_choice, check_integer, check_number, check_timesteps

__all__ = ["check_time_limit", "DataConfig", "NetConfig", "LossConfig", "OptimConfig", "TrainConfig", "ClassifierTrainConfig",
           "config_differences", "LOSS_KINDS", "DIFFUSION_ARCHS", "CLASSIFIER_ARCHS"]

LOSS_KINDS = ("standard", "aligned")
DIFFUSION_ARCHS = ("small_unet", "adm_unet")
CLASSIFIER_ARCHS = ("small_classifier", "adm_classifier")
SMALL_FIELDS = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout")
"""NetConfig fields of the small presets (ignored by the ADM architectures, which take ``adm_kwargs``)."""


def check_time_limit(time_limit_s) -> None:
    """A ValueError unless ``time_limit_s`` is None or a finite number of seconds > 0 (nan would never trigger)."""
    if time_limit_s is not None:
        check_number("time_limit_s", time_limit_s, low=0, low_open=True)


@dataclass
class DataConfig(Config):
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
            check_integer("DataConfig.limit", self.limit)
        if self.hflip not in (None, True, False):
            raise ValueError(f"DataConfig.hflip: expected true, false or null (automatic), got {self.hflip!r}")


@dataclass
class NetConfig(Config):
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
        check_choice("NetConfig.arch", self.arch, DIFFUSION_ARCHS + CLASSIFIER_ARCHS)
        check_integer("NetConfig.model_channels", self.model_channels)
        check_integer("NetConfig.num_res_blocks", self.num_res_blocks)
        self.channel_mult = [int(m) for m in self.channel_mult]
        self.attention_resolutions = [int(r) for r in self.attention_resolutions]
        check_number("NetConfig.dropout", self.dropout, low=0, high=1)
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

    def to_dict(self) -> dict:
        """The fields of this architecture only: ``adm_kwargs`` for the ADM networks, the small preset's fields for
        the small ones (so a released ``train_config.json`` never shows settings the network did not use);
        ``class_conditional`` for diffusion networks only. Configs written with every field still read."""
        data = super().to_dict()
        unused = SMALL_FIELDS if self.arch.startswith("adm") else ("adm_kwargs",)
        unused += ("class_conditional",) if self.arch in CLASSIFIER_ARCHS else ()
        return {k: v for k, v in data.items() if k not in unused}


@dataclass
class LossConfig(Config):
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
        check_choice("LossConfig.kind", self.kind, LOSS_KINDS)
        check_number("LossConfig.p_uncond", self.p_uncond, low=0, high=1)
        check_number("LossConfig.w_train", self.w_train, low=0)
        if self.w_range is not None:
            if not isinstance(self.w_range, (list, tuple)) or len(self.w_range) != 2:
                raise ValueError(f"LossConfig.w_range: expected [w_min, w_max], got {self.w_range!r}")
            self.w_range = [float(w) for w in self.w_range]
            check_number("LossConfig.w_range[0] (w_min)", self.w_range[0], low=0)
            check_number("LossConfig.w_range[1] (w_max)", self.w_range[1], low=self.w_range[0])
        if self.mix_lambda is not None:
            check_number("LossConfig.mix_lambda", self.mix_lambda, low=0)
        if not isinstance(self.stop_grad_null, bool):
            raise ValueError(f"LossConfig.stop_grad_null: expected true or false, got {self.stop_grad_null!r}")
        if self.kind == "aligned" and self.p_uncond == 0:
            raise ValueError("LossConfig.p_uncond: the aligned loss needs p_uncond > 0 — without dropped labels "
                             "nothing pins ε_θ(x_t, ∅) to E[ε | x_t] and the optimum is not identified")


@dataclass
class OptimConfig(Config):
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
        check_integer("OptimConfig.batch_size", self.batch_size)
        check_number("OptimConfig.lr", self.lr, low=0, low_open=True)
        check_number("OptimConfig.weight_decay", self.weight_decay, low=0)
        self.betas = [float(b) for b in self.betas]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.warmup_steps is not None:
            check_integer("OptimConfig.warmup_steps", self.warmup_steps, minimum=0)
        check_number("OptimConfig.grad_clip", self.grad_clip, low=0)
        check_number("OptimConfig.ema_decay", self.ema_decay, low=0, high=1)
        if self.ema_decay == 1:
            raise ValueError("OptimConfig.ema_decay: expected a number < 1 (1 would never move the EMA)")

    def warmup(self, total_steps: int | None = None) -> int:
        """The warm-up length W: ``warmup_steps``, or min(500, total_steps // 10) when it is None (500 without
        ``total_steps``)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return 500 if total_steps is None else min(500, total_steps // 10)


@dataclass
class _RunConfig(Config):
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
        check_choice(f"{owner}.net.arch", self.net.arch, archs)
        check_integer(f"{owner}.steps", self.steps, minimum=0)
        check_choice(f"{owner}.schedule", self.schedule, ("linear", "cosine"))
        check_integer(f"{owner}.num_train_timesteps", self.num_train_timesteps, minimum=2)
        if self.schedule == "linear" and self.num_train_timesteps <= 20:
            raise ValueError(f"{owner}.num_train_timesteps: the linear schedule's largest β is 0.02·1000/T, which must "
                             f"be < 1, so T ≥ 21; got {self.num_train_timesteps} (or use the cosine schedule)")
        check_integer(f"{owner}.seed", self.seed, minimum=0)
        check_integer(f"{owner}.log_every", self.log_every)
        check_integer(f"{owner}.checkpoint_every", self.checkpoint_every)


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
        check_integer("TrainConfig.sample_every", self.sample_every, minimum=0)
        check_number("TrainConfig.sample_w", self.sample_w)
        check_integer("TrainConfig.sample_steps", self.sample_steps)
        if self.sample_steps > self.num_train_timesteps:
            raise ValueError(f"TrainConfig.sample_steps: {self.sample_steps} sampling steps of a "
                             f"{self.num_train_timesteps}-step schedule; expected at most {self.num_train_timesteps}")
        check_integer("TrainConfig.samples_per_class", self.samples_per_class)
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
        check_number("ClassifierTrainConfig.ece_weight", self.ece_weight, low=0)
        check_choice("ClassifierTrainConfig.ece_form", self.ece_form, ("sample", "bin"))
        check_number("ClassifierTrainConfig.ece_beta", self.ece_beta, low=0, low_open=True)
        if self.eval_limit is not None:
            check_integer("ClassifierTrainConfig.eval_limit", self.eval_limit)
        if self.eval_timesteps is not None:
            self.eval_timesteps = check_timesteps("ClassifierTrainConfig.eval_timesteps", self.eval_timesteps,
                                                  self.num_train_timesteps)


def config_differences(saved: dict, current: _RunConfig) -> dict[str, tuple]:
    """{field: (saved, current)} for every field that differs, ignoring the resumable ones (nested fields dotted):
    :meth:`diffguide.config.Config.resume_differences`."""
    return current.resume_differences(saved)
