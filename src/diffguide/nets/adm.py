"""The ADM networks of guided-diffusion (Dhariwal & Nichol 2021): ``UNetModel`` and ``EncoderUNetModel``.

Constructor arguments and state-dict keys are the original ones, so the released ``.pt`` files load unchanged.
Inference-oriented: ``use_checkpoint`` and ``use_fp16`` are accepted and recorded but change nothing (no gradient
checkpointing; run in bf16/fp16 with ``torch.autocast``). Attention runs through
``F.scaled_dot_product_attention`` on q, k, v contiguous in the head dimension, so that its fused kernels run (flash /
memory-efficient on GPU, flash on the CPU; :data:`QKV_CONTIGUOUS`); GroupNorm always computes in float32.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetModel", "EncoderUNetModel", "timestep_embedding", "GroupNorm32", "AttentionBlock", "ResBlock"]


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim]: [cos(t·f_k), sin(t·f_k)], f_k = max_period^(−k/half), k = 0..half−1,
    half = dim // 2 (a zero column is appended when dim is odd). Computed in float32."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)  # built where t lives: no host-device copy
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, cast back to it (ADM's ``normalization``)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (ADM's initialisation of residual outputs)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, then an optional 3×3 convolution (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """×2 downsampling: a strided 3×3 convolution or 2×2 average pooling (key ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample: average pooling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    h = conv(SiLU(GN(x))); scale-shift norm: h = GN(h)·(1 + scale) + shift with (scale, shift) = Linear(SiLU(emb)),
    else h = h + Linear(SiLU(emb)) before GN; out = skip(x) + conv(dropout(SiLU(·))).
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


QKV_CONTIGUOUS = True
"""q, k, v are views of one [B, T, 3·H·c] copy of the projection, contiguous in c (True), or views of the projection
as it comes, [B, 3·H·c, T], whose c has stride T (False: the layout before 2026-12-01, kept for benchmarks'
side-by-side rows). ``F.scaled_dot_product_attention`` runs its fused kernels (flash, memory-efficient; on the CPU
its flash kernel) only when the last dimension is contiguous; otherwise it falls back to the math kernel: batched
matmuls and a materialised T×T softmax, computed in float32 for bf16 inputs (no tensor cores on a GPU; the CPU's
dispatch log and the H200 training profile's float32 GEMMs, benchmarks/results/profile_train_b128_h200.txt)."""


@contextlib.contextmanager
def qkv_layout(contiguous: bool):
    """Within the context :data:`QKV_CONTIGUOUS` is ``contiguous`` (a study keeps the layout its units ran with).
    A compiled network guards on it, so it recompiles for the other layout instead of reusing a graph."""
    global QKV_CONTIGUOUS
    saved, QKV_CONTIGUOUS = QKV_CONTIGUOUS, contiguous
    try:
        yield
    finally:
        QKV_CONTIGUOUS = saved


def split_qkv(qkv: Tensor, num_heads: int, legacy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Split a fused projection [B, 3·H·c, T] into q, k, v of shape [B, H, T, c] (contiguous in c: see
    :data:`QKV_CONTIGUOUS`).

    Legacy order (``QKVAttentionLegacy``): channel index = h·3c + j·c + i (heads outermost, q/k/v inside each head).
    New order (``QKVAttention``): channel index = j·H·c + h·c + i (q, k, v outermost).
    """
    batch, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"attention: {width} qkv channels do not split into 3 x {num_heads} heads")
    ch = width // (3 * num_heads)
    per_position = qkv.transpose(1, 2)  # [B, T, 3Hc]
    if QKV_CONTIGUOUS:
        per_position = per_position.contiguous()
    if legacy:
        q, k, v = per_position.reshape(batch, length, num_heads, 3, ch).unbind(3)
    else:
        q, k, v = per_position.reshape(batch, length, 3, num_heads, ch).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def qkv_attention(qkv: Tensor, num_heads: int, legacy: bool) -> Tensor:
    """softmax(q·kᵀ/√c)·v per head, from a fused projection [B, 3·H·c, T] to [B, H·c, T] (heads in order h·c + i)."""
    q, k, v = split_qkv(qkv, num_heads, legacy)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, c]
    batch, _, length, _ = out.shape
    return out.permute(0, 1, 3, 2).reshape(batch, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions: x + proj_out(attention(qkv(GN(x))))."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"num_head_channels: {channels} channels are not divisible by {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.legacy = not use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean position (prepended) attends to all positions; new QKV order."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False)
        return self.c_proj(x)[:, :, 0]


def _checked_config(image_size, in_channels, model_channels, num_res_blocks, channel_mult, dims,
                    attention_resolutions) -> tuple[tuple, tuple]:
    """The shared argument checks of both ADM networks; returns (attention_resolutions, channel_mult) as tuples."""
    for name, value in (("image_size", image_size), ("in_channels", in_channels),
                        ("model_channels", model_channels), ("num_res_blocks", num_res_blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not channel_mult:
        raise ValueError("channel_mult: expected a non-empty sequence of multipliers, e.g. (1, 2, 3, 4)")
    if dims != 2:
        raise ValueError(f"dims: only 2-D images are supported, got dims={dims!r}")
    return (tuple(int(r) for r in _as_tuple(attention_resolutions, "attention_resolutions")),
            _as_tuple(channel_mult, "channel_mult"))


class _ADMTrunk(nn.Module):
    """What UNetModel and EncoderUNetModel share: timestep embedding MLP, down path, middle block."""

    def _build_trunk(self, *, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
                     channel_mult, conv_resample, num_heads, num_head_channels, use_scale_shift_norm,
                     resblock_updown, use_new_attention_order, **head):
        """The trunk from the network's ``config`` (``head``: the arguments only the head or the UNet's up path
        read)."""
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        attention = dict(num_heads=num_heads, num_head_channels=num_head_channels,
                         use_new_attention_order=use_new_attention_order)
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out_ch = int(mult * model_channels)
                layers = [ResBlock(ch, emb_dim, dropout, out_ch, use_scale_shift_norm=use_scale_shift_norm)]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **attention))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=use_scale_shift_norm, down=True)
                        if resblock_updown else Downsample(ch, conv_resample, ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
            AttentionBlock(ch, **attention),
            ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
        )
        return chans, ch, ds

    def _check_input(self, x: Tensor, timesteps: Tensor | int) -> Tensor:
        """Validate x [B, C, H, W] and return timesteps as a tensor [B]."""
        cfg = self.config
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != cfg["in_channels"]:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected images [B, {cfg['in_channels']}, H, W], got {got}")
        factor = 2 ** (len(cfg["channel_mult"]) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x: height and width must be multiples of {factor} for {len(cfg['channel_mult'])} "
                             f"resolution levels, got {x.shape[2]}x{x.shape[3]}")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps: expected shape [{x.shape[0]}] (one per image), got {list(t.shape)}")
        return t

    def _embed_time(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.config["model_channels"])
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))


def _constructor_config(cls: type, values: dict) -> dict:
    """``cls``'s constructor arguments taken from ``values`` (the constructor's ``locals()``), tuples as lists: the
    ``config`` dict that rebuilds the network (``cls(**config)``, saved in checkpoints)."""
    names = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    return {name: list(values[name]) if isinstance(values[name], tuple) else values[name] for name in names}


def _as_tuple(values: Iterable, name: str) -> tuple:
    try:
        return tuple(values)
    except TypeError:
        raise ValueError(f"{name}: expected a sequence, got {values!r}") from None


class UNetModel(_ADMTrunk):
    """ADM's UNet; arguments as in guided-diffusion (``attention_resolutions`` are downsample rates,
    ``image_size // resolution``). ``forward(x, timesteps, y=None)`` returns [B, out_channels, H, W].

    An unconditional model (``num_classes=None``) ignores ``y``, so a sampler may pass the labels that classifier
    guidance needs; a class-conditional model requires ``y``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        attention_resolutions, channel_mult = _checked_config(image_size, in_channels, model_channels, num_res_blocks,
                                                              channel_mult, dims, attention_resolutions)
        self.config = _constructor_config(UNetModel, locals())
        self.num_classes = num_classes
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        chans, ch, ds = self._build_trunk(**self.config)
        emb_dim = model_channels * 4
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                out_ch = int(model_channels * mult)
                layers = [ResBlock(ch + chans.pop(), emb_dim, dropout, out_ch,
                                   use_scale_shift_norm=use_scale_shift_norm)]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=heads_up, num_head_channels=num_head_channels,
                                                 use_new_attention_order=use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=use_scale_shift_norm, up=True)
                                  if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, timesteps: Tensor | int, y: Tensor | None = None) -> Tensor:
        t = self._check_input(x, timesteps)
        emb = self._embed_time(t)
        if self.num_classes is not None:
            if y is None:
                raise ValueError("y: this UNetModel is class-conditional (num_classes="
                                 f"{self.num_classes}); pass labels y of shape [{x.shape[0]}]")
            if y.shape != (x.shape[0],):
                raise ValueError(f"y: expected shape [{x.shape[0]}], got {list(y.shape)}")
            emb = emb + self.label_emb(y)
        return self._trunk(x, emb)

    def _trunk(self, x: Tensor, emb: Tensor) -> Tensor:
        """The U-Net pass given the (time + label) embedding: down path with skips, middle, up path, output head."""
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(_ADMTrunk):
    """ADM's noise-aware classifier: the UNet's down path and middle block, then a pooling head.

    ``pool``: ``'attention'`` (released classifiers; needs ``num_head_channels``), ``'adaptive'`` (GN, SiLU,
    global average, 1×1 conv), ``'spatial'`` / ``'spatial_v2'`` (MLP on the spatial means of every block).
    ``forward(x, timesteps)`` returns logits [B, out_channels].
    """

    POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__()
        attention_resolutions, channel_mult = _checked_config(image_size, in_channels, model_channels, num_res_blocks,
                                                              channel_mult, dims, attention_resolutions)
        if pool not in self.POOLS:
            raise ValueError(f"pool: expected one of {self.POOLS}, got {pool!r}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("num_head_channels: pool='attention' needs a positive num_head_channels (e.g. 64)")
        self.config = _constructor_config(EncoderUNetModel, locals())
        self.pool = pool
        chans, ch, ds = self._build_trunk(**self.config)
        feature_size = sum(chans) + ch
        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))

    def forward(self, x: Tensor, timesteps: Tensor | int) -> Tensor:
        t = self._check_input(x, timesteps)
        size = self.config["image_size"]
        if self.pool == "attention" and tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"x: this classifier's attention pooling expects {size}x{size} images, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        emb = self._embed_time(t)
        spatial = self.pool.startswith("spatial")
        means, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                means.append(h.mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h)
