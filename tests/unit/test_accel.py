"""The fast path (diffguide.accel) computes the same function as eager PyTorch, within float32 rounding.

Bound for a compiled network: inductor fuses the pointwise work and re-orders the reductions of GroupNorm and the
attention softmax (convolutions stay the same library calls). Each re-ordered sum of n terms moves its result by at
most about sqrt(n)·u relative (u = 2^-24, random-walk rounding); the tiny UNet's largest reduction is a GroupNorm over
(C/32)·H·W = 1·16·16 = 256 terms → 16·u ≈ 1e-6, and about 20 such layers in sequence, each roughly norm-preserving,
give ≈ 2e-5 relative to the output's scale. We allow 1e-4 (5x). A real change of the function is far above it: the output
convolution's weights scaled by 1.01 fail (asserted below).
"""

import os

import pytest
import torch

from diffguide.accel import cudnn_autotune, fast_module, fused_adamw, use_fast_path
from diffguide.nets import UNetModel

TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
            attention_resolutions=(2,), channel_mult=(1, 2), num_classes=10, num_heads=2,
            use_scale_shift_norm=True, resblock_updown=True)
BOUND = 1e-4


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_fast_path_is_on_for_cuda_only_and_can_be_forced_off(monkeypatch):
    monkeypatch.delenv("DIFFGUIDE_EAGER", raising=False)
    assert use_fast_path(None, "cuda:0") and not use_fast_path(None, "cpu")
    assert use_fast_path(True, "cpu") and not use_fast_path(False, "cuda")
    monkeypatch.setenv("DIFFGUIDE_EAGER", "1")
    assert not use_fast_path(True, "cuda")


def test_eager_fast_module_is_the_module_itself():
    net = UNetModel(**TINY)
    assert fast_module(net, fast=False) is net


@pytest.mark.parametrize("switch, channels_last", [(None, False), ("1", True), ("0", False)])
def test_fast_module_keeps_the_contiguous_format_unless_switched_to_channels_last(monkeypatch, switch, channels_last):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # the layout is what is tested
    if switch is None:
        monkeypatch.delenv("DIFFGUIDE_CHANNELS_LAST", raising=False)
    else:
        monkeypatch.setenv("DIFFGUIDE_CHANNELS_LAST", switch)
    conv = fast_module(torch.nn.Conv2d(3, 8, 3), fast=True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert conv.weight.is_contiguous() != channels_last


@pytest.mark.parametrize("before", [None, "0", "1"])
def test_channels_last_context_sets_the_switch_and_restores_it(monkeypatch, before):
    """accel.channels_last(enabled): fast_module puts a module channels-last inside ``channels_last(True)`` only,
    and the environment is as it was after (unset stays unset)."""
    from diffguide.accel import channels_last, channels_last_enabled

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    if before is None:
        monkeypatch.delenv("DIFFGUIDE_CHANNELS_LAST", raising=False)
    else:
        monkeypatch.setenv("DIFFGUIDE_CHANNELS_LAST", before)
    for enabled in (True, False):
        with channels_last(enabled):
            assert channels_last_enabled() is enabled
            weight = fast_module(torch.nn.Conv2d(3, 8, 3), fast=True).weight
            assert weight.is_contiguous(memory_format=torch.channels_last) is enabled
        assert os.environ.get("DIFFGUIDE_CHANNELS_LAST") == before


def test_compiled_unet_equals_eager_within_float32_rounding():
    torch.manual_seed(0)
    net = UNetModel(**TINY).eval()
    for p in net.parameters():  # ADM zero-initialises output layers; random weights make every layer count
        p.data.normal_(0, 0.05)
    x, t, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 250, 500, 999]), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        eager = net(x, t, y)
        fast = fast_module(net, fast=True)
        compiled = fast(x, t, y)
        assert fast.config == net.config  # attributes reach the original module
        error = relative_error(compiled, eager)
        assert error < BOUND, error
        print(f"compiled vs eager: {error:.3g} relative")
        net.out[-1].weight.data *= 1.01  # a real change of the function, through the shared parameters
        changed = fast(x, t, y)
    assert relative_error(changed, eager) > 10 * BOUND


