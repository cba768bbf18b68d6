"""The training loop shared by diffusion models (``diffguide train``), noise-aware classifiers
(``diffguide train-classifier``) and calibration fine-tuning (``diffguide calibrate``, :mod:`.calibrate`): AdamW with linear warm-up, gradient clipping, EMA, bf16 autocast on GPU, DDP through
torchrun, a tqdm bar, a JSON-lines loss log, checkpoints that resume exactly, and the released weights.

Determinism: every random draw of step k on process r (flip, t, ε, label dropout, w_train) comes from a generator
seeded with (seed, r, k) (:class:`StepDraws`; calibration fine-tuning draws from one stream, :class:`StreamDraws`),
and the data order of epoch e from (seed, e); model, EMA, optimizer and the global RNG
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

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..accel import fast_module, fused_adamw, use_fast_path
from ..checkpoints import save_network
from ..io import atomic_write, atomic_write_text
from ..noise import STEP_SALT, derived_seed
from .batches import StepBatches
from .config import OptimConfig
from .objectives import Objective
from .outputs import plot_loss_curve

__all__ = ["learning_rate", "ema_decay_at", "ema_update", "step_generator", "load_training_checkpoint", "CHECKPOINT",
           "LOG", "CONFIG", "RELEASE"]


CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
CONFIG = "train_config.json"
RELEASE = "model"
_FORMAT = "diffguide-train-checkpoint"


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
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(seed, STEP_SALT, rank, step))
    return generator


class StepDraws:
    """The draws of ``diffguide train`` / ``train-classifier``: step k on process r from :func:`step_generator`, so any
    step's draws are known without replaying the ones before (nothing to checkpoint)."""

    def __init__(self, seed: int, rank: int = 0, device: torch.device | str = "cpu"):
        self.seed, self.rank, self.device = seed, rank, device

    def __call__(self, step: int) -> torch.Generator:
        return step_generator(self.seed, self.rank, step, self.device)

    def state(self) -> Tensor | None:
        return None

    def set_state(self, state: Tensor | None) -> None:
        pass


class StreamDraws:
    """The draws of calibration fine-tuning: one CPU generator seeded with ``seed``, drawn from step after step (its
    state goes into the checkpoint, so a resumed run continues the stream)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, step: int) -> torch.Generator:
        return self.generator

    def state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

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
    config.check_resumable(json.loads(state["config"]), where=str(path))


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

    def __init__(self, config, kind: str, model: nn.Module, objective: Objective, batches: StepBatches,
                 out_dir: Path | None, *, rank: int, world: int, device: torch.device, progress: bool,
                 time_limit_s: float | None, fast: bool | None = None, draws=None, train_mode: bool = True,
                 config_name: str = CONFIG):
        """``config``: a run config with ``optim``, ``steps``, ``seed``, ``log_every``, ``checkpoint_every``;
        ``batches``: ``batch(step, generator) -> (x, y)``; ``draws``: the generator of each step (default
        :class:`StepDraws`); ``train_mode``: the mode the model trains in; ``out_dir`` None: nothing is written."""
        self.config, self.kind, self.objective, self.batches = config, kind, objective, batches
        self.out, self.rank, self.world, self.device = out_dir, rank, world, device
        self.progress, self.time_limit_s = progress, time_limit_s
        self.draws = draws if draws is not None else StepDraws(config.seed, rank, device)
        self.train_mode, self.config_name = train_mode, config_name
        self.model = model.to(device)
        self.fast = use_fast_path(fast, device)
        net = self.model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # the forward/backward of training (checkpoints hold self.model's weights). One process: CUDA graphs too — the
        # 17M CIFAR net at batch 128 is launch-bound (2.25x, docs/performance.md); under DDP plain compilation.
        self.net = fast_module(net, fast=self.fast, mode="reduce-overhead" if world == 1 else None)
        # copied after fast_module, so the EMA shares the model's memory layout (channels-last where that is switched
        # on) and torch._foreach_lerp_ takes its multi-tensor path (with another layout it launches a kernel per tensor)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.optim.ema_decay > 0 else None
        optim = config.optim
        self.optimizer = fused_adamw([p for p in self.model.parameters() if p.requires_grad], fast=self.fast,
                                     lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
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
        if self.out is None:
            return
        path = self.out / CHECKPOINT
        if path.exists():
            self._load(path)
        if self.is_main:
            atomic_write_text(self.out / self.config_name, self.config.to_json() + "\n")

    def _load(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        _check_resume(state, self.config, self.kind, path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.draws.set_state(state.get("draws"))
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
        if not self.is_main or self.out is None:
            return
        state = {"format": _FORMAT, "version": 1, "kind": self.kind, "config": json.dumps(self.config.to_dict()),
                 "draws": self.draws.state(),
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
        if self.is_main and self.out is not None:
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
        self.model.train(self.train_mode)
        try:
            while self.step < config.steps:
                generator = self.draws(self.step)
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
