"""diffusers models in diffguide: a pixel-space ``UNet2DModel`` folder becomes a diffguide ε-network and its
``DDPMScheduler`` / ``DDIMScheduler`` config a diffguide schedule, so every guidance rule and sampler applies.

diffusers is optional (``pip install 'diffguide[diffusers]'``) and imported only when a model is loaded:
:func:`is_diffusers_folder` works without it, and :func:`load_diffusers` says how to install it when it is missing.
"""

from .model import (INSTALL_HINT, DiffusersConfig, DiffusersUNet, MissingDiffusersError, is_diffusers_folder,
                    load_diffusers, require_diffusers)
from .scheduler import SchedulerMapping

__all__ = ["INSTALL_HINT", "DiffusersConfig", "DiffusersUNet", "MissingDiffusersError", "SchedulerMapping",
           "is_diffusers_folder", "load_diffusers", "require_diffusers"]
