"""ADM-128 guided sampling: guided-diffusion's own ``p_sample`` against diffguide's DDPM, same weights, same GPU, one run.

guided-diffusion runs from the checkout you pass (``--guided-diffusion``, a clone of openai/guided-diffusion; nothing
of it is copied here) with its fp16 path (``convert_to_fp16``), as its ``classifier_sample.py`` does. diffguide loads
the SAME random weights (guided-diffusion's state dicts, its zero-initialised layers drawn at random too:
:func:`random_output_layers`) into its own ``UNetModel`` / ``EncoderUNetModel`` and runs
bf16 autocast, eager and on the fast path (:mod:`diffguide.accel`). 250 respaced steps; the median of ``--measure``
timed steps after ``--warmup`` (compilation happens in the warm-up and is reported apart).

Rows: batch 64 and 16 × {no guidance, ADM-G noise-aware classifier on x_t (scale 1), and for diffguide an
off-the-shelf torchvision ResNet-101 on x̂0 (EluCD, random weights)}.

    python benchmarks/adm_vs_guided_diffusion.py --guided-diffusion /path/to/guided-diffusion \
        --out benchmarks/results/adm128_vs_guided_diffusion_h200.json

``--qkv-layouts contiguous,strided`` adds fast rows with the attention layout used before 2026-12-01 (SDPA's math
kernel: float32 batched matmuls, a materialised softmax), side by side; ``--memory-formats channels_last,contiguous``
fast rows with the networks in each memory format, ``--compile-modes default,max-autotune-no-cudagraphs`` fast rows
compiled in each torch.compile mode (each variant compiles fresh copies of the networks). A batch's fast variant
compiles for about 4 minutes (the UNet, the ADM-G pair, the ResNet-101 pair): to fit two variants into a 10-minute
command, time one batch a call (``--batches 16``). The JSON is written after every row, so a run cut short keeps what
it finished; a variant that fails (a compile mode that cannot run a guided step, out of memory) is recorded as a row
with its ``error`` and the run goes on.

Every diffguide row also checks what it computed: after the timing, the same networks and guidance run the last
``CHECK_STEPS`` steps of the 250-step grid (t ≤ 28, where x̂0 ≈ x_t: high-noise steps would amplify ε̂'s rounding
by 1/sqrt(ᾱ) into an x̂0 that clipping then hides) from fresh noise at the row's batch, and the first
``CHECK_SAMPLES`` samples are compared with the same run in exact fp32 (max error relative to the largest entry);
a fast row passes when its error is at most ``CHECK_SLACK`` (2) times eager bf16's (the bound and why:
``common.CHECK_SLACK``). A variant that
computes another function (a wrong attention layout, CUDA graphs handing back an overwritten buffer) lands far
outside it: scaling the UNet's output convolution by 1.05 fails it (a CPU check of this script with tiny networks).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffguide import ClassifierGuidance, Guidance, SeededNoise, ddpm
from diffguide.accel import fast_module
from diffguide.checkpoints import NetworkConfig
from diffguide.io import atomic_write_text
from diffguide.metrics.inception import full_fp32
from diffguide.nets import EncoderUNetModel, UNetModel
from common import (CHECK_SAMPLES, CHECK_WORDS, add_compile_modes_argument,  # (on sys.path)
                    add_memory_formats_argument, add_qkv_layouts_argument, check_fields, layout, memory_format)

ADM128 = dict(image_size=128, class_cond=True, learn_sigma=True, num_channels=256, num_res_blocks=2, channel_mult="",
              num_heads=4, num_head_channels=-1, num_heads_upsample=-1, attention_resolutions="32,16,8", dropout=0.0,
              use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=True, use_fp16=True,
              use_new_attention_order=False)
CLASSIFIER128 = dict(image_size=128, classifier_use_fp16=True, classifier_width=128, classifier_depth=2,
                     classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                     classifier_resblock_updown=True, classifier_pool="attention")


CHECK_STEPS = 8


class _Stop(Exception):
    pass


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def _median_step(step_once, warmup: int, measure: int) -> tuple[float, float]:
    """(median seconds per step, seconds of the warm-up steps) of ``step_once()`` (which synchronises)."""
    started = time.perf_counter()
    for _ in range(warmup):
        step_once()
    warm = time.perf_counter() - started
    times = []
    for _ in range(measure):
        t0 = time.perf_counter()
        step_once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), warm


def random_output_layers(net: nn.Module) -> nn.Module:
    """``net`` with its zero-initialised layers (guided-diffusion zeroes every residual branch's and the output's last
    convolution; a trained network's are not zero) given PyTorch's default random init: the same cost, but the network
    now computes a function of its input, which the x̂0 check needs (with zero layers ε̂ ≡ 0 whatever the code)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not module.weight.any():
            module.reset_parameters()
    return net


def guided_diffusion_rows(gd_path: Path, batch: int, warmup: int, measure: int, device):
    """guided-diffusion's p_sample at batch ``batch``, unguided and with its cond_fn; returns rows and state dicts."""
    sys.path.insert(0, str(gd_path))
    from guided_diffusion.script_util import create_classifier, create_gaussian_diffusion, create_model

    torch.manual_seed(0)
    model = random_output_layers(create_model(**ADM128)).to(device)
    classifier = random_output_layers(create_classifier(**CLASSIFIER128)).to(device)
    states = {k: v.detach().clone() for k, v in model.state_dict().items()}, \
        {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    model.convert_to_fp16()
    classifier.convert_to_fp16()
    model.eval()
    classifier.eval()
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                          timestep_respacing="250")
    y = torch.randint(0, 1000, (batch,), device=device)

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(x)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * 1.0

    rows = []
    for guided in (False, True):
        x = torch.randn(batch, 3, 128, 128, device=device)
        state = {"i": 249}

        def step_once():
            t = torch.full((batch,), state["i"], device=device, dtype=torch.long)
            with torch.no_grad():
                diffusion.p_sample(model, x, t, clip_denoised=True, cond_fn=cond_fn if guided else None,
                                   model_kwargs={"y": y})
            state["i"] -= 1
            torch.cuda.synchronize()

        seconds, warm = _median_step(step_once, warmup, measure)
        rows.append(dict(code="guided-diffusion fp16", batch=batch, guidance="ADM-G" if guided else "none",
                         ms_per_step=seconds * 1e3, images_per_s=batch / (seconds * 250), warmup_s=warm))
        print(rows[-1], flush=True)
    return rows, states


def diffguide_rows(states, batch: int, warmup: int, measure: int, device, resnet101: bool,
                   qkv_layouts=("contiguous",), memory_formats=("contiguous",), compile_modes=(None,),
                   on_row=lambda rows: None):
    """diffguide's rows at ``batch``: eager, then each fast variant (compile mode × memory format × q/k/v layout)
    × guidance; ``on_row(rows)`` after every row. A variant that raises is a row with ``error`` (its first line)."""
    unet_kwargs = dict(NetworkConfig.from_preset("imagenet128").kwargs)
    classifier_kwargs = dict(NetworkConfig.from_preset("imagenet128-classifier").kwargs)
    with torch.device(device):
        unet = UNetModel(**unet_kwargs).eval().requires_grad_(False)
        adm_classifier = EncoderUNetModel(**classifier_kwargs).eval().requires_grad_(False)
    unet.load_state_dict(states[0])
    adm_classifier.load_state_dict(states[1])
    guides = {"none": None, "ADM-G": ("x_t", adm_classifier)}
    if resnet101:
        from diffguide.classifiers import torchvision_classifier

        guides["ResNet-101 on x0"] = ("x0", torchvision_classifier("resnet101", weights=None, device=device)
                                      .with_preprocess(size=None))
    config = NetworkConfig(kind="UNetModel", kwargs=unet_kwargs, schedule="linear", learn_sigma=True)
    rows, reference = [], {}
    variants = ((False, qkv_layouts[0], "eager", None),
                *((True, q, f, m) for m in compile_modes for f in memory_formats for q in qkv_layouts))
    for fast, layout_name, format_name, mode in variants:
        code = (f"diffguide bf16 {'fast' if fast else 'eager'}" + ("" if layout_name == "contiguous" else " strided")
                + (" channels-last" if format_name == "channels_last" else "") + (f" {mode}" if mode else ""))
        common = dict(code=code, batch=batch, qkv_layout=layout_name, memory_format=format_name,
                      compile_mode=(mode or "default") if fast else None)

        def prepare(module):  # on the fast path a compiled copy: fast_module moves a module's memory format in place
            return fast_module(copy.deepcopy(module), fast=True, mode=mode) if fast else module

        with memory_format(format_name) if fast else contextlib.nullcontext():
            net = prepare(unet)
            prepared = {name: guide and (guide[0], prepare(guide[1])) for name, guide in guides.items()}
        denoiser = config.denoiser(net, "250")
        for name, guide in prepared.items():
            guidance = row_guidance(guide)  # on the fast path the guide is compiled, as diffguide.api.sample does
            noise = SeededNoise(0, range(batch), (3, 128, 128), device=device)
            labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
            stamps = []

            def callback(record):
                torch.cuda.synchronize()
                stamps.append(time.perf_counter())
                if len(stamps) == warmup + measure + 1:
                    raise _Stop

            started = time.perf_counter()
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16), layout(layout_name):
                    try:
                        ddpm(denoiser, noise, labels, guidance=guidance, callback=callback)
                    except _Stop:
                        pass
                    checked = check_samples(denoiser, guidance, labels, batch, device)
                if not fast:  # the exact fp32 run, and eager bf16's distance to it
                    with full_fp32(), layout(layout_name):
                        exact = check_samples(config.denoiser(unet, "250"), row_guidance(guides[name]), labels,
                                              min(batch, CHECK_SAMPLES), device)
                    reference[name] = exact, relative_error(checked, exact)
            except Exception as error:  # recorded, not fatal: the other variants still run
                rows.append(dict(common, guidance=name, error=f"{type(error).__name__}: {str(error).splitlines()[0]}"))
                print(rows[-1], flush=True)
                on_row(rows)
                torch.cuda.empty_cache()
                continue
            steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
            seconds = statistics.median(steps)
            check = {}
            if name in reference:  # (not when the eager row failed)
                exact, eager_error = reference[name]
                error = relative_error(checked, exact)
                check = check_fields(error, eager_error, fast, "error")
            rows.append(dict(common, guidance=name, ms_per_step=seconds * 1e3, images_per_s=batch / (seconds * 250),
                             warmup_s=stamps[warmup] - started, **check))
            print(rows[-1], flush=True)
            on_row(rows)
    return rows


