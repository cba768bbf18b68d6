"""Production sampling: many samples, one or many processes, resumable, in the format every evaluator reads.

Sample k always gets the noise stream of (seed, k) and label k of the run's label list, so the output does not depend on
the batch size, on the number of processes, or on interruptions. The index range is cut into fixed shards of
``batch_size`` samples; rank r of W takes shards r, r + W, …; each finished shard is written atomically to
``<out>/shards/``; a restarted run skips the shards it finds; rank 0 merges them in index order into ``samples.npz``
(ADM format: ``arr_0`` uint8 NHWC, ``arr_1`` int64 labels) and ``grid.png``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapter import Denoiser
from .distributed import barrier as _barrier, distributed_context
from .guidance.classifier import Guidance
from .grid import save_grid
from .io import atomic_save_npz, atomic_write_text, check_same_settings, clean_stale_temporaries
from .noise import LABEL_SALT, SeededNoise, derived_rng
from .samplers import SAMPLERS

__all__ = ["SampleSet", "class_labels", "generate", "save_grid", "to_uint8_images"]

RUN_CONFIG = "run.json"


@dataclass
class SampleSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray | None  # int64 [N]
    nonfinite_zeroed: int = 0


def class_labels(num_samples: int, num_classes: int | None, mode: str = "uniform", seed: int = 0) -> np.ndarray | None:
    """Labels of the run: ``uniform`` — i.i.d. uniform from the run seed (ADM's evaluation protocol);
    ``balanced`` — k mod K (equal counts); ``none`` or no classes — unconditional; an integer string — that class."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 1):
        raise ValueError(f"num_classes: expected a positive integer or None (unconditional), got {num_classes!r}")
    if num_classes is None and mode not in ("uniform", "none"):
        raise ValueError(f"labels: the model is unconditional (no classes, and no classifier gives any), so labels "
                         f"{mode!r} cannot be honoured; use labels 'none' (--labels none)")
    if num_classes is None or mode == "none":
        return None
    if mode == "uniform":
        return derived_rng(seed, LABEL_SALT).integers(0, num_classes, num_samples)
    if mode == "balanced":
        return np.arange(num_samples) % num_classes
    if str(mode).isdigit() and int(mode) < num_classes:
        return np.full(num_samples, int(mode), dtype=np.int64)
    raise ValueError(f"labels: expected 'uniform', 'balanced', 'none' or a class index in [0, {num_classes}), got {mode!r}")


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats -> uint8 NHWC, rounding to the nearest level."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


SAMPLE_RUN_FILES = {RUN_CONFIG, "samples.npz", "grid.png", "summary.json"}


def _input_paths(config: dict) -> list[Path]:
    """The existing files and folders a run's settings name (model, classifiers, including 'kind:PATH' specs)."""
    found = []
    for value in config.values():
        if isinstance(value, str) and value:
            for candidate in (value, value.split(":", 1)[-1]):
                if Path(candidate).exists():
                    found.append(Path(candidate).resolve())
    return found


def _sample_run_entries(out_dir: Path) -> list[Path]:
    """The files of the sample run in ``out_dir`` that --overwrite may delete; a FileExistsError naming the first
    thing there that this project did not write as a sample run (or the missing run.json record)."""
    refuse = ("--overwrite only replaces a sample run this command wrote (run.json, samples.npz, grid.png, "
              "summary.json, shards/); choose a new or empty --out folder")
    record = out_dir / RUN_CONFIG
    try:
        if not isinstance(json.loads(record.read_text()), dict):
            raise ValueError
    except (OSError, ValueError, UnicodeDecodeError):
        raise FileExistsError(f"out: {out_dir} holds no {RUN_CONFIG} record of a diffguide sample run; "
                              f"{refuse}") from None
    entries = []
    for entry in sorted(out_dir.iterdir()):
        if entry.name == "shards" and entry.is_dir() and not entry.is_symlink():
            for shard in sorted(entry.iterdir()):
                if not (shard.is_file() and not shard.is_symlink()
                        and re.fullmatch(r"(\.)?shard_\d{6}\.npz(\.tmp\d+)?", shard.name)):
                    raise FileExistsError(f"out: {shard} was not written by diffguide sample; {refuse}")
                entries.append(shard)
            entries.append(entry)
        elif entry.is_file() and not entry.is_symlink() and (
                entry.name in SAMPLE_RUN_FILES or re.fullmatch(r"\..+\.tmp\d+", entry.name)):
            entries.append(entry)
        else:
            raise FileExistsError(f"out: {entry} was not written by diffguide sample; {refuse}")
    return entries


def _remove_sample_run(out_dir: Path, config: dict) -> None:
    """Delete the sample run in ``out_dir`` file by file — never the current directory or a folder holding it, never a
    folder holding one of the run's inputs, never anything but the files of a sample run."""
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise FileExistsError(f"out: {out_dir} is the current directory (or holds it); --overwrite never deletes "
                              "that: choose a new --out folder")
    for path in _input_paths(config):
        if resolved == path or resolved in path.parents:
            raise FileExistsError(f"out: {out_dir} holds an input of this run ({path}); --overwrite never deletes "
                                  "inputs: choose a new --out folder")
    for entry in _sample_run_entries(out_dir):
        entry.rmdir() if entry.is_dir() else entry.unlink()


def _prepare_output(out_dir: Path, config: dict, resume: bool, overwrite: bool, rank: int, world: int) -> None:
    out_dir = Path(out_dir)
    if rank == 0:
        if out_dir.exists() and not out_dir.is_dir():
            raise FileExistsError(f"out: {out_dir} is a file, not a folder")
        clean_stale_temporaries(out_dir)
        existing = out_dir.exists() and any(out_dir.iterdir())
        if existing and overwrite:
            _remove_sample_run(out_dir, config)
        elif existing and not resume:
            raise FileExistsError(f"out: {out_dir} exists and is not empty; pass --resume to finish the run in it "
                                  "or --overwrite to replace it")
        elif existing and resume:
            saved_path = out_dir / RUN_CONFIG
            if not saved_path.exists():
                raise FileExistsError(f"out: {out_dir} holds no {RUN_CONFIG}; it is not a diffguide sampling run")
            try:
                saved = json.loads(saved_path.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"out: {saved_path} is not a readable run record ({err})") from None
            check_same_settings(saved, config, where=f"the run in {out_dir}",
                                hint="use the same arguments or --overwrite")
        try:
            (out_dir / "shards").mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / RUN_CONFIG, json.dumps(config, indent=1, sort_keys=True))
        except OSError as err:
            raise ValueError(f"out: cannot write to {str(out_dir)!r} ({err.strerror or err})") from None
    _barrier(world)


