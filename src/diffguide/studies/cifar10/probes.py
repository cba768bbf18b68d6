"""Diagnostic sampling units of the CIFAR-10 studies: what a scored run does not keep.

- ``trajectories`` — x̂0 and x_t of unguided conditional runs of the base model at fixed steps (a cache file, the
  input of the calibration units);
- ``gradnorm`` — ‖∇J‖ and the guiding classifier's confidence along t, averaged over samples, for a few methods at
  their chosen scales (JSON + one plot);
- ``sample_grid`` — 10 samples per class at a method's (chosen or fixed) scale, one row per class (JSON + PNG).

All three run :func:`diffguide.api.sample` (the trajectories and ‖∇J‖ through its ``step_callback``, the sampler's
per-step record), with the same settings as the scored units (:func:`~.runner.build_settings`), eagerly (no compiled
network), labels balanced.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_save_npz, atomic_write_text
from .plan import Unit, sampling_variance
from .runner import Study, build_settings, environment, resolve, result_path, trajectory_path

__all__ = ["recorded_steps", "run_trajectories", "GuidanceRecorder", "guidance_curves",
           "run_gradnorm", "run_sample_grid", "class_names"]


def recorded_steps(num_steps: int, every: int = 10) -> list[int]:
    """The step indices i kept along a trajectory of ``num_steps`` steps: every ``every``-th from 0 and the first
    step, i = num_steps − 1 (0, 10, …, 90, 99 for DDPM-100)."""
    return sorted(set(range(0, num_steps, every)) | {num_steps - 1})


def _probe_settings(study: Study, unit: Unit, method: str, scale, extra: dict, spec: dict, cache: Path):
    """The scored units' settings for ``method`` at ``scale``, with this unit's seed, size and balanced labels."""
    probe = Unit(unit.id, "sample", {**unit.params, "method": method, "scale": scale})
    return dataclasses.replace(build_settings(study, probe, spec, scale, extra, cache), labels="balanced")


def run_trajectories(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> None:
    """x̂0 and x_t (float16 [steps kept, N, C, H, W]) at :func:`recorded_steps` of unguided conditional runs of the
    base model, with their original timesteps and conditioning labels."""
    from ...api import SampleSettings, sample

    p, a = unit.params, study.assets
    settings = SampleSettings(model=a["model"], num_samples=p["num_samples"], batch_size=a["batch_size"],
                              seed=p["seed"], labels="balanced", sampler=p["sampler"], steps=str(p["steps"]),
                              bf16=a["bf16"], variance=sampling_variance(p["sampler"]))
    keep = recorded_steps(p["steps"])
    batches: list[dict] = []
    timesteps: dict[int, int] = {}

    def step_callback(guidance, start):
        kept = {}
        batches.append(kept)

        def record(step):
            if step.i in keep:
                kept[step.i] = (step.x0.float().cpu().numpy().astype(np.float16),
                                step.x_t.float().cpu().numpy().astype(np.float16))
                timesteps[step.i] = int(step.t[0])
        return record

    labels = sample(settings, device=a.get("device"), progress=False, fast=False, step_callback=step_callback).labels
    stacked = {name: np.concatenate([np.stack([b[i][k] for i in keep]) for b in batches], axis=1)
               for k, name in enumerate(("x0", "x_t"))}
    atomic_save_npz(trajectory_path(cache, unit.id), **stacked, t=np.array([timesteps[i] for i in keep]),
                    step=np.array(keep), labels=np.asarray(labels, dtype=np.int64))


class GuidanceRecorder:
    """Per sampler step i: each sample's ‖∇J‖ = ‖g‖/(s·w_i) (g = s·w_i·∇J, the applied classifier gradient, w_i read
    back from the schedule), ‖g‖, and the guide's confidence max_c softmax(f(input))_c on its own input (x̂0 for an
    off-the-shelf guide, as it guides: Softplus; x_t for a noise-aware one) — and, off-the-shelf, the confidence of
    the network as trained (ReLU) on the same x̂0."""

    def __init__(self, guidance):
        from ..sweep import RecordingSchedule

        self.classifier = guidance.classifier
        self.classifier.schedule = RecordingSchedule(self.classifier.schedule)
        self.t: dict[int, int] = {}
        self.grad_norm: dict[int, list] = {}
        self.applied_norm: dict[int, list] = {}
        self.confidence: dict[int, list] = {}
        self.confidence_relu: dict[int, list] = {}

    def __call__(self, step) -> None:
        c = self.classifier
        weight = torch.as_tensor(c.schedule.last, dtype=torch.float64).reshape(-1).cpu()
        applied = step.guidance_grad.double().flatten(1).norm(dim=1).cpu()
        logits = c.logits(step.x0 if c.on == "x0" else step.x_t, step)
        stores = [(self.applied_norm, applied), (self.grad_norm, applied / (c.scale * weight)),
                  (self.confidence, _confidence(logits))]
        if c.on == "x0":
            stores.append((self.confidence_relu, _confidence(c.classifier(step.x0))))
        self.t[step.i] = int(step.t[0])
        for store, values in stores:
            store.setdefault(step.i, []).extend(values.tolist())


def _confidence(logits: torch.Tensor) -> torch.Tensor:
    """max_c softmax(logits)_c per sample (float64, CPU)."""
    return torch.softmax(logits.double(), dim=1).amax(1).cpu()


def guidance_curves(recorder: GuidanceRecorder) -> dict:
    """Along t (sampling order: t decreasing): the mean and median over samples of ‖∇J‖, the mean ‖g‖ and the mean
    confidence."""
    steps = sorted(recorder.t, reverse=True)
    stat = lambda store, f: [float(f(np.asarray(store[i]))) for i in steps]  # noqa: E731
    return {"t": [recorder.t[i] for i in steps], "grad_norm_mean": stat(recorder.grad_norm, np.mean),
            "grad_norm_median": stat(recorder.grad_norm, np.median),
            "applied_norm_mean": stat(recorder.applied_norm, np.mean),
            "confidence_mean": stat(recorder.confidence, np.mean),
            "confidence_relu_mean": stat(recorder.confidence_relu, np.mean) if recorder.confidence_relu else None}


def run_gradnorm(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> None:
    from ...api import sample

    start = time.perf_counter()
    record = {"unit": unit.id, **unit.params, **environment(study), "curves": {}}
    for method in unit.params["methods"]:
        probe = Unit(unit.id, "sample", {**unit.params, "method": method})
        spec, scale, extra = resolve(study, probe, results)
        settings = _probe_settings(study, unit, method, scale, extra, spec, cache)
        recorders = []

        def step_callback(guidance, batch_start):
            if not recorders:
                recorders.append(GuidanceRecorder(guidance))
            return recorders[0]

        zeroed = sample(settings, device=study.assets.get("device"), progress=False, fast=False,
                        step_callback=step_callback).nonfinite_zeroed
        record["curves"][method] = {"scale": scale, "nonfinite_zeroed": zeroed, **guidance_curves(recorders[0]),
                                    "settings": dataclasses.asdict(settings)}
    record["seconds"] = time.perf_counter() - start
    record["plot"] = plot_gradnorm(record["curves"], Path(results_dir) / f"{unit.id}.png").name
    atomic_write_text(result_path(results_dir, unit), json.dumps(record, indent=2, default=str) + "\n")


def plot_gradnorm(curves: dict, path: Path) -> Path:
    """Left: mean ‖∇J‖ along t (log scale); right: the guide's mean confidence as it guides (solid) and as trained
    (ReLU, dashed); one colour per method."""
    from ..report import figure, save_figure

    fig, axes = figure(1, 2, figsize=(9, 3.5))
    for method, c in curves.items():
        label = f"{method} (s = {c['scale']:g})"
        axes[0, 0].plot(c["t"], c["grad_norm_mean"], label=label)
        line, = axes[0, 1].plot(c["t"], c["confidence_mean"], label=label)
        if c.get("confidence_relu_mean"):
            axes[0, 1].plot(c["t"], c["confidence_relu_mean"], "--", color=line.get_color(), label=f"{method}, ReLU")
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_ylabel("mean ‖∇J‖ per sample")
    axes[0, 1].set_ylabel("mean confidence of the guide (max softmax)")
    axes[0, 1].set_ylim(0, 1)
    for ax in axes[0]:
        ax.set_xlabel("timestep t (sampling runs right to left)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def class_names(model: str) -> list[str] | None:
    """The class names a diffguide checkpoint folder records (``config.json`` → extra.class_names), or None."""
    config = Path(model) / "config.json"
    return json.loads(config.read_text()).get("extra", {}).get("class_names") if config.is_file() else None


def run_sample_grid(study: Study, unit: Unit, cache: Path, results_dir: Path, results: dict) -> None:
    from ...api import sample
    from ...grid import save_grid

    start = time.perf_counter()
    spec, scale, extra = resolve(study, unit, results)
    settings = _probe_settings(study, unit, unit.params["method"], scale, extra, spec, cache)
    samples = sample(settings, device=study.assets.get("device"), progress=False, fast=False)
    png = Path(results_dir) / f"{unit.id}.png"
    per_class = int(np.bincount(samples.labels).max())
    save_grid(samples.images, png, max_images=len(samples.images), labels=samples.labels,
              class_names=class_names(settings.model), min_tile=samples.images.shape[1])
    record = {"unit": unit.id, **unit.params, "scale": scale, **extra, "settings": dataclasses.asdict(settings),
              **environment(study), "png": png.name, "per_class": per_class,
              "class_counts": np.bincount(samples.labels, minlength=10).tolist(),
              "nonfinite_zeroed": int(samples.nonfinite_zeroed), "seconds": time.perf_counter() - start}
    atomic_write_text(result_path(results_dir, unit), json.dumps(record, indent=2, default=str) + "\n")
