"""CIFAR-scale throughput, eager against the fast path, side by side in one process: training, sampling, FID features.

- train: the 17.2M-parameter CIFAR-10 configuration of the base model (``--model``'s ``train_config.json``; random
  uint8 images of CIFAR's shape, so no data set is needed), steps/s and images/s over the logged intervals after the
  first (which holds compilation), at batch 128 and ``--big-batch``.
- sample: that model (its weights from ``--model`` when given, else random), DDIM-50, CFG w = 1 with the learned null
  label, ``--num-samples`` images; images/s after a warm-up batch, and the warm-up (compile) time separately; each
  row's first images checked against exact fp32 (``CHECK_SAMPLES``: a fast row passes within 2x eager bf16's error).
- fid: the FID Inception network (``--inception``) on ``--num-images`` random 32x32 images, exact fp32 (TF32 off).

    python benchmarks/cifar_throughput.py --model ../shared/assets/diffusion/cifar10-cond-17m-v0 \
        --inception ../shared/assets/inception/inception-2015-12-05-fid-features.pt --out benchmarks/results/cifar_h200.json
    python benchmarks/cifar_throughput.py --model M --tiny --out /tmp/cifar.json      # a quick CPU check of the script

``--aligned`` adds a fast training row with the CFG-aligned loss (batch 128; a step forwards 256);
``--qkv-layouts contiguous,strided`` adds fast training (batch 128) and sampling rows with the attention layout used
before 2026-12-01 (SDPA's math kernel), side by side; ``--memory-formats channels_last,contiguous`` fast training
(batch 128) and sampling rows with the networks in each memory format; ``--train-settings strided/channels_last,
contiguous/contiguous`` just those layout/format pairs as fast training rows (``--big-batch 0``: no second batch);
``--compile-modes`` other torch.compile modes for sampling.

Prints a table per section and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from diffguide.accel import fast_module
from diffguide.checkpoints import load_network
from diffguide.guidance import ClassifierFree, Guidance
from diffguide.io import atomic_write_text
from diffguide.metrics.inception import full_fp32
from diffguide.sampling import generate
from diffguide.studies.cifar10.aligned_plan import ARMS
from diffguide.train import TrainConfig, train
from common import (CHECK_SAMPLES, CHECK_WORDS, MEMORY_FORMATS, QKV_LAYOUTS,  # (on sys.path)
                    add_compile_modes_argument, add_memory_formats_argument, add_qkv_layouts_argument, check_fields,
                    layout, memory_format)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


TINY_NET = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
            "num_head_channels": 32, "use_scale_shift_norm": True, "resblock_updown": True}


ALIGNED_LOSS = ARMS["aligned_w1"]["loss"]
"""The CFG-aligned loss of the aligned study's from-scratch arm (a step forwards [c̃, ∅]: twice the batch)."""


def bench_train(model_dir: Path, out: Path, *, batch: int, steps: int, interval: int, fast: bool, device,
                tiny: bool = False, loss: dict | None = None) -> dict:
    """Steps/s of the real training loop (``diffguide.train``) on random CIFAR-shaped data; ``loss``: a
    ``TrainConfig.loss`` (None: the model's own, the standard loss)."""
    data = json.loads((model_dir / "train_config.json").read_text())
    if loss is not None:
        data["loss"] = {**data.get("loss", {}), **loss}
    if tiny:
        data["net"]["adm_kwargs"] = TINY_NET
    data.update(steps=steps, log_every=interval, checkpoint_every=10**9, sample_every=0, samples_per_class=1,
                sample_steps=2)
    data["optim"]["batch_size"] = batch
    config = TrainConfig.from_dict(data)
    rng = np.random.default_rng(0)
    n = max(4 * batch, 2048)
    dataset = SimpleNamespace(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                              labels=np.arange(n) % 10, class_names=[f"c{k}" for k in range(10)])
    started = time.perf_counter()
    train(config, out, dataset=dataset, device=str(device), progress=False, fast=fast)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records[1:]]
    steps_per_s = float(np.median(rates))
    return dict(section="train", fast=fast, batch=batch, steps_per_s=steps_per_s, images_per_s=steps_per_s * batch,
                first_interval_s=interval / records[0]["steps_per_s"], wall_s=wall, loss=config.loss.kind)


