"""Seconds of scoring one CIFAR-10 study unit, the old path against the new, side by side in one process.

What a unit of ``diffguide.studies.cifar10`` does after sampling, stage by stage:

- features: the Inception network on ``--num-images`` random uint8 images; old: the network loaded again for the unit
  (as run_sample did), new: an extractor kept across units (only the extraction is timed);
- FID statistics: μ, Σ of the features (the same code on both paths);
- FID root: tr (Σ₁Σ₂)^{1/2}; old: ``scipy.linalg.sqrtm`` on the CPU, new: two symmetric eigendecompositions in float64
  on ``--device`` (:func:`diffguide.metrics.fid.trace_sqrt_product`);
- KID: 100 subsets of 1000; old: NumPy float64 on the CPU, new: torch float64 on ``--device`` (NumPy on the CPU);
- PRDC: old: on the CPU with the reference's k-NN radii computed for every unit; new cold: on ``--device``, radii
  computed (the first unit of a process); new warm: radii kept on the reference (every later unit);
- judge (with ``--judge``, a CIFAR ResNet ``.th``): its predictions on the images; old: on the CPU (where a study
  with no device named ran it), new: on ``--device`` in exact fp32; and how many predictions the two differ in.

Features are random (a ReLU of correlated Gaussians, like pool3), ``--num-reference`` of them for the reference.
Without ``--inception`` a random TorchScript stand-in of the same input and output shapes times the features stage.

    python benchmarks/metrics_overhead.py --inception ../shared/assets/inception/inception-2015-12-05-fid-features.pt \
        --out benchmarks/results/metrics_overhead_h200.json                # the study's sizes (10k, 10k, 2048)
    python benchmarks/metrics_overhead.py --num-images 600 --num-reference 600 --feature-dim 256 --kid-subsets 5 \
        --kid-subset-size 200 --device cpu --out /tmp/metrics_overhead.json      # a quick CPU check of the script

Prints a table and writes JSON (atomically) to ``--out``; the values of each metric on both paths go with it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from diffguide.devices import resolve_device
from diffguide.io import atomic_write_text
from diffguide.metrics import InceptionFeatures, Reference
from diffguide.metrics.fid import feature_statistics, kernel_inception_distance, trace_sqrt_product
from diffguide.metrics.inception import NetworkIdentity
from diffguide.metrics.prdc import prdc
from diffguide.studies.cifar10.scoring import judge_predictions


class _StandIn(nn.Module):
    """[B, 3, 299, 299] -> [B, D]: a strided conv and a global average (random weights), a cheap stand-in."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, kernel_size=13, stride=13)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(on: torch.device, fn, *args, **kwargs):
    """(result, seconds) of one call, the device ``on`` synchronised before and after."""
    _sync(on)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    _sync(on)
    return result, time.perf_counter() - start


