"""Record EluCD's own off-the-shelf-guided DDPM loop on tiny random networks, as test vectors for diffguide.

    python scripts/make_elucd_fixture.py PATH/TO/EluCD [--out tests/fixtures/elucd/elucd_ddpm.npz]

PATH/TO/EluCD is a checkout of github.com/AlexMaOLS/EluCD (never vendored here); this script imports its
``DDPM/guided_diffusion`` package and runs ``SpacedDiffusion.p_sample_loop_progressive`` — whose ``p_sample`` holds
EluCD's rule mean += (Σ + a_i)·g, a_i = max(sin(π·i/T′)·Σ_max·γ, 0) — with a guidance function that does what
``DDPM/scripts/classifier_sample.py`` does (gradient of log(exp(τ1·f_y) / Σ exp(τ2·f)) with respect to the detached
x̂0, τ2 = τ1·margin_temperature_discount, times the classifier scale; top-level ``nn.ReLU`` children of the classifier
replaced by ``nn.Softplus(β)``). Networks: a tiny class-conditional ADM UNet with learned-range variance and a tiny
conv classifier, every parameter drawn from a seeded normal (ADM's zero-initialised output layers would make ε = 0).
Stored: the weights, x_T, every step's noise as drawn by EluCD's loop, and every step's x̂0 and sample; float32
(ADM's UNet computes in float32 whatever its input).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

UNET = dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(1,),
            dropout=0.0, channel_mult=(1,), num_classes=4, use_checkpoint=False, num_heads=2, num_head_channels=-1,
            num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False)
SETTINGS = [  # respacing, γ, classifier scale s, τ1, discount (τ2 = τ1·discount), softplus β, batch, seed
    dict(respacing="10", gamma=0.3, scale=1.0, tau1=1.0, discount=0.5, beta=3.0, batch=3, seed=1),
    dict(respacing="25", gamma=0.6, scale=4.0, tau1=1.5, discount=0.8, beta=5.0, batch=2, seed=2),
    dict(respacing="ddim10", gamma=0.3, scale=2.0, tau1=1.0, discount=0.5, beta=3.0, batch=2, seed=3),
]


def classifier_net(num_classes: int = 4) -> nn.Sequential:
    """The tiny off-the-shelf classifier (the test builds the same)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def randomize(net: nn.Module, seed: int, std: float = 0.15) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def softplus_children(net: nn.Module, beta: float) -> nn.Module:
    """EluCD's replacement: top-level nn.ReLU children become nn.Softplus(beta)."""
    for name, module in net.named_children():
        if isinstance(module, nn.ReLU):
            net._modules[name] = nn.Softplus(beta=beta)
    return net


def run(elucd: Path, out: Path) -> None:
    sys.path.insert(0, str(elucd / "DDPM"))
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.unet import UNetModel

    unet = randomize(UNetModel(**UNET), seed=0).eval()
    clean_classifier = randomize(classifier_net(), seed=1).eval()
    arrays = {f"unet/{k}": v.float().numpy() for k, v in unet.state_dict().items()}
    arrays.update({f"classifier/{k}": v.float().numpy() for k, v in clean_classifier.state_dict().items()})
    for k, setting in enumerate(SETTINGS):
        respacing = setting["respacing"]
        diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                              timestep_respacing=respacing)
        classifier = softplus_children(randomize(classifier_net(), seed=1).eval(), setting["beta"])
        tau1, tau2, scale = setting["tau1"], setting["tau1"] * setting["discount"], setting["scale"]

        def cond_fn(inputs, t, y=None):
            with torch.enable_grad():
                x0 = inputs[1].detach().requires_grad_(True)
                logits = classifier(x0)
                numerator = torch.exp(logits * tau1)[range(len(logits)), y.view(-1)].unsqueeze(1)
                selected = torch.log(numerator / torch.exp(logits * tau2).sum(1, keepdims=True))
                return torch.autograd.grad(selected.sum(), x0)[0] * scale

        g = torch.Generator().manual_seed(setting["seed"])
        batch = setting["batch"]
        x_T = torch.randn(batch, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (batch,), generator=g)
        drawn, randn_like = [], torch.randn_like

        def recorded_randn_like(x, *args, **kwargs):  # EluCD's step noise, drawn from the seeded generator, recorded
            z = torch.randn(x.shape, generator=g, dtype=x.dtype)
            drawn.append(z)
            return z

        torch.randn_like = recorded_randn_like
        try:
            steps = list(diffusion.p_sample_loop_progressive(unet, x_T.shape, gamma_factor=setting["gamma"], noise=x_T,
                                                             clip_denoised=True, cond_fn=cond_fn,
                                                             model_kwargs={"y": y}, device="cpu"))
        finally:
            torch.randn_like = randn_like
        key = f"case{k}"
        arrays.update({f"{key}/x_T": x_T.numpy(), f"{key}/y": y.numpy(), f"{key}/noise": torch.stack(drawn).numpy(),
                       f"{key}/pred_xstart": torch.stack([s["pred_xstart"] for s in steps]).double().numpy(),
                       f"{key}/samples": torch.stack([s["sample"] for s in steps]).double().numpy()})
        for name, value in setting.items():
            arrays[f"{key}/setting/{name}"] = np.array(value)
        print(f"{key}: {setting} -> {len(steps)} steps, max |x_0| {steps[-1]['sample'].abs().max():.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("elucd", type=Path, help="a checkout of github.com/AlexMaOLS/EluCD")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/elucd/elucd_ddpm.npz")
    args = parser.parse_args()
    if not (args.elucd / "DDPM/guided_diffusion/gaussian_diffusion.py").is_file():
        parser.error(f"elucd: {args.elucd} holds no DDPM/guided_diffusion/gaussian_diffusion.py")
    run(args.elucd, args.out)


if __name__ == "__main__":
    main()
