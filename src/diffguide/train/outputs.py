"""What a run writes besides checkpoints: sample grids (PNG) and the loss curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..adapter import ClassifierFree, Denoiser
from ..data import to_uint8
from ..guidance.classifier import Guidance
from ..io import atomic_write
from ..noise import SeededNoise
from ..samplers import ddim
from ..schedule import NoiseSchedule
from .config import TrainConfig

__all__ = ["class_grid", "sample_images", "plot_loss_curve"]


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
