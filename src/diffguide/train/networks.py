"""The networks a run trains: ε-networks (small UNet, any ADM size) and noise-aware classifiers.
"""

from __future__ import annotations

from torch import nn

from ..checkpoints import load_network, load_state_dict_checked
from ..nets.adm import EncoderUNetModel
from ..nets.small_unet import SmallUNet, small_noisy_classifier
from .config import NetConfig

__all__ = ["build_diffusion_net", "build_classifier_net"]


# ----------------------------------------------------------------------------------------------- networks

def build_diffusion_net(net: NetConfig, image_shape: tuple[int, int, int], num_classes: int | None
                        ) -> tuple[nn.Module, int | None]:
    """(ε-network, null label) for images ``image_shape`` = (C, H, W): a :class:`~diffguide.nets.small_unet.SmallUNet`
    (ADM's UNet with a learned null label ∅ = num_classes) of the small preset (``small_unet``) or of any ADM size
    given by ``net.adm_kwargs`` (``adm_unet``: UNetModel's arguments; image size, channels and classes come from
    the data; num_classes, dims, use_checkpoint and use_fp16 are dropped)."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"data: expected square images, got {height}x{width}")
    if net.class_conditional and num_classes is None:
        raise ValueError("net.class_conditional: the data set has no labels; train an unconditional model instead")
    classes = num_classes if net.class_conditional else None
    if net.arch == "small_unet":
        kwargs = dict(model_channels=net.model_channels, channel_mult=net.channel_mult,
                      num_res_blocks=net.num_res_blocks, attention_resolutions=net.attention_resolutions,
                      dropout=net.dropout)
    elif net.arch == "adm_unet":
        kwargs = dict(net.adm_kwargs)
        fixed = {"image_size": height, "in_channels": channels, "out_channels": channels}
        for key, value in fixed.items():
            if kwargs.pop(key, value) != value:
                raise ValueError(f"net.adm_kwargs.{key}: the data gives {value}, got {kwargs.get(key)!r} "
                                 "(ε-prediction only: out_channels = in_channels)")
        for key in ("num_classes", "dims", "use_checkpoint", "use_fp16"):
            kwargs.pop(key, None)
    else:
        raise ValueError(f"net.arch: expected a diffusion network ('small_unet' or 'adm_unet'), got {net.arch!r}")
    model = SmallUNet(image_size=height, in_channels=channels, num_classes=classes, **kwargs)
    return model, classes


def build_classifier_net(net: NetConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A noise-aware classifier ``classifier(x_t, t)``: the small preset or ADM's ``EncoderUNetModel``."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"data: expected square images, got {height}x{width}")
    if net.arch == "small_classifier":
        return small_noisy_classifier(height, channels, num_classes, model_channels=net.model_channels,
                                      channel_mult=net.channel_mult, num_res_blocks=net.num_res_blocks,
                                      attention_resolutions=net.attention_resolutions, dropout=net.dropout)
    if net.arch == "adm_classifier":
        return EncoderUNetModel(**{**net.adm_kwargs, "image_size": height, "in_channels": channels,
                                   "out_channels": num_classes})
    raise ValueError(f"net.arch: expected a classifier ('small_classifier' or 'adm_classifier'), got {net.arch!r}")

def _initialise_from(model: nn.Module, folder: str) -> None:
    """Load a released model's weights (checked key by key and shape by shape) into ``model`` — fine-tuning."""
    source, _ = load_network(folder)
    load_state_dict_checked(model, source.state_dict(), what=f"init_from {folder!r}")
