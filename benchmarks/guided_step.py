"""Where the time of an x̂0-guided sampling step goes, at the CIFAR-10 study's batch, side by side in one process.

In the guidance study (issue 13) an x̂0-guided DDPM-100 unit of 5k samples sampled in 32.4 s on the H200 against about
24.4 s estimated unguided: about 40 ms more per step of 2,500 images, where the ResNet-32's forward and backward are
about 3% of the UNet's FLOPs. This script times, per sampler step (median over repeats, after a warm-up that holds
compilation):

- ``sample``: ``diffguide.api.sample`` as the study calls it (compiled UNet, bf16 autocast, DDPM with fixed_small):
  unguided; EluCD ResNet-32 with Softplus β = 10 (the study's setting) with the guide eager (as before the guide was
  compiled) and compiled (the default on a GPU); the same with ReLU;
- ``gradient``: the guide's gradient alone on a random batch (forward + backward of the ResNet on x̂0), eager and
  compiled: bf16 autocast against fp32, Softplus against ReLU;
- ``check``: the compiled guide's gradient against the eager one in exact fp32 (TF32 off) at β = 10, 3 and ReLU
  (bound 1e-4 relative, derived in tests/unit/test_accel.py), over the batch and the share of images within it;
- with ``--noise-aware``: the same for ADM-G (a noise-aware classifier on x_t, as the study's ``adm_g_*`` methods);
- with ``--qkv-layouts contiguous,strided``: the unguided and the β = 10 ``sample`` rows again in each attention
  layout (common.py), for the studies' layout rule (src/diffguide/studies/cifar10/plan.py).

The first H200 run (2026-12-01, before the guide was compiled;
``benchmarks/results/guided_step_eager_guide_h200.json``) found the eager guide's gradient alone (36.7 ms) to be
nearly all of the 41.9 ms an x̂0-guided step adds at batch 2,500.

The second H200 run (``benchmarks/results/guided_step_h200.json``) timed the compiled guide; its check rows ran with
cuDNN's TF32 on (0.0033 / 0.002 / 0.22 relative at β = 10 / 3 / ReLU). In exact fp32 the same gradients were 2.0e-6
and 1.1e-6 apart for β = 10 and 3, and 8.8e-3 for ReLU, whose gradient jumps at the kinks (a diagnostic run at batch
500; the check now turns TF32 off and counts the images within the bound).

    python benchmarks/guided_step.py --model PATH/cifar10-cond-17m-v0 --resnet PATH/cifar10-resnet32-d509ac18.th \
        --out benchmarks/results/guided_step_h200.json
    python benchmarks/guided_step.py --model ... --resnet ... --tiny --out /tmp/g.json   # a CPU check of the script

Prints a table and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

import diffguide.api as api
from diffguide.accel import fast_module
from diffguide.api import SampleSettings, load_guidance_classifier, sample
from diffguide.guidance.classifier import SoftplusForReLU
from diffguide.io import atomic_write_text
from diffguide.metrics.inception import full_fp32
from common import add_qkv_layouts_argument, add_study_arguments, layout  # (this folder is on sys.path)

ELUCD = dict(objective="baseline", objective_params={"tau1": 1.0, "tau2": 0.5}, schedule="sine",
             schedule_params={"gamma": 0.3}, guidance_rule="elucd", classifier_scale=0.5)
CHECK_BOUND = 1e-4  # compiled vs eager fp32 gradient, relative (derived in tests/unit/test_accel.py)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sample(name: str, settings: SampleSettings, *, repeats: int, device: torch.device) -> dict:
    """Seconds per sampler step of one ``sample()`` call of one batch (the first call compiles; then ``repeats``)."""
    sample(settings, device=str(device), progress=False)  # warm-up: compilation, loading
    seconds = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        sample(settings, device=str(device), progress=False)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    steps = int(settings.steps)
    return dict(section="sample", variant=name, batch=settings.num_samples, steps=steps,
                ms_per_step=1000 * float(np.median(seconds)) / steps, seconds=[round(s, 4) for s in seconds])


@contextlib.contextmanager
def eager_guide():
    """``sample()`` with its guide eager (the network still compiled): the path before the guide was compiled."""
    original = api._guide_module
    api._guide_module = lambda settings, device, fast: original(settings, device, False)
    try:
        yield
    finally:
        api._guide_module = original


def guide_gradient(module, *, batch: int, bf16: bool, device: torch.device, softplus_beta: float | None = None,
                   noise_aware: bool = False):
    """A function computing ∇_x Σ log_softmax(f(x))_y for one fixed random batch (forward + backward): x̂0 uniform
    in [−1, 1] for an off-the-shelf guide f(x), with its ReLUs as Softplus(``softplus_beta``) unless None; or, with
    ``noise_aware``, x_t ~ N(0, I) at timesteps spread over [0, 1000) for a noise-aware guide f(x_t, t)."""
    generator = torch.Generator(device).manual_seed(0)
    if noise_aware:
        x = torch.randn(batch, 3, 32, 32, device=device, generator=generator)
        t = torch.arange(batch, device=device) * 997 % 1000
    else:
        x = torch.rand(batch, 3, 32, 32, device=device, generator=generator) * 2 - 1
    y = torch.arange(batch, device=device) % 10
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def gradient():
        x_in = x.detach().requires_grad_(True)
        swap = SoftplusForReLU(softplus_beta) if softplus_beta is not None else contextlib.nullcontext()
        with autocast, swap:
            logits = module(x_in, t) if noise_aware else module(x_in)
            logp = torch.log_softmax(logits.float(), 1).gather(1, y[:, None]).sum()
        return torch.autograd.grad(logp, x_in)[0]

    return gradient


def time_gradient(name: str, gradient, *, batch: int, repeats: int, device: torch.device) -> dict:
    """Milliseconds of one call of ``gradient`` (forward + backward), median of ``repeats`` after a warm-up call."""
    gradient()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        gradient()
        _sync(device)
        times.append(time.perf_counter() - started)
    return dict(section="gradient", variant=name, batch=batch, ms=1000 * float(np.median(times)))


def check_row(variant: str, compiled_gradient, eager_gradient) -> dict:
    """The compiled gradient against the eager one in exact fp32 (cuDNN's TF32, on by default, is turned off: the
    1e-4 bound is for fp32 rounding): the largest error relative to the gradient's largest entry, over the batch and
    per image. With ReLU the gradient jumps where a pre-activation crosses 0, so an image whose pre-activation sits
    within rounding of 0 can exceed the bound without an error; its share of images is reported beside it."""
    with full_fp32():
        a, b = compiled_gradient(), eager_gradient()
    per_image = (a - b).flatten(1).abs().amax(1) / b.flatten(1).abs().amax(1)
    return dict(section="check", variant=variant, batch=len(a),
                relative_error=float((a - b).abs().max() / b.abs().max()),
                images_within_bound=float((per_image < CHECK_BOUND).float().mean()), bound=CHECK_BOUND)


def noise_aware_rows(args, base: dict, device: torch.device) -> list[dict]:
    """ADM-G as the study runs it (a noise-aware classifier on x_t, log softmax, scale 0.5): sample() with the guide
    eager and compiled, the gradient alone (through the whole encoder, no autocast and bf16) and the check."""
    settings = SampleSettings(**base, classifier=str(args.noise_aware), classifier_scale=0.5, objective="log_softmax",
                              guidance_rule="score")
    with eager_guide():
        rows = [bench_sample("ADM-G noise-aware s=0.5, guide eager", settings, repeats=args.repeats, device=device)]
    rows.append(bench_sample("ADM-G noise-aware s=0.5 (default)", settings, repeats=args.repeats, device=device))
    eager, _ = load_guidance_classifier(str(args.noise_aware), device=device)
    compiled = fast_module(copy.deepcopy(eager), fast=device.type == "cuda")

    def gradient_of(module, bf16: bool):
        return guide_gradient(module, batch=args.batch, bf16=bf16, device=device, noise_aware=True)

    for name, module in (("eager", eager), ("compiled", compiled)):
        for bf16 in (True, False):
            rows.append(time_gradient(f"noise-aware {name}, {'bf16' if bf16 else 'fp32'}", gradient_of(module, bf16),
                                      batch=args.batch, repeats=max(args.repeats, 5), device=device))
    rows.append(check_row("noise-aware compiled vs eager, fp32", gradient_of(compiled, False),
                          gradient_of(eager, False)))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="DDPM steps per timed sample() call")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (the median is reported)")
    add_qkv_layouts_argument(parser, default="")
    parser.add_argument("--noise-aware", type=Path, default=None,
                        help="a noise-aware classifier (a `diffguide train-classifier` model folder, e.g. the guidance "
                             "study's clf_base): adds ADM-G rows")
    parser.add_argument("--layouts-only", action="store_true",
                        help="only the --qkv-layouts rows (the layout rule's measurement, a few minutes on the H200)")
    parser.add_argument("--tiny", action="store_true", help="batch 4, 2 steps, 1 repeat: a CPU check of the script")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = parser.parse_args(argv)
    if args.layouts_only and not args.qkv_layouts:
        parser.error("--layouts-only: needs --qkv-layouts (e.g. contiguous,strided)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.batch, args.steps, args.repeats = 4, 2, 1
    base = dict(model=str(args.model), num_samples=args.batch, batch_size=args.batch, seed=0, labels="uniform",
                sampler="ddpm", steps=str(args.steps), bf16=device.type == "cuda", variance="fixed_small",
                on_nonfinite="zero")
    guided = dict(base, x0_classifier=f"cifar-resnet:{args.resnet}", **ELUCD)
    rows = layout_rows(args, base, guided, device)
    if not args.layouts_only:
        rows = general_rows(args, base, guided, device) + rows
    return print_and_write(args, rows, device)


def layout_rows(args, base: dict, guided: dict, device: torch.device) -> list[dict]:
    """The unguided and the β = 10 ``sample`` rows in each of ``--qkv-layouts`` (the studies' layout rule)."""
    rows = []
    for layout_name in args.qkv_layouts:
        with layout(layout_name):
            rows += [bench_sample(f"unguided, {layout_name} q/k/v", SampleSettings(**base), repeats=args.repeats,
                                  device=device),
                     bench_sample(f"EluCD ResNet-32 β=10, {layout_name} q/k/v",
                                  SampleSettings(**guided, softplus_beta=10.0), repeats=args.repeats, device=device)]
    return rows


def general_rows(args, base: dict, guided: dict, device: torch.device) -> list[dict]:
    """``sample`` (unguided, EluCD eager / compiled guide, ReLU), ``gradient`` and ``check`` rows, and with
    ``--noise-aware`` the ADM-G rows."""
    rows = [bench_sample("unguided", SampleSettings(**base), repeats=args.repeats, device=device)]
    with eager_guide():
        rows.append(bench_sample("EluCD ResNet-32 β=10, guide eager", SampleSettings(**guided, softplus_beta=10.0),
                                 repeats=args.repeats, device=device))
    rows += [bench_sample("EluCD ResNet-32 β=10 (default)", SampleSettings(**guided, softplus_beta=10.0),
                          repeats=args.repeats, device=device),
             bench_sample("EluCD ResNet-32, ReLU (default)", SampleSettings(**guided, softplus_beta=None),
                          repeats=args.repeats, device=device)]
    eager, _ = load_guidance_classifier(f"cifar-resnet:{args.resnet}", device=device)
    compiled = fast_module(copy.deepcopy(eager), fast=device.type == "cuda")  # (fast_module makes it channels-last)
    for module_name, module in (("eager", eager), ("compiled", compiled)):
        for bf16 in (True, False):
            for beta in (10.0, None):
                name = f"{module_name}, {'bf16' if bf16 else 'fp32'}, {'Softplus β=10' if beta else 'ReLU'}"
                gradient = guide_gradient(module, batch=args.batch, bf16=bf16, softplus_beta=beta, device=device)
                rows.append(time_gradient(name, gradient, batch=args.batch, repeats=max(args.repeats, 5),
                                          device=device))
    for beta in (10.0, 3.0, None):  # the compiled guide computes the eager gradient (fp32; tests/unit/test_accel.py)
        gradients = (guide_gradient(m, batch=args.batch, bf16=False, softplus_beta=beta, device=device)
                     for m in (compiled, eager))
        rows.append(check_row(f"compiled vs eager, fp32, β={beta}", *gradients))
    if args.noise_aware is not None:
        rows += noise_aware_rows(args, base, device)
    return rows


def print_and_write(args, rows: list[dict], device: torch.device) -> dict:
    """The table (sample rows as a ratio to the first, unguided row) and the JSON at ``--out``."""
    unguided = rows[0]["ms_per_step"]
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"batch {args.batch}")
    print(f"{'section':<9} {'variant':<38} {'ms':>9} {'vs unguided':>12}")
    for row in rows:
        if row["section"] == "check":
            print(f"{row['section']:<9} {row['variant']:<38} {row['relative_error']:>9.2g} relative (bound "
                  f"{row['bound']:g}; {100 * row['images_within_bound']:.1f}% of images within it)")
            continue
        ms = row.get("ms_per_step", row.get("ms"))
        ratio = f"{ms / unguided:.2f}x" if row["section"] == "sample" else ""
        print(f"{row['section']:<9} {row['variant']:<38} {ms:>9.2f} {ratio:>12}")
    result = {"benchmark": "guided_step", "device": str(device), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