def cfg_sampler(model_dir: Path | None, *, batch: int, fast: bool, device, compile_mode: str | None = None,
                bf16: bool = True):
    """``run(num_samples, seed)``: DDIM-50 with CFG w = 1 (one batched [cond, null] forward per step) of the model,
    labels k mod 10, at ``batch``; ``compile_mode``: the fast path's ``torch.compile`` mode (None: its default)."""
    net, config = load_network(model_dir, device=device)
    net = fast_module(net.eval().requires_grad_(False), fast=fast, mode=compile_mode)
    denoiser = config.denoiser(net, "ddim50")
    guidance = Guidance(cfg=ClassifierFree(w=1.0, null_label=config.extra["null_label"]))
    kwargs = dict(image_shape=(3, 32, 32), guidance=guidance, sampler="ddim", batch_size=batch, bf16=bf16,
                  progress=False, device=str(device))

    def run(num_samples: int, seed: int) -> np.ndarray:
        return generate(denoiser, num_samples=num_samples, labels=np.arange(num_samples) % 10, seed=seed,
                        **kwargs).images
    return run


def bench_sample(model_dir: Path | None, *, num_samples: int, batch: int, fast: bool, device,
                 compile_mode: str | None = None) -> tuple[dict, np.ndarray]:
    """(row: images/s of :func:`cfg_sampler`'s run after a warm-up batch, which holds compilation; its first
    CHECK_SAMPLES images)."""
    run = cfg_sampler(model_dir, batch=batch, fast=fast, device=device, compile_mode=compile_mode)
    started = time.perf_counter()
    run(batch, seed=1)  # warm-up: compilation
    _sync(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    images = run(num_samples, seed=0)
    _sync(device)
    seconds = time.perf_counter() - started
    return dict(section="sample", fast=fast, batch=batch, num_samples=num_samples, images_per_s=num_samples / seconds,
                seconds=seconds, warmup_s=warmup, compile_mode=(compile_mode or "default") if fast else None), \
        images[:CHECK_SAMPLES]


def mean_abs_levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a − b| of two uint8 image arrays, in levels: the sampling rows' check measure (common.check_fields). A
    fast path that computed another function (a wrong attention layout, an overwritten CUDA graph buffer) differs far
    more than bf16 rounding: on the CPU, the base model's eager bf16 lands 0.93 levels from fp32 and the same model
    with its output convolution scaled by 1.05 lands 18.1 levels (8 images, 2026-12-04)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def sample_reference(model_dir: Path | None, device, num_samples: int) -> tuple[np.ndarray, float]:
    """(the first CHECK_SAMPLES images of the timed runs in exact fp32, eager bf16's :func:`mean_abs_levels` to
    them), both sampled eager at batch CHECK_SAMPLES."""
    n = min(CHECK_SAMPLES, num_samples)
    with full_fp32():
        exact = cfg_sampler(model_dir, batch=n, fast=False, device=device, bf16=False)(n, seed=0)
    eager = cfg_sampler(model_dir, batch=n, fast=False, device=device)(n, seed=0)
    return exact, mean_abs_levels(eager, exact)


class _ChannelsLast(torch.nn.Module):
    """The Inception network with weights and input in channels-last memory (still exact fp32: cuDNN picks other
    fp32 algorithms, so features move in the last bits only — measured below against the default layout)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))


def bench_fid(inception: Path, *, num_images: int, batch: int, autotune: bool, device,
              channels_last: bool = False) -> dict:
    """Images/s of exact-fp32 FID features; ``autotune=False`` is the previous setting (no cuDNN autotuning);
    ``channels_last``: the network in channels-last memory (a candidate, not the default)."""
    import contextlib

    from diffguide.metrics import InceptionFeatures, inception as module

    images = np.random.default_rng(0).integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
    features = InceptionFeatures(inception, device=device, batch_size=batch)
    default_layout = features(images[:batch]) if channels_last else None
    if channels_last:
        features.net = _ChannelsLast(features.net)
    saved = module.cudnn_autotune
    if not autotune:
        module.cudnn_autotune = lambda enabled=True: contextlib.nullcontext()
    try:
        reference = features(images[:batch])
        _sync(device)
        started = time.perf_counter()
        out = features(images)
        _sync(device)
        seconds = time.perf_counter() - started
    finally:
        module.cudnn_autotune = saved
    row = dict(section="fid", fast=autotune, batch=batch, num_images=num_images, images_per_s=num_images / seconds,
               channels_last=channels_last,
               max_abs_feature_change_vs_first_pass=float(np.abs(out[:batch] - reference).max()))
    if channels_last:
        row["max_abs_feature_change_vs_default_layout"] = float(np.abs(out[:batch] - default_layout).max())
    return row


def train_settings(text: str) -> list[tuple[str, str]]:
    """An argparse type: comma-separated LAYOUT/FORMAT pairs of :data:`common.QKV_LAYOUTS` and
    :data:`common.MEMORY_FORMATS`."""
    pairs = [tuple(item.split("/")) for item in text.split(",")]
    if not pairs or any(len(p) != 2 or p[0] not in QKV_LAYOUTS or p[1] not in MEMORY_FORMATS for p in pairs):
        raise argparse.ArgumentTypeError(f"expected comma-separated LAYOUT/FORMAT pairs with LAYOUT one of "
                                         f"{','.join(QKV_LAYOUTS)} and FORMAT one of {','.join(MEMORY_FORMATS)}, "
                                         f"got {text!r}")
    return pairs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the CIFAR-10 base model's release folder")
    parser.add_argument("--inception", type=Path, help="FID Inception TorchScript file (omit to skip the fid section)")
    parser.add_argument("--sections", default="train,sample,fid", help="comma-separated subset of train,sample,fid")
    parser.add_argument("--train-steps", type=int, default=600, help="training steps per variant")
    parser.add_argument("--big-batch", type=int, default=512, help="the second training batch size (0: no such row)")
    parser.add_argument("--num-samples", type=int, default=10_000, help="images per sampling variant")
    parser.add_argument("--sample-batch", type=int, default=2500, help="sampling batch size of the fast path")
    parser.add_argument("--num-images", type=int, default=20_000, help="images per FID-feature variant")
    parser.add_argument("--fast-only", action="store_true", help="skip the eager (previous) variants")
    parser.add_argument("--aligned", action="store_true", help="add a fast training row at batch 128 with the "
                        "CFG-aligned loss (w_train = 1: each step forwards [c̃, ∅], twice the batch)")
    add_qkv_layouts_argument(parser)
    add_memory_formats_argument(parser)
    parser.add_argument("--train-settings", type=train_settings, default=None, metavar="LAYOUT/FORMAT,...",
                        help="the fast batch-128 training rows, one per q/k/v layout/memory format pair (e.g. "
                             "'strided/channels_last,contiguous/contiguous'), instead of every --qkv-layouts x "
                             "--memory-formats combination; the first pair also runs the other training rows")
    add_compile_modes_argument(parser)  # the sampling section's
    parser.add_argument("--tiny", action="store_true", help="a tiny network, a few steps and images: a CPU check of "
                        "the script (needs the train section)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.train_steps, args.num_samples, args.sample_batch, args.num_images = 6, 8, 4, 8
        args.big_batch = 16 if args.big_batch else 0
    sections = set(args.sections.split(","))
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="cifar-throughput-"))
    if "train" in sections:
        interval = max(args.train_steps // 6, 1)
        small = 8 if args.tiny else 128
        settings = args.train_settings or [(name, f) for f in args.memory_formats for name in args.qkv_layouts]
        qkv, fmt = settings[0]
        variants = ((small, False, qkv, fmt, None), *((small, True, name, f, None) for name, f in settings),
                    *(((args.big_batch, True, qkv, fmt, None),) if args.big_batch else ()))
        if args.aligned:
            variants += ((small, True, qkv, fmt, ALIGNED_LOSS),)
        for batch, fast, layout_name, format_name, loss in (v for v in variants if v[1] or not args.fast_only):
            with layout(layout_name), memory_format(format_name):
                rows.append(bench_train(args.model, scratch / f"train-{len(rows)}", batch=batch,
                                        steps=args.train_steps, interval=interval,
                                        fast=fast and device.type == "cuda", device=device, tiny=args.tiny, loss=loss))
            rows[-1].update(qkv_layout=layout_name, memory_format=format_name if rows[-1]["fast"] else "eager")
            print(rows[-1], flush=True)
    if "sample" in sections:
        first = args.qkv_layouts[0]
        fmt = args.memory_formats[0]
        variants = ((256 if not args.tiny else 4, False, None, first, fmt), (args.sample_batch, False, None, first, fmt),
                    *((args.sample_batch, True, mode, name, f) for mode in args.compile_modes
                      for f in args.memory_formats for name in args.qkv_layouts))
        model = scratch / "train-0" / "model" if args.tiny else args.model  # --tiny: the tiny net just trained
        with layout(first):
            exact, eager_levels = sample_reference(model, device, args.num_samples)
        for batch, fast, mode, layout_name, format_name in (v for v in variants if v[1] or not args.fast_only):
            with layout(layout_name), memory_format(format_name):
                row, images = bench_sample(model, num_samples=args.num_samples, batch=batch,
                                           fast=fast and device.type == "cuda", device=device, compile_mode=mode)
            levels = mean_abs_levels(images, exact)
            rows.append(dict(row, qkv_layout=layout_name, memory_format=format_name if row["fast"] else "eager",
                             **check_fields(levels, eager_levels, row["fast"], "levels")))
            print(rows[-1], flush=True)
    if "fid" in sections and args.inception:
        variants = (((64, False, False), (64, True, False), (250, True, False), (500, True, False), (250, True, True),
                     (500, True, True)) if not args.tiny else ((4, False, False), (4, True, False), (4, True, True)))
        for batch, autotune, channels_last in (v for v in variants if v[1] or not args.fast_only):
            rows.append(bench_fid(args.inception, num_images=args.num_images, batch=batch, autotune=autotune,
                                  device=device, channels_last=channels_last))
            print(rows[-1], flush=True)
    result = dict(benchmark="cifar_throughput", device=str(device), torch=torch.__version__,
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", rows=rows)
    print(f"\n{result['device_name']}, torch {torch.__version__}")
    print(f"{'section':<7} {'fast':<5} {'batch':>6} {'images/s':>10}  notes")
    for r in rows:
        notes = {"train": lambda: f"{r['steps_per_s']:.1f} steps/s, first interval {r['first_interval_s']:.0f} s"
                          f", {r['qkv_layout']} q/k/v, {r['memory_format']}, {r['loss']} loss",
                 "sample": lambda: f"{r['num_samples']} images in {r['seconds']:.1f} s, warm-up {r['warmup_s']:.0f} s"
                                   + (f", compile mode {r['compile_mode']}" if r.get("compile_mode") else "")
                                   + f", {r['qkv_layout']} q/k/v, {r['memory_format']}, {r['check_levels_vs_fp32']:.2f}"
                                   " levels from fp32" + (f" ({CHECK_WORDS[r['check_passed']]})"
                                                          if r["check_passed"] is not None else ""),
                 "fid": lambda: f"{r['num_images']} images" + (", channels-last, features within "
                                  f"{r['max_abs_feature_change_vs_default_layout']:.2g} of the default layout"
                                  if r.get("channels_last") else "")}[r["section"]]()
        print(f"{r['section']:<7} {str(r.get('fast', '-')):<5} {r['batch']:>6} {r['images_per_s']:>10.1f}  {notes}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
