"""ADM networks and CIFAR ResNets: closed forms, independent reference computations, key layouts, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffguide.guidance import SoftplusForReLU
from diffguide.nets import CifarResNet, EncoderUNetModel, UNetModel
from diffguide.nets.adm import GroupNorm32, qkv_attention, split_qkv, timestep_embedding
from diffguide.nets.cifar_resnet import depth_from_state_dict, shortcut_option_a
from diffguide.nets.presets import preset_shapes

TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
            attention_resolutions=(2,), channel_mult=(1, 2), num_classes=5, num_heads=2,
            use_scale_shift_norm=True, resblock_updown=True)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 6)
    freqs = [10000 ** (-k / 3) for k in range(3)]
    expected = [[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in (0, 3, 999)]
    torch.testing.assert_close(emb, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    assert timestep_embedding(t, 7).shape == (3, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_split_qkv_channel_layouts():
    """Legacy: channel h·3c + j·c + i; new: j·H·c + h·c + i (j = 0, 1, 2 for q, k, v)."""
    heads, c, length = 2, 3, 4
    channel = torch.arange(3 * heads * c, dtype=torch.float32)[None, :, None].expand(1, -1, length)
    for legacy in (True, False):
        q, k, v = split_qkv(channel, heads, legacy)
        assert q.shape == (1, heads, length, c)
        for j, part in enumerate((q, k, v)):
            for h in range(heads):
                for i in range(c):
                    index = h * 3 * c + j * c + i if legacy else j * heads * c + h * c + i
                    assert (part[0, h, :, i] == index).all()


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_runs_the_fused_kernel_not_the_math_fallback(monkeypatch, legacy):
    """q, k, v come out contiguous in the head dimension, so scaled_dot_product_attention takes its fused kernel
    (here the CPU's flash kernel) instead of its math fallback (batched matmuls, a materialised softmax, float32 for
    bf16 inputs); with the old strided layout the fallback runs (asserted, so the test can fail), computing the
    same attention (to float32 rounding: sums of T = 64 terms, 1e-5)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import diffguide.nets.adm as adm

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 32, 64)  # 4 heads of 32 channels, 8x8 positions
    outputs = {}
    for contiguous in (True, False):
        monkeypatch.setattr(adm, "QKV_CONTIGUOUS", contiguous)
        assert all(part.stride(-1) == 1 for part in split_qkv(qkv, 4, legacy)) == contiguous
        with Ops() as ops:
            outputs[contiguous] = qkv_attention(qkv, 4, legacy)
        fused = "_scaled_dot_product_flash_attention_for_cpu" in ops.names
        assert (fused, "bmm" in ops.names) == ((True, False) if contiguous else (False, True)), ops.names
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)


def _attention_reference(q, k, v):
    """softmax(qᵀk/√c) v for q, k, v [c, T] (one head), written out with matmuls."""
    weights = torch.softmax(q.T @ k / math.sqrt(q.shape[0]), dim=-1)  # [T, S]
    return (weights @ v.T).T  # [c, T]


@pytest.mark.parametrize("legacy", [True, False])
def test_qkv_attention_matches_per_head_reference(legacy):
    torch.manual_seed(0)
    heads, c, length = 3, 4, 5
    qkv = torch.randn(2, 3 * heads * c, length, dtype=torch.float64)
    out = qkv_attention(qkv, heads, legacy)
    for b in range(2):
        for h in range(heads):
            if legacy:
                block = qkv[b, h * 3 * c:(h + 1) * 3 * c]
                q, k, v = block[:c], block[c:2 * c], block[2 * c:]
            else:
                q, k, v = (qkv[b, j * heads * c + h * c: j * heads * c + (h + 1) * c] for j in range(3))
            torch.testing.assert_close(out[b, h * c:(h + 1) * c], _attention_reference(q, k, v))


def test_groupnorm32_computes_in_float32():
    torch.manual_seed(0)
    norm = GroupNorm32(32, 64)
    x = (torch.randn(2, 64, 4, 4) * 100 + 1000).to(torch.bfloat16)
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_unet_forward_shapes_and_keys():
    net = UNetModel(**TINY).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 500]), torch.tensor([0, 4])
    assert net(x, t, y).shape == (2, 6, 16, 16)
    keys = set(net.state_dict())
    for key in ("time_embed.0.weight", "time_embed.2.bias", "label_emb.weight", "input_blocks.0.0.weight",
                "input_blocks.2.0.in_layers.0.weight", "input_blocks.3.0.emb_layers.1.weight",
                "input_blocks.3.1.qkv.weight", "input_blocks.3.1.proj_out.weight", "middle_block.1.norm.weight",
                "output_blocks.0.0.skip_connection.weight", "out.2.weight"):
        assert key in keys, key
    assert net.state_dict()["input_blocks.3.0.emb_layers.1.weight"].shape == (2 * 64, 128)  # scale and shift
    assert tuple(net.state_dict()["input_blocks.3.1.qkv.weight"].shape) == (192, 64, 1)


