"""What a run writes besides checkpoints: sample grids (PNG) and the loss curve.
"""

from __future__ import annotations

import json
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

__all__ = ["grid_samples", "plot_loss_curve"]


# ----------------------------------------------------------------------------------------------- outputs

@torch.no_grad()
def grid_samples(net: nn.Module, config: TrainConfig, image_shape, num_classes: int | None,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """DDIM (η = 0, ``config.sample_steps`` steps) samples with CFG at ``config.sample_w``: ``samples_per_class``
    per class (class-major order) or 64 unconditional ones; per-sample seeds (seed, k). Returns (uint8 NHWC, labels
    or None) for :func:`diffguide.grid.save_grid`."""
    schedule = NoiseSchedule.create(config.schedule, str(config.sample_steps), config.num_train_timesteps)
    denoiser = Denoiser(net, schedule, clip_x0=True, num_classes=num_classes)
    if num_classes is None:
        n, labels, guidance = 64, None, None
    else:
        n = num_classes * config.samples_per_class
        labels = torch.arange(num_classes, device=device).repeat_interleave(config.samples_per_class)
        guidance = Guidance(cfg=ClassifierFree(w=config.sample_w, null_label=num_classes))
    noise = SeededNoise(config.seed, range(n), image_shape, device=device)
    was_training = net.training
    net.eval()
    try:
        samples = ddim(denoiser, noise, labels, guidance=guidance).samples
    finally:
        net.train(was_training)
    return to_uint8(samples.float().clamp(-1, 1)), None if labels is None else labels.cpu().numpy()


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
