"""The objectives the trainer (:mod:`.trainer`) minimises: ``objective(net, x, y, generator) -> (loss, stats)``,
every random draw of the step from ``generator``; ``stats`` holds ``loss`` and its parts for the log."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..calibration import calibration_loss
from ..schedule import NoiseSchedule
from .config import ClassifierTrainConfig, LossConfig
from .losses import diffusion_training_loss, noised_batch

__all__ = ["Objective", "diffusion_objective", "classifier_objective"]

Objective = Callable[[nn.Module, Tensor, Tensor | None, torch.Generator], tuple[Tensor, dict]]


def diffusion_objective(schedule: NoiseSchedule, loss: LossConfig, num_classes: int | None) -> Objective:
    """The ε-prediction loss of ``loss`` (L_std or L_ours, :func:`.losses.diffusion_training_loss`)."""
    def objective(net, x, y, generator):
        return diffusion_training_loss(net, x, y, schedule, loss, num_classes, generator)

    return objective


def classifier_objective(schedule: NoiseSchedule, config: ClassifierTrainConfig) -> Objective:
    """CE(f(x_t, t), y) + ece_weight·Smooth-ECE(f(x_t, t), y) (:func:`diffguide.calibration.calibration_loss`) on
    x_t with t ~ U{0..T−1}, ε ~ N(0, I)."""
    def objective(net, x, y, generator):
        x_t, t, _ = noised_batch(x, schedule, generator)
        logits = net(x_t, t).float()
        loss, cross_entropy, ece = calibration_loss(logits, y, ece_weight=config.ece_weight, form=config.ece_form,
                                                    beta=config.ece_beta)
        stats = {"cross_entropy": cross_entropy.detach(),
                 "accuracy": (logits.argmax(1) == y).double().mean()}
        if ece is not None:
            stats["ece_loss"] = ece.detach()
        stats["loss"] = loss.detach()
        return loss, stats

    return objective
