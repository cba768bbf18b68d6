"""Calibration of a real off-the-shelf classifier on real data: the CIFAR-10 ResNet-20 of shared/assets on 1000
CIFAR-10 JPEG (q75) test images, 100 per class (every 10th image of the class-sorted test split)."""

from __future__ import annotations

import numpy as np
import pytest
import relplot
from conftest import shared_path

from diffguide.calibration import EpochBatches, calibration_summary, collect_logits, top_label

RESNET20 = "assets/classifiers/cifar10-resnet20-12fca82f.th"
CIFAR10 = "assets/cifar10/cifar10-jpeg-q75.tar.gz"


@pytest.fixture(scope="module")
def cifar10_test_subset():
    from diffguide.data import load_dataset

    dataset = load_dataset(shared_path(CIFAR10), "test", subset=range(0, 10000, 10))
    assert np.bincount(dataset.labels).tolist() == [100] * 10
    return dataset


@pytest.fixture(scope="module")
def resnet20():
    from diffguide.classifiers import load_cifar_resnet

    return load_cifar_resnet(shared_path(RESNET20))


def _batches(dataset, batch_size=250):
    from diffguide.data import to_model_range

    return EpochBatches(dataset.images, dataset.labels, batch_size, shuffle=False, convert=to_model_range)


def test_resnet20_calibration_on_cifar10_jpeg(cifar10_test_subset, resnet20):
    logits, labels = collect_logits(resnet20, _batches(cifar10_test_subset))
    summary = calibration_summary(logits, labels)
    # measured (CPU, float32): 795/1000 right; overconfident: mean confidence 0.9317 against accuracy 0.795
    assert summary["n"] == 1000 and round(summary["accuracy"] * 1000) == 795
    assert summary["mean_confidence"] == pytest.approx(0.931674, abs=5e-5)
    assert summary["ece"] == pytest.approx(0.136674, abs=5e-5)  # nearest interior bin edge is 1.4e-4 away
    assert summary["smece"] == pytest.approx(0.173013, abs=5e-5)
    assert summary["nll"] == pytest.approx(0.924622, abs=5e-5)
    assert summary["reliability"]["counts"][9] > 700  # most predictions sit in the top bin
    # the oracle on these real confidences
    confidences, correct = top_label(logits, labels)
    assert summary["smece"] == pytest.approx(relplot.smECE(confidences, correct), abs=1e-3)
    clipped = np.clip(confidences, 0, 1 - 1e-12)  # relplot puts p̂ = 1 in an eleventh bin of its own
    assert summary["ece"] == pytest.approx(relplot.metrics.binnedECE(clipped, correct, 10), abs=1e-9)


def test_fine_tuned_resnet_weights_load_back(cifar10_test_subset, tmp_path):
    """A two-step calibration fine-tune of the real (frozen-for-guidance) wrapper, unfrozen; its safetensors output
    loads back through load_cifar_resnet and gives the fine-tuned logits."""
    import torch

    from diffguide.calibration import CalibrationConfig, finetune_calibration
    from diffguide.classifiers import load_cifar_resnet
    from diffguide.data import ImageDataset

    model = load_cifar_resnet(shared_path(RESNET20)).requires_grad_(True)
    small = ImageDataset(cifar10_test_subset.images[::5], cifar10_test_subset.labels[::5], None, "subset")
    config = CalibrationConfig(steps=2, lr=1e-4)
    report = finetune_calibration(model, _batches(small, 100), _batches(small, 200), config, out_dir=tmp_path,
                                  progress=False, diagrams=False)
    assert report["before"]["summary"]["n"] == 200 and report["steps"] == 2
    reloaded = load_cifar_resnet(tmp_path / "classifier.safetensors")
    x = torch.as_tensor(small.images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
        assert not torch.equal(load_cifar_resnet(shared_path(RESNET20))(x), model(x))
