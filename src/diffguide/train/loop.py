"""The training loop shared by diffusion models (``diffguide train``) and noise-aware classifiers
(``diffguide train-classifier``): AdamW with linear warm-up, gradient clipping, EMA, bf16 autocast on GPU, DDP through
torchrun, a tqdm bar, a JSON-lines loss log, checkpoints that resume exactly, and the released weights.

Determinism: every random draw of step k on process r (flip, t, ε, label dropout, w_train) comes from a generator
seeded with (seed, r, k), and the data order of epoch e from (seed, e); model, EMA, optimizer and the global RNG
states (dropout) are in the checkpoint. A run resumed from a checkpoint therefore computes exactly what the
uninterrupted run computes (bit-identical on CPU with the same number of processes and threads).

Files in ``out_dir``: ``train_config.json``, ``checkpoint.pt`` (replaced atomically: a kill during a write leaves the
previous one), ``log.jsonl``, ``samples/step_XXXXXXX.png`` and ``samples.png`` (diffusion), ``loss.png``,
``model/`` (``model.safetensors`` + ``config.json`` from :func:`diffguide.checkpoints.save_network`, and
``train_config.json``), ``summary.json`` and, for classifiers, ``report.json`` and ``ece_t.png``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..accel import fast_module, fused_adamw, use_fast_path
from ..adapter import ClassifierFree, Denoiser
from ..calibration import SeededBatches, evaluate_calibration, plot_ece_over_timesteps, smooth_ece_loss
from ..checkpoints import load_network, load_state_dict_checked, save_network
from ..data import check_uint8_images, load_dataset, to_model_range, to_uint8
from ..guidance.classifier import Guidance
from ..io import atomic_write, atomic_write_text, spread_indices
from ..nets.adm import EncoderUNetModel
from ..nets.small_unet import SmallUNet, small_noisy_classifier
from ..noise import SeededNoise
from ..samplers import ddim
from ..sampling import distributed_context
from ..schedule import NoiseSchedule
from .config import ClassifierTrainConfig, NetConfig, OptimConfig, TrainConfig, check_time_limit, config_differences
from .losses import diffusion_training_loss, noised_batch

__all__ = [
    "train", "train_classifier", "build_diffusion_net", "build_classifier_net", "learning_rate", "ema_decay_at",
    "ema_update", "step_generator", "ImageBatches", "class_grid", "load_training_checkpoint",
    "CHECKPOINT", "LOG", "CONFIG", "RELEASE",
]

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
CONFIG = "train_config.json"
RELEASE = "model"
_FORMAT = "diffguide-train-checkpoint"

Objective = Callable[[nn.Module, Tensor, Tensor | None, torch.Generator], tuple[Tensor, dict]]


# ----------------------------------------------------------------------------------------------- schedules

def learning_rate(step: int, optim: OptimConfig, total_steps: int | None = None) -> float:
    """lr_k = lr · min(1, (k + 1)/W) (k counted from 0; no warm-up when W = 0), W = ``optim.warmup(total_steps)``."""
    warmup = optim.warmup(total_steps)
    if warmup == 0:
        return optim.lr
    return optim.lr * min(1.0, (step + 1) / warmup)


def ema_decay_at(step: int, optim: OptimConfig) -> float:
    """EMA decay after optimizer step k: ema_decay, or min(ema_decay, (1 + k)/(10 + k)) with ``ema_warmup``."""
    if optim.ema_warmup:
        return min(optim.ema_decay, (1 + step) / (10 + step))
    return optim.ema_decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ for parameters; buffers are copied."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of every random draw of step ``step`` on process ``rank``: seeded from (seed, rank, step)."""
    state = np.random.SeedSequence([seed, 0x7124, rank, step]).generate_state(1, np.uint64)[0]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state >> np.uint64(1)))
    return generator


# ----------------------------------------------------------------------------------------------- data

