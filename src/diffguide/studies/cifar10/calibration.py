"""The calibration unit of issue 13: binned ECE, smECE and ECE_t of one guiding classifier, with reliability
diagrams — every number and plot from :mod:`diffguide.calibration`.

- clean: the CIFAR-10 test images (an off-the-shelf guide as it guides, Softplus β = 3, and as trained, ReLU; a
  noise-aware guide at t = 0);
- trajectory: the ``trajectories`` unit's x̂0 (off-the-shelf) or x_t (noise-aware) at each kept step, labels = the
  conditioning labels: ECE along the sampling trajectory and pooled over its steps;
- noised (noise-aware only): ECE_t on the test images noised at each t (:func:`~diffguide.calibration.evaluate_calibration`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...calibration import calibration_summary, collect_logits, evaluate_calibration
from ...calibration.evaluate import ece_per_timestep, module_device
from ...calibration.plots import plot_ece_over_timesteps, plot_reliability_diagram
from ...calibration.metrics import ReliabilityBins
from ...io import atomic_write_text
from .guidance_plan import ISSUE_SOFTPLUS_BETA, SOFTPLUS_BETA
from .plan import Unit
from .runner import Study, environment, guide_source, result_path, trajectory_path

__all__ = ["AtTimestep", "guide_module", "image_batches", "trajectory_calibration", "clean_calibration",
           "run_calibration", "SOFTPLUS_BETA"]

NUM_BINS, BATCH = 10, 500




class AtTimestep(nn.Module):
    """A noise-aware classifier f(x, t) seen as a classifier of clean images: f(x, t) at one fixed t."""

    def __init__(self, classifier: nn.Module, t: int):
        super().__init__()
        self.classifier, self.t = classifier, int(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, torch.full((x.shape[0],), self.t, dtype=torch.long, device=x.device))


def guide_module(study: Study, guide: str, cache: Path, device=None) -> tuple[nn.Module, str]:
    """(classifier module, 'x0' or 'x_t') of a guiding classifier, loaded as the sampling units load it."""
    from ...api import load_guidance_classifier
    from ...devices import resolve_device

    module, on = load_guidance_classifier(guide_source(study, guide, cache)[1], device=resolve_device(device))
    return module.eval(), on


def image_batches(images: np.ndarray, labels: np.ndarray, batch: int = BATCH):
    """(x in [−1, 1] float [B, C, H, W], y int64 [B]) batches of uint8 NHWC images (re-iterable)."""
    from ...data import to_model_range

    return [(to_model_range(images[s:s + batch]), torch.as_tensor(labels[s:s + batch], dtype=torch.long))
            for s in range(0, len(images), batch)]


def _views(on: str) -> dict:
    """How an off-the-shelf guide is evaluated: as it guides (ReLU → Softplus β = 10), with the issue's β = 3, and
    as trained; a noise-aware guide as it guides only (its ReLUs are kept when it guides)."""
    if on == "x_t":
        return {"as_guides": None}
    return {f"softplus{SOFTPLUS_BETA:g}": SOFTPLUS_BETA, f"softplus{ISSUE_SOFTPLUS_BETA:g}": ISSUE_SOFTPLUS_BETA,
            "relu": None}


def _context(beta):
    import contextlib

    from ...guidance.classifier import SoftplusForReLU

    return SoftplusForReLU(beta) if beta is not None else contextlib.nullcontext()


@torch.no_grad()
def _trajectory_logits(module: nn.Module, on: str, x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """Logits [steps, N, K] of the guide on each kept step's inputs: ``module(x̂0)`` (through
    :func:`~diffguide.calibration.collect_logits`, which checks x̂0 ∈ [−1, 1]) or ``module(x_t, t)`` (x_t is not
    bounded, so it is fed directly)."""
    y = torch.as_tensor(labels, dtype=torch.long)
    rows = []
    for k, step_t in enumerate(t):
        inputs = torch.from_numpy(x[k].astype(np.float32))
        if on == "x0":
            rows.append(collect_logits(module, [(inputs[s:s + BATCH], y[s:s + BATCH])
                                                for s in range(0, len(inputs), BATCH)])[0])
        else:
            at_t, device = AtTimestep(module, int(step_t)), module_device(module)
            rows.append(torch.cat([at_t(inputs[s:s + BATCH].to(device)).double().cpu()
                                   for s in range(0, len(inputs), BATCH)]))
    return torch.stack(rows)


def trajectory_calibration(module: nn.Module, on: str, trajectories: dict, beta=None) -> dict:
    """ECE along the trajectory (one row per kept step, ``t`` its original timestep) and pooled over the steps."""
    x = trajectories["x0" if on == "x0" else "x_t"]
    labels = torch.as_tensor(trajectories["labels"], dtype=torch.long)
    with _context(beta):
        logits = _trajectory_logits(module, on, x, trajectories["t"], trajectories["labels"])
    pooled = calibration_summary(logits.reshape(-1, logits.shape[-1]), labels.repeat(len(logits)), num_bins=NUM_BINS)
    return {"pooled": pooled, "ece_t": ece_per_timestep(logits, labels, [int(t) for t in trajectories["t"]], NUM_BINS)}


def clean_calibration(module: nn.Module, on: str, batches, beta=None) -> dict:
    with _context(beta):
        logits, labels = collect_logits(AtTimestep(module, 0) if on == "x_t" else module, batches)
    return calibration_summary(logits, labels, num_bins=NUM_BINS)


def _test_set(study: Study, count: int) -> tuple[np.ndarray, np.ndarray]:
    from ...data import load_dataset

    dataset = study.assets.get("eval_dataset")
    if dataset is None:
        dataset = load_dataset(study.assets["data"], "test", limit=count)
    return dataset.images[:count], np.asarray(dataset.labels[:count], dtype=np.int64)


def run_calibration(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> dict:
    start, p, device = time.perf_counter(), unit.params, study.assets.get("device")
    module, on = guide_module(study, p["guide"], cache, device)
    with np.load(trajectory_path(cache, p["trajectories"])) as data:
        trajectories = {k: data[k] for k in data.files}
    images, labels = _test_set(study, p["test_images"])
    batches = image_batches(images, labels)
    record = {"unit": unit.id, **p, "on": on, **environment(study), "num_bins": NUM_BINS,
              "test_images_used": int(len(images)), "trajectory_samples": int(len(trajectories["labels"])),
              "clean": {}, "trajectory": {}}
    for view, beta in _views(on).items():
        record["clean"][view] = clean_calibration(module, on, batches, beta)
        record["trajectory"][view] = trajectory_calibration(module, on, trajectories, beta)
    if on == "x_t":
        noised = evaluate_calibration(module, batches, noise_aware=True, timesteps=p["timesteps"], num_bins=NUM_BINS)
        record["noised"] = {"pooled": noised["summary"], "ece_t": noised["ece_t"], "seed": noised["seed"]}
    record["plots"] = draw_plots(record, Path(results_dir), unit.id)
    record["seconds"] = time.perf_counter() - start
    atomic_write_text(result_path(results_dir, unit), json.dumps(record, indent=2) + "\n")
    return record


def draw_plots(record: dict, folder: Path, uid: str) -> dict:
    """Reliability diagrams of the guide as it guides (clean, trajectory pooled, noised pooled) and its ECE_t, drawn
    from a calibration record alone (the unit draws them; the report redraws any that did not come back)."""
    view = next(iter(record["clean"]))
    where = "x̂0" if record["on"] == "x0" else "x_t"
    panels = {"clean": (record["clean"][view], "clean test images"),
              "trajectory": (record["trajectory"][view]["pooled"], f"{where} of sampling trajectories, pooled")}
    if "noised" in record:
        panels["noised"] = (record["noised"]["pooled"], "noised test images, pooled over t")
    out = {}
    for name, (summary, text) in panels.items():
        path = folder / f"{uid}_{name}.png"
        plot_reliability_diagram(ReliabilityBins.from_dict(summary["reliability"]), path,
                                 title=f"{record['guide']} ({view}): {text}", smece=summary["smece"])
        out[name] = path.name
    curves = {f"trajectory {where}, {v}": r["ece_t"] for v, r in record["trajectory"].items()}
    if "noised" in record:
        curves["noised test images"] = record["noised"]["ece_t"]
    path = folder / f"{uid}_ece_t.png"
    plot_ece_over_timesteps(curves, path, title=f"{record['guide']}: ECE along t")
    out["ece_t"] = path.name
    return out
