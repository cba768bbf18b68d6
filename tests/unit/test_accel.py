"""The fast path (diffguide.accel) computes the same function as eager PyTorch, within float32 rounding.

Bound for a compiled network: inductor fuses the pointwise work and re-orders the reductions of GroupNorm and the
attention softmax (convolutions stay the same library calls). Each re-ordered sum of n terms moves its result by at
most about sqrt(n)·u relative (u = 2^-24, random-walk rounding); the tiny UNet's largest reduction is a GroupNorm over
(C/32)·H·W = 1·16·16 = 256 terms → 16·u ≈ 1e-6, and about 20 such layers in sequence, each roughly norm-preserving,
give ≈ 2e-5 relative to the output's scale. We allow 1e-4 (5x). A real change of the function is far above it: the output
convolution's weights scaled by 1.01 fail (asserted below).
"""

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