class ImageBatches:
    """Mini-batches of an in-memory uint8 NHWC image set, as float NCHW in [−1, 1] on ``device``.

    Global batch k of epoch e = positions [k·B, (k+1)·B) of a permutation seeded by (seed, e) (the last partial batch
    of an epoch is dropped); process r of W takes its B/W slice. Step s is batch s mod (N // B) of epoch s // (N // B),
    so any step's batch is known without replaying the ones before it. With ``hflip`` each image is mirrored with
    probability 1/2 (one uniform draw per image from the step's generator).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, batch_size: int, *, seed: int, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", hflip: bool = False):
        check_uint8_images(images, "dataset.images")
        if batch_size % world:
            raise ValueError(f"batch_size: the global batch ({batch_size}) must divide evenly over {world} processes")
        if len(images) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the data set ({len(images)} images)")
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        self.batch_size, self.seed, self.rank, self.world, self.hflip = batch_size, seed, rank, world, hflip
        self.per_epoch = len(images) // batch_size
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 0xDA7A, epoch])
                                                          .generate_state(1, np.uint64)[0] >> np.uint64(1)))
            order = torch.randperm(len(self.images), generator=generator)
            self._order, self._epoch = order.to(self.device), epoch  # one copy per epoch, none per step
        return self._order

    def batch(self, step: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        epoch, k = divmod(step, self.per_epoch)
        local = self.batch_size // self.world
        start = k * self.batch_size + self.rank * local
        index = self.order(epoch)[start:start + local]
        x = to_model_range(self.images[index])
        if self.hflip:
            flip = torch.rand(local, generator=generator, device=generator.device if generator else "cpu")
            x = torch.where((flip < 0.5).to(self.device)[:, None, None, None], x.flip(3), x)
        return x, None if self.labels is None else self.labels[index]


def _training_data(config, dataset):
    """(data set, images, labels, image shape (C, H, W), hflip) of a run: ``dataset`` or the configured source,
    ``data.limit`` applied, flips on for RGB unless configured."""
    data = dataset if dataset is not None else _load(config.data.source, config.data.split)
    images, labels = _select(data, config.data.limit)
    check_uint8_images(images, "dataset.images")
    image_shape = (images.shape[3], images.shape[1], images.shape[2])
    hflip = config.data.hflip if config.data.hflip is not None else image_shape[0] == 3
    return data, images, labels, image_shape, hflip


def _num_classes(dataset) -> int | None:
    """K from the class names (or the largest label + 1); a ValueError for labels outside [0, K)."""
    if dataset.labels is None:
        return None
    labels = np.asarray(dataset.labels)
    names = getattr(dataset, "class_names", None)
    count = len(names) if names else int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= count:
        raise ValueError(f"dataset.labels: expected values in [0, {count}) ({count} class names), got "
                         f"[{labels.min()}, {labels.max()}]")
    return count


def _load(source: str, split: str | None):
    if not source:
        raise ValueError("data.source: expected a data set path (IDX files, image folder, tarball or npz)")
    return load_dataset(source, split)


def _select(dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels) of ``dataset``, or ``limit`` of them spread evenly over its order (image folders are sorted by
    class, so taking the first N would keep one class)."""
    images, labels = dataset.images, dataset.labels
    if limit is not None and limit < len(images):
        keep = spread_indices(len(images), limit)  # the one meaning of --limit (diffguide.io)
        images, labels = images[keep], None if labels is None else np.asarray(labels)[keep]
    return images, labels


# ----------------------------------------------------------------------------------------------- networks