def test_unconditional_unet_ignores_labels_and_conditional_requires_them():
    torch.manual_seed(0)
    net = UNetModel(**{**TINY, "num_classes": None}).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 20])
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t, torch.tensor([1, 2])))
    conditional = UNetModel(**TINY).eval()
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(x, t)
    with pytest.raises(ValueError, match="y: expected shape"):
        conditional(x, t, torch.tensor([1]))


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(2, 1, 16, 16)), "x: expected images"),
    (dict(x=torch.randn(2, 3, 15, 16)), "multiples of 2"),
    (dict(t=torch.tensor([1, 2, 3])), "timesteps: expected shape"),
])
def test_unet_bad_input(bad, match):
    net = UNetModel(**TINY).eval()
    args = dict(x=torch.randn(2, 3, 16, 16), t=torch.tensor([1, 2]))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        net(args["x"], args["t"], torch.tensor([0, 1]))


def test_scalar_timestep_broadcasts():
    torch.manual_seed(0)
    net = UNetModel(**TINY).eval()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(net(x, 7, y), net(x, torch.tensor([7, 7]), y))


@pytest.mark.parametrize("kwargs, match", [
    (dict(dims=3), "dims"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(model_channels=0), "model_channels"),
    (dict(num_head_channels=24), "num_head_channels"),
])
def test_unet_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetModel(**{**TINY, **kwargs})


@pytest.mark.parametrize("pool", ["attention", "adaptive", "spatial", "spatial_v2"])
def test_encoder_pools(pool):
    net = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
                           attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
                           use_scale_shift_norm=True, resblock_updown=True, pool=pool).eval()
    assert net(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])).shape == (3, 7)
    if pool == "attention":
        # mean token + 8×8 positions; 64 channels at the last level
        assert tuple(net.state_dict()["out.2.positional_embedding"].shape) == (64, 65)
        with pytest.raises(ValueError, match="expects 16x16"):
            net(torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_encoder_bad_config():
    base = dict(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
                attention_resolutions=(2,), channel_mult=(1, 2))
    with pytest.raises(ValueError, match="pool"):
        EncoderUNetModel(**base, pool="max")
    with pytest.raises(ValueError, match="num_head_channels"):
        EncoderUNetModel(**base, pool="attention")


@pytest.mark.parametrize("name, millions", [
    ("imagenet128", 421.5), ("imagenet128-classifier", 42.6), ("imagenet64", 295.9),  # ecosystem.md, measured
    ("cifar10-resnet20", 0.27), ("cifar10-resnet32", 0.46), ("cifar10-resnet44", 0.66), ("cifar10-resnet56", 0.85),
])
def test_preset_parameter_counts(name, millions):
    """Parameter counts of the released networks (ADM: ecosystem.md; CIFAR ResNets: He et al. 2016, Table 6)."""
    count = sum(math.prod(shape) for key, shape in preset_shapes(name).items()
                if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert round(count / 1e6, 2 if millions < 1 else 1) == millions


def test_preset_attention_layouts():
    shapes = preset_shapes("imagenet128-classifier")
    assert shapes["out.2.positional_embedding"] == (512, 65)  # width 128·4 at 8×8, plus the mean token
    assert shapes["out.2.c_proj.weight"] == (1000, 512, 1)
    assert "label_emb.weight" not in preset_shapes("imagenet256-uncond")
    assert preset_shapes("imagenet256")["label_emb.weight"] == (1000, 1024)


def test_shortcut_option_a_exact():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = shortcut_option_a(x, 4)
    assert out.shape == (1, 4, 2, 2)
    assert (out[:, 0] == 0).all() and (out[:, 3] == 0).all()
    assert torch.equal(out[0, 1:3], x[0, :, ::2, ::2])


def test_cifar_resnet_keys_shapes_depth():
    net = CifarResNet(32).eval()
    sd = net.state_dict()
    assert depth_from_state_dict(sd) == 32
    assert sd["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert sd["layer3.4.bn2.running_var"].shape == (64,)
    assert "layer3.5.conv1.weight" not in sd
    assert sd["linear.weight"].shape == (10, 64)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)  # global pooling: any size
    for depth in (21, 2, "20"):
        with pytest.raises(ValueError, match="depth"):
            CifarResNet(depth)


def test_softplus_for_relu_reaches_cifar_resnet():
    torch.manual_seed(0)
    net = CifarResNet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        with SoftplusForReLU(beta=1e4):  # nearly ReLU
            sharp = net(x)
        with SoftplusForReLU(beta=1.0):
            smooth = net(x)
    torch.testing.assert_close(sharp, plain, atol=1e-2, rtol=1e-2)
    assert (smooth - plain).abs().max() > 1e-2
