"""Classifier calibration (spec guidance.md §4): binned ECE, smECE, ECE_t, reliability diagrams, the Smooth-ECE
loss and the epoch batches of calibration data. The CE + λ·Smooth-ECE fine-tuning routine runs on the shared trainer:
:mod:`diffguide.train.calibrate` (its names are also reachable here, imported on first use).

- :mod:`.metrics` — binned ECE, smECE (Błasiok & Nakkiran) of top-label confidences;
- :mod:`.loss` — the Smooth-ECE loss, per-sample and bin forms;
- :mod:`.evaluate` — logits of a classifier module over batches, calibration summaries, ECE_t;
- :mod:`.batches` — :class:`EpochBatches`, shuffled in-memory batches one epoch at a time;
- :mod:`.plots` — reliability diagrams and ECE_t curves (PNG).
"""

from .evaluate import (calibration_summary, collect_logits, collect_noised_logits, default_timesteps,
                       ece_over_timesteps, evaluate_calibration)
from .batches import EpochBatches
from .loss import (calibration_loss, pseudo_huber_bin_loss, pseudo_huber_sample_loss, smooth_ece_loss,
                   top_label_confidence)
from .metrics import ReliabilityBins, binned_ece, reliability_bins, smooth_ece, smooth_ece_at, top_label
from .plots import plot_ece_over_timesteps, plot_reliability_diagram

__all__ = [
    "CalibrationConfig", "ReliabilityBins", "EpochBatches", "binned_ece", "calibration_loss", "calibration_objective",
    "calibration_summary", "collect_logits", "collect_noised_logits", "default_timesteps", "ece_over_timesteps",
    "evaluate_calibration", "finetune_calibration", "plot_ece_over_timesteps", "plot_reliability_diagram",
    "pseudo_huber_bin_loss", "pseudo_huber_sample_loss", "reliability_bins", "smooth_ece", "smooth_ece_at",
    "smooth_ece_loss", "top_label", "top_label_confidence", "write_report",
]

_TRAINING = ("CalibrationConfig", "calibration_objective", "finetune_calibration", "write_report")


def __getattr__(name: str):
    """The fine-tuning names of :mod:`diffguide.train.calibrate`, imported on first use (training sits above
    calibration in the layers, so this package does not import it)."""
    if name in _TRAINING:
        from ..train import calibrate

        return getattr(calibrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