def build_diffusion_net(net: NetConfig, image_shape: tuple[int, int, int], num_classes: int | None
                        ) -> tuple[nn.Module, int | None]:
    """(ε-network, null label) for images ``image_shape`` = (C, H, W): a :class:`~diffguide.nets.small_unet.SmallUNet`
    (ADM's UNet with a learned null label ∅ = num_classes) of the small preset (``small_unet``) or of any ADM size
    given by ``net.adm_kwargs`` (``adm_unet``: UNetModel's arguments; image size, channels and classes come from
    the data; num_classes, dims, use_checkpoint and use_fp16 are dropped)."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"data: expected square images, got {height}x{width}")
    if net.class_conditional and num_classes is None:
        raise ValueError("net.class_conditional: the data set has no labels; train an unconditional model instead")
    classes = num_classes if net.class_conditional else None
    if net.arch == "small_unet":
        kwargs = dict(model_channels=net.model_channels, channel_mult=net.channel_mult,
                      num_res_blocks=net.num_res_blocks, attention_resolutions=net.attention_resolutions,
                      dropout=net.dropout)
    elif net.arch == "adm_unet":
        kwargs = dict(net.adm_kwargs)
        fixed = {"image_size": height, "in_channels": channels, "out_channels": channels}
        for key, value in fixed.items():
            if kwargs.pop(key, value) != value:
                raise ValueError(f"net.adm_kwargs.{key}: the data gives {value}, got {kwargs.get(key)!r} "
                                 "(ε-prediction only: out_channels = in_channels)")
        for key in ("num_classes", "dims", "use_checkpoint", "use_fp16"):
            kwargs.pop(key, None)
    else:
        raise ValueError(f"net.arch: expected a diffusion network ('small_unet' or 'adm_unet'), got {net.arch!r}")
    model = SmallUNet(image_size=height, in_channels=channels, num_classes=classes, **kwargs)
    return model, classes


def build_classifier_net(net: NetConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A noise-aware classifier ``classifier(x_t, t)``: the small preset or ADM's ``EncoderUNetModel``."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"data: expected square images, got {height}x{width}")
    if net.arch == "small_classifier":
        return small_noisy_classifier(height, channels, num_classes, model_channels=net.model_channels,
                                      channel_mult=net.channel_mult, num_res_blocks=net.num_res_blocks,
                                      attention_resolutions=net.attention_resolutions, dropout=net.dropout)
    if net.arch == "adm_classifier":
        return EncoderUNetModel(**{**net.adm_kwargs, "image_size": height, "in_channels": channels,
                                   "out_channels": num_classes})
    raise ValueError(f"net.arch: expected a classifier ('small_classifier' or 'adm_classifier'), got {net.arch!r}")


# ----------------------------------------------------------------------------------------------- outputs

def class_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 NHWC images laid out in ``rows`` rows (row r = images [r·n/rows, (r+1)·n/rows)), 2-pixel gaps."""
    n, h, w, c = images.shape
    cols = math.ceil(n / rows)
    grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2, c), dtype=np.uint8)
    for k, image in enumerate(images):
        r, q = divmod(k, cols)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = image
    return grid


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@torch.no_grad()
def sample_images(net: nn.Module, config: TrainConfig, image_shape, num_classes: int | None,
                  device: torch.device) -> tuple[np.ndarray, int]:
    """DDIM (η = 0, ``config.sample_steps`` steps) samples with CFG at ``config.sample_w``: ``samples_per_class``
    per class (class-major order) or 64 unconditional ones; per-sample seeds (seed, k). Returns (uint8 NHWC, rows)."""
    schedule = NoiseSchedule.create(config.schedule, str(config.sample_steps), config.num_train_timesteps)
    denoiser = Denoiser(net, schedule, clip_x0=True, num_classes=num_classes)
    if num_classes is None:
        n, rows, labels, guidance = 64, 8, None, None
    else:
        n, rows = num_classes * config.samples_per_class, num_classes
        labels = torch.arange(num_classes, device=device).repeat_interleave(config.samples_per_class)
        guidance = Guidance(cfg=ClassifierFree(w=config.sample_w, null_label=num_classes))
    noise = SeededNoise(config.seed, range(n), image_shape, device=device)
    was_training = net.training
    net.eval()
    try:
        samples = ddim(denoiser, noise, labels, guidance=guidance).samples
    finally:
        net.train(was_training)
    return to_uint8(samples.float().clamp(-1, 1)), rows


