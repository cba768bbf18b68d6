#!/usr/bin/env python
"""Clean CIFAR-10 test accuracy of the off-the-shelf ResNets with every ReLU computed as Softplus(β) (how they guide).

    python scripts/softplus_beta_check.py --data ../shared/assets/cifar10/cifar10-jpeg-q75.tar.gz \\
        --classifiers ../shared/assets/classifiers

On the CPU, every 5th test image (2,000). The CIFAR-10 guidance study's amendment 2 reads this table
(diffguide.studies.cifar10.guidance_plan): β = 3 puts these networks at chance level; β = 10 keeps ReLU's accuracy.
"""

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from diffguide.classifiers import load_cifar_resnet
from diffguide.data import load_dataset, to_model_range
from diffguide.guidance import SoftplusForReLU

BETAS = (None, 3.0, 10.0, 30.0, 100.0)


def accuracy(classifier, x: torch.Tensor, y: torch.Tensor, beta) -> float:
    with torch.no_grad(), (SoftplusForReLU(beta) if beta is not None else contextlib.nullcontext()):
        predictions = torch.cat([classifier(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (predictions == y).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG tarball")
    parser.add_argument("--classifiers", type=Path, required=True, help="folder of cifar10-resnet*.th files")
    args = parser.parse_args()
    test = load_dataset(args.data, "test")
    keep = np.arange(0, len(test.images), 5)
    x, y = to_model_range(test.images[keep]), torch.as_tensor(np.asarray(test.labels)[keep])
    print("| network | " + " | ".join("ReLU" if b is None else f"Softplus β={b:g}" for b in BETAS) + " |")
    print("|---" * (len(BETAS) + 1) + "|")
    for path in sorted(args.classifiers.glob("cifar10-resnet*.th"), key=lambda p: int(p.name.split("-")[1][6:])):
        classifier = load_cifar_resnet(str(path))
        print(f"| {path.name.split('-')[1]} | " + " | ".join(f"{accuracy(classifier, x, y, b):.3f}" for b in BETAS)
              + " |", flush=True)


if __name__ == "__main__":
    main()
