"""diffguide: better class-conditional diffusion sampling without retraining the diffusion model, and proof that it is.

The flow: data → model adapter (:mod:`diffguide.adapter`: ε, x̂0, variance) → guidance (:mod:`diffguide.guidance`:
where the classifier looks × objective × schedule) → sampler (:mod:`diffguide.samplers`) → samples → metrics.

The names below are imported on first use (PEP 562), so ``import diffguide.cli`` and ``diffguide --help`` do not
import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Denoiser": "adapter", "Prediction": "adapter",
    "SampleSettings": "api", "sample": "api",
    "ClassifierFree": "guidance", "ClassifierGuidance": "guidance", "Guidance": "guidance", "GuidedDenoiser": "guidance",
    "FixedNoise": "noise", "SeededNoise": "noise",
    "SAMPLERS": "samplers", "SampleOutput": "samplers", "ddim": "samplers", "ddpm": "samplers", "dpmpp_2m": "samplers",
    "euler": "samplers", "heun": "samplers",
    "NoiseSchedule": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffguide' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
