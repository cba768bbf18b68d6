"""Networks users bring: ADM's UNet and noise-aware classifier (guided-diffusion state dicts load unchanged), the CIFAR
ResNets, and named presets of the released checkpoints.

:data:`NETWORKS` maps a class name (the ``kind`` saved in a checkpoint's ``config.json``) to where the class lives;
:func:`network_class` imports it; :func:`register_network` adds a class of your own.
"""

from __future__ import annotations

import importlib

from torch import nn

from .adm import EncoderUNetModel, UNetModel
from .cifar_resnet import CifarResNet
from .presets import PRESETS, Preset, matching_presets

NETWORKS: dict[str, str | type] = {
    "UNetModel": "diffguide.nets.adm:UNetModel",
    "EncoderUNetModel": "diffguide.nets.adm:EncoderUNetModel",
    "CifarResNet": "diffguide.nets.cifar_resnet:CifarResNet",
    "SmallUNet": "diffguide.nets.small_unet:SmallUNet",
    "EpsMLP": "diffguide.nets.mlp:EpsMLP",
}


def network_class(kind: str) -> type:
    """The network class registered as ``kind``; a class must take its ``config`` dict as keyword arguments."""
    if kind not in NETWORKS:
        raise ValueError(f"kind: expected one of {sorted(NETWORKS)} (or a class added with register_network), "
                         f"got {kind!r}")
    target = NETWORKS[kind]
    if isinstance(target, str):
        module, name = target.split(":")
        target = getattr(importlib.import_module(module), name)
    return target


def register_network(cls: type, kind: str | None = None) -> type:
    """Make ``cls`` savable/loadable by :mod:`diffguide.checkpoints` (its instances need a ``config`` dict of
    constructor arguments). Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls: expected an nn.Module subclass, got {cls!r}")
    NETWORKS[kind or cls.__name__] = cls
    return cls


def network_kind(net: nn.Module) -> str:
    """The registered name of ``net``'s class (exact class, not a parent)."""
    for kind, target in NETWORKS.items():
        name = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
        if name == f"{type(net).__module__}:{type(net).__qualname__}":
            return kind
    raise ValueError(f"net: {type(net).__name__} is not a registered network class; call "
                     "diffguide.nets.register_network on it first")


__all__ = [
    "CifarResNet", "EncoderUNetModel", "NETWORKS", "PRESETS", "Preset", "UNetModel",
    "matching_presets", "network_class", "network_kind", "register_network",
]
