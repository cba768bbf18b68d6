"""The Python API that mirrors ``diffguide sample``: the same settings, the same result, in a few lines.

    from diffguide import sample
    result = sample(model="runs/cifar/release", num_samples=1000, cfg_w=1.0, sampler="ddim", steps="ddim50",
                    out="samples/cifar")   # -> SampleSet(images uint8 NHWC, labels)

Every argument is a field of :class:`SampleSettings`; the CLI builds the same object from its flags, and the settings
are saved as ``run.json`` beside the samples (a resumed run must match them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from .accel import file_identity, reused_fast_module, use_fast_path
from .adapter import Denoiser
from .checkpoints import VARIANCE_TYPES, NetworkConfig, load_adm_checkpoint, load_network
from .config import Config, check_choice, check_integer, check_number
from .devices import resolve_device
from .diffusers_adapter.model import is_diffusers_folder
from .guidance import ClassifierFree, ClassifierGuidance, Guidance, make_objective, make_rule, make_schedule
from .samplers import SAMPLERS, sampler_options
from .sampling import SampleSet, class_labels, generate

__all__ = ["SampleSettings", "sample", "load_diffusion", "load_guidance_classifier", "X0_PREPROCESS"]

X0_PREPROCESS = ("weights", "raw")
"""How an off-the-shelf classifier sees x̂0: 'weights' — its weights' own preprocessing (range, mean/std, resize);
'raw' — x̂0 as is, values in [−1, 1] at the diffusion model's resolution (EluCD's set-up, even for ImageNet ResNets)."""


@dataclass
class SampleSettings(Config):
    """Everything that determines a sampling run (see ``diffguide sample --help`` for each field's meaning)."""

    model: str
    preset: str | None = None
    num_samples: int = 64
    batch_size: int = 64
    seed: int = 0
    labels: str = "uniform"
    sampler: str = "ddpm"
    steps: str = "250"
    eta: float = 0.0
    clip_x0: bool | None = None
    """None: the checkpoint's own setting (``NetworkConfig.clip_x0``; true for every version-1 folder)."""
    variance: str | None = None
    """The ancestral (DDPM) step variance: None — the checkpoint's ``variance_type``; 'fixed_small' (β̃, the
    posterior variance) or 'fixed_large' (β) for a fixed-variance model. Respaced, fixed_large leaves the last
    stochastic step's noise (σ² = β'_1, e.g. 0.0021 at 100 steps) that the final x̂0 step cannot remove."""
    classifier: str | None = None
    classifier_preset: str | None = None
    x0_classifier: str | None = None
    classifier_scale: float = 1.0
    objective: str | None = None
    objective_params: dict = field(default_factory=dict)
    schedule: str = "constant"
    schedule_params: dict = field(default_factory=dict)
    guidance_rule: str = "score"
    rule_params: dict = field(default_factory=dict)
    softplus_beta: float | None = 3.0
    x0_preprocess: str = "weights"
    cfg_w: float | None = None
    cfg_scale: float | None = None
    bf16: bool = False
    on_nonfinite: str = "raise"

    def __post_init__(self):
        for name, minimum in (("num_samples", 1), ("batch_size", 1), ("seed", 0)):
            check_integer(name, getattr(self, name), minimum)
        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise ValueError(f"model: expected a checkpoint folder or a .pt file path, got {self.model!r}")
        self.model = str(self.model)
        if self.cfg_w is not None and self.cfg_scale is not None:
            raise ValueError("cfg_w, cfg_scale: give one of them (cfg_scale = 1 + cfg_w)")
        if self.classifier and self.x0_classifier:
            raise ValueError("classifier, x0_classifier: give one classifier (noise-aware on x_t, or off-the-shelf on x̂0)")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.eta and "eta" not in sampler_options(self.sampler):
            raise ValueError(f"eta: the {self.sampler} sampler takes no eta")
        make_rule(self.guidance_rule, **self.rule_params)  # a clear error for an unknown rule or parameter, now
        if self.x0_preprocess not in X0_PREPROCESS:
            raise ValueError(f"x0_preprocess: expected one of {list(X0_PREPROCESS)}, got {self.x0_preprocess!r}")
        if self.x0_preprocess == "raw" and not self.x0_classifier:
            raise ValueError("x0_preprocess: 'raw' applies to an off-the-shelf --x0-classifier; none is given")
        for name in ("classifier_scale", "eta"):
            check_number(name, getattr(self, name))
        if self.variance is not None:
            check_choice("variance", self.variance, VARIANCE_TYPES)
        if (self.classifier or self.x0_classifier) is None and self.objective is not None:
            raise ValueError("objective: only classifier guidance has an objective; give --classifier or --x0-classifier")


def load_diffusion(model: str, preset: str | None = None, device="cpu") -> tuple[nn.Module, NetworkConfig]:
    """A diffusion network and its config: a diffguide checkpoint folder, a guided-diffusion ``.pt`` with ``preset``, or
    a diffusers ``UNet2DModel`` / pipeline folder (:func:`diffguide.diffusers_adapter.load_diffusers`)."""
    path = Path(model)
    if is_diffusers_folder(path):  # a diffusers UNet2DModel or pipeline folder (optional dependency)
        if preset is not None:
            raise ValueError(f"preset: {model!r} is a diffusers folder with its own config; drop --preset")
        from .diffusers_adapter import load_diffusers

        return load_diffusers(path, device=device)
    if path.is_dir():
        if preset is not None:
            raise ValueError(f"preset: {model!r} is a diffguide checkpoint folder with its own config; drop --preset")
        return load_network(path, device=device)
    if not path.is_file():
        raise FileNotFoundError(f"model: {model!r} is neither a diffguide checkpoint folder nor a file")
    if preset is None:
        raise ValueError(f"preset: {model!r} is a state-dict file with no config; name its preset "
                         "(e.g. --preset imagenet128)")
    config = NetworkConfig.from_preset(preset)
    return load_adm_checkpoint(path, config, device=device), config


def load_guidance_classifier(spec: str, preset: str | None = None, device="cpu") -> tuple[nn.Module, str]:
    """(classifier module, 'x_t' or 'x0') from a CLI spec.

    Noise-aware (on x_t): a diffguide checkpoint folder or an ADM ``.pt`` with ``preset``.
    Off-the-shelf (on x̂0): ``cifar-resnet:PATH`` (a ``.th`` file), ``torchvision:NAME[:WEIGHTS]``, or a diffguide folder.
    """
    if spec.startswith("cifar-resnet:"):
        from .classifiers import load_cifar_resnet

        return load_cifar_resnet(spec.split(":", 1)[1], device=device), "x0"
    if spec.startswith("torchvision:"):
        from .classifiers import torchvision_classifier

        _, name, *weights = spec.split(":")
        return torchvision_classifier(name, weights[0] if weights else None, device=device), "x0"
    net, _ = load_diffusion(spec, preset, device=device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, "x_t"


def _guide_identity(spec: str) -> tuple:
    """What says a guidance classifier spec still names the same weights: the spec and its file's identity (a
    torchvision spec names no file of ours: its weights are torchvision's)."""
    if spec.startswith("torchvision:"):
        return (spec,)
    return (spec, *file_identity(spec.removeprefix("cifar-resnet:")))


def _guide_module(settings: SampleSettings, device, fast: bool) -> tuple[nn.Module, str]:
    """(classifier module, 'x_t' or 'x0') of the settings' guide, its preprocessing as the settings ask; on the fast
    path compiled once per process and weights (:func:`~diffguide.accel.reused_fast_module`): eager, the guide's
    forward and backward were nearly all of what x̂0 guidance adds to a CIFAR step (docs/performance.md)."""
    spec = settings.classifier or settings.x0_classifier

    def load():
        module, on = load_guidance_classifier(spec, settings.classifier_preset, device)
        if settings.classifier and on != "x_t":
            raise ValueError(f"classifier: {spec!r} is an off-the-shelf classifier; pass it as --x0-classifier")
        if on == "x0" and settings.x0_preprocess == "raw":
            from .classifiers import ImageClassifier, Preprocess

            if not isinstance(module, ImageClassifier):
                raise ValueError(f"x0_preprocess: {spec!r} has no preprocessing to drop")
            module.preprocess = Preprocess(input_range=(-1.0, 1.0), classifier_range=(-1.0, 1.0))  # the identity
        return module, on

    if not fast:
        return load()
    key = (*_guide_identity(spec), settings.classifier_preset, settings.x0_preprocess, str(device))
    return reused_fast_module(key, load, kind="fast_guide")


def _guidance(settings: SampleSettings, device, null_label: int | None = None, fast: bool = False) -> Guidance:
    cfg = None
    schedule = make_schedule(settings.schedule, **settings.schedule_params)  # one strength schedule for CFG and CG
    if settings.cfg_w is not None or settings.cfg_scale is not None:
        cfg = ClassifierFree(w=settings.cfg_w, guidance_scale=settings.cfg_scale, schedule=schedule,
                             null_label=null_label)
    if settings.classifier is None and settings.x0_classifier is None:
        return Guidance(cfg=cfg)
    module, on = _guide_module(settings, device, fast)
    objective = make_objective(settings.objective or ("log_softmax" if on == "x_t" else "baseline"),
                               **settings.objective_params)
    classifier = ClassifierGuidance(module, on=on, objective=objective, scale=float(settings.classifier_scale),
                                    schedule=schedule, softplus_beta=settings.softplus_beta if on == "x0" else None)
    return Guidance(classifier=classifier, cfg=cfg, rule=make_rule(settings.guidance_rule, **settings.rule_params))


def _check_cfg_capable(net: nn.Module, config: NetworkConfig) -> None:
    if getattr(net, "null_label", None) is None:
        raise ValueError(f"cfg: this {config.kind} has no learned null label, so classifier-free guidance cannot run; "
                         "train a model with label dropout (diffguide train) or use classifier guidance")


def sample(settings: SampleSettings | None = None, *, out: str | Path | None = None, resume: bool = False,
           overwrite: bool = False, device: str | None = None, progress: bool = True, fast: bool | None = None,
           step_callback: Callable[[Guidance, int], Callable | None] | None = None, **fields) -> SampleSet | None:
    """Draw samples as ``diffguide sample`` does: pass a :class:`SampleSettings` or its fields as keywords.

    With ``out`` the run is written there (shards, ``samples.npz``, ``grid.png``, ``run.json``) and can be resumed;
    under torchrun, rank 0 returns the merged samples and the other ranks ``None``. ``fast``: the compiled
    network and guidance classifier of :mod:`diffguide.accel` (default: on CUDA only; ``False`` is plain eager PyTorch).
    ``step_callback(guidance, start)``: the sampler ``callback`` of the batch whose first sample is ``start``, given
    the run's :class:`~diffguide.guidance.Guidance` (e.g. to read the classifier along the steps); see
    :func:`diffguide.sampling.generate`.
    """
    if (settings is None) == (not fields):
        raise TypeError("sample: pass a SampleSettings or its fields as keyword arguments (one of the two)")
    s = settings or SampleSettings(**fields)
    dev = resolve_device(device)
    fast = use_fast_path(fast, dev)
    if fast:  # compiled once per process and model (its graphs are reused by later calls)
        net, config = reused_fast_module((file_identity(s.model), s.preset, str(dev)),
                                         lambda: load_diffusion(s.model, s.preset, device=dev))
    else:
        net, config = load_diffusion(s.model, s.preset, device=dev)
    guidance = _guidance(s, dev, config.null_label, fast)  # the checkpoint's ∅: one batched [c, ∅] forward
    if guidance.cfg is not None:
        _check_cfg_capable(net, config)
    clip_x0 = config.clip_x0 if s.clip_x0 is None else s.clip_x0
    variance = s.variance or config.variance_type
    if (variance == "learned_range") != (config.variance_type == "learned_range"):
        raise ValueError(f"variance: {variance!r} for a network whose variance type is {config.variance_type!r} "
                         "(learned_range needs, and is the only choice for, a network that outputs its variance)")
    denoiser: Denoiser = config.denoiser(net, s.steps, clip_x0=clip_x0, variance=variance)
    kwargs = config.kwargs
    num_classes = kwargs.get("num_classes")
    if num_classes is None and guidance.classifier is not None:
        num_classes = getattr(guidance.classifier.classifier, "num_classes", None) or kwargs.get("out_channels")
    labels = class_labels(s.num_samples, num_classes, s.labels, s.seed)
    shape = (kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    return generate(denoiser, num_samples=s.num_samples, image_shape=shape, labels=labels, guidance=guidance,
                    sampler=s.sampler, sampler_options={"eta": s.eta} if "eta" in sampler_options(s.sampler) else None,
                    seed=s.seed,
                    batch_size=s.batch_size, out_dir=out, config={**s.to_dict(), "clip_x0": clip_x0, "variance": variance}, resume=resume,
                    overwrite=overwrite, bf16=s.bf16, progress=progress, on_nonfinite=s.on_nonfinite,
                    device=str(dev), class_names=config.extra.get("class_names"),
                    step_callback=None if step_callback is None else lambda start: step_callback(guidance, start))
