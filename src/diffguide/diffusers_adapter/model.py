"""A diffusers pixel-space ``UNet2DModel`` as a diffguide ε-network, with its scheduler mapped to a diffguide schedule.

Folders read (``save_pretrained`` layouts):

- a model folder: ``config.json`` (``_class_name: UNet2DModel``) + ``diffusion_pytorch_model.safetensors`` (or
  ``.bin``, read with ``weights_only=True``) and ``scheduler_config.json`` beside them;
- a pipeline folder: ``unet/`` + ``scheduler/`` (``model_index.json`` optional);
- in Python, any model folder together with a scheduler folder (``load_diffusers(model, scheduler=...)``).

Class-conditional models (``num_class_embeds``, or ``class_embed_type='timestep'``) take labels in [0, num_classes).
diffusers has no convention for the classifier-free null label, so a model does classifier-free guidance only when
the null label is named: ``diffguide.json`` in the folder holding ``{"null_label": K}`` (K = ``num_class_embeds`` − 1,
the last embedding; the classes are then 0..K−1), or ``load_diffusers(..., null_label=K)``. Otherwise CFG is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..adapter import Denoiser
from ..schedule import NoiseSchedule, v_to_eps, x0_to_eps
from .scheduler import SchedulerMapping

__all__ = ["DiffusersConfig", "DiffusersUNet", "MissingDiffusersError", "is_diffusers_folder", "load_diffusers",
           "require_diffusers", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'diffguide[diffusers]'  (or: pip install diffusers)"
OPTIONS_NAME = "diffguide.json"


class MissingDiffusersError(ImportError, ValueError):
    """diffusers is not installed (a ValueError too, so command-line tools report it as a one-line error)."""


def require_diffusers():
    """The ``diffusers`` module, or a :class:`MissingDiffusersError` saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise MissingDiffusersError(f"model: this is a diffusers model folder, and reading it needs the diffusers "
                                    f"package, which is not installed; install it with: {INSTALL_HINT}") from None
    return diffusers


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r}: expected a JSON object")
    return data


