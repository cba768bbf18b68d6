"""A small, fast class-conditional UNet for 28x28 / 32x32 images, and a small noise-aware classifier preset.

Both are presets of the ADM networks in :mod:`diffguide.nets.adm` (same blocks, scale-shift norm, fewer channels and
levels), so nothing about the architecture is new code. What :class:`SmallUNet` adds is the classifier-free
convention: a learned null label ∅ at index ``num_classes`` of the label embedding, and ``forward(x, t, y=None)`` where
``y=None`` means ∅ for the whole batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..devices import host_read_is_free
from .adm import EncoderUNetModel, UNetModel

__all__ = ["SmallUNet", "small_noisy_classifier", "SMALL_UNET_PRESETS"]

SMALL_UNET_PRESETS = {
    # 7.0M parameters (RGB, 10 classes): channel_mult (1, 2, 2) gives 32 -> 16 -> 8 (or 28 -> 14 -> 7), attention at
    # the lowest level.
    "small": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(4,)),
    # 0.7M parameters: CPU smoke tests.
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=()),
}


class SmallUNet(UNetModel):
    """ADM UNet with a learned null label: ε_θ(x, t, y), y ∈ {0..K−1} ∪ {∅ = K}; small by default.

    Args:
        image_size: height = width of the images (28 or 32 typical; must be divisible by 2^(levels − 1)).
        in_channels: image channels (1 grey, 3 RGB); the output has the same channels (ε).
        num_classes: K for a class-conditional model (label embedding of K + 1 rows, row K = ∅), or ``None`` for an
            unconditional model (labels are then ignored).
        model_channels, channel_mult, num_res_blocks, attention_resolutions (downsample rates), dropout,
        conv_resample, num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, resblock_updown,
        use_new_attention_order: as in ADM's ``UNetModel`` (so any ADM UNet size can be built with the null label).

    ``config`` holds exactly these arguments, so ``SmallUNet(**net.config)`` rebuilds the network.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, num_classes: int | None = 10,
                 model_channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (4,), dropout: float = 0.0, conv_resample: bool = True,
                 num_heads: int = 1, num_head_channels: int = 32, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = True, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes: expected a positive integer or None (unconditional), got {num_classes!r}")
        if model_channels % 32:
            raise ValueError(f"model_channels: expected a multiple of 32 (GroupNorm of 32 groups), "
                             f"got {model_channels!r}")
        adm = dict(model_channels=model_channels, num_res_blocks=num_res_blocks, dropout=dropout,
                   conv_resample=conv_resample, num_heads=num_heads, num_head_channels=num_head_channels,
                   num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm,
                   resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order)
        super().__init__(image_size=image_size, in_channels=in_channels, out_channels=in_channels,
                         attention_resolutions=attention_resolutions, channel_mult=channel_mult,
                         num_classes=None if num_classes is None else num_classes + 1, **adm)
        self.num_classes = num_classes
        # The keys the ADM trunk reads (in_channels, channel_mult, model_channels) mean the same here.
        self.config = dict(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                           channel_mult=[int(m) for m in channel_mult],
                           attention_resolutions=[int(r) for r in attention_resolutions], **adm)

    @property
    def null_label(self) -> int | None:
        """The label index of ∅ (``num_classes``), or ``None`` for an unconditional model."""
        return self.num_classes

    def forward(self, x: Tensor, timesteps: Tensor | int, y: Tensor | None = None) -> Tensor:
        t = self._check_input(x, timesteps)
        emb = self._embed_time(t)
        if self.num_classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            if y.shape != (x.shape[0],) or y.is_floating_point():
                raise ValueError(f"y: expected integer labels of shape [{x.shape[0]}], got {y.dtype} {list(y.shape)}")
            if not self.training and host_read_is_free(y) and y.numel() and \
                    (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                # (checked in eager CPU inference only: on a GPU the check would wait for the device every call;
                # training labels are checked once, and the sampler's guided denoiser checks a run's labels once)
                raise ValueError(f"y: expected labels in [0, {self.num_classes}] ({self.num_classes} = null label), "
                                 f"got range [{int(y.min())}, {int(y.max())}]")
            emb = emb + self.label_emb(y)
        return self._trunk(x, emb)


def small_noisy_classifier(image_size: int = 32, in_channels: int = 3, num_classes: int = 10, *,
                           model_channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                           attention_resolutions: Sequence[int] = (4,), dropout: float = 0.0) -> EncoderUNetModel:
    """A small noise-aware classifier ``classifier(x_t, t) -> logits [B, num_classes]``: ADM's ``EncoderUNetModel``
    (down path, middle block, adaptive pooling head) with few channels and scale-shift norm."""
    return EncoderUNetModel(image_size=image_size, in_channels=in_channels, model_channels=model_channels,
                            out_channels=num_classes, num_res_blocks=num_res_blocks,
                            attention_resolutions=attention_resolutions, dropout=dropout, channel_mult=channel_mult,
                            num_head_channels=32, use_scale_shift_norm=True, pool="adaptive")
