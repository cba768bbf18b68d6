"""The report sections of the diagnostic units (:mod:`.calibration`, :mod:`.probes`): calibration of the guiding
classifiers, the ‖∇J‖-along-t picture and the sample grids — from their JSONs alone, "not yet run" where missing."""

from __future__ import annotations

import os
from pathlib import Path

from .calibration import draw_plots
from .runner import Study, chosen_scale

__all__ = ["image_link", "calibration_section", "gradnorm_section", "sample_grids_section", "aligned_grids_section"]


def image_link(results_dir, name: str, report_path, text: str) -> str:
    """A markdown image whose path is relative to the report's folder."""
    rel = os.path.relpath(Path(results_dir) / name, Path(report_path).parent)
    return f"![{text}]({Path(rel).as_posix()})"


def _units(study: Study, kind: str) -> list:
    return [u for u in study.units if u.kind == kind]


def _f(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def _summary_cells(summary: dict | None) -> str:
    if summary is None:
        return "– | – | –"
    return f"{_f(summary['accuracy'])} | {_f(summary['ece'])} | {_f(summary['smece'])}"


def calibration_section(study: Study, results: dict, results_dir, report_path) -> list[str]:
    units = _units(study, "calibration")
    lines = ["## Calibration of the guiding classifiers", "",
             "Binned ECE (10 equal-width bins of the top-label confidence) and smECE (Błasiok & Nakkiran, automatic "
             "bandwidth) from `diffguide.calibration`. Clean: the CIFAR-10 test images (a noise-aware guide at "
             "t = 0). Trajectory: x̂0 (off-the-shelf guides) or x_t (noise-aware) of the unguided DDPM runs of the "
             "base model at the kept steps, labels = the conditioning labels. An off-the-shelf guide is shown as it "
             "guides (`softplus10`: every ReLU computed as Softplus β = 10, amendment 2), with the issue's β = 3 "
             "(`softplus3`) and as trained (`relu`).", "",
             "| guide | input | view | clean: accuracy | clean: ECE | clean: smECE | trajectory (pooled): accuracy "
             "| trajectory: ECE | trajectory: smECE |", "|---|---|---|---|---|---|---|---|---|"]
    lines += _per_guide(units, results, "| – | – | not yet run | | | | | |", lambda r: [
        f"| {r['guide']} | {r['on']} | {view} | {_summary_cells(clean)} | "
        f"{_summary_cells(r['trajectory'][view]['pooled'])} |" for view, clean in r["clean"].items()])
    done = [results[u.id] for u in units if u.id in results]
    lines += ["", "ECE / smECE along the sampling trajectory (t = the step's original timestep; sampling runs from "
              "left to right):", ""]
    if done:
        ts = [row["t"] for row in sorted(done[0]["trajectory"][next(iter(done[0]["trajectory"]))]["ece_t"],
                                          key=lambda row: -row["t"])]
        lines += ["| guide (view) | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for r in done:
            for view, traj in r["trajectory"].items():
                by_t = {row["t"]: row for row in traj["ece_t"]}
                lines.append(f"| {r['guide']} ({view}) | " + " | ".join(
                    f"{by_t[t]['ece']:.3f} / {by_t[t]['smece']:.3f}" if t in by_t else "–" for t in ts) + " |")
    else:
        lines.append("Not yet run.")
    lines += _noise_aware_pair(results, units)
    lines += ["", "Reliability diagrams (as the guide guides) and ECE along t:", "",
              "| guide | clean | trajectory, pooled | noised test images, pooled | ECE along t |", "|---|---|---|---|---|"]
    for r in done:  # drawn from the JSON alone, so a picture left on the GPU machine is not lost
        if not all((Path(results_dir) / name).exists() for name in r["plots"].values()):
            draw_plots(r, Path(results_dir), r["unit"])
    lines += _per_guide(units, results, "| not yet run | | | |", lambda r: [f"| {r['guide']} | " + " | ".join(
        image_link(results_dir, r["plots"][k], report_path, f"{r['guide']} {k}") if k in r["plots"] else "–"
        for k in ("clean", "trajectory", "noised", "ece_t")) + " |"])
    return lines + [""]


def _per_guide(units: list, results: dict, missing: str, rows) -> list[str]:
    """Table rows of each calibration unit: ``rows(record)``, or the guide's name and ``missing`` while not run."""
    out = []
    for u in units:
        out += rows(results[u.id]) if u.id in results else [f"| {u.params['guide']} {missing}"]
    return out


NOISE_AWARE_GUIDES = ("clf_base", "clf_ce", "clf_sece")


def _noise_aware_pair(results: dict, units: list) -> list[str]:
    """ECE_t on noised test images of the noise-aware base classifier (before) and its two fine-tunes: Smooth-ECE
    (clf_sece, after) against the matched CE-only control (clf_ce), same start, seed, data and number of steps."""
    found = {u.params["guide"]: results.get(u.id) for u in units if u.params["guide"] in NOISE_AWARE_GUIDES}
    lines = ["", "Before and after Smooth-ECE — accuracy, ECE and smECE along t on test images noised at t "
             "(`clf_base`: before; `clf_sece`: fine-tuned with CE + λ·Smooth-ECE; `clf_ce`: its matched control, "
             "fine-tuned with CE alone from the same start for the same steps):", ""]
    if set(found) != set(NOISE_AWARE_GUIDES) or any(r is None for r in found.values()):
        return lines + ["Not yet run."]
    rows = [found[g]["noised"]["ece_t"] for g in NOISE_AWARE_GUIDES]
    lines += ["| t | " + " | ".join(f"{g} {m}" for g in NOISE_AWARE_GUIDES for m in ("accuracy", "ECE", "smECE"))
              + " |", "|---|" + "---|" * 3 * len(NOISE_AWARE_GUIDES)]
    for per_t in zip(*rows):
        lines.append(f"| {per_t[0]['t']} | " + " | ".join(_summary_cells(r) for r in per_t) + " |")
    pooled = [found[g]["noised"]["pooled"] for g in NOISE_AWARE_GUIDES]
    lines.append("| pooled | " + " | ".join(_summary_cells(r) for r in pooled) + " |")
    return lines


def gradnorm_section(study: Study, results: dict, results_dir, report_path) -> list[str]:
    lines = ["## The vanishing-gradient picture: ‖∇J‖ and the guide's confidence along t", ""]
    for u in _units(study, "gradnorm"):
        r = results.get(u.id)
        names = ", ".join(u.params["methods"])
        if r is None:
            scales = {m: chosen_scale(study, m, results) for m in u.params["methods"]}
            lines += [f"`{u.id}` ({names}): not yet run" + (" (waits for the seed-0 grids)"
                                                            if None in scales.values() else "") + ".", ""]
            continue
        lines += [f"{u.params['num_samples']} samples (labels balanced, seed {u.params['seed']}), "
                  f"{u.params['sampler'].upper()}-{u.params['steps']}, each method at its chosen scale. ‖∇J‖ = "
                  "‖g‖/(s·w(t)), the objective's own gradient per sample (g the applied classifier term); confidence "
                  "= max softmax of the guide on x̂0, as it guides (Softplus), in brackets as trained (ReLU). Means over "
                  "samples.", "",
                  image_link(results_dir, r["plot"], report_path, "gradient norm and confidence along t"), ""]
        curves = r["curves"]
        first = next(iter(curves.values()))
        keep = range(0, len(first["t"]), max(1, len(first["t"]) // 10))
        rows = sorted(set(keep) | {len(first["t"]) - 1})
        relu = lambda c, k: f" ({c['confidence_relu_mean'][k]:.3f})" if c.get("confidence_relu_mean") else ""  # noqa: E731
        lines += ["| t | " + " | ".join(f"{m} (s={c['scale']:g}): ‖∇J‖ | confidence (ReLU)" for m, c in curves.items())
                  + " |", "|---|" + "---|---|" * len(curves)]
        for k in rows:
            lines.append(f"| {first['t'][k]} | " + " | ".join(
                f"{c['grad_norm_mean'][k]:.4g} | {c['confidence_mean'][k]:.3f}{relu(c, k)}" for c in curves.values())
                + " |")
        lines.append("")
    return lines


def _grid_cell(study: Study, unit, results: dict, results_dir, report_path) -> tuple[str, str]:
    """(scale text, image or 'not yet run …') of a sample-grid unit."""
    r = results.get(unit.id)
    if r is None:
        scale = unit.params["scale"]
        if scale is None:
            scale = chosen_scale(study, unit.params["method"], results)
        return ("–" if scale is None else f"{scale:g}",
                "not yet run" + (" (waits for the seed-0 grid)" if scale is None else ""))
    scale = f"{r['scale']:g}" + (f" at CFG w = {r['cfg_w']:g} on {r['combined_with']}" if "combined_with" in r else "")
    return scale, image_link(results_dir, r["png"], report_path, f"{unit.params['method']} samples")


def sample_grids_section(study: Study, results: dict, results_dir, report_path) -> list[str]:
    units = _units(study, "sample_grid")
    lines = ["## Sample grids (chosen scales)", "",
             "10 samples per class (labels balanced, seed 0), one row per class, same noise for every method.", "",
             "| method | scale | samples |", "|---|---|---|"]
    for u in units:
        scale, cell = _grid_cell(study, u, results, results_dir, report_path)
        lines.append(f"| {u.params['method']} | {scale} | {cell} |")
    return lines + [""]


def aligned_grids_section(study: Study, results: dict, results_dir, report_path) -> list[str]:
    units = _units(study, "sample_grid")
    ws = sorted({u.params["scale"] for u in units})
    arms = list(dict.fromkeys(u.params["method"] for u in units))
    lines = ["## Sample grids", "", "10 samples per class (labels balanced, seed 0, DDIM-50), one row per class, the "
             "same noise for every arm and w.", "", "| arm | " + " | ".join(f"w = {w:g}" for w in ws) + " |",
             "|---|" + "---|" * len(ws)]
    for arm in arms:
        cells = [_grid_cell(study, u, results, results_dir, report_path)[1] for w in ws
                 for u in units if u.params["method"] == arm and u.params["scale"] == w]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines + [""]
