"""Where a CIFAR-10 sampling step spends its GPU time: torch.profiler over ``--steps`` DDPM steps of ``sample()`` at
the study's batch (after a warm-up call of the same shapes, which holds compilation), for each guidance setting the
studies run: unguided, CFG (one batched [c, ∅] forward) and EluCD on x̂0 with the ResNet-32. Prints GPU-busy time
against wall time, the kernels grouped by kind, and the top kernels; writes it all to ``--out`` (text).

    python benchmarks/profile_sample.py --model PATH/cifar10-cond-17m-v0 \
        --resnet PATH/cifar10-resnet32-d509ac18.th --out benchmarks/results/profile_sample_b2500_h200.txt
    python benchmarks/profile_sample.py --model ... --resnet ... --tiny --out /tmp/p.txt   # a CPU check

``--qkv-layouts contiguous,strided`` profiles each setting with both attention layouts (common.py).

The kinds: convolutions and matrix products (cuDNN / cuBLAS / CUTLASS kernels), attention (flash / memory-efficient
SDPA), inductor's fused Triton kernels (normalisation, activations, casts), copies, and everything else.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from diffguide.api import SampleSettings, sample
from diffguide.io import atomic_write_text
from common import add_qkv_layouts_argument, add_study_arguments, layout  # (this folder is on sys.path)
from guided_step import ELUCD

KINDS = (("attention", r"flash|fmha|attention|efficient_attention"),
         ("conv / matmul", r"conv|gemm|xmma|cutlass|sm\d+_|wgrad|dgrad|fprop|cublas|implicit"),
         ("triton fused", r"^triton_"),
         ("copy", r"copy|memcpy|memset"))


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def profile_setting(name: str, settings: SampleSettings, device: str) -> list[str]:
    """One setting's report lines: wall and GPU-busy ms per step, GPU time by kernel kind, the top 15 kernels."""
    sample(settings, device=device, progress=False)  # warm-up: compilation and loading
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        started = time.perf_counter()
        sample(settings, device=device, progress=False)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    steps = int(settings.steps)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA] if cuda else []
    busy = sum(e.self_device_time_total for e in kernels) / 1e3  # ms
    by_kind = defaultdict(float)
    for e in kernels:
        by_kind[kind_of(e.key)] += e.self_device_time_total / 1e3
    lines = [f"## {name}: batch {settings.num_samples}, {steps} steps",
             f"wall {1000 * wall / steps:.1f} ms/step, GPU busy {busy / steps:.1f} ms/step "
             f"({100 * busy / max(1000 * wall, 1e-9):.0f}% of wall)", "", f"{'kind':<16} {'ms/step':>9} {'share':>7}"]
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"{kind:<16} {ms / steps:>9.2f} {100 * ms / max(busy, 1e-9):>6.1f}%")
    lines += ["", f"{'kernel':<90} {'ms/step':>9} {'calls/step':>11}"]
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:15]:
        lines.append(f"{e.key[:90]:<90} {e.self_device_time_total / 1e3 / steps:>9.2f} {e.count / steps:>11.1f}")
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="DDPM steps profiled per setting")
    add_qkv_layouts_argument(parser)
    parser.add_argument("--tiny", action="store_true", help="batch 2, 2 steps: a CPU check of the script")
    parser.add_argument("--out", type=Path, required=True, help="text output path")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.batch, args.steps = 2, 2
    base = dict(model=str(args.model), num_samples=args.batch, batch_size=args.batch, seed=0, labels="uniform",
                sampler="ddpm", steps=str(args.steps), bf16=device == "cuda", variance="fixed_small",
                on_nonfinite="zero")
    settings = {"unguided": SampleSettings(**base), "CFG w = 0.5": SampleSettings(**base, cfg_w=0.5),
                "EluCD ResNet-32 on x̂0": SampleSettings(**base, x0_classifier=f"cifar-resnet:{args.resnet}",
                                                       **ELUCD, softplus_beta=10.0)}
    header = [f"# sampling profile: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
              f"torch {torch.__version__}, bf16 autocast {device == 'cuda'}", ""]
    lines = list(header)
    for layout_name in args.qkv_layouts:
        with layout(layout_name):
            for name, s in settings.items():
                lines += profile_setting(f"{name}, {layout_name} q/k/v", s, device)
    print("\n".join(lines))
    atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
