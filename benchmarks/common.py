"""What several benchmarks share: the CIFAR-10 study's arguments, and the variants (attention layouts, memory formats,
compile modes) to time side by side.
(Run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffguide.accel import channels_last
from diffguide.nets.adm import qkv_layout

QKV_LAYOUTS = {"contiguous": True, "strided": False}
"""The attention q/k/v layouts (:data:`diffguide.nets.adm.QKV_CONTIGUOUS`): contiguous, the default (SDPA's fused
kernels), and strided, the layout before 2026-12-01 (its math kernel)."""


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --resnet and --batch: the CIFAR-10 study's network, guide and batch."""
    parser.add_argument("--model", type=Path, required=True, help="the CIFAR-10 base model's release folder")
    parser.add_argument("--resnet", type=Path, required=True, help="the CIFAR ResNet-32 .th file that guides")
    parser.add_argument("--batch", type=int, default=2500, help="images per batch (the studies' batch on a GPU)")


def _subset_of(choices: dict):
    """An argparse type: a comma-separated subset of ``choices``' names, as a list in the order given."""

    def names(text: str) -> list[str]:
        given = text.split(",") if text else []
        if any(n not in choices for n in given):
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return given

    return names


_layouts = _subset_of(QKV_LAYOUTS)


def add_qkv_layouts_argument(parser: argparse.ArgumentParser, default: str = "contiguous") -> None:
    """--qkv-layouts: the attention layouts to time, each its own rows, in one process."""
    parser.add_argument("--qkv-layouts", type=_layouts, default=_layouts(default),
                        help="comma-separated attention q/k/v layouts, each its own rows: contiguous (the default: "
                             "SDPA's fused kernels) and strided (the layout before 2026-12-01: its math kernel) "
                             f"[default: {default or 'none'}]")


CHECK_SAMPLES = 8
CHECK_SLACK = 2.0
"""The samplers' check against exact fp32 (adm_vs_guided_diffusion.py, cifar_throughput.py): a row's first
CHECK_SAMPLES samples against the same samples in exact fp32 (eager, no autocast, TF32 off; per-sample seeds make
them the same whatever the batch). Eager bf16 and a fast variant both approximate that fp32 run within bf16 rounding
(a compiled kernel keeps fp32 inside a fusion, so it rounds to bf16 at most as often as eager does): a fast row
passes when its difference is at most CHECK_SLACK times eager bf16's."""

CHECK_WORDS = {True: "ok", False: "OUTSIDE THE BOUND", None: ""}
"""How a table prints a row's ``check_passed``."""


def check_fields(difference: float, eager_difference: float, fast: bool, measure: str) -> dict:
    """A row's check: its ``difference`` from exact fp32 (``check_{measure}_vs_fp32``), eager bf16's, and whether a
    fast row is within CHECK_SLACK times eager's (None for an eager row)."""
    return {f"check_{measure}_vs_fp32": difference, f"eager_bf16_check_{measure}_vs_fp32": eager_difference,
            "check_passed": difference <= CHECK_SLACK * eager_difference if fast else None}


def layout(name: str):
    """The context in which networks run attention with the layout ``name`` (:data:`QKV_LAYOUTS`)."""
    return qkv_layout(QKV_LAYOUTS[name])


MEMORY_FORMATS = {"channels_last": True, "contiguous": False}
"""The fast path's memory formats (:func:`diffguide.accel.channels_last`): the module's own (contiguous) format, the
default since 2026-12-04, and channels-last."""


_memory_formats = _subset_of(MEMORY_FORMATS)


def add_memory_formats_argument(parser: argparse.ArgumentParser, default: str = "contiguous") -> None:
    """--memory-formats: the fast path's memory formats to time, each its own rows, in one process."""
    parser.add_argument("--memory-formats", type=_memory_formats, default=_memory_formats(default),
                        help="comma-separated memory formats of the fast path's networks, each its own rows: "
                             f"contiguous (the library's default) and channels_last [default: {default}]")


def _compile_modes(text: str) -> list[str | None]:
    """A comma-separated list of torch.compile modes ('default': torch's default, as None)."""
    given = [m.strip() for m in text.split(",") if m.strip()]
    if not given:
        raise argparse.ArgumentTypeError("expected at least one torch.compile mode, e.g. 'default'")
    return [None if m == "default" else m for m in given]


def add_compile_modes_argument(parser: argparse.ArgumentParser) -> None:
    """--compile-modes: the torch.compile modes of the fast variants to time, each its own rows, in one process."""
    parser.add_argument("--compile-modes", type=_compile_modes, default=[None],
                        help="comma-separated torch.compile modes of the fast variant, each its own rows (e.g. "
                             "'default,max-autotune-no-cudagraphs') [default: default]")


def memory_format(name: str):
    """The context in which :func:`diffguide.accel.fast_module` puts networks in memory format ``name``."""
    return channels_last(MEMORY_FORMATS[name])