def pool3_like(n: int, dim: int, seed: int, mixing: np.ndarray) -> np.ndarray:
    """ReLU of correlated Gaussians [n, dim], float32 (the dtype the extractor returns)."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, dim)) @ mixing, 0).astype(np.float32)


def trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """The old path: tr of ``scipy.linalg.sqrtm(Σ₁Σ₂)`` (its real part, as pytorch-fid)."""
    return float(np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inception", help="the FID Inception TorchScript file (default: a random stand-in)")
    parser.add_argument("--device", default=None, help="default: CUDA when available")
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--num-reference", type=int, default=10_000)
    parser.add_argument("--feature-dim", type=int, default=2048, help="of the stand-in (and so of the features)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--judge", type=Path, help="a CIFAR ResNet .th file: time the judge stage too")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        network = args.inception
        if network is None:
            torch.manual_seed(0)
            network = str(Path(folder) / "stand_in.pt")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.jit.script(_StandIn(args.feature_dim).eval()).save(network)
        rows = measure(args, network, device)
    print(f"scoring one unit on {device}: {args.num_images} images, {args.num_reference} reference features")
    print(f"{'stage':<34}{'old s':>10}{'new s':>10}")
    for name, old, new in rows["table"]:
        print(f"{name:<34}{'' if old is None else f'{old:.3f}':>10}{'' if new is None else f'{new:.3f}':>10}")
    if "judge_predictions_differing" in rows["values"]:
        print(f"judge: {rows['values']['judge_predictions_differing']} of {args.num_images} predictions differ "
              "between the CPU and the device")
    atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}")


def measure(args, network: str, device: torch.device) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (args.num_images, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    extractor, load_s = timed(device, InceptionFeatures, network, device=device)
    _, first_s = timed(device, extractor, images)  # cuDNN autotuning and TorchScript warm-up: the first unit's cost
    features_real, extract_s = timed(device, extractor, images)
    dim = features_real.shape[1]
    mixing = np.random.default_rng(1).standard_normal((dim, dim)) / np.sqrt(dim)
    features = pool3_like(args.num_images, dim, 2, mixing)
    reference_features = pool3_like(args.num_reference, dim, 3, mixing)
    mu_ref, sigma_ref = feature_statistics(reference_features)
    reference = Reference(mu=mu_ref, sigma=sigma_ref, features=reference_features,
                          indices=np.arange(args.num_reference), count=args.num_reference,
                          network=NetworkIdentity("random", "0"), source="random",
                          image_shape=(args.image_size, args.image_size, 3))
    (mu, sigma), stats_s = timed(device, feature_statistics, features)
    root_old, root_old_s = timed(device, trace_sqrt_product_sqrtm, sigma, sigma_ref)
    root_new, root_new_s = timed(device, trace_sqrt_product, sigma, sigma_ref, device=device)
    kid = dict(num_subsets=args.kid_subsets, subset_size=args.kid_subset_size, seed=0)
    kid_old, kid_old_s = timed(device, kernel_inception_distance, features, reference_features, **kid)
    kid_device = None if device.type == "cpu" else device  # as evaluate_features: NumPy on the CPU
    kid_new, kid_new_s = timed(device, kernel_inception_distance, features, reference_features, device=kid_device,
                               **kid)
    chosen = features[np.sort(np.random.default_rng(0).choice(len(features), min(len(features), args.num_reference),
                                                              replace=False))]
    prdc_old, prdc_old_s = timed(device, prdc, reference_features, chosen, k=args.k)
    cold = lambda: prdc(reference.features_on(device), chosen, k=args.k, device=device,  # noqa: E731
                        real_radii=reference.real_radii(args.k, device))
    prdc_cold, prdc_cold_s = timed(device, cold)
    prdc_warm, prdc_warm_s = timed(device, cold)
    old_total = load_s + extract_s + stats_s + root_old_s + kid_old_s + prdc_old_s
    new_total = extract_s + stats_s + root_new_s + kid_new_s + prdc_warm_s
    table = [("features: load network", load_s, None), ("features: first extraction (warm-up)", first_s, None),
             ("features: extraction", extract_s, extract_s), ("FID: mu, Sigma", stats_s, stats_s),
             ("FID: tr sqrt(S1 S2)", root_old_s, root_new_s), ("KID", kid_old_s, kid_new_s),
             ("PRDC (new: radii computed)", prdc_old_s, prdc_cold_s), ("PRDC (new: radii kept)", prdc_old_s,
                                                                       prdc_warm_s),
             ("total per unit (new: warm)", old_total, new_total)]
    if args.judge is not None:  # the judge's classes on the same images, CPU (old) against the device (new)
        spec = f"cifar-resnet:{args.judge}"
        for where in (torch.device("cpu"), device):  # loading and warm-up, untimed
            judge_predictions(spec, images[:64], where)
        judge_old, judge_old_s = timed(device, judge_predictions, spec, images, torch.device("cpu"))
        judge_new, judge_new_s = timed(device, judge_predictions, spec, images, device)
        table.insert(-1, ("judge (ResNet) predictions", judge_old_s, judge_new_s))
        table[-1] = (table[-1][0], old_total + judge_old_s, new_total + judge_new_s)
        judge_values = {"judge_predictions_differing": int((judge_old != judge_new).sum())}
    else:
        judge_values = {}
    values = {**judge_values, "trace_sqrt_old": root_old, "trace_sqrt_new": root_new, "kid_old": kid_old,
              "kid_new": kid_new, "prdc_old": prdc_old.__dict__, "prdc_new_cold": prdc_cold.__dict__,
              "prdc_new_warm": prdc_warm.__dict__}
    environment = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                   "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "network": "stand-in" if args.inception is None else args.inception}
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": environment, "table": table, "values": values}


if __name__ == "__main__":
    main()
