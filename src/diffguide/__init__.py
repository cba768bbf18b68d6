"""diffguide: better class-conditional diffusion sampling without retraining the diffusion model, and proof that it is.

The flow: data → model adapter (:mod:`diffguide.adapter`: ε, x̂0, variance) → guidance (:mod:`diffguide.guidance`:
where the classifier looks × objective × schedule) → sampler (:mod:`diffguide.samplers`) → samples → metrics.
"""

from .adapter import Denoiser, Prediction
from .api import SampleSettings, sample
from .guidance import ClassifierFree, ClassifierGuidance, Guidance, GuidedDenoiser
from .noise import FixedNoise, SeededNoise
from .samplers import SAMPLERS, SampleOutput, ddim, ddpm, dpmpp_2m, euler, heun
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "ClassifierFree", "ClassifierGuidance", "Denoiser", "FixedNoise", "Guidance", "GuidedDenoiser", "NoiseSchedule",
    "Prediction", "SAMPLERS", "SampleOutput", "SampleSettings", "SeededNoise", "ddim", "ddpm", "dpmpp_2m", "euler",
    "heun", "sample",
]