def plot_loss_curve(log_path: Path, png_path: Path, title: str = "") -> None:
    """Loss (and its parts) against the step, from the JSON-lines log."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    figure.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    steps = [r["step"] for r in records]
    for key in ("loss", "loss_standard", "loss_aligned", "cross_entropy", "ece_loss"):
        if key in records[0]:
            axes.plot(steps, [r[key] for r in records], label=key, linewidth=1)
    axes.set_xlabel("step")
    axes.set_yscale("log")
    axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    atomic_write(png_path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


# ----------------------------------------------------------------------------------------------- checkpoints

def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint (``torch.load(weights_only=True)``): model, ema, optimizer, step, rng, config (JSON)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise ValueError(f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a diffguide training checkpoint (expected format {_FORMAT!r})")
    return state


def _check_resume(state: dict, config, kind: str, path: Path) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"{path}: a {state.get('kind')} checkpoint cannot resume a {kind} run")
    changed = config_differences(json.loads(state["config"]), config)
    if changed:
        listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changed.items()))
        raise ValueError(f"{path} was written by a run with a different configuration ({listing}); only "
                         f"{', '.join(type(config).RESUMABLE)} may change on resume — use another output folder")


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records after ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# ----------------------------------------------------------------------------------------------- the loop

class _Run:
    """One training run: everything but the objective and what happens at the end."""

    def __init__(self, config, kind: str, model: nn.Module, objective: Objective, batches: ImageBatches,
                 out_dir: Path, *, rank: int, world: int, device: torch.device, progress: bool,
                 time_limit_s: float | None, fast: bool | None = None):
        self.config, self.kind, self.objective, self.batches = config, kind, objective, batches
        self.out, self.rank, self.world, self.device = out_dir, rank, world, device
        self.progress, self.time_limit_s = progress, time_limit_s
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.optim.ema_decay > 0 else None
        self.fast = use_fast_path(fast, device)
        net = self.model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # the forward/backward of training (checkpoints hold self.model's weights). One process: CUDA graphs too — the
        # 17M CIFAR net at batch 128 is launch-bound (2.25x, docs/performance.md); under DDP plain compilation.
        self.net = fast_module(net, fast=self.fast, mode="reduce-overhead" if world == 1 else None)
        optim = config.optim
        self.optimizer = fused_adamw(self.model.parameters(), fast=self.fast, lr=optim.lr, betas=tuple(optim.betas),
                                     weight_decay=optim.weight_decay)
        self.autocast = optim.bf16 and device.type == "cuda"
        self.step = 0
        self.stopped_early = False
        self.train_seconds = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def release_model(self) -> nn.Module:
        """The weights that are sampled and released: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when there is one (refused for a different configuration); then write
        ``train_config.json``."""
        path = self.out / CHECKPOINT
        if path.exists():
            self._load(path)
        if self.is_main:
            atomic_write_text(self.out / CONFIG, self.config.to_json() + "\n")

    def _load(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        _check_resume(state, self.config, self.kind, path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if int(state["world_size"]) == self.world:
            _set_rng_state(state["rng"][self.rank], self.device)
        if self.is_main:
            _truncate_log(self.out / LOG, self.step)

    def save_checkpoint(self) -> None:
        rng = [_rng_state(self.device)]
        if self.world > 1:
            rng = [None] * self.world
            torch.distributed.all_gather_object(rng, {k: v.cpu() for k, v in _rng_state(self.device).items()})
        if not self.is_main:
            return
        state = {"format": _FORMAT, "version": 1, "kind": self.kind, "config": json.dumps(self.config.to_dict()),
                 "step": self.step, "world_size": self.world, "rng": rng, "train_seconds": self.train_seconds,
                 "model": self.model.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        atomic_write(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _agree(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def _log(self, sums: dict, count: int, interval_s: float, lr: float) -> dict:
        keys = sorted(sums)
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=self.device) for k in keys])
        if self.world > 1:
            torch.distributed.all_reduce(values)
            values /= self.world
        record = {"step": self.step, **{k: float(v) / count for k, v in zip(keys, values.tolist())}, "lr": lr,
                  "steps_per_s": count / max(interval_s, 1e-9), "train_seconds": self.train_seconds}
        if self.is_main:
            with open(self.out / LOG, "a") as log:
                log.write(json.dumps(record) + "\n")
        return record

    def run(self, after_step: Callable[["_Run"], None] | None = None) -> list[dict]:
        """Train from ``self.step`` to ``config.steps`` (or the time limit); ``after_step(run)`` runs on every process
        after each step (periodic sample grids); its time and the checkpoints' do not count as training time.
        Returns the log records written by this call."""
        config = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
        records, sums, count = [], {}, 0
        bar = tqdm(total=config.steps, initial=min(self.step, config.steps), desc=f"train {self.kind}",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        started = interval_start = time.perf_counter()
        base_seconds = self.train_seconds
        self.model.train()
        try:
            while self.step < config.steps:
                generator = step_generator(config.seed, self.rank, self.step, self.device)
                x, y = self.batches.batch(self.step, generator)
                lr = learning_rate(self.step, config.optim, config.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss, stats = self.objective(self.net, x, y, generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm)
                self.optimizer.step()
                if self.ema is not None:
                    ema_update(self.ema, self.model, ema_decay_at(self.step, config.optim))
                self.step += 1
                count += 1
                for key, value in stats.items():
                    value = value.detach().double() if torch.is_tensor(value) else float(value)
                    sums[key] = sums[key] + value if key in sums else value
                bar.update(1)
                now = time.perf_counter()
                self.train_seconds = base_seconds + (now - started)
                log_now = self.step % config.log_every == 0 or self.step == config.steps
                # the time limit: every step of a single process; on log steps under DDP, where all processes agree
                out_of_time = self.time_limit_s is not None and (self.world == 1 or log_now) and self._agree(
                    self.train_seconds >= self.time_limit_s)
                at_checkpoint = self.step % config.checkpoint_every == 0 or self.step == config.steps or out_of_time
                # finiteness is checked here and on log steps only: a check per step would synchronise a GPU
                if at_checkpoint and not math.isfinite(float(sums["loss"])):
                    raise FloatingPointError(f"the training loss became {float(sums['loss'])} before step {self.step} "
                                             "(no checkpoint written); lower the learning rate or check the data")
                if log_now or out_of_time:
                    record = self._log(sums, count, now - interval_start, lr)
                    if not math.isfinite(record["loss"]):
                        raise FloatingPointError(f"the training loss became {record['loss']} before step {self.step}; "
                                                 "lower the learning rate or check the data")
                    records.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                    sums, count, interval_start = {}, 0, time.perf_counter()
                paused = time.perf_counter()
                if at_checkpoint:
                    self.save_checkpoint()
                if after_step is not None:
                    after_step(self)
                skipped = time.perf_counter() - paused  # checkpoints and samples are not training time
                started += skipped
                interval_start += skipped
                if out_of_time and self.step < config.steps:
                    self.stopped_early = True
                    break
        finally:
            bar.close()
        return records

    def release(self, extra: dict, schedule: str | None) -> Path:
        folder = save_network(self.release_model, self.out / RELEASE, schedule=schedule,
                              num_train_timesteps=self.config.num_train_timesteps, extra=extra, overwrite=True)
        atomic_write_text(folder / CONFIG, self.config.to_json() + "\n")
        return folder


def _device_name(device: str | None) -> str | None:
    """'cuda' without an index means this process's GPU (cuda:LOCAL_RANK), as torch.cuda.set_device needs one."""
    if device is not None and torch.device(device).type == "cuda" and torch.device(device).index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _prepare(out_dir: str | os.PathLike, rank: int, world: int) -> Path:
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        torch.distributed.barrier()
    return out


