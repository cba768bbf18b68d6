"""Training: ε-prediction diffusion models with the standard or the CFG-aligned loss (spec cfg-loss.md), and
noise-aware classifiers, and calibration fine-tuning.

- :mod:`.losses` — L_std, L_ours, label dropout, the ideal optimum and w_eff;
- :mod:`.config` — typed run configurations (JSON beside the weights and in every checkpoint);
- :mod:`.batches` — the data of a run and its seeded mini-batches;
- :mod:`.networks` — the ε-networks and noise-aware classifiers a run builds;
- :mod:`.objectives` — the diffusion objective and the classifier's CE + λ·Smooth-ECE;
- :mod:`.trainer` — the resumable run: AdamW, warm-up, clipping, EMA, bf16, DDP, checkpoints, exact resume;
- :mod:`.outputs` — sample grids and the loss curve;
- :mod:`.loop` — the entry points :func:`train` and :func:`train_classifier`;
- :mod:`.calibrate` — calibration fine-tuning (CE + λ·Smooth-ECE) of any classifier on the same trainer.
"""

from .calibrate import CalibrationConfig, calibration_objective, finetune_calibration, write_report
from .config import ClassifierTrainConfig, DataConfig, LossConfig, NetConfig, OptimConfig, TrainConfig
from .losses import (aligned_cfg_loss, aligned_optimum, cfg_training_loss, diffusion_training_loss, drop_labels,
                     effective_guidance, guided_eps, noised_batch, standard_cfg_loss)
from .loop import (build_classifier_net, build_diffusion_net, ema_decay_at, ema_update, learning_rate,
                   load_training_checkpoint, train, train_classifier)

__all__ = [
    "CalibrationConfig", "calibration_objective", "finetune_calibration", "write_report",
    "ClassifierTrainConfig", "DataConfig", "LossConfig", "NetConfig", "OptimConfig", "TrainConfig",
    "aligned_cfg_loss", "aligned_optimum", "build_classifier_net", "build_diffusion_net", "cfg_training_loss",
    "diffusion_training_loss", "drop_labels", "effective_guidance", "ema_decay_at", "ema_update", "guided_eps",
    "learning_rate", "load_training_checkpoint", "noised_batch", "standard_cfg_loss", "train", "train_classifier",
]