def _is_diffusers_config(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and ("_class_name" in data or "_diffusers_version" in data)


def is_diffusers_folder(path) -> bool:
    """Whether ``path`` is a folder written by diffusers' ``save_pretrained`` (a model or a pipeline); reads JSON
    only, so it answers without diffusers installed."""
    path = Path(path)
    return path.is_dir() and ((path / "model_index.json").is_file() or _is_diffusers_config(path / "config.json")
                              or _is_diffusers_config(path / "unet" / "config.json"))


def _layout(path: Path, scheduler) -> tuple[Path, Path]:
    """(model folder, scheduler config file) of a model folder or a pipeline folder."""
    if (path / "unet" / "config.json").is_file():
        model_dir, default_scheduler = path / "unet", path / "scheduler" / "scheduler_config.json"
    elif _is_diffusers_config(path / "config.json"):
        model_dir, default_scheduler = path, path / "scheduler_config.json"
    else:
        parts = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(f"model: {str(path)!r} is a diffusers pipeline without unet/ (it holds {parts}); diffguide "
                         "reads pixel-space UNet2DModel pipelines (latent models with a VAE are out of scope)")
    if scheduler is not None:
        scheduler = Path(scheduler)
        scheduler_file = scheduler / "scheduler_config.json" if scheduler.is_dir() else scheduler
    else:
        scheduler_file = default_scheduler
    if not scheduler_file.is_file():
        raise FileNotFoundError(f"model: no scheduler config at {str(scheduler_file)!r}; the training noise schedule "
                                "is unknown without it (put scheduler_config.json beside config.json, use a pipeline "
                                "folder with unet/ and scheduler/, or pass scheduler=FOLDER in Python)")
    return model_dir, scheduler_file


def _check_unet_config(config: dict, source: str) -> None:
    kind = config.get("_class_name")
    if kind != "UNet2DModel":
        hint = ("text- or cross-attention-conditioned models are out of scope" if kind == "UNet2DConditionModel"
                else "latent transformer models (DiT + VAE) are out of scope" if kind and "Transformer" in kind
                else "diffguide reads pixel-space UNet2DModel folders")
        raise ValueError(f"{source}: _class_name={kind!r} is not a UNet2DModel ({hint})")
    if config.get("time_embedding_type", "positional") not in ("positional", "learned"):
        raise ValueError(f"{source}: time_embedding_type={config['time_embedding_type']!r} cannot be mapped onto "
                         "diffguide (a continuous-noise-level score model, not a discrete-timestep DDPM)")
    if config.get("class_embed_type") not in (None, "timestep"):
        raise ValueError(f"{source}: class_embed_type={config['class_embed_type']!r} cannot be mapped onto diffguide "
                         "(it takes embedding vectors, not class indices)")
    size = config.get("sample_size")
    if size is None or (isinstance(size, (list, tuple)) and len(set(size)) != 1):
        raise ValueError(f"{source}: sample_size={size!r}: diffguide samples square images of a known size")


def _class_setup(config: dict, options: dict, source: str) -> tuple[int | None, int | None]:
    """(num_classes, null_label) of a UNet2DModel config and the diffguide options."""
    embeds, embed_type = config.get("num_class_embeds"), config.get("class_embed_type")
    null, num_classes = options.get("null_label"), options.get("num_classes")
    for name, value in (("null_label", null), ("num_classes", num_classes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{source}: {name}: expected a non-negative integer, got {value!r}")
    if embed_type is None and embeds is None:
        if null is not None or num_classes is not None:
            raise ValueError(f"{source}: null_label/num_classes given for an unconditional model (no num_class_embeds)")
        return None, None
    if embed_type is None:  # nn.Embedding(num_class_embeds)
        if null is not None and null != embeds - 1:
            raise ValueError(f"{source}: null_label={null}: expected the last class embedding, {embeds - 1} "
                             f"(num_class_embeds={embeds})")
        expected = embeds if null is None else embeds - 1
        if num_classes is not None and num_classes != expected:
            raise ValueError(f"{source}: num_classes={num_classes} does not fit num_class_embeds={embeds}"
                             f"{'' if null is None else f' with null_label={null}'} (expected {expected})")
        return expected, null
    if num_classes is None:  # class_embed_type='timestep': any integer is a label
        raise ValueError(f"{source}: class_embed_type='timestep' takes any integer as a label; name the number of "
                         f"classes: {OPTIONS_NAME} with {{\"num_classes\": K}} or load_diffusers(..., num_classes=K)")
    if null is not None and null != num_classes:
        raise ValueError(f"{source}: null_label={null}: expected num_classes ({num_classes})")
    return num_classes, null


class DiffusersUNet(nn.Module):
    """``net(x, t, y) -> ε`` (or ε and v for learned-range variance) from a diffusers ``UNet2DModel``.

    The UNet sees exactly what diffusers' pipelines give it: ``unet(x, t, class_labels=y)`` with the original integer
    timesteps t. Its output is converted to ε with the training ᾱ_t:
    v-prediction ε = sqrt(1−ᾱ_t)·x_t + sqrt(ᾱ_t)·v;  sample prediction ε = (x_t − sqrt(ᾱ_t)·x̂0) / sqrt(1−ᾱ_t).
    A class-conditional model called with ``y=None`` gets the null label, or raises when it has none.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: np.ndarray, prediction_type: str = "epsilon", *,
                 num_classes: int | None = None, null_label: int | None = None):
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        self.num_classes = num_classes
        self._null_label = null_label
        self._alphas_cumprod = torch.from_numpy(np.asarray(alphas_cumprod, np.float64))
        self._tables: dict = {}  # float64 ᾱ table per device, whatever dtype the UNet is cast to

    @property
    def null_label(self) -> int | None:
        return self._null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        labels = None
        if self.num_classes is not None:
            if y is None and self._null_label is None:
                raise ValueError("labels: this class-conditional diffusers model has no null label, so it cannot be "
                                 f"called unconditionally (classifier-free guidance): name it in {OPTIONS_NAME} "
                                 "({\"null_label\": K}) if the model was trained with one")
            labels = torch.full((x.shape[0],), self._null_label, device=x.device, dtype=torch.long) if y is None else y
        out = self.unet(x, t, class_labels=labels).sample.to(x.dtype)
        channels = x.shape[1]
        pred, v = (out[:, :channels], out[:, channels:]) if out.shape[1] == 2 * channels else (out, None)
        table = self._tables.get(x.device)
        if table is None:
            table = self._tables[x.device] = self._alphas_cumprod.to(x.device)
        alpha_bar = table[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction_type == "v_prediction":
            pred = v_to_eps(x, pred, alpha_bar)
        elif self.prediction_type == "sample":
            pred = x0_to_eps(x, pred, alpha_bar)
        return pred if v is None else torch.cat([pred, v], dim=1)


@dataclass
class DiffusersConfig:
    """What the sampling code needs of a diffusers model (the interface of :class:`~diffguide.checkpoints.NetworkConfig`):
    ``kind``, ``kwargs`` (``in_channels``, ``out_channels``, ``image_size``, ``num_classes``), the scheduler mapping."""

    mapping: SchedulerMapping
    kwargs: dict
    kind: str = "diffusers UNet2DModel"
    preset: str | None = None
    extra: dict = field(default_factory=dict)
    clip_x0: bool = True
    """the default of :meth:`denoiser`'s ``clip_x0`` (x̂0 is clipped only where the scheduler's clip_sample says so)."""

    @property
    def null_label(self) -> int | None:
        return self.extra.get("null_label")

    @property
    def variance_type(self) -> str:
        """The scheduler's variance type, mapped (the default of :meth:`denoiser`'s ``variance``)."""
        return self.mapping.variance

    def noise_schedule(self, spacing: str | int | list[int] | None = None) -> NoiseSchedule:
        """See :meth:`SchedulerMapping.schedule`: an integer N is diffusers' ``set_timesteps(N)``."""
        return self.mapping.schedule(spacing)

    def denoiser(self, net, spacing: str | int | list[int] | None = None, *, variance: str | None = None,
                 clip_x0: bool | None = None) -> Denoiser:
        """A :class:`~diffguide.adapter.Denoiser` with the scheduler's variance type; x̂0 is clipped when both
        ``clip_x0`` and the scheduler's ``clip_sample`` say so."""
        clip_x0 = self.clip_x0 if clip_x0 is None else clip_x0
        return Denoiser(net, self.noise_schedule(spacing), variance=variance or self.mapping.variance,
                        clip_x0=bool(clip_x0 and self.mapping.clip_sample), num_classes=self.kwargs["num_classes"])


def load_diffusers(model, scheduler=None, *, null_label: int | None = None, num_classes: int | None = None,
                   device="cpu", dtype: torch.dtype | None = None) -> tuple[DiffusersUNet, DiffusersConfig]:
    """(network, config) from a diffusers model or pipeline folder (see the module docstring); ``scheduler``: a
    scheduler folder or ``scheduler_config.json`` overriding the one found beside the model."""
    diffusers = require_diffusers()
    path = Path(model)
    if not is_diffusers_folder(path):
        raise FileNotFoundError(f"model: {str(path)!r} is not a diffusers model or pipeline folder")
    model_dir, scheduler_file = _layout(path, scheduler)
    unet_config = _read_json(model_dir / "config.json")
    _check_unet_config(unet_config, str(model_dir / "config.json"))
    options = _read_json(path / OPTIONS_NAME) if (path / OPTIONS_NAME).is_file() else {}
    options = {**options, **{k: v for k, v in (("null_label", null_label), ("num_classes", num_classes))
                             if v is not None}}
    classes, null = _class_setup(unet_config, options, str(model_dir / "config.json"))
    in_channels, out_channels = unet_config.get("in_channels", 3), unet_config.get("out_channels", 3)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{model_dir / 'config.json'}: out_channels={out_channels}: expected in_channels "
                         f"({in_channels}, a prediction) or twice that (a prediction and a learned variance)")
    mapping = SchedulerMapping(_read_json(scheduler_file), str(scheduler_file),
                               learned_variance=out_channels == 2 * in_channels)
    # safetensors, or .bin files read with torch.load(weights_only=True) by diffusers
    unet = diffusers.UNet2DModel.from_pretrained(str(model_dir), torch_dtype=dtype, low_cpu_mem_usage=False)
    unet.eval().requires_grad_(False)
    net = DiffusersUNet(unet.to(device), mapping.alphas_cumprod, mapping.prediction_type, num_classes=classes,
                        null_label=null)
    size = unet_config["sample_size"]
    kwargs = {"in_channels": in_channels, "out_channels": out_channels, "num_classes": classes,
              "image_size": int(size[0] if isinstance(size, (list, tuple)) else size)}
    return net, DiffusersConfig(mapping=mapping, kwargs=kwargs, extra={"null_label": null})
