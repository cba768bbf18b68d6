"""Class consistency: how often a classifier assigns generated samples the labels they were generated for."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["check_classifier_labels", "class_consistency", "consistency_classifier"]


def check_classifier_labels(labels: np.ndarray, num_classes: int | None) -> None:
    """A ValueError unless every label is a class of the classifier: 0 ≤ y < ``num_classes`` (y ≥ 0 when unknown)."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= (num_classes if num_classes is not None else np.iinfo(np.int64).max))
    if bad.any():
        classes = f"classes 0..{num_classes - 1}" if num_classes is not None else "classes from 0"
        raise ValueError(f"the samples' labels lie in [{labels.min()}, {labels.max()}], but the classifier has "
                         f"{classes} ({int(bad.sum())} samples outside); class "
                         "consistency needs the labels the samples were generated for")


def consistency_classifier(path: str | os.PathLike, labels: np.ndarray, device):
    """The CIFAR ResNet at ``path`` (:func:`diffguide.classifiers.load_cifar_resnet`) in eval mode, after
    :func:`check_classifier_labels` of the samples' labels — before any feature is extracted."""
    from ..classifiers import load_cifar_resnet

    model = load_cifar_resnet(path, device=device).eval()
    check_classifier_labels(labels, getattr(model, "num_classes", None))
    return model


def class_consistency(images: np.ndarray, labels: np.ndarray, model, *, device, batch_size: int) -> float:
    """Accuracy of the classifier ``model`` (a module, or the path of a CIFAR ResNet) on the samples against the
    labels they were generated for: (1/N) Σ 1[argmax_c f(x_n)_c = y_n]."""
    import torch

    from ..data import to_model_range

    if not isinstance(model, torch.nn.Module):
        model = consistency_classifier(model, labels, device)
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            logits = model(to_model_range(images[lo:lo + batch_size], device=device))
            correct += int((logits.argmax(dim=1).cpu() == torch.from_numpy(labels[lo:lo + batch_size])).sum())
    return correct / len(images)