@pytest.mark.parametrize("fast", [False, True])
def test_fused_adamw_takes_the_same_steps(fast):
    """Fused and per-tensor AdamW are the same update: equal within float32 rounding of a few operations (1e-6)."""
    torch.manual_seed(0)
    reference, other = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    other.load_state_dict(reference.state_dict())
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    opt = fused_adamw(other.parameters(), fast=fast, lr=1e-2, weight_decay=0.1)
    assert opt.defaults["fused"] == (True if fast else None)
    for _ in range(5):
        x = torch.randn(16, 8)
        for net, optimizer in ((reference, opt_ref), (other, opt)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), other.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_cudnn_autotune_restores_the_setting():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune():
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


def test_a_second_sample_of_the_same_model_reuses_the_compiled_network(tmp_path, monkeypatch):
    """api.sample on the fast path compiles a model once per process: the second run of the same weights gets the
    same compiled module (so its graphs, no recompilation); changed weights on disk are loaded and compiled anew.
    torch.compile is replaced by a recorder here: what is tested is the reuse, not the compiler."""
    import diffguide.accel as accel
    from diffguide.api import sample
    from diffguide.checkpoints import save_network

    compiled = []

    def record(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", record)
    monkeypatch.setattr(accel, "_kept", {})
    torch.manual_seed(0)
    net = UNetModel(**TINY).eval()
    save_network(net, tmp_path / "model", schedule="linear", learn_sigma=True)
    settings = dict(model=str(tmp_path / "model"), num_samples=2, batch_size=2, sampler="ddim", steps="ddim2",
                    labels="balanced", progress=False, fast=True, device="cpu")
    first, second = sample(**settings), sample(**settings)
    assert len(compiled) == 1 and (first.images == second.images).all()
    state = {k: v + 0.01 for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    save_network(net, tmp_path / "model", schedule="linear", learn_sigma=True, overwrite=True)  # new weights
    third = sample(**settings)
    assert len(compiled) == 2 and compiled[1] is not compiled[0] and not (third.images == first.images).all()
    with pytest.raises(FileNotFoundError, match="model: .* is neither"):  # the loader's own error, not a stat's
        sample(**{**settings, "model": str(tmp_path / "missing")})


def test_compiled_guide_gradient_equals_eager_for_each_relu_smoothing():
    """The x̂0 guide compiled (as ``api.sample`` runs it on the fast path) gives the eager gradient with ReLU, with
    Softplus β = 10 and with β = 3, one compiled module serving all three (the ReLU → Softplus swap is a
    TorchFunctionMode entered outside the compiled call: the compiler must trace it and guard on β, or the β = 3 run
    would silently reuse the β = 10 graph).

    Bound: as for the UNet, inductor fuses batch norm and Softplus and re-orders only reductions; the largest here is
    the head's mean over 8·8 = 64 positions and its 64-input linear layer, and its backward's sums over the 10
    classes and 16–64 channels: sqrt(64)·u ≈ 5e-7 each, about 10 layers deep → ≈ 5e-6 relative. We allow 1e-4, the
    UNet's bound; one batch-norm scale changed by 1% (a real change of the function) moves the gradient far above it
    (asserted)."""
    from diffguide.classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, Preprocess
    from diffguide.guidance import ClassifierGuidance
    from diffguide.guidance.step import GuidanceStep
    from diffguide.nets.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    guide = ImageClassifier(CifarResNet(8), Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD), num_classes=10)
    for module in guide.modules():  # trained-like batch norm: statistics and scales away from the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 2), module.weight.data.uniform_(0.5, 2)
    compiled = fast_module(guide, fast=True)
    x0 = torch.rand(6, 3, 32, 32) * 2 - 1
    step = GuidanceStep(i=5, num_steps=10, num_train_timesteps=1000, t=torch.full((6,), 500), x_t=x0,
                        prediction=type("P", (), {"x0": x0})(), labels=torch.tensor([0, 3, 9, 1, 1, 7]))
    grads = {}
    for beta in (None, 10.0, 3.0):
        eager = ClassifierGuidance(guide, on="x0", softplus_beta=beta).gradient(step)
        fast = ClassifierGuidance(compiled, on="x0", softplus_beta=beta).gradient(step)
        error = relative_error(fast, eager)
        assert error < BOUND, (beta, error)
        print(f"softplus_beta={beta}: compiled vs eager gradient {error:.3g} relative")
        grads[beta] = eager
    assert relative_error(grads[3.0], grads[10.0]) > 10 * BOUND  # the three smoothings are different functions
    guide.module.bn1.weight.data[0] *= 1.01
    assert relative_error(ClassifierGuidance(compiled, on="x0", softplus_beta=10.0).gradient(step),
                          grads[10.0]) > 10 * BOUND


def test_compiled_noise_aware_guide_gradient_equals_eager():
    """ADM-G's noise-aware classifier compiled (as ``api.sample`` runs it on the fast path) gives the eager ∇_{x_t}
    log p(y | x_t, t), the gradient through the whole encoder.

    Bound: the encoder is the UNet's first half with its GroupNorms and attention pooling, the same re-ordered
    reductions as the UNet's (module docstring: ≈ 2e-5 relative), and the backward pass repeats them once more, so
    1e-4 as for the UNet; its output convolution's weights scaled by 1.01 (a real change of the function) fail it
    (asserted)."""
    from diffguide.guidance import ClassifierGuidance
    from diffguide.guidance.step import GuidanceStep
    from diffguide.nets import EncoderUNetModel

    torch.manual_seed(0)
    classifier = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1,
                                  attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
                                  pool="attention").eval()
    for p in classifier.parameters():  # the zero-initialised output layers would make every gradient vanish
        p.data.normal_(0, 0.05)
    compiled = fast_module(classifier, fast=True)
    x_t = torch.randn(4, 3, 16, 16)
    step = GuidanceStep(i=5, num_steps=10, num_train_timesteps=1000, t=torch.tensor([900, 500, 100, 3]), x_t=x_t,
                        prediction=type("P", (), {"x0": x_t})(), labels=torch.tensor([0, 3, 4, 1]))
    eager = ClassifierGuidance(classifier, on="x_t").gradient(step)
    error = relative_error(ClassifierGuidance(compiled, on="x_t").gradient(step), eager)
    print(f"noise-aware guide: compiled vs eager gradient {error:.3g} relative")
    assert error < BOUND
    classifier.out[-1].c_proj.weight.data *= 1.01
    assert relative_error(ClassifierGuidance(compiled, on="x_t").gradient(step), eager) > 10 * BOUND


