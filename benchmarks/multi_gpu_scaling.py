"""Scaling over several GPUs: ``diffguide sample`` and ``diffguide train`` under torchrun at 1, 2, 4, 8 processes.

For each process count N:
- sampling: the model's DDIM-50, CFG w = ``--cfg-w`` run of ``--num-samples`` images; wall time, images/s, scaling
  efficiency against N = 1, and whether samples.npz is byte-identical to N = 1's (max |Δ| in grey levels if not);
- training: ``--train-steps`` steps of the model's own train_config.json on ``--data`` at the global batch
  ``--batch-size`` (fixed: each process takes batch/N) and at ``--batch-size``·N (scaled); steps/s from summary.json.
Then a sampling run on the largest N is stopped mid-way (SIGTERM after ``--kill-after`` s) and resumed on 1
process (its npz must equal the uninterrupted one), and the largest N's training run is continued on 1 process.

    python benchmarks/multi_gpu_scaling.py --model PATH/cifar10-cond-17m-v0 --data cifar10-jpeg-q75.tar.gz \
        --gpus 1,2,4,8 --out benchmarks/results/multi_gpu_h200.json
    python benchmarks/multi_gpu_scaling.py --model M --data D --gpus 1,2 --tiny --out /tmp/scaling.json   # CPU, gloo

Prints a table and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diffguide.io import atomic_write_text


def torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "diffguide.cli", *args]


def sample_args(args, out: Path) -> list[str]:
    return ["sample", "--model", str(args.model), "--out", str(out), "--num-samples", str(args.num_samples),
            "--batch-size", str(args.sample_batch), "--sampler", "ddim", "--steps", args.steps,
            "--cfg-w", str(args.cfg_w), "--labels", "uniform", "--seed", "0", *(["--bf16"] if args.bf16 else []),
            *(["--device", args.device] if args.device else [])]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(a: Path, b: Path) -> dict:
    """Byte identity of two samples.npz, and the largest grey-level difference of their images."""
    with np.load(a) as x, np.load(b) as y:
        diff = int(np.abs(x["arr_0"].astype(np.int16) - y["arr_0"].astype(np.int16)).max())
    return {"byte_identical": digest(a) == digest(b), "max_grey_level_difference": diff}


def bench_sampling(args, n: int, work: Path) -> dict:
    out = work / f"sample-{n}"
    started = time.perf_counter()
    subprocess.run(torchrun(n, *sample_args(args, out)), check=True)
    seconds = time.perf_counter() - started
    return {"section": "sample", "processes": n, "seconds": seconds, "images_per_s": args.num_samples / seconds,
            "npz": str(out / "samples.npz")}


def bench_training(args, n: int, batch: int, work: Path, tag: str) -> dict:
    out = work / f"train-{tag}-{n}"
    config = json.loads((args.model / "train_config.json").read_text())
    config.update(steps=args.train_steps, log_every=max(args.train_steps // 4, 1), checkpoint_every=args.train_steps,
                  sample_every=0, samples_per_class=1, sample_steps=2)
    config["optim"]["batch_size"] = batch
    config["data"].update(source=str(args.data), split="train")
    if args.tiny:
        config["net"]["adm_kwargs"] = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "attention_resolutions": [], "use_scale_shift_norm": True}
        config["data"]["limit"] = 256
    config_path = work / f"train-{tag}-{n}.json"
    config_path.write_text(json.dumps(config))
    subprocess.run(torchrun(n, "train", "--config", str(config_path), "--out", str(out), "--no-progress",
                            *(["--device", args.device] if args.device else [])), check=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rate = float(np.median([r["steps_per_s"] for r in records[1:]] or [records[0]["steps_per_s"]]))
    return {"section": f"train ({tag} batch)", "processes": n, "global_batch": batch, "steps_per_s": rate,
            "images_per_s": rate * batch, "out": str(out)}


def resume_training_on_one(args, n: int, work: Path) -> dict:
    """The fixed-batch run of n processes continued on 1 process to twice its steps (a checkpoint of N resumes on M)."""
    out, config_path = work / f"train-fixed-{n}", work / f"train-fixed-{n}.json"
    config = json.loads(config_path.read_text())
    config["steps"] = 2 * args.train_steps
    longer = work / f"train-fixed-{n}-resume.json"
    longer.write_text(json.dumps(config))
    subprocess.run(torchrun(1, "train", "--config", str(longer), "--out", str(out), "--no-progress",
                            *(["--device", args.device] if args.device else [])), check=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"section": "train resume", "processes": f"{n} -> 1", "steps": summary["steps"],
            "resumed_to_the_end": summary["steps"] == 2 * args.train_steps}


def kill_and_resume(args, n: int, work: Path, reference: Path) -> dict:
    """Sampling on n processes stopped after --kill-after s, resumed on 1 process: the same npz as uninterrupted."""
    out = work / f"killed-{n}"
    proc = subprocess.Popen(torchrun(n, *sample_args(args, out)), start_new_session=True)
    time.sleep(args.kill_after)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    shards = len(list((out / "shards").glob("*.npz"))) if (out / "shards").exists() else 0
    subprocess.run(torchrun(1, *sample_args(args, out), "--resume"), check=True)
    return {"section": "kill and resume", "processes": f"{n} -> 1", "shards_before_kill": shards,
            **compare(out / "samples.npz", reference)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a class-conditional release folder with a null "
                        "label and its train_config.json (the CIFAR-10 base model)")
    parser.add_argument("--data", type=Path, required=True, help="the training data (CIFAR-10 JPEG tarball)")
    parser.add_argument("--gpus", default="1,2,4,8", help="comma-separated process counts")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--sample-batch", type=int, default=1250, help="per-shard batch (shards are spread over ranks)")
    parser.add_argument("--steps", default="ddim50")
    parser.add_argument("--cfg-w", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", default=True)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128, help="global training batch at N = 1")
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds before the sampling run is stopped")
    parser.add_argument("--device", default=None, help="'cpu' for a gloo check of the script")
    parser.add_argument("--tiny", action="store_true", help="tiny counts and network: a CPU check (use --device cpu)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.gpus.split(",")]
    if args.tiny:
        args.num_samples, args.sample_batch, args.steps, args.train_steps, args.batch_size = 8, 2, "ddim4", 4, 8
        args.bf16, args.kill_after = False, 4.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        for n in counts:
            rows.append(bench_sampling(args, n, work))
        base = rows[0]
        for row in rows:
            row["efficiency"] = row["images_per_s"] / (base["images_per_s"] * row["processes"])
            row.update(compare(Path(row.pop("npz")), work / f"sample-{counts[0]}" / "samples.npz"))
        for n in counts:
            rows.append(bench_training(args, n, args.batch_size, work, "fixed"))
            rows.append(bench_training(args, n, args.batch_size * n, work, "scaled"))
        rows.append(kill_and_resume(args, counts[-1], work, work / f"sample-{counts[0]}" / "samples.npz"))
        rows.append(resume_training_on_one(args, counts[-1], work))
    result = {"benchmark": "multi_gpu_scaling", "counts": counts, "num_samples": args.num_samples,
              "steps": args.steps, "rows": rows}
    print(f"{'section':<22} {'procs':>6} {'images/s':>10} {'efficiency':>10}  identical to N=1")
    for r in rows:
        same = "-" if "byte_identical" not in r else f"{r['byte_identical']} (max Δ {r['max_grey_level_difference']})"
        if "resumed_to_the_end" in r:
            same = f"resumed to step {r['steps']}: {r['resumed_to_the_end']}"
        if "shards_before_kill" in r:
            same += f", {r['shards_before_kill']} shards done at the kill"
        eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
        ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"
        print(f"{r['section']:<22} {str(r['processes']):>6} {ips:>10} {eff:>10}  {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
