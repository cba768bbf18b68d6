"""The two entry points on the trainer (:mod:`.trainer`): :func:`train` (``diffguide train``, ε-prediction diffusion
models) and :func:`train_classifier` (``diffguide train-classifier``, noise-aware classifiers, with an ECE_t report).
The files a run writes and its determinism are described in :mod:`.trainer`."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import torch
from torch import nn

from ..calibration import EpochBatches, evaluate_calibration, plot_ece_over_timesteps
from ..data import to_model_range
from ..distributed import distributed_context
from ..grid import save_grid
from ..io import atomic_write_text
from ..schedule import NoiseSchedule
from .batches import StepBatches, _load, _num_classes, _select, _training_data
from .config import ClassifierTrainConfig, TrainConfig, check_time_limit
from .networks import _initialise_from, build_classifier_net, build_diffusion_net
from .objectives import classifier_objective, diffusion_objective
from .outputs import grid_samples
from .trainer import (CHECKPOINT, CONFIG, LOG, RELEASE, _prepare, _Run, _summary, ema_decay_at,
                      ema_update, learning_rate, load_training_checkpoint, step_generator)

__all__ = [
    "train", "train_classifier", "evaluate_noisy_classifier", "build_diffusion_net", "build_classifier_net",
    "learning_rate", "ema_decay_at", "ema_update", "step_generator", "StepBatches",
    "load_training_checkpoint", "CHECKPOINT", "LOG", "CONFIG", "RELEASE",
]

@contextmanager
def _session(config, config_type: type, out_dir, dataset, device: str | None, time_limit_s: float | None):
    """What both entry points start with: the config's type checked, the distributed context entered, the output
    folder made, the data loaded (:func:`.batches._training_data`) and torch's global RNG seeded with config.seed.
    Yields (rank, world, device, out, (data set, images, labels, image shape, hflip))."""
    if not isinstance(config, config_type):
        raise TypeError(f"config: expected a {config_type.__name__}, got {type(config).__name__}")
    check_time_limit(time_limit_s)
    with distributed_context(device) as (rank, world, dev):
        out = _prepare(out_dir, rank, world)
        data = _training_data(config, dataset)
        torch.manual_seed(config.seed)
        yield rank, world, dev, out, data


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
        fast: compiled network, fused AdamW (:mod:`diffguide.accel`); default on CUDA only.

    Returns a summary dict: steps, first/last logged loss, steps_per_s, train_seconds, stopped_early, paths.
    """
    with _session(config, TrainConfig, out_dir, dataset, device, time_limit_s) as (rank, world, dev, out, data):
        data, images, labels, image_shape, hflip = data
        model, num_classes = build_diffusion_net(config.net, image_shape, _num_classes(data))
        if config.init_from and not (out / CHECKPOINT).exists():
            _initialise_from(model, config.init_from)
        batches = StepBatches(images, labels if num_classes is not None else None, config.optim.batch_size,
                               seed=config.seed, rank=rank, world=world, device=dev, hflip=hflip)
        schedule = NoiseSchedule.create(config.schedule, None, config.num_train_timesteps)
        run = _Run(config, "diffusion", model, diffusion_objective(schedule, config.loss, num_classes), batches, out,
                   rank=rank, world=world, device=dev, progress=progress, time_limit_s=time_limit_s, fast=fast)
        run.resume()

        class_names = getattr(data, "class_names", None)

        def draw_samples(current: _Run) -> None:
            images, grid_labels = grid_samples(current.release_model, config, image_shape, num_classes, dev)
            for path in (out / "samples" / f"step_{current.step:07d}.png", out / "samples.png"):
                save_grid(images, path, len(images), labels=grid_labels, class_names=class_names)

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

def train_classifier(config: ClassifierTrainConfig, out_dir: str | os.PathLike, *, dataset=None, eval_dataset=None,
                     device: str | None = None, progress: bool = True, time_limit_s: float | None = None,
                     fast: bool | None = None) -> dict:
    """Train a noise-aware classifier; then report accuracy and ECE per noise level on the eval split.

    ``dataset`` / ``eval_dataset`` as in :func:`train` (defaults: ``config.data`` with its split, and the same source
    with ``config.eval_split``; ``eval_split=None`` skips the report). The report (``report.json``) is
    :func:`diffguide.calibration.evaluate_calibration` of the released weights (noise-aware: ECE_t rows per t and a
    pooled summary)."""
    with _session(config, ClassifierTrainConfig, out_dir, dataset, device, time_limit_s) as (rank, world, dev, out,
                                                                                               data):
        data, images, labels, image_shape, hflip = data
        if labels is None:
            raise ValueError("dataset: a classifier needs labels; the data set has none")
        num_classes = _num_classes(data)
        model = build_classifier_net(config.net, image_shape, num_classes)
        batches = StepBatches(images, labels, config.optim.batch_size, seed=config.seed, rank=rank, world=world,
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
    batches = EpochBatches(images, labels, 256, shuffle=False, convert=to_model_range)
    return evaluate_calibration(classifier, batches, noise_aware=True, schedule=schedule,
                                timesteps=config.eval_timesteps, seed=config.seed, progress=progress)
