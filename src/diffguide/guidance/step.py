"""What a guidance rule sees at one sampler step, and the one time axis every schedule reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..adapter import Prediction


@dataclass
class GuidanceStep:
    """The state of one reverse step, as handed to guidance schedules and objectives.

    ``i`` counts down from ``num_steps − 1`` to 0 over the sampler's grid; ``t`` holds the original timesteps [B];
    ``prediction`` is the (classifier-free guided) model prediction, ``None`` while classifier-free guidance itself is
    being weighted; ``max_variance`` [B] is the running maximum of each sample's largest step-variance element since
    the run started (the batch-invariant Σ_max), ``None`` when no variance is known yet.
    """

    i: int
    num_steps: int
    num_train_timesteps: int
    t: Tensor
    x_t: Tensor
    prediction: Prediction | None
    labels: Tensor | None
    max_variance: Tensor | None = None

    @property
    def noise_level(self) -> Tensor:
        """u = t/T [B] — THE time axis of every guidance schedule: the original timestep over the number of training
        timesteps, ≈ 1 at pure noise, 0 at the clean end; the same at any number of sampler steps."""
        return self.t.to(torch.float64) / self.num_train_timesteps
