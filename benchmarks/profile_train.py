"""Where a CIFAR-10 training step spends its time: torch.profiler over ``--steps`` steps of the real loop (after a
warm-up run of the same shapes), top operators by CUDA and by CPU time, and GPU-busy time against wall time.

    python benchmarks/profile_train.py --model ../shared/assets/diffusion/cifar10-cond-17m-v0 --batch 128
    DIFFGUIDE_COMPILE_MODE=default python benchmarks/profile_train.py --model M --ops aten::copy_

Under the default fast path one process of ``train`` replays CUDA graphs, which the profiler sees as graph launches,
not kernels; ``DIFFGUIDE_COMPILE_MODE=default`` profiles the same compiled kernels launched one by one. ``--ops``
adds, for each named operator, its calls grouped by input shapes and by the Python stack that made them (for a
compiled graph: the line of inductor's generated wrapper), to say which copies and conversions a step pays for.
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
from torch.profiler import ProfilerActivity, profile

from diffguide.train import TrainConfig, train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a release folder with train_config.json")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eager", action="store_true", help="profile the eager loop instead of the fast path")
    parser.add_argument("--ops", default="", help="comma-separated operator names (e.g. aten::copy_) to break down "
                                                  "by input shapes and by stack")
    args = parser.parse_args(argv)
    data = json.loads((args.model / "train_config.json").read_text())
    data.update(steps=args.steps, log_every=args.steps, checkpoint_every=10**9, sample_every=0, samples_per_class=1,
                sample_steps=2)
    data["optim"]["batch_size"] = args.batch
    config = TrainConfig.from_dict(data)
    rng = np.random.default_rng(0)
    n = 4 * args.batch
    dataset = SimpleNamespace(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 10,
                              class_names=[f"c{k}" for k in range(10)])
    fast = False if args.eager else None
    with tempfile.TemporaryDirectory() as out:
        train(config, Path(out) / "warm", dataset=dataset, progress=False, fast=fast)  # compilation
        torch.cuda.synchronize()
        ops = [name for name in args.ops.split(",") if name]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=bool(ops),
                     with_stack=bool(ops)) as prof:
            started = time.perf_counter()
            train(config, Path(out) / "run", dataset=dataset, progress=False, fast=fast)
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
    events = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in events  # kernels only: an operator's own count repeats them
                     if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    print(f"wall {wall:.2f} s for {args.steps} steps (incl. end-of-run samples and release); GPU busy {cuda_total:.2f} s")
    print(events.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    for grouped, title in ((prof.key_averages(group_by_input_shape=True), "input shapes"),
                           (prof.key_averages(group_by_stack_n=4), "stack")):
        for name in ops:
            rows = sorted((e for e in grouped if e.key == name), key=lambda e: -e.device_time_total)[:12]
            print(f"\n{name} by {title} ({sum(e.count for e in rows)} calls in the top rows)")
            for e in rows:
                where = e.input_shapes if title == "input shapes" else " <- ".join(e.stack[:4])
                print(f"  {e.count:6d} calls  {e.device_time_total / 1e3:9.2f} ms  {where}")


if __name__ == "__main__":
    main()
