"""Off-the-shelf classifiers for guidance, with their input preprocessing explicit and overridable.

A diffusion model's images live in [−1, 1]; a classifier expects its own range, normalisation and size.
:class:`Preprocess` maps one to the other; :class:`ImageClassifier` wraps any ``nn.Module`` returning logits with it,
frozen (eval mode, no parameter gradients: guidance differentiates with respect to the input only) and checked
(channels, size, class count). :func:`load_cifar_resnet` and :func:`torchvision_classifier` build wrapped classifiers.
:func:`load_architecture` / :func:`load_weights` / :func:`labelled_images` are what ``calibrate`` and
``eval-classifier`` load: a CIFAR ResNet file or a noise-aware classifier folder, and a split labelled in its classes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import load_state_dict_checked, read_state_dict
from .nets.cifar_resnet import CifarResNet, depth_from_state_dict

__all__ = ["CIFAR10_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "ImageClassifier", "Preprocess", "freeze", "load_cifar_resnet",
           "torchvision_classifier", "load_architecture", "load_weights", "noise_settings", "takes_timestep",
           "labelled_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with ``requires_grad=False`` on every parameter (gradients flow to inputs only)."""
    module.eval()
    module.requires_grad_(False)
    return module


def rescale_range(x: Tensor, source: tuple[float, float], target: tuple[float, float]) -> Tensor:
    """u = a' + (x − a)·(b' − a')/(b − a): maps [a, b] = ``source`` onto [a', b'] = ``target``."""
    (a, b), (a2, b2) = source, target
    if (a, b) == (a2, b2):
        return x
    return a2 + (x - a) * ((b2 - a2) / (b - a))


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x − mean_c)/std_c per channel c."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return (x - mean_t) / std_t


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"size: expected an int, (height, width) or None, got {size!r}")


@dataclass(frozen=True)
class Preprocess:
    """Diffusion-model images → classifier inputs: resize (optional), range, normalisation.

    Args:
        input_range: the range of the images given to the classifier (the diffusion model's, [−1, 1]).
        classifier_range: the range the classifier was trained on before normalisation ([0, 1] for torchvision).
        mean, std: per-channel normalisation after the range change (``None``: none).
        size: the classifier's input size (int or (H, W)); ``None`` accepts any size.
        resize: when an image is not ``size``: ``True`` resizes it (bilinear, ``antialias`` when shrinking);
            ``False`` raises a ValueError.

    Replace a field with ``dataclasses.replace(preprocess, size=224, resize=True)``.
    """

    input_range: tuple[float, float] = (-1.0, 1.0)
    classifier_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | tuple[int, int] | None = None
    resize: bool = False
    antialias: bool = True

    def __post_init__(self):
        for name in ("input_range", "classifier_range"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and float(value[0]) < float(value[1])):
                raise ValueError(f"{name}: expected (low, high) with low < high, got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean, std: give both or neither")
        if self.mean is not None:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
            if len(mean) != len(std) or any(s <= 0 for s in std):
                raise ValueError(f"mean, std: expected equal lengths and std > 0, got mean={mean}, std={std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        object.__setattr__(self, "size", _pair(self.size))

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean is not None and x.shape[1] != len(self.mean):
            raise ValueError(f"x: expected {len(self.mean)} channels (as mean/std), got {x.shape[1]}")
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            if not self.resize:
                raise ValueError(f"x: the classifier expects {self.size[0]}x{self.size[1]} images, got "
                                 f"{x.shape[-2]}x{x.shape[-1]}; pass resize=True to resize them (bilinear)")
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=self.antialias and shrink)
        x = rescale_range(x, self.input_range, self.classifier_range)
        return x if self.mean is None else normalize(x, self.mean, self.std)