def test_sample_compiles_the_guide_once_per_process_and_preprocessing(tmp_path, monkeypatch):
    """api.sample on the fast path compiles the guidance classifier with the network, once per process and weights:
    a second run with the same guide loads and compiles nothing; ``x0_preprocess='raw'`` (which changes the loaded
    module) gets its own copy, so the first run's cached guide keeps its preprocessing. torch.compile is a recorder."""
    import diffguide.accel as accel
    import diffguide.api as api
    from diffguide.checkpoints import save_network
    from diffguide.classifiers import ImageClassifier, Preprocess

    compiled, loads = [], []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or module)
    monkeypatch.setattr(accel, "_kept", {})
    torch.manual_seed(0)
    guide_net = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def load(spec, preset, device):
        loads.append(spec)
        return ImageClassifier(guide_net, Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)), num_classes=10), "x0"

    monkeypatch.setattr(api, "load_guidance_classifier", load)
    save_network(UNetModel(**TINY).eval(), tmp_path / "model", schedule="linear", learn_sigma=True)
    settings = dict(model=str(tmp_path / "model"), num_samples=2, batch_size=2, sampler="ddim", steps="ddim2",
                    labels="balanced", progress=False, fast=True, device="cpu", x0_classifier="cifar-resnet:g.th",
                    classifier_scale=1.0, softplus_beta=None)
    first, second = api.sample(**settings), api.sample(**settings)
    assert len(loads) == 1 and len(compiled) == 2 and (first.images == second.images).all()  # UNet + guide, once
    api.sample(**settings, x0_preprocess="raw")
    assert len(loads) == 2 and len(compiled) == 3
    assert len(accel._kept["fast_module"]) == 1  # the network, in its own store
    preprocesses = [module.preprocess for module, _ in accel._kept["fast_guide"].values()]
    assert {p.mean for p in preprocesses} == {(0.5, 0.4, 0.3), None}  # the weights' own and raw's identity


