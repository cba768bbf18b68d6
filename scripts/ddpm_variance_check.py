#!/usr/bin/env python
"""Why the CIFAR-10 studies run DDPM with fixed_small: residual noise of respaced fixed_large, on the CPU in float32.

    python scripts/ddpm_variance_check.py --model ../shared/assets/diffusion/cifar10-cond-17m-v0 --out /tmp/ddpm_check

Draws the same 20 samples (2 per class, seed 0) with DDIM-50, DDPM-100 fixed_large and DDPM-100 fixed_small, prints
the mean |x − 3x3 box blur| of each (residual noise raises it) and writes a grid PNG per run.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffguide.api import load_diffusion
from diffguide.noise import SeededNoise
from diffguide.samplers import SAMPLERS

RUNS = (("ddim50", "ddim", "ddim50", None), ("ddpm100_fixed_large", "ddpm", "100", "fixed_large"),
        ("ddpm100_fixed_small", "ddpm", "100", "fixed_small"))


def high_frequency(x: torch.Tensor) -> float:
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return (x - blurred).abs().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a class-conditional fixed-variance CIFAR-10 model folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the grid PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    net, config = load_diffusion(args.model)
    labels = torch.arange(20) % 10
    for name, sampler, spacing, variance in RUNS:
        denoiser = config.denoiser(net, spacing, variance=variance)
        with torch.no_grad():
            x = SAMPLERS[sampler](denoiser, SeededNoise(0, range(20), (3, 32, 32)), labels).samples.clamp(-1, 1)
        images = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        Image.fromarray(np.concatenate([np.concatenate(list(row), 1) for row in images.reshape(2, 10, 32, 32, 3)]))\
            .save(args.out / f"{name}.png")
        print(f"{name:22s} mean |x - box blur| = {high_frequency(x):.4f}")


if __name__ == "__main__":
    main()
