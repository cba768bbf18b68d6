"""Named configurations of the released checkpoints, so nobody retypes guided-diffusion's flags.

``PRESETS[name]`` is a :class:`Preset`: the network class name, its original constructor arguments, the noise
schedule it was trained with and whether it learns Σ. The ADM entries follow the flags of guided-diffusion's README
(``attention_resolutions`` converted to downsample rates as its ``create_model`` does); the CIFAR ResNets are those of
akamaster/pytorch_resnet_cifar10. :func:`matching_presets` names the presets a state dict fits (same keys, same shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

import torch

__all__ = ["Preset", "PRESETS", "preset_shapes", "matching_presets", "state_dict_diff",
           "StateDictDiff", "strip_prefix"]


@dataclass(frozen=True)
class Preset:
    """A released network: ``kind`` (class name in :data:`diffguide.nets.NETWORKS`), constructor ``kwargs``,
    training noise ``schedule`` (``None`` for off-the-shelf classifiers), ``learn_sigma`` (2C output channels,
    learned-range variance), and the released ``filename``."""

    kind: str
    kwargs: Mapping
    schedule: str | None
    learn_sigma: bool
    filename: str = ""
    description: str = ""
    num_train_timesteps: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


def _downsample_rates(image_size: int, resolutions: tuple[int, ...]) -> tuple[int, ...]:
    """guided-diffusion's ``--attention_resolutions 32,16,8`` as the constructor takes it: image_size // resolution."""
    return tuple(image_size // r for r in resolutions)


_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4), 512: (0.5, 1, 1, 2, 2, 4, 4)}


def _adm_unet(image_size: int, *, model_channels: int, num_res_blocks: int, class_cond: bool = True,
              dropout: float = 0.0, num_heads: int = 4, num_head_channels: int = -1,
              use_new_attention_order: bool = False, use_fp16: bool = True) -> dict:
    return dict(image_size=image_size, in_channels=3, model_channels=model_channels, out_channels=6,
                num_res_blocks=num_res_blocks, attention_resolutions=_downsample_rates(image_size, (32, 16, 8)),
                dropout=dropout, channel_mult=_CHANNEL_MULT[image_size], num_classes=1000 if class_cond else None,
                use_checkpoint=False, use_fp16=use_fp16, num_heads=num_heads, num_head_channels=num_head_channels,
                num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                use_new_attention_order=use_new_attention_order)


def _adm_classifier(image_size: int, depth: int) -> dict:
    """guided-diffusion's ``create_classifier`` with its defaults: width 128, attention at 32,16,8, scale-shift norm,
    ResBlock up/down sampling, attention pooling with 64-channel heads, 1000 classes."""
    return dict(image_size=image_size, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=depth,
                attention_resolutions=_downsample_rates(image_size, (32, 16, 8)), channel_mult=_CHANNEL_MULT[image_size],
                use_fp16=False, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
                pool="attention")


PRESETS: dict[str, Preset] = {
    "imagenet64": Preset(
        "UNetModel", _adm_unet(64, model_channels=192, num_res_blocks=3, dropout=0.1, num_head_channels=64,
                               use_new_attention_order=True), "cosine", True, "64x64_diffusion.pt",
        "ADM ImageNet 64x64 class-conditional (296M); README classifier scale 1.0"),
    "imagenet64-classifier": Preset(
        "EncoderUNetModel", _adm_classifier(64, depth=4), "cosine", False, "64x64_classifier.pt",
        "ADM ImageNet 64x64 noise-aware classifier (depth 4)"),
    "imagenet128": Preset(
        "UNetModel", _adm_unet(128, model_channels=256, num_res_blocks=2, num_heads=4), "linear", True,
        "128x128_diffusion.pt",
        "ADM ImageNet 128x128 class-conditional (422M), legacy QKV order; classifier scale 0.5 (250 steps), 1.0 (ddim25)"),
    "imagenet128-classifier": Preset(
        "EncoderUNetModel", _adm_classifier(128, depth=2), "linear", False, "128x128_classifier.pt",
        "ADM ImageNet 128x128 noise-aware classifier (43M)"),
    "imagenet256": Preset(
        "UNetModel", _adm_unet(256, model_channels=256, num_res_blocks=2, num_head_channels=64), "linear", True,
        "256x256_diffusion.pt", "ADM ImageNet 256x256 class-conditional; classifier scale 1.0"),
    "imagenet256-uncond": Preset(
        "UNetModel", _adm_unet(256, model_channels=256, num_res_blocks=2, num_head_channels=64, class_cond=False),
        "linear", True, "256x256_diffusion_uncond.pt",
        "ADM ImageNet 256x256 unconditional; classifier scale 10.0"),
    "imagenet256-classifier": Preset(
        "EncoderUNetModel", _adm_classifier(256, depth=2), "linear", False, "256x256_classifier.pt",
        "ADM ImageNet 256x256 noise-aware classifier"),
    "imagenet512": Preset(
        "UNetModel", _adm_unet(512, model_channels=256, num_res_blocks=2, num_head_channels=64, use_fp16=False),
        "linear", True, "512x512_diffusion.pt", "ADM ImageNet 512x512 class-conditional; classifier scale 4.0"),
    "imagenet512-classifier": Preset(
        "EncoderUNetModel", _adm_classifier(512, depth=2), "linear", False, "512x512_classifier.pt",
        "ADM ImageNet 512x512 noise-aware classifier"),
    **{f"cifar10-resnet{d}": Preset("CifarResNet", dict(depth=d, num_classes=10), None, False,
                                    f"cifar10-resnet{d}-*.th", f"CIFAR-10 ResNet-{d} (option A shortcuts)")
       for d in (20, 32, 44, 56)},
}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


@lru_cache(maxsize=None)
def preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of preset ``name``'s state dict (built on the meta device: no memory, no time)."""
    from . import network_class

    preset = _preset(name)
    with torch.device("meta"):
        net = network_class(preset.kind)(**preset.kwargs)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def strip_prefix(state_dict: Mapping, prefix: str = "module.") -> dict:
    """The state dict with ``prefix`` removed from its keys when every key has it (DataParallel checkpoints)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


_OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BatchNorm counters: absent from many checkpoints, unused at inference


@dataclass
class StateDictDiff:
    """How a state dict differs from a network's: keys it lacks, keys it has extra, keys whose shapes differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, network shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def state_dict_diff(expected: Mapping[str, tuple], state_dict: Mapping) -> StateDictDiff:
    """Compare a state dict with the {key: shape} a network expects (BatchNorm ``num_batches_tracked`` is optional)."""
    def optional(key: str) -> bool:
        return key.endswith(_OPTIONAL_SUFFIXES)

    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    return StateDictDiff(
        missing=[k for k in expected if k not in given and not optional(k)],
        unexpected=[k for k in given if k not in expected and not optional(k)],
        mismatched=[(k, given[k], tuple(expected[k])) for k in expected
                    if k in given and given[k] != tuple(expected[k]) and not optional(k)],
    )


def matching_presets(state_dict: Mapping) -> list[str]:
    """Names of the presets whose networks take ``state_dict`` exactly (same keys and shapes; ``module.`` stripped)."""
    state_dict = strip_prefix(state_dict)
    return [name for name in PRESETS if not state_dict_diff(preset_shapes(name), state_dict)]