def _summary(run: _Run, records: list[dict], out: Path, extra: dict) -> dict:
    history = [json.loads(line) for line in (out / LOG).read_text().splitlines() if line.strip()] \
        if (out / LOG).exists() else records
    summary = {
        "steps": run.step, "stopped_early": run.stopped_early, "train_seconds": run.train_seconds,
        "steps_per_s": run.step / run.train_seconds if run.train_seconds > 0 else None,
        "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
        "world_size": run.world, "device": str(run.device), "out": str(out), **extra,
    }
    if run.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if (out / LOG).exists():
            plot_loss_curve(out / LOG, out / "loss.png", title=f"{run.kind} training ({out.name})")
    return summary


def train(config: TrainConfig, out_dir: str | os.PathLike, *, dataset=None, device: str | None = None,
          progress: bool = True, time_limit_s: float | None = None, fast: bool | None = None) -> dict:
    """Train an ε-prediction diffusion model as ``config`` says; resume from ``out_dir/checkpoint.pt`` if present.

    Args:
        config: :class:`~diffguide.train.config.TrainConfig`.
        out_dir: output folder (see the module docstring for its files).
        dataset: an object with ``images`` (uint8 NHWC numpy) and ``labels`` (int, or None) — e.g. an
            :class:`~diffguide.data.ImageDataset`; default: ``load_dataset(config.data.source, config.data.split)``.
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. Under torchrun (WORLD_SIZE > 1) the
            run is data-parallel (NCCL on GPU, gloo on CPU).
        time_limit_s: stop (checkpoint, sample, release) once this much training time has passed.
        fast: compiled network, channels-last, fused AdamW (:mod:`diffguide.accel`); default on CUDA only.

    Returns a summary dict: steps, first/last logged loss, steps_per_s, train_seconds, stopped_early, paths.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    check_time_limit(time_limit_s)
    with distributed_context(_device_name(device)) as (rank, world, dev):
        out = _prepare(out_dir, rank, world)
        data, images, labels, image_shape, hflip = _training_data(config, dataset)
        torch.manual_seed(config.seed)
        model, num_classes = build_diffusion_net(config.net, image_shape, _num_classes(data))
        if config.init_from and not (out / CHECKPOINT).exists():
            _initialise_from(model, config.init_from)
        batches = ImageBatches(images, labels if num_classes is not None else None, config.optim.batch_size,
                               seed=config.seed, rank=rank, world=world, device=dev, hflip=hflip)
        schedule = NoiseSchedule.create(config.schedule, None, config.num_train_timesteps)

        def objective(net, x, y, generator):
            return diffusion_training_loss(net, x, y, schedule, config.loss, num_classes, generator)

        run = _Run(config, "diffusion", model, objective, batches, out, rank=rank, world=world, device=dev,
                   progress=progress, time_limit_s=time_limit_s, fast=fast)
        run.resume()

        def draw_samples(current: _Run) -> None:
            grid = class_grid(*sample_images(current.release_model, config, image_shape, num_classes, dev))
            _save_png(grid, out / "samples" / f"step_{current.step:07d}.png")
            _save_png(grid, out / "samples.png")

        def periodic_samples(current: _Run) -> None:
            if current.is_main and config.sample_every and current.step % config.sample_every == 0 \
                    and current.step < config.steps:
                draw_samples(current)

        records = run.run(periodic_samples)
        if run.is_main:
            draw_samples(run)
        extra = {"null_label": num_classes, "class_names": getattr(data, "class_names", None),
                 "loss": config.loss.to_dict(), "weights": "ema" if run.ema is not None else "raw",
                 "step": run.step, "hflip": hflip}
        if run.is_main:
            run.release(extra, config.schedule)
        return _summary(run, records, out, {"num_classes": num_classes, "hflip": hflip,
                                            "release": str(out / RELEASE), "samples": str(out / "samples.png")})


def _initialise_from(model: nn.Module, folder: str) -> None:
    """Load a released model's weights (checked key by key and shape by shape) into ``model`` — fine-tuning."""
    source, _ = load_network(folder)
    load_state_dict_checked(model, source.state_dict(), what=f"init_from {folder!r}")