class ImageClassifier(nn.Module):
    """A frozen classifier with explicit preprocessing: ``forward(x, *args) = module(preprocess(x), *args)``.

    ``module`` is any ``nn.Module`` returning logits [B, K]. It is put in eval mode with ``requires_grad=False``;
    ``train()`` keeps it in eval mode (BatchNorm statistics never change during guidance). ``num_classes``, when
    given, is checked against the logits; ``in_channels`` against the images. ``class_names`` (index → name), when
    known, lets a labelled image folder be mapped onto the classifier's own classes.
    """

    def __init__(self, module: nn.Module, preprocess: Preprocess | None = None, *, num_classes: int | None = None,
                 in_channels: int = 3, class_names: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module returning logits, got {type(module).__name__}")
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess: expected a diffguide.classifiers.Preprocess, got {type(preprocess).__name__}")
        self.module = freeze(module)
        self.preprocess = preprocess or Preprocess()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        if self.class_names is not None and num_classes is not None and len(self.class_names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names, got {len(self.class_names)}")
        self.train(False)

    def train(self, mode: bool = True) -> "ImageClassifier":
        return super().train(False)

    def with_preprocess(self, **changes) -> "ImageClassifier":
        """Set fields of the preprocessing (``size=``, ``resize=``, ``mean=``, ...) and return self."""
        self.preprocess = dataclasses.replace(self.preprocess, **changes)
        return self

    def forward(self, x: Tensor, *args) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected images [B, {self.in_channels}, H, W], got {got}")
        logits = self.module(self.preprocess(x), *args)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0] or (
                self.num_classes is not None and logits.shape[1] != self.num_classes):
            raise ValueError(f"classifier output: expected logits [{x.shape[0]}, {self.num_classes or 'K'}], "
                             f"got {list(logits.shape)}")
        return logits

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, preprocess={self.preprocess}"


def _find_cifar_weights(directory: Path, depth: int) -> Path:
    found = sorted(directory.glob(f"*resnet{depth}-*.th")) + sorted(directory.glob(f"*resnet{depth}.th"))
    if not found:
        raise FileNotFoundError(f"no CIFAR ResNet-{depth} weights (*resnet{depth}-*.th) in {str(directory)!r}")
    return found[0]


def load_cifar_resnet(path_or_depth: str | os.PathLike | int, depth: int | None = None, *,
                      size: int | None = 32, resize: bool = False, input_range=(-1.0, 1.0),
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu") -> ImageClassifier:
    """A CIFAR-10 ResNet (akamaster/pytorch_resnet_cifar10 weights) wrapped with its preprocessing:
    [−1, 1] → [0, 1] → ImageNet mean/std; 32×32 inputs (``resize=True`` resizes others, ``size=None`` accepts any size:
    the network pools globally).

    ``path_or_depth``: a ``.th``/``.pt``/``.safetensors`` file (depth read from its keys); a folder together with
    ``depth`` (finds ``*resnet{depth}-*.th``); or a depth alone, looked up in ``$DIFFGUIDE_CLASSIFIERS``.
    """
    if isinstance(path_or_depth, int) and not isinstance(path_or_depth, bool):
        if depth is not None and depth != path_or_depth:
            raise ValueError(f"depth: got {path_or_depth} and depth={depth}")
        depth = path_or_depth
        folder = os.environ.get("DIFFGUIDE_CLASSIFIERS")
        if not folder:
            raise ValueError(f"path_or_depth: a bare depth ({depth}) needs $DIFFGUIDE_CLASSIFIERS set to the folder "
                             "of the .th files; or pass the file path")
        path = _find_cifar_weights(Path(folder), depth)
    else:
        path = Path(path_or_depth)
        if path.is_dir():
            if depth is None:
                raise ValueError(f"depth: {str(path)!r} is a folder; say which depth to load (20, 32, 44, 56)")
            path = _find_cifar_weights(path, depth)
    state_dict = read_state_dict(path)
    try:
        found_depth = depth_from_state_dict(state_dict)
    except ValueError:
        raise ValueError(f"checkpoint {str(path)!r}: not a CIFAR ResNet state dict (no 'layer1.*' keys)") from None
    if depth is not None and depth != found_depth:
        raise ValueError(f"depth: asked for ResNet-{depth}, but {str(path)!r} holds a ResNet-{found_depth}")
    num_classes = state_dict["linear.weight"].shape[0] if "linear.weight" in state_dict else 10
    with torch.device("meta"):
        net = CifarResNet(found_depth, num_classes)
    load_state_dict_checked(net, state_dict, what=str(path))
    preprocess = Preprocess(input_range=input_range, classifier_range=(0.0, 1.0), mean=mean, std=std, size=size,
                            resize=resize)
    return ImageClassifier(net, preprocess, num_classes=num_classes,
                           class_names=CIFAR10_CLASSES if num_classes == 10 else None).to(device)


def torchvision_classifier(name: str, weights=None, *, input_range=(-1.0, 1.0), resize: bool = True,
                           device="cpu", **model_kwargs) -> ImageClassifier:
    """A torchvision classification model (``torchvision.models.get_model(name, weights=...)``) wrapped with the
    preprocessing its weights were trained with: [−1, 1] → [0, 1] → the weights' mean/std, bilinear resize to the
    weights' crop size (224 when ``weights`` is None: random weights, ImageNet mean/std). Needs torchvision."""
    try:
        import torchvision
    except ImportError as err:
        raise ImportError("torchvision: torchvision_classifier needs torchvision, which is not "
                          "installed; install the build matching your torch "
                          f"(pip install 'diffguide[vision]', or pip install torchvision for torch {torch.__version__})"
                          ) from err
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"name: {name!r} is not a torchvision classification model "
                         f"(e.g. 'resnet50', 'resnet101', 'vit_b_16')")
    if weights is not None:
        weights = torchvision.models.get_model_weights(name).verify(weights)
    model = torchvision.models.get_model(name, weights=weights, **model_kwargs)
    if weights is not None:
        transform = weights.transforms()
        mean, std, size = tuple(transform.mean), tuple(transform.std), int(transform.crop_size[0])
        num_classes = len(weights.meta["categories"])
        class_names = weights.meta["categories"]
    else:
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
        num_classes = model_kwargs.get("num_classes", 1000)
        class_names = None
    preprocess = Preprocess(input_range=input_range, classifier_range=(0.0, 1.0), mean=mean, std=std, size=size,
                            resize=resize)
    return ImageClassifier(model, preprocess, num_classes=num_classes, class_names=class_names).to(device)


def load_architecture(path: str | os.PathLike) -> nn.Module:
    """The classifier stored at ``path``: a folder of :func:`diffguide.checkpoints.save_network` (a noise-aware
    classifier(x_t, t) from ``diffguide train-classifier``; its class names from the folder's config) or a CIFAR ResNet
    ``.th`` / ``.safetensors`` (:func:`load_cifar_resnet`: frozen, inputs in [−1, 1], its own normalisation)."""
    if Path(path).is_dir():
        from .checkpoints import load_network

        net, config = load_network(path)
        net.class_names = config.extra.get("class_names")  # read by labelled_images
        return net
    return load_cifar_resnet(path)


def noise_settings(path: str | os.PathLike) -> dict | None:
    """``{"schedule", "num_train_timesteps"}`` of the noise-aware classifier folder at ``path`` (its config.json);
    None for a classifier file (called on clean images)."""
    if not Path(path).is_dir():
        return None
    import json

    from .checkpoints import CONFIG_NAME, NetworkConfig

    config_path = Path(path) / CONFIG_NAME
    config = NetworkConfig.from_json(json.loads(config_path.read_text()), str(config_path))
    return {"schedule": config.schedule or "linear", "num_train_timesteps": config.num_train_timesteps}


def load_weights(model: nn.Module, weights: str | os.PathLike) -> nn.Module:
    """``model`` with its weights replaced by the safetensors state dict ``weights`` (keys of the wrapped module for
    an :class:`ImageClassifier`, e.g. the ``classifier.safetensors`` of ``diffguide calibrate``), checked key by key."""
    target = model.module if isinstance(model, ImageClassifier) else model
    load_state_dict_checked(target, read_state_dict(weights), what=str(weights))
    return model


def takes_timestep(module: nn.Module) -> bool:
    """Whether ``module(x, t)`` is a valid call (a noise-aware classifier), judged from its ``forward`` signature
    (for an :class:`ImageClassifier`, which passes extra arguments through, from the wrapped module's)."""
    import inspect

    if isinstance(module, ImageClassifier):
        module = module.module
    try:
        inspect.signature(getattr(module, "forward", module)).bind(None, None)
        return True
    except TypeError:
        return False


def labelled_images(source: str, split: str | None, limit: int | None, classifier: nn.Module | None = None):
    """(uint8 NHWC images, labels) of a split; ``limit`` keeps that many images spread evenly over the (class-sorted)
    split (:func:`diffguide.io.spread_indices`, as every command), so every class is represented; ``split="none"``
    for sources without splits. Class folders are mapped onto the ``classifier``'s own class names
    (:func:`diffguide.data.labels_for_classes`); a ValueError for unlabelled data or images of another size."""
    from .data import labels_for_classes, load_dataset

    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive image count, got {limit}")
    split = None if split == "none" else split  # sources without splits (npz, a single IDX file)
    dataset = load_dataset(source, split, limit=limit)
    if dataset.labels is None:
        raise ValueError(f"data: {source} ({split}) has no labels; calibration needs labelled images")
    labels = labels_for_classes(dataset, getattr(classifier, "class_names", None),
                                getattr(classifier, "num_classes", None), what="data")
    preprocess = getattr(classifier, "preprocess", None)
    size, (height, width) = getattr(preprocess, "size", None), dataset.images.shape[1:3]
    if size is not None and not preprocess.resize and (height, width) != tuple(size):
        raise ValueError(f"data: the images of {dataset.source} are {height}x{width}, but the classifier takes "
                         f"{size[0]}x{size[1]} images")
    return dataset.images, labels