def test_compiled_guided_sampling_equals_eager_sampling(monkeypatch):
    """A whole x̂0-guided DDPM run as ``sample()`` builds it on the fast path (compiled UNet and compiled guide,
    Softplus β = 10) equals the eager run within float32 rounding.

    Bound: each of the 4 steps adds the UNet's bound and the guide gradient's (1e-4 relative each, above) times the
    scale, carried to the end by a step map that is close to the identity on x (x_{i−1} ≈ a·x_i + b·ε̂ with a, b ≤
    ~1.1 on this schedule): 4 · 2 · 1e-4 · 1.1 ≈ 1e-3. The guide changes the samples far more than that (asserted),
    so a compiled guide that computed another function — or no guidance — would fail."""
    import diffguide.accel as accel
    import diffguide.api as api
    from diffguide import SeededNoise, ddpm
    from diffguide.checkpoints import NetworkConfig
    from diffguide.classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, Preprocess
    from diffguide.nets.cifar_resnet import CifarResNet

    monkeypatch.setattr(accel, "_kept", {})
    torch.manual_seed(0)
    guide = ImageClassifier(CifarResNet(8), Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD), num_classes=10)
    monkeypatch.setattr(api, "load_guidance_classifier", lambda spec, preset, device: (guide, "x0"))
    net = UNetModel(**TINY).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    config = NetworkConfig(kind="UNetModel", kwargs=TINY, schedule="linear", learn_sigma=True)
    settings = api.SampleSettings(model="unused", x0_classifier="cifar-resnet:g.th", classifier_scale=4.0,
                                  softplus_beta=10.0)
    labels = torch.tensor([0, 3, 5, 9])

    def run(fast: bool, guided: bool = True):
        guidance = api._guidance(settings, "cpu", None, fast) if guided else None
        denoiser = config.denoiser(fast_module(net, fast=fast), "4")
        return ddpm(denoiser, SeededNoise(0, range(4), (3, 16, 16)), labels, guidance=guidance).samples

    eager, compiled = run(False), run(True)
    assert isinstance(accel._kept["fast_guide"][next(iter(accel._kept["fast_guide"]))][0],
                      torch._dynamo.eval_frame.OptimizedModule)  # the guide really ran compiled
    error = relative_error(compiled, eager)
    print(f"compiled vs eager guided samples: {error:.3g} relative")
    assert error < 1e-3, error
    unguided_change = relative_error(run(False, guided=False), eager)
    print(f"guided vs unguided: {unguided_change:.3g} relative")
    assert unguided_change > 1e-2


def test_a_compiled_network_recompiles_for_the_other_attention_layout():
    """``qkv_layout`` flips a module global that the traced attention reads: the compiler must guard on it and trace
    again (else a benchmark's strided rows, or a study pinned to strided, would silently run the contiguous graph).
    Checked with a backend that records each graph: the second layout gets its own graph, which has the
    ``contiguous`` call exactly when the layout is contiguous, and going back reuses the first graph."""
    from diffguide.nets.adm import qkv_layout

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(any(node.target == "contiguous" for node in gm.graph.nodes))
        return gm.forward

    torch.manual_seed(0)
    net = UNetModel(**TINY).eval()
    for p in net.parameters():  # away from ADM's zero-initialised output layers
        p.data.normal_(0, 0.05)
    compiled = torch.compile(net, backend=recording_backend, dynamic=False)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        for contiguous in (True, False, True):
            with qkv_layout(contiguous):
                out = compiled(x, t, y)
                assert relative_error(out, net(x, t, y)) < BOUND
    assert graphs == [True, False]
