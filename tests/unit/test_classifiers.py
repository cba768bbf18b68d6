"""Off-the-shelf classifier wrapper: preprocessing math, frozen parameters, checks, CIFAR ResNet loading."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffguide.classifiers import (
    IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, Preprocess, load_cifar_resnet, torchvision_classifier,
)
from diffguide.guidance import ClassifierGuidance
from diffguide.guidance.step import GuidanceStep
from diffguide.nets import CifarResNet


def test_preprocess_range_and_normalisation_closed_form():
    pre = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = pre(x)
    for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        expected = torch.tensor([(0.0 - m) / s, (0.5 - m) / s, (1.0 - m) / s])
        torch.testing.assert_close(out[0, c, 0], expected)
    # [0, 255] -> [-1, 1], no normalisation: u = -1 + x·2/255
    pre = Preprocess(input_range=(0, 255), classifier_range=(-1, 1))
    torch.testing.assert_close(pre(torch.tensor([0.0, 127.5, 255.0]).reshape(1, 1, 1, 3)),
                               torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))


def _pil_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of one [H, W] float image by PIL (antialiased when shrinking): an independent oracle."""
    resized = Image.fromarray(image.numpy(), mode="F").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy())


@pytest.mark.parametrize("size", [20, 5])
def test_preprocess_resize_matches_pil(size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    out = Preprocess(size=size, resize=True)(x)
    assert out.shape == (2, 3, size, size)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(out[b, c], (_pil_resize(x[b, c], size) + 1) / 2, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match=f"expects {size}x{size} images, got 12x12; pass resize=True"):
        Preprocess(size=size)(x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_range=(1, -1)), "input_range"),
    (dict(mean=(0.5,)), "mean, std"),
    (dict(mean=(0.5, 0.5), std=(1.0,)), "equal lengths"),
    (dict(mean=(0.5,), std=(0.0,)), "std > 0"),
    (dict(size=(1, 2, 3)), "size"),
])
def test_preprocess_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(**kwargs)


def test_wrapper_is_frozen_and_passes_input_gradients():
    torch.manual_seed(0)
    net = CifarResNet(20)
    net.train()
    clf = ImageClassifier(net, Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD), num_classes=10)
    clf.train()  # stays in eval mode
    assert not clf.training and not net.training
    assert all(not p.requires_grad for p in clf.parameters())
    running = net.bn1.running_mean.clone()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(clf(x).logsumexp(1).sum(), x)
    assert grad.abs().sum() > 0
    assert torch.equal(net.bn1.running_mean, running)
    assert all(p.grad is None for p in net.parameters())


def test_wrapper_checks_channels_size_and_classes():
    clf = ImageClassifier(CifarResNet(20), Preprocess(size=32), num_classes=10)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        clf(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expects 32x32"):
        clf(torch.randn(2, 3, 64, 64))
    assert clf.with_preprocess(resize=True)(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"expected logits \[2, 1000\]"):
        ImageClassifier(CifarResNet(20), num_classes=1000)(torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="module"):
        ImageClassifier(lambda x: x)


def test_guidance_on_x0_computes_no_parameter_gradients():
    torch.manual_seed(0)
    clf = ImageClassifier(CifarResNet(20), Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD), num_classes=10)
    guidance = ClassifierGuidance(clf, on="x0", scale=2.0)
    x0 = torch.rand(3, 3, 32, 32) * 2 - 1
    prediction = type("P", (), {"x0": x0})()
    step = GuidanceStep(i=5, num_steps=10, num_train_timesteps=1000, t=torch.full((3,), 500), x_t=x0,
                        prediction=prediction, labels=torch.tensor([0, 3, 9]), max_variance=torch.ones(3))
    grad = guidance.gradient(step)
    assert grad.shape == x0.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in clf.parameters())


def _save_th(path, net):
    torch.save({"best_prec1": 90.0, "state_dict": {"module." + k: v for k, v in net.state_dict().items()
                                                   if not k.endswith("num_batches_tracked")}}, path)


def test_load_cifar_resnet_equals_manual_preprocessing(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = CifarResNet(32).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    _save_th(tmp_path / "cifar10-resnet32-abcd.th", net)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = net(((x + 1) / 2 - mean) / std)
        for source in (dict(path_or_depth=tmp_path / "cifar10-resnet32-abcd.th"),
                       dict(path_or_depth=tmp_path, depth=32)):
            torch.testing.assert_close(load_cifar_resnet(**source)(x), expected)
        monkeypatch.setenv("DIFFGUIDE_CLASSIFIERS", str(tmp_path))
        torch.testing.assert_close(load_cifar_resnet(32)(x), expected)


def test_load_cifar_resnet_bad_input(tmp_path, monkeypatch):
    _save_th(tmp_path / "cifar10-resnet20-0000.th", CifarResNet(20))
    with pytest.raises(ValueError, match="holds a ResNet-20"):
        load_cifar_resnet(tmp_path / "cifar10-resnet20-0000.th", depth=56)
    with pytest.raises(ValueError, match="is a folder"):
        load_cifar_resnet(tmp_path)
    with pytest.raises(FileNotFoundError, match="ResNet-44"):
        load_cifar_resnet(tmp_path, depth=44)
    monkeypatch.delenv("DIFFGUIDE_CLASSIFIERS", raising=False)
    with pytest.raises(ValueError, match="DIFFGUIDE_CLASSIFIERS"):
        load_cifar_resnet(20)


def test_torchvision_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="needs torchvision"):
        torchvision_classifier("resnet50")


def test_calibrated_wrapper_weights_are_saved_with_plain_keys_and_old_prefixed_files_still_load(tmp_path):
    """calibrate fine-tunes an ImageClassifier; its classifier.safetensors holds the network's own keys (no `module.` of
    the wrapper). Files written before (every key `module.`-prefixed) load explicitly through read_state_dict."""
    from safetensors.torch import load_file, save_file

    from diffguide.calibration import CalibrationConfig, finetune_calibration
    from diffguide.classifiers import load_weights

    torch.manual_seed(0)
    model = ImageClassifier(CifarResNet(20), Preprocess(), num_classes=10).requires_grad_(True)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.arange(4)
    finetune_calibration(model, [(x, y)], [(x, y)], CalibrationConfig(steps=1, lr=1e-3), out_dir=tmp_path / "cal",
                         progress=False, diagrams=False)
    saved = load_file(str(tmp_path / "cal" / "classifier.safetensors"))
    assert set(saved) == set(model.module.state_dict())  # plain keys, every one of the network's
    old = tmp_path / "old.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in saved.items()}, str(old))  # the earlier layout
    for path in (tmp_path / "cal" / "classifier.safetensors", old):
        fresh = ImageClassifier(CifarResNet(20), Preprocess(), num_classes=10)
        load_weights(fresh, path)
        assert all(torch.equal(a, model.module.state_dict()[k]) for k, a in fresh.module.state_dict().items())
