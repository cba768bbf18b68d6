"""What several benchmarks share: the CIFAR-10 study's arguments, and the attention layouts to time side by side.
(Run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``.)"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from diffguide.nets.adm import qkv_layout

QKV_LAYOUTS = {"contiguous": True, "strided": False}
"""The attention q/k/v layouts (:data:`diffguide.nets.adm.QKV_CONTIGUOUS`): contiguous, the default (SDPA's fused
kernels), and strided, the layout before 2026-12-01 (its math kernel)."""


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --resnet and --batch: the CIFAR-10 study's network, guide and batch."""
    parser.add_argument("--model", type=Path, required=True, help="the CIFAR-10 base model's release folder")
    parser.add_argument("--resnet", type=Path, required=True, help="the CIFAR ResNet-32 .th file that guides")
    parser.add_argument("--batch", type=int, default=2500, help="images per batch (the studies' batch on a GPU)")


def _layouts(text: str) -> list[str]:
    names = text.split(",") if text else []
    unknown = [n for n in names if n not in QKV_LAYOUTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(QKV_LAYOUTS)}, got {text!r}")
    return names


def add_qkv_layouts_argument(parser: argparse.ArgumentParser, default: str = "contiguous") -> None:
    """--qkv-layouts: the attention layouts to time, each its own rows, in one process."""
    parser.add_argument("--qkv-layouts", type=_layouts, default=_layouts(default),
                        help="comma-separated attention q/k/v layouts, each its own rows: contiguous (the default: "
                             "SDPA's fused kernels) and strided (the layout before 2026-12-01: its math kernel) "
                             f"[default: {default or 'none'}]")


def layout(name: str):
    """The context in which networks run attention with the layout ``name`` (:data:`QKV_LAYOUTS`)."""
    return qkv_layout(QKV_LAYOUTS[name])


MEMORY_FORMATS = {"channels_last": "1", "contiguous": "0"}
"""The fast path's memory formats (``$DIFFGUIDE_CHANNELS_LAST``, read by :func:`diffguide.accel.fast_module`):
channels-last, the default, and the module's own (contiguous) format."""


def _memory_formats(text: str) -> list[str]:
    names = text.split(",") if text else []
    if any(n not in MEMORY_FORMATS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(MEMORY_FORMATS)}, got {text!r}")
    return names


def add_memory_formats_argument(parser: argparse.ArgumentParser, default: str = "channels_last") -> None:
    """--memory-formats: the fast path's memory formats to time, each its own rows, in one process."""
    parser.add_argument("--memory-formats", type=_memory_formats, default=_memory_formats(default),
                        help="comma-separated memory formats of the fast path's networks, each its own rows: "
                             f"channels_last (the default) and contiguous [default: {default}]")


@contextlib.contextmanager
def memory_format(name: str):
    """The context in which :func:`diffguide.accel.fast_module` puts networks in memory format ``name``."""
    saved = os.environ.get("DIFFGUIDE_CHANNELS_LAST")
    os.environ["DIFFGUIDE_CHANNELS_LAST"] = MEMORY_FORMATS[name]
    try:
        yield
    finally:
        if saved is None:
            del os.environ["DIFFGUIDE_CHANNELS_LAST"]
        else:
            os.environ["DIFFGUIDE_CHANNELS_LAST"] = saved
