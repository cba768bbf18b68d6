"""Checkpoints: a network saved as ``model.safetensors`` with its typed config in ``config.json`` beside it (as diffusers
does), loaded back with no flags to repeat; original guided-diffusion ``.pt`` state dicts loaded and converted.

A ``config.json`` holds :class:`NetworkConfig` as ``{"format": "diffguide-network", "version": 2, "kind": <class name>,
"kwargs": {constructor arguments}, "schedule": <noise schedule name or null>, "num_train_timesteps": 1000,
"learn_sigma": bool, "prediction_type": "epsilon", "variance_type": ..., "null_label": <int or null>, "clip_x0": bool,
"preset": <preset name or null>, "extra": {...}}``; version 1 (no sampling defaults) is read too.

Every state dict is checked against the network before loading: a mismatch raises :class:`StateDictMismatchError`
listing missing and unexpected keys and shape mismatches, and naming the preset the state dict does fit, if any.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .adapter import Denoiser
from .config import Config, check_choice, check_integer
from .io import atomic_write
from .nets import PRESETS, network_class, network_kind
from .nets.presets import StateDictDiff, matching_presets, state_dict_diff, strip_prefix
from .schedule import NoiseSchedule

__all__ = [
    "NetworkConfig", "StateDictMismatchError", "convert_adm_checkpoint", "load_adm_checkpoint",
    "load_network", "load_state_dict_checked", "read_checkpoint", "read_state_dict", "save_network", "save_safetensors",
    "WEIGHTS_NAME", "CONFIG_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_FORMAT = "diffguide-network"


VARIANCE_TYPES = ("fixed_large", "fixed_small", "learned_range")
PREDICTION_TYPES = ("epsilon",)


@dataclass
class NetworkConfig(Config):
    """What rebuilds a network and tells how to sample it: class ``kind``, constructor ``kwargs``, training noise
    ``schedule`` (``None`` for classifiers that do not see noise) of ``num_train_timesteps`` steps, the ``preset`` it
    came from, and the sampling defaults the network was trained for: ``prediction_type``, ``variance_type``,
    ``null_label`` (the label index of ∅ for classifier-free guidance; None: none) and ``clip_x0``.
    ``extra``: what the run that made it records (class names, training step, loss, ...)."""

    kind: str
    kwargs: dict
    schedule: str | None = None
    learn_sigma: bool = False
    """the network outputs 2C channels: ε and the learned variance interpolation v."""
    num_train_timesteps: int = 1000
    preset: str | None = None
    extra: dict = field(default_factory=dict)
    prediction_type: str = "epsilon"
    variance_type: str | None = None
    """'fixed_large' (ADM's default, σ² = β), 'fixed_small' (the posterior variance) or 'learned_range' (the
    network's v); None: 'learned_range' when ``learn_sigma``, else 'fixed_large'."""
    null_label: int | None = None
    clip_x0: bool = True
    """clip x̂0 to [−1, 1] while sampling (images); False for data outside that range."""

    def __post_init__(self):
        if not isinstance(self.kind, str) or not isinstance(self.kwargs, dict):
            raise ValueError(f"kind, kwargs: expected a class name and an object of constructor arguments, got "
                             f"{self.kind!r} and {type(self.kwargs).__name__}")
        if self.variance_type is None:
            self.variance_type = "learned_range" if self.learn_sigma else "fixed_large"
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        if (self.variance_type == "learned_range") != bool(self.learn_sigma):
            raise ValueError(f"variance_type: {self.variance_type!r} with learn_sigma={self.learn_sigma}: the learned "
                             "range needs the network's v output (learn_sigma true), and only it uses that output")
        check_integer("num_train_timesteps", self.num_train_timesteps, minimum=2)
        if self.null_label is not None:
            check_integer("null_label", self.null_label, minimum=0)
        check_choice("clip_x0", self.clip_x0, (True, False))

    @classmethod
    def from_preset(cls, name: str) -> "NetworkConfig":
        if name not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
        p = PRESETS[name]
        return cls(kind=p.kind, kwargs=json.loads(json.dumps(dict(p.kwargs))), schedule=p.schedule,
                   learn_sigma=p.learn_sigma, num_train_timesteps=p.num_train_timesteps, preset=name)

    def build(self, device=None) -> nn.Module:
        """The network with fresh weights (eval mode); ``device='meta'`` allocates nothing (to load weights into)."""
        with torch.device(device or "cpu"):
            return network_class(self.kind)(**self.kwargs).eval()

    def noise_schedule(self, spacing: str | int | None = None) -> NoiseSchedule:
        """The training schedule, respaced by ``spacing`` (e.g. ``'250'``, ``'ddim25'``)."""
        if self.schedule is None:
            raise ValueError(f"this {self.kind} has no noise schedule in its config")
        return NoiseSchedule.create(self.schedule, spacing, self.num_train_timesteps)

    def denoiser(self, net, spacing: str | int | None = None, *, variance: str | None = None,
                 clip_x0: bool | None = None) -> Denoiser:
        """A :class:`~diffguide.adapter.Denoiser` for ``net`` with this config's sampling defaults (``variance_type``,
        ``clip_x0``) unless ``variance`` / ``clip_x0`` are given; ``num_classes`` from the kwargs."""
        return Denoiser(net, self.noise_schedule(spacing), variance=variance or self.variance_type,
                        clip_x0=self.clip_x0 if clip_x0 is None else clip_x0,
                        num_classes=self.kwargs.get("num_classes"))

    def to_json(self) -> dict:
        return {"format": _FORMAT, "version": VERSION, **self.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping, source: str = "config") -> "NetworkConfig":
        """A config of version 2, or of version 1 (no typed sampling defaults: the variance from ``learn_sigma``,
        the null label from ``extra``, x̂0 clipped, ε-prediction — what sampling a version-1 folder always did)."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a diffguide network config (expected \"format\": \"{_FORMAT}\")")
        version = data.get("version")
        if version not in (1, VERSION):
            raise ValueError(f"{source}: unsupported config version {version!r} (this diffguide reads 1 and {VERSION})")
        if not isinstance(data.get("kind"), str) or not isinstance(data.get("kwargs"), dict):
            raise ValueError(f"{source}: expected \"kind\" (a class name) and \"kwargs\" (an object)")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        if version == 1:
            unknown = sorted(set(fields) - set(_VERSION_1_FIELDS))
            if unknown:
                raise ValueError(f"{source}: unknown fields {unknown} in a version-1 config")
            fields["null_label"] = dict(fields.get("extra") or {}).get("null_label")
        return cls.from_dict(fields, source)


VERSION = 2
"""Config format version written by :func:`save_network`; :meth:`NetworkConfig.from_json` reads 1 and 2."""
_VERSION_1_FIELDS = ("kind", "kwargs", "schedule", "learn_sigma", "num_train_timesteps", "preset", "extra")


class StateDictMismatchError(ValueError):
    """A state dict that does not fit a network; ``diff`` says how, ``fitting_presets`` what it would fit."""

    def __init__(self, what: str, diff: StateDictDiff, fitting_presets: list[str]):
        self.diff = diff
        self.fitting_presets = fitting_presets
        super().__init__(_mismatch_message(what, diff, fitting_presets))


def _listing(items: list[str], limit: int = 8) -> str:
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _mismatch_message(what: str, diff: StateDictDiff, fitting: list[str]) -> str:
    lines = [f"{what}: the state dict does not fit the network ({len(diff.missing)} missing keys, "
             f"{len(diff.unexpected)} unexpected keys, {len(diff.mismatched)} shape mismatches)"]
    if diff.missing:
        lines.append(f"  missing keys: {_listing(diff.missing)}")
    if diff.unexpected:
        lines.append(f"  unexpected keys: {_listing(diff.unexpected)}")
    if diff.mismatched:
        shown = [f"{k} (checkpoint {list(a)} vs network {list(b)})" for k, a, b in diff.mismatched]
        lines.append(f"  shape mismatches: {_listing(shown, 5)}")
    with_schedule = [p for p in fitting if PRESETS[p].schedule is not None]
    classifiers = [p for p in fitting if PRESETS[p].schedule is None]
    if with_schedule:
        lines.append(f"  it fits preset {' / '.join(repr(p) for p in with_schedule)}: load it with that preset "
                     "(--preset for a model, --classifier-preset for a noise-aware classifier)")
    if classifiers:
        lines.append(f"  it fits preset {' / '.join(repr(p) for p in classifiers)}, an off-the-shelf classifier with no noise "
                     "schedule: use it as --x0-classifier cifar-resnet:FILE (Python: "
                     "diffguide.classifiers.load_cifar_resnet), not as a diffusion model")
    else:
        lines.append("  it fits none of the presets (diffguide.nets.PRESETS)")
    return "\n".join(lines)


def load_state_dict_checked(net: nn.Module, state_dict: Mapping[str, Tensor], *, what: str = "checkpoint") -> nn.Module:
    """Load ``state_dict`` (its keys as they are) into ``net`` after checking keys and shapes; raise
    :class:`StateDictMismatchError` on any difference. A network built on the meta device takes the tensors
    themselves (cast to its dtypes), so a large checkpoint is never held twice. Returns ``net``."""
    state_dict = dict(state_dict)
    expected = net.state_dict()
    diff = state_dict_diff({k: tuple(v.shape) for k, v in expected.items()}, state_dict)
    if diff:
        raise StateDictMismatchError(what, diff, matching_presets(state_dict))
    for key in expected:  # BatchNorm counters absent from older checkpoints
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
    on_meta = any(v.is_meta for v in expected.values())
    if on_meta:
        state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    net.load_state_dict(state_dict, strict=True, assign=on_meta)
    return net


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict:
    """A checkpoint dict (model, optimizer, step, ...) read with ``torch.load(weights_only=True)``; one ValueError
    naming the file for a missing key-value mapping, an empty, truncated, corrupt or foreign file."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise ValueError(f"{what} {str(path)!r}: not a PyTorch file readable with weights_only=True "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty or truncated'}); "
                         "delete it to start again") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} {str(path)!r}: expected a checkpoint dict, got {type(data).__name__}")
    return dict(data)


