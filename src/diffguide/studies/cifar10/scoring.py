"""Scoring one sampling unit of a CIFAR-10 study: Inception features, FID / KID / PRDC against the reference, and
the accuracy of the judge (and of the guide) on the samples. The networks and the reference are loaded
once per process (:func:`diffguide.accel.kept`): a study scores hundreds of units against the same ones, which each
unit used to load again."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...accel import cudnn_autotune, file_identity, kept
from .runner import Study


def scoring_assets(study: Study, cache: Path, device):
    """(Inception feature extractor, reference) of ``study``, loaded once per process and device; a ValueError if
    the reference was computed with another feature network."""
    from ...metrics import InceptionFeatures, Reference

    inception, reference_file = study.assets["inception"], cache / "reference.npz"
    extractor = kept("inception", (file_identity(inception), str(device)),
                     lambda: InceptionFeatures(inception, device=device))
    reference = kept("reference", (file_identity(reference_file),), lambda: Reference.load(reference_file))
    reference.check_network(extractor.identity)
    return extractor, reference


def judge(spec: str, device):
    """The classifier ``spec`` names (:func:`~.assets.load_judge`), loaded once per process and device; ``device``
    None: the GPU when there is one (:func:`~diffguide.devices.resolve_device`), as for every other network of a
    unit (the judge ran on the CPU before: 4–7 s of every H200 unit)."""
    from ...devices import resolve_device
    from .assets import load_judge

    device = resolve_device(device)
    weights = None if spec.startswith("random:") else file_identity(spec.partition(":")[2])  # random: a seed
    return kept("judge", (spec, weights, str(device)), lambda: load_judge(spec, device))


def judge_accuracy(spec: str, images: np.ndarray, labels: np.ndarray, device) -> float:
    """The share of uint8 samples [N, H, W, C] that the classifier ``spec`` assigns to their ``labels``."""
    return float((judge_predictions(spec, images, device) == labels).mean())


def judge_predictions(spec: str, images: np.ndarray, device) -> np.ndarray:
    """The classes [N] the classifier ``spec`` assigns to uint8 samples [N, H, W, C]."""
    from ...metrics.inception import full_fp32

    model = judge(spec, device)
    device = next(model.parameters()).device
    predictions = []
    # on a GPU as on the CPU: fp32, never TF32; cuDNN's autotuning picks among exact fp32 algorithms (predictions only
    # move at ties), as for the FID features
    with torch.no_grad(), full_fp32(), cudnn_autotune(device.type == "cuda"):
        for start in range(0, len(images), 2500):
            x = torch.from_numpy(images[start:start + 2500]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            predictions.append(model(x).argmax(1))  # read once, at the end: no wait on the GPU per batch
    return torch.cat(predictions).cpu().numpy()


def score(study: Study, cache: Path, device, images: np.ndarray, labels: np.ndarray, *, seed: int,
          guide: str | None = None) -> dict:
    """{'metrics', 'judge_consistency', ['guide_accuracy',] 'timing'} of uint8 samples [N, H, W, C] with their
    labels; ``guide``: the :func:`~.assets.load_judge` spec of the guide whose own accuracy is reported beside the
    judge's (a noise-aware guide reads the samples at t = 0)."""
    from ...devices import resolve_device
    from ...metrics import evaluate_features

    clock = time.perf_counter()
    extractor, reference = scoring_assets(study, cache, device)
    features = extractor(images)
    timing = {"features_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    out = {"metrics": evaluate_features(features, reference, seed=seed, device=extractor.device)}
    timing["metrics_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    judge_device = resolve_device(device)
    out["judge_consistency"] = judge_accuracy(study.assets["judge"], images, labels, judge_device)
    out["judge_device"] = str(judge_device)  # (the JSONs without it ran the judge on the CPU)
    if guide is not None:
        out["guide_accuracy"] = judge_accuracy(guide, images, labels, judge_device)
    timing["judge_s"] = time.perf_counter() - clock
    return {**out, "timing": timing}
