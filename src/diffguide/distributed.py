"""The process group of a torchrun launch: (rank, world size, device) for sampling and training alike."""

from __future__ import annotations

import contextlib
import os

import torch

from .devices import resolve_device

__all__ = ["distributed_context", "barrier"]


@contextlib.contextmanager
def distributed_context(device: str | None = None):
    """(rank, world_size, device) from torchrun's environment; initialises torch.distributed (NCCL on GPU, gloo on CPU)
    when WORLD_SIZE > 1 and tears it down afterwards. ``device``: :func:`diffguide.devices.resolve_device`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        initialised = True
    try:
        yield rank, world, dev
    finally:
        if initialised:
            torch.distributed.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every process (nothing to wait for with one)."""
    if world > 1:
        torch.distributed.barrier()
