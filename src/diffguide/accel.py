"""The fast path on a GPU: compiled networks, fused optimisers, cuDNN autotuning.

Every default command takes it on CUDA without a flag and falls back to plain eager PyTorch on the CPU (where
compiling costs more time than it saves at this project's sizes). ``--eager`` on the commands (``fast=False`` in the
Python API) turns every optimisation off. What changes is the order of floating-point operations, never the
computation: compiled and eager results agree within the rounding of the precision they run in (tests/unit/test_accel.py
states the bound).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["use_fast_path", "fast_module", "channels_last", "channels_last_enabled", "reused_fast_module", "kept",
           "file_identity", "fused_adamw", "cudnn_autotune"]

KEPT_PER_KIND = 4
"""How many loaded objects :func:`kept` holds per kind per process (least recently used go first)."""
_kept: dict[str, dict] = {}


def use_fast_path(fast: bool | None, device: torch.device | str) -> bool:
    """Whether to take the fast path: ``fast`` when given, else on CUDA devices only; ``DIFFGUIDE_EAGER=1`` forces it off."""
    if os.environ.get("DIFFGUIDE_EAGER", "") not in ("", "0"):
        return False
    if fast is not None:
        return bool(fast)
    return torch.device(device).type == "cuda"


def fast_module(module: nn.Module, *, fast: bool, mode: str | None = None) -> nn.Module:
    """``module`` compiled with ``torch.compile`` (static shapes) when ``fast``; else itself.

    The compiled module shares parameters with ``module`` and forwards attribute access to it (``.config``,
    ``.null_label``…), so it drops in wherever the module was used. ``mode``: a ``torch.compile`` mode (default: its
    default; ``$DIFFGUIDE_COMPILE_MODE`` overrides it); "reduce-overhead" adds CUDA graphs, which pay where the CPU
    cannot launch kernels as fast as the GPU runs them (CIFAR training at batch 128: 2.25x, docs/performance.md).
    The module keeps its own (contiguous) memory format; ``$DIFFGUIDE_CHANNELS_LAST=1`` puts it channels-last first
    (a benchmark's switch; contiguous is the default since 2026-12-04: summed over the ADM-128 fast rows of
    benchmarks/results/adm128_formats_h200.json and adm128_formats_b16_h200.json it takes 4.5% less time, CIFAR-10
    training 8.8–20% less, CIFAR-10 sampling the same; docs/performance.md)."""
    if not fast:
        return module
    if channels_last_enabled():
        module = module.to(memory_format=torch.channels_last)
    return torch.compile(module, dynamic=False, mode=os.environ.get("DIFFGUIDE_COMPILE_MODE") or mode)


def channels_last_enabled() -> bool:
    """Whether :func:`fast_module` puts modules channels-last (``$DIFFGUIDE_CHANNELS_LAST=1``; default off)."""
    return os.environ.get("DIFFGUIDE_CHANNELS_LAST", "0") == "1"


@contextlib.contextmanager
def channels_last(enabled: bool):
    """Within the context :func:`fast_module` puts modules channels-last (``enabled``) or leaves them in their own
    (contiguous) format; ``$DIFFGUIDE_CHANNELS_LAST`` is back as it was after."""
    saved = os.environ.get("DIFFGUIDE_CHANNELS_LAST")
    os.environ["DIFFGUIDE_CHANNELS_LAST"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["DIFFGUIDE_CHANNELS_LAST"]
        else:
            os.environ["DIFFGUIDE_CHANNELS_LAST"] = saved


def file_identity(path: str | os.PathLike) -> tuple:
    """What says a file or folder on disk is unchanged: (name, mtime_ns, size) of it or of every file below it (just
    the path when there is nothing there: its loader then says what is wrong)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return (str(path), *((str(p.relative_to(path.parent)), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


def kept(kind: str, key: tuple, load: Callable):
    """``load()`` memoised on (``kind``, ``key``) in this process, at most :data:`KEPT_PER_KIND` per kind, the least
    recently used going first. Key it on what identifies the files loaded (:func:`file_identity`) and the device, so
    a file changed on disk is loaded afresh."""
    store = _kept.setdefault(kind, {})
    value = store.pop(key) if key in store else load()
    store[key] = value  # insertion order = use order: the most recent last
    while len(store) > KEPT_PER_KIND:
        del store[next(iter(store))]
    return value


def reused_fast_module(key: tuple, load: Callable[[], tuple], *, mode: str | None = None,
                       kind: str = "fast_module") -> tuple:
    """``load()`` → (module, *rest) with the module made fast (:func:`fast_module`), memoised on ``key`` in this
    process (:func:`kept`): a later call with the same key returns the same compiled module, whose graphs serve every
    shape it has already seen, so a second ``sample()`` of one model compiles nothing (a study of many runs paid ~45 s
    per run). Key it on what identifies the weights (e.g. :func:`file_identity` of their file) and the device.
    ``kind``: the :func:`kept` store (diffusion networks and guidance classifiers keep their own, so a study with many
    guides never evicts its diffusion network)."""

    def compiled():
        module, *rest = load()
        return (fast_module(module, fast=True, mode=mode), *rest)

    return kept(kind, key, compiled)


def fused_adamw(params, *, fast: bool, **kwargs) -> torch.optim.AdamW:
    """AdamW; on the fast path its fused CUDA kernel (one launch for all parameters instead of one per tensor group)."""
    return torch.optim.AdamW(params, fused=True if fast else None, **kwargs)


@contextlib.contextmanager
def cudnn_autotune(enabled: bool = True):
    """cuDNN picks the fastest convolution algorithm per shape (first call of a shape pays for the search). It never
    changes the precision: TF32 stays as the caller set it."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