def classifier_objective(schedule: NoiseSchedule, config: ClassifierTrainConfig) -> Objective:
    """CE(f(x_t, t), y) + ece_weight·Smooth-ECE(f(x_t, t), y) on x_t with t ~ U{0..T−1}, ε ~ N(0, I)."""
    def objective(net, x, y, generator):
        x_t, t, _ = noised_batch(x, schedule, generator)
        logits = net(x_t, t).float()
        cross_entropy = F.cross_entropy(logits, y)
        stats = {"cross_entropy": cross_entropy.detach(),
                 "accuracy": (logits.argmax(1) == y).double().mean()}
        loss = cross_entropy
        if config.ece_weight > 0:
            ece = smooth_ece_loss(logits, y, form=config.ece_form, beta=config.ece_beta)
            loss = loss + config.ece_weight * ece
            stats["ece_loss"] = ece.detach()
        stats["loss"] = loss.detach()
        return loss, stats

    return objective


def train_classifier(config: ClassifierTrainConfig, out_dir: str | os.PathLike, *, dataset=None, eval_dataset=None,
                     device: str | None = None, progress: bool = True, time_limit_s: float | None = None,
                     fast: bool | None = None) -> dict:
    """Train a noise-aware classifier; then report accuracy and ECE per noise level on the eval split.

    ``dataset`` / ``eval_dataset`` as in :func:`train` (defaults: ``config.data`` with its split, and the same source
    with ``config.eval_split``; ``eval_split=None`` skips the report). The report (``report.json``) is
    :func:`diffguide.calibration.evaluate_calibration` of the released weights (noise-aware: ECE_t rows per t and a
    pooled summary)."""
    if not isinstance(config, ClassifierTrainConfig):
        raise TypeError(f"config: expected a ClassifierTrainConfig, got {type(config).__name__}")
    check_time_limit(time_limit_s)
    with distributed_context(_device_name(device)) as (rank, world, dev):
        out = _prepare(out_dir, rank, world)
        data, images, labels, image_shape, hflip = _training_data(config, dataset)
        if labels is None:
            raise ValueError("dataset: a classifier needs labels; the data set has none")
        num_classes = _num_classes(data)
        torch.manual_seed(config.seed)
        model = build_classifier_net(config.net, image_shape, num_classes)
        batches = ImageBatches(images, labels, config.optim.batch_size, seed=config.seed, rank=rank, world=world,
                               device=dev, hflip=hflip)
        schedule = NoiseSchedule.create(config.schedule, None, config.num_train_timesteps)
        run = _Run(config, "classifier", model, classifier_objective(schedule, config), batches, out, rank=rank,
                   world=world, device=dev, progress=progress, time_limit_s=time_limit_s, fast=fast)
        run.resume()
        records = run.run()
        extra = {"class_names": getattr(data, "class_names", None), "weights": "ema" if run.ema is not None else "raw",
                 "step": run.step, "ece_weight": config.ece_weight}
        report = None
        if run.is_main:
            run.release(extra, config.schedule)
            if eval_dataset is None and config.eval_split is not None:
                eval_dataset = _load(config.data.source, config.eval_split)
            if eval_dataset is not None:
                report = evaluate_noisy_classifier(run.release_model, eval_dataset, schedule, config, progress)
                atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
                plot_ece_over_timesteps({"trained": report["ece_t"]}, out / "ece_t.png",
                                        title=f"noise-aware classifier, {run.step} steps")
        return _summary(run, records, out, {"num_classes": num_classes, "release": str(out / RELEASE),
                                            "report": report})


def evaluate_noisy_classifier(classifier: nn.Module, dataset, schedule: NoiseSchedule,
                              config: ClassifierTrainConfig, progress: bool = False) -> dict:
    """Accuracy, binned ECE and smECE of ``classifier(x_t, t)`` at each t of ``config.eval_timesteps`` (default
    0, T/10, ..., T−1) on ``dataset`` — :func:`diffguide.calibration.evaluate_calibration` with one ε per image."""
    images, labels = _select(dataset, config.eval_limit)
    batches = SeededBatches(images, labels, 256, shuffle=False, convert=to_model_range)
    return evaluate_calibration(classifier, batches, noise_aware=True, schedule=schedule,
                                timesteps=config.eval_timesteps, seed=config.seed, progress=progress)