def row_guidance(guide) -> Guidance | None:
    """The row's guidance from ``guide`` ((on, classifier) or None): ADM's condition_mean for ADM-G on x_t (the
    computation guided-diffusion runs), the score shift on x̂0."""
    if guide is None:
        return None
    on, module = guide
    return Guidance(classifier=ClassifierGuidance(module, on=on, scale=1.0), rule="mean" if on == "x_t" else "score")


def check_samples(denoiser, guidance, labels: torch.Tensor, n: int, device) -> torch.Tensor:
    """The first CHECK_SAMPLES samples of a run of the last CHECK_STEPS steps of ``denoiser``'s grid from fresh noise
    (seed 1) at batch ``n`` (the timed batch for a compiled network, which keeps its shape; fewer for the fp32 run)."""
    tail = sorted(int(t) for t in denoiser.schedule.timesteps)[:CHECK_STEPS]
    noise = SeededNoise(1, range(n), (3, 128, 128), device=device)
    return ddpm(denoiser, noise, labels[:n], guidance=guidance, steps=tail).samples[:CHECK_SAMPLES].float()


def with_speedups(rows: list[dict]) -> list[dict]:
    """``rows`` (in place), each with its images/s over guided-diffusion's at the same batch and guidance (None
    where guided-diffusion has no such row)."""
    baseline = {(r["batch"], r["guidance"]): r["images_per_s"] for r in rows if r["code"].startswith("guided")}
    for r in rows:
        base = baseline.get((r["batch"], r["guidance"]))
        r["speedup_vs_guided_diffusion"] = r["images_per_s"] / base if base and "error" not in r else None
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guided-diffusion", type=Path, required=True, help="a checkout of openai/guided-diffusion")
    parser.add_argument("--batches", default="64,16", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--measure", type=int, default=10, help="timed steps (the median is reported)")
    add_qkv_layouts_argument(parser)
    add_memory_formats_argument(parser)
    add_compile_modes_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = parser.parse_args(argv)
    if not (args.guided_diffusion / "guided_diffusion" / "script_util.py").is_file():
        raise SystemExit(f"--guided-diffusion: {args.guided_diffusion} is not a guided-diffusion checkout "
                         "(no guided_diffusion/script_util.py)")
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (guided-diffusion's fp16 path)")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows, batches = [], [int(b) for b in args.batches.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(done: int, batch_rows: list[dict]) -> dict:
        # after every row, so that a run cut short (a 10-minute command) keeps what it finished
        result = dict(benchmark="adm128_vs_guided_diffusion", device_name=torch.cuda.get_device_name(device),
                      torch=torch.__version__, steps=250, warmup=args.warmup, measure=args.measure,
                      batches_done=batches[:done], batches_left=batches[done:],
                      rows=with_speedups(rows + batch_rows))
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        return result

    for done, batch in enumerate(batches, 1):
        gd_rows, states = guided_diffusion_rows(args.guided_diffusion, batch, args.warmup, args.measure, device)
        rows += gd_rows
        write(done - 1, [])
        rows += diffguide_rows(states, batch, args.warmup, args.measure, device, resnet101=batch == 64,
                               qkv_layouts=args.qkv_layouts, memory_formats=args.memory_formats,
                               compile_modes=args.compile_modes, on_row=lambda batch_rows: write(done - 1, batch_rows))
        torch.cuda.empty_cache()
        result = write(done, [])
    print(f"\nADM-128, 250 steps, {result['device_name']}, torch {torch.__version__}")
    print(f"{'code':<64} {'batch':>5} {'guidance':<18} {'ms/step':>9} {'img/s':>7} {'vs GD':>6} {'warm-up s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['code']:<64} {r['batch']:>5} {r['guidance']:<18} failed: {r['error']}")
            continue
        speed = f"{r['speedup_vs_guided_diffusion']:.2f}" if r["speedup_vs_guided_diffusion"] else "-"
        check = ("" if "check_error_vs_fp32" not in r else f"  vs fp32 {r['check_error_vs_fp32']:.2g}"
                 + (f" {CHECK_WORDS[r['check_passed']]}" if r["check_passed"] is not None else ""))
        print(f"{r['code']:<64} {r['batch']:>5} {r['guidance']:<18} {r['ms_per_step']:>9.1f} "
              f"{r['images_per_s']:>7.3f} {speed:>6} {r['warmup_s']:>9.1f}{check}")
    return result


if __name__ == "__main__":
    main()