def _check_free_space(out_dir: Path, num_samples: int, image_shape) -> None:
    """A ValueError before sampling when the disk cannot hold the shards plus the merged npz (2·N·C·H·W bytes of
    uint8 images, uncompressed as np.savez writes them), instead of failing at the merge."""
    need = 2 * num_samples * int(np.prod(image_shape)) + (1 << 20)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise ValueError(f"out: {out_dir} has {free / 2**20:.1f} MiB free, but {num_samples} samples need about "
                         f"{need / 2**20:.1f} MiB (shards + samples.npz); free some space or choose another --out")


def _shard_done(path: Path, expected: int) -> bool:
    if not path.exists():
        return False
    try:
        with np.load(path) as data:
            return len(data["indices"]) == expected
    except Exception:  # a truncated file from a kill during a non-atomic copy: redo it
        return False


def generate(denoiser: Denoiser, *, num_samples: int, image_shape: tuple[int, int, int],
             labels: np.ndarray | None = None, guidance: Guidance | None = None, sampler: str = "ddpm",
             sampler_options: dict | None = None, seed: int = 0, batch_size: int = 64, out_dir: str | Path | None = None,
             config: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
             bf16: bool = False, progress: bool = True, on_nonfinite: str = "raise", device: str | None = None,
             grid_images: int = 64, class_names: list[str] | None = None,
             step_callback: Callable[[int], Callable | None] | None = None) -> SampleSet | None:
    """Draw ``num_samples`` samples of shape ``image_shape`` (C, H, W).

    Without ``out_dir`` everything stays in memory (one process). With it, shards are written and merged as described
    in the module docstring; ``config`` (everything that determines the samples) is saved as ``run.json`` and must match
    on resume. Under torchrun every rank calls this; rank 0 returns the merged :class:`SampleSet`, the others ``None``.
    ``class_names`` (index → name) label the rows of ``grid.png``. ``step_callback(start)``, called before each
    batch is sampled (start = its first sample index), returns the sampler's ``callback`` for that batch (it gets
    every step's :class:`~diffguide.samplers.StepRecord`) or None; shards found finished on resume are not sampled
    again and get none.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"labels: expected {num_samples} labels, got {len(labels)}")
    sample_fn = SAMPLERS[sampler]
    with distributed_context(device) as (rank, world, dev):
        if out_dir is not None:
            _prepare_output(Path(out_dir), config or {}, resume, overwrite, rank, world)
            _check_free_space(Path(out_dir), num_samples, image_shape)
        num_shards = -(-num_samples // batch_size)
        mine = list(range(rank, num_shards, world))
        kept: dict[int, tuple] = {}
        nonfinite = 0
        bar = tqdm(total=sum(min(batch_size, num_samples - k * batch_size) for k in mine), disable=not progress or rank != 0, desc=f"sampling ({world} proc)",
                   unit="img")
        for shard in mine:
            start, stop = shard * batch_size, min((shard + 1) * batch_size, num_samples)
            path = Path(out_dir) / "shards" / f"shard_{shard:06d}.npz" if out_dir is not None else None
            if path is not None and _shard_done(path, stop - start):
                bar.update(stop - start)
                continue
            idx = range(start, stop)
            noise = SeededNoise(seed, idx, image_shape, device=dev)
            y = None if labels is None else torch.as_tensor(labels[start:stop], device=dev, dtype=torch.long)
            autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with autocast:
                out = sample_fn(denoiser, noise, y, guidance=guidance, on_nonfinite=on_nonfinite,
                                callback=step_callback(start) if step_callback is not None else None,
                                **(sampler_options or {}))
            nonfinite += out.nonfinite_zeroed
            images = to_uint8_images(out.samples)
            shard_labels = np.asarray(labels[start:stop]) if labels is not None else np.zeros(0, dtype=np.int64)
            if path is not None:
                atomic_save_npz(path, indices=np.arange(start, stop), images=images, labels=shard_labels,
                          nonfinite_zeroed=np.array(out.nonfinite_zeroed))
            else:
                kept[shard] = (images, shard_labels)
            bar.update(stop - start)
        bar.close()
        if out_dir is None:
            images = np.concatenate([kept[s][0] for s in sorted(kept)])
            return SampleSet(images, None if labels is None else np.asarray(labels), nonfinite)
        _barrier(world)
        if rank != 0:
            return None
        return _merge(Path(out_dir), num_shards, labels is not None, grid_images, class_names)


def _merge(out_dir: Path, num_shards: int, has_labels: bool, grid_images: int,
           class_names: list[str] | None = None) -> SampleSet:
    images, labels, indices, nonfinite = [], [], [], 0
    for shard in range(num_shards):
        with np.load(out_dir / "shards" / f"shard_{shard:06d}.npz") as data:
            images.append(data["images"])
            labels.append(data["labels"])
            indices.append(data["indices"])
            nonfinite += int(data["nonfinite_zeroed"])
    order = np.concatenate(indices)
    if not np.array_equal(order, np.arange(len(order))):
        raise RuntimeError(f"merge: shards in {out_dir} do not cover the sample indices exactly once")
    result = SampleSet(np.concatenate(images), np.concatenate(labels).astype(np.int64) if has_labels else None, nonfinite)
    arrays = {"arr_0": result.images}
    if has_labels:
        arrays["arr_1"] = result.labels
    atomic_save_npz(out_dir / "samples.npz", **arrays)
    save_grid(result.images, out_dir / "grid.png", grid_images, labels=result.labels, class_names=class_names)
    summary = {"num_samples": len(result.images), "nonfinite_zeroed": nonfinite}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    return result
