"""The one device resolution every command and the Python API use: a clear error instead of a silent CPU fallback."""

from __future__ import annotations

import os

import torch

__all__ = ["host_read_is_free", "resolve_device"]


def resolve_device(device=None, *, what: str = "device") -> torch.device:
    """``None`` / ``'auto'``: ``cuda:$LOCAL_RANK`` when there is a GPU, else the CPU. A bare ``'cuda'`` means this
    process's GPU (``cuda:$LOCAL_RANK``). A ValueError naming ``what`` for a malformed name, a GPU asked for where
    there is none, or a GPU index beyond the ones present."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: {device!r} is not a torch device (expected cpu, cuda, cuda:N, mps or auto)"
                         ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {device!r} asks for a GPU but torch sees none (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", "0"))
        if index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {device!r} asks for GPU {index} but there are {torch.cuda.device_count()}")
        return torch.device(f"cuda:{index}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what}: {device!r} asks for Apple's MPS backend, which is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}: {device!r} is not supported (expected cpu, cuda, cuda:N, mps or auto)")
    return dev


def host_read_is_free(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor``'s values on the host (``int(t)``, ``bool(t)``) costs nothing: it is on the CPU and
    no graph is being compiled. On a GPU each such read waits for the device to catch up, so a value check gated by
    this runs on the CPU only; per-run checks (the sampler's labels) cover the GPU."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()