def save_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write ``tensors`` to ``path`` atomically as safetensors with the header's metadata keys sorted (safetensors
    writes them in hash order), so identical tensors give identical bytes: a byte-reproducible release."""
    raw = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    blob = len(text).to_bytes(8, "little") + text + raw[8 + size:]
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(blob))


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a PyTorch file read with ``torch.load(weights_only=True)``:
    a plain state dict (ADM) or a dict holding one under ``state_dict`` (CIFAR ResNets). A ``module.`` prefix on every
    key is removed: it is how ``nn.DataParallel`` checkpoints (the CIFAR ResNet ``.th`` files) and the
    ``classifier.safetensors`` of ``diffguide calibrate`` before config format 2 (saved from the
    :class:`~diffguide.classifiers.ImageClassifier` wrapper) name the weights of the network itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            data = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"checkpoint {str(path)!r}: not a safetensors file ({err})") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
            raise ValueError(f"checkpoint {str(path)!r}: not a PyTorch tensor file readable with weights_only=True "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty or truncated'})"
                             ) from None
        if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
            data = data["state_dict"]
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"checkpoint {str(path)!r}: expected a state dict (a mapping of names to tensors), "
                         f"got {type(data).__name__}")
    return strip_prefix(data)


def load_adm_checkpoint(path: str | os.PathLike, preset: str | NetworkConfig, *, device="cpu") -> nn.Module:
    """An original guided-diffusion ``.pt`` (or any state dict file) loaded into the network of ``preset``
    (a preset name or a :class:`NetworkConfig`); eval mode, on ``device``."""
    config = NetworkConfig.from_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(config, NetworkConfig):
        raise TypeError(f"preset: expected a preset name or a NetworkConfig, got {type(preset).__name__}")
    net = config.build("meta")
    load_state_dict_checked(net, read_state_dict(path), what=f"{str(path)!r} as {config.preset or config.kind}")
    return net.to(device)


def save_network(net: nn.Module, directory: str | os.PathLike, *, schedule: str | None = None,
                 learn_sigma: bool = False, num_train_timesteps: int = 1000, preset: str | None = None,
                 extra: dict | None = None, overwrite: bool = False, variance_type: str | None = None,
                 null_label: int | None = None, clip_x0: bool = True) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` (each atomically; the config last, so a
    folder with a config is complete). ``net`` must be a registered network class with a ``config`` dict; the other
    arguments are the fields of :class:`NetworkConfig` (``null_label`` defaults to the network's own ``null_label``
    attribute). Refuses an existing checkpoint unless ``overwrite``. Returns the directory."""
    directory = Path(directory)
    kind = network_kind(net)
    kwargs = getattr(net, "config", None)
    if not isinstance(kwargs, dict):
        raise ValueError(f"net: {type(net).__name__} has no `config` dict of constructor arguments")
    if null_label is None:
        null_label = getattr(net, "null_label", None)
    config = NetworkConfig(kind=kind, kwargs=json.loads(json.dumps(kwargs)), schedule=schedule,
                           learn_sigma=bool(learn_sigma), num_train_timesteps=num_train_timesteps, preset=preset,
                           extra=dict(extra or {}), variance_type=variance_type, null_label=null_label,
                           clip_x0=clip_x0)
    if (directory / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"directory: {str(directory)!r} already holds a checkpoint; pass overwrite=True")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_safetensors(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt", "kind": kind})
    atomic_write(directory / CONFIG_NAME,
                  lambda tmp: tmp.write_text(json.dumps(config.to_json(), indent=2) + "\n"))
    return directory


def load_network(directory: str | os.PathLike, *, device="cpu",
                 dtype: torch.dtype | None = None) -> tuple[nn.Module, NetworkConfig]:
    """(network in eval mode, its :class:`NetworkConfig`) from a folder written by :func:`save_network`."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"directory: {str(directory)!r} is not a diffguide checkpoint "
                                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME} in it)")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(config_path)!r}: not valid JSON ({err})") from None
    config = NetworkConfig.from_json(data, str(config_path))
    net = config.build("meta")
    load_state_dict_checked(net, read_state_dict(weights_path), what=str(weights_path))
    return net.to(device=device, dtype=dtype), config


def convert_adm_checkpoint(pt_path: str | os.PathLike, preset: str, out_dir: str | os.PathLike, *,
                           overwrite: bool = False) -> Path:
    """Convert a guided-diffusion ``.pt`` to ``out_dir/{model.safetensors, config.json}`` with the preset's config."""
    config = NetworkConfig.from_preset(preset)
    net = load_adm_checkpoint(pt_path, config)
    return save_network(net, out_dir, schedule=config.schedule, learn_sigma=config.learn_sigma,
                        num_train_timesteps=config.num_train_timesteps, preset=preset, overwrite=overwrite,
                        variance_type=config.variance_type, null_label=config.null_label, clip_x0=config.clip_x0)
