"""What a CIFAR-10 study runs on: the shared assets (the real study) or tiny random stand-ins (``--tiny``, CPU).

The tiny stand-ins exercise the whole pipeline in seconds and prove nothing about CIFAR-10: 8×8 random images, a
2-step-trained ``small_unet`` of 8 channels, a 2-step noise-aware classifier standing in for the three off-the-shelf
ResNets (on x_t instead of x̂0), a random TorchScript "Inception" producing [B, 8] features and a random judge.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

TINY_NET = {"arch": "small_unet", "model_channels": 32, "channel_mult": [1], "num_res_blocks": 1,
            "attention_resolutions": []}
TINY_CLASSIFIER = {**TINY_NET, "arch": "small_classifier"}
TINY_FEATURES, TINY_SIZE, TINY_IMAGES = 8, 8, 80


class _TinyFeatures(nn.Module):
    """[B, 3, 299, 299] -> [B, 8]: a strided conv, ReLU, global average (random weights)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, TINY_FEATURES, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


class _TinyJudge(nn.Module):
    """[B, 3, H, W] in [−1, 1] -> [B, 10] logits (random weights)."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class AtCleanTimestep(nn.Module):
    """A noise-aware classifier f(x_t, t) as a classifier of clean images: f(x, 0)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, torch.zeros(len(x), dtype=torch.long, device=x.device))


def load_judge(spec: str, device=None):
    """A classifier of clean images in [−1, 1]: ``cifar-resnet:PATH``, ``noise-aware:FOLDER`` (a noise-aware
    classifier's release, read at t = 0) or ``random:SEED`` (the tiny stand-in)."""
    if spec.startswith("cifar-resnet:"):
        from ...classifiers import load_cifar_resnet

        return load_cifar_resnet(spec.split(":", 1)[1], device=device or "cpu")
    if spec.startswith("noise-aware:"):
        from ...api import load_guidance_classifier

        return AtCleanTimestep(load_guidance_classifier(spec.split(":", 1)[1], device=device or "cpu")[0]).eval()
    if spec.startswith("random:"):
        torch.manual_seed(int(spec.split(":", 1)[1]))
        return _TinyJudge().eval().to(device or "cpu")
    raise ValueError(f"judge: expected 'cifar-resnet:PATH', 'noise-aware:FOLDER' or 'random:SEED', got {spec!r}")


def real_assets(shared=None, model=None, data=None, inception=None, classifiers=None) -> dict:
    """The shared assets (paths default to --shared/…); a clear error naming what is missing."""
    shared = Path(shared or "/work/shared/assets")
    model = Path(model or shared / "diffusion" / "cifar10-cond-17m-v0")
    data = Path(data or shared / "cifar10" / "cifar10-jpeg-q75.tar.gz")
    inception = Path(inception or shared / "inception" / "inception-2015-12-05-fid-features.pt")
    classifiers = Path(classifiers or shared / "classifiers")
    for name, path in (("model", model), ("data", data), ("inception", inception), ("classifiers", classifiers)):
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")

    def resnet(depth: int) -> str:
        found = sorted(classifiers.glob(f"cifar10-resnet{depth}-*.th"))
        if not found:
            raise FileNotFoundError(f"classifiers: no cifar10-resnet{depth}-*.th in {classifiers}")
        return f"cifar-resnet:{found[0]}"

    cuda = torch.cuda.is_available()
    return {"model": str(model), "data": str(data), "inception": str(inception), "judge": resnet(56),
            "guides": {f"resnet{d}": ("x0", resnet(d)) for d in (20, 32, 44)},
            "train_config": json.loads((model / "train_config.json").read_text()),
            "batch_size": 2500 if cuda else 64, "bf16": cuda, "classifier_net": None, "device": None,
            "num_features": 10_000}


def tiny_assets(folder) -> dict:
    """Build the tiny stand-ins under ``folder`` (seeded; re-used when already there)."""
    from ...data import ImageDataset
    from ...train import ClassifierTrainConfig, TrainConfig, train, train_classifier

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = np.arange(TINY_IMAGES) % 10
    images = rng.integers(0, 256, (TINY_IMAGES, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    names = [f"class{k}" for k in range(10)]
    dataset = ImageDataset(images=images, labels=labels, class_names=names, source="tiny-random")
    base = {"data": {"source": "in-memory", "split": "train"}, "net": TINY_NET, "steps": 2, "seed": 0,
            "log_every": 1, "checkpoint_every": 1,
            "optim": {"batch_size": 8, "bf16": False, "ema_decay": 0.9, "warmup_steps": 1}}
    if not (folder / "model" / "model").exists():
        train(TrainConfig.from_dict(base), folder / "model", dataset=dataset, device="cpu", progress=False, fast=False)
    if not (folder / "guide" / "model").exists():
        config = ClassifierTrainConfig.from_dict({"data": base["data"], "net": TINY_CLASSIFIER, "steps": 2,
                                                  "optim": {"batch_size": 8}, "eval_split": None})
        train_classifier(config, folder / "guide", dataset=dataset, device="cpu", progress=False, fast=False)
    inception = folder / "tiny_inception.pt"
    if not inception.exists():
        torch.manual_seed(0)
        with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated; the metrics read TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            torch.jit.script(_TinyFeatures().eval()).save(str(inception))
    guide = str(folder / "guide" / "model")
    return {"model": str(folder / "model" / "model"), "data": dataset, "eval_dataset": dataset,
            "inception": str(inception), "judge": "random:0",
            "guides": {f"resnet{d}": ("x_t", guide) for d in (20, 32, 44)}, "train_config": base,
            "batch_size": 16, "train_batch": 8, "bf16": False, "classifier_net": TINY_CLASSIFIER, "device": "cpu",
            "num_features": TINY_IMAGES}
