"""The curve figures of the CIFAR-10 reports (issues 13 and 14): the data behind each line, exactly, from fake
results built on the real plans; the PNGs written where the reports link them; nothing written without data."""

import json
import re
from pathlib import Path

import pytest

from diffguide.studies.cifar10 import aligned_study, guidance_study
from diffguide.studies.cifar10.report import aligned_report, guidance_report
from diffguide.studies.cifar10.report_plots import (control_points, final_points, grid_points, method_panels,
                                                    steps_points, wcurve_points)


def _record(unit, fid, failed=False, precision=0.7, recall=0.5):
    """A metrics JSON as the runner writes it (the keys the reports read), FID ``fid``; failed: no metrics."""
    record = {"unit": unit.id, **unit.params, "gpu": "fake GPU", "torch": "0", "precision": "fp32", "tiny": False,
              "failed": failed, "seconds_per_1k_samples": 1.0}
    if not failed:
        record["metrics"] = {"fid": fid, "kid": 0.01, "precision": precision, "recall": recall, "density": 1.0,
                             "coverage": 0.5}
        record["judge_consistency"] = 0.9
    return record


def _units(study, **match):
    return [u for u in study.units if u.kind == "sample" and all(u.params.get(k) == v for k, v in match.items())]


def _f(w):
    """The fake standard curve: 10 + 3w + w², exact in binary floating point at the multiples of 1/4 used below."""
    return 10 + 3 * w + w * w


def _aligned_results():
    study = aligned_study({}, tiny=False)
    results = {u.id: _record(u, _f(u.params["scale"])) for u in _units(study, method="standard", group="wcurve")}
    return study, results


def test_control_series_is_the_standard_curve_at_w_eff():
    """w_eff = (w′ − w_train)/(1 + w_train): at w_train = 1 the grid 0, 0.5, 1, 2, 3, 4 maps to −0.5, −0.25, 0, 0.5,
    1, 1.5, so the control is f at those points; a failed standard run leaves its w′ out and listed."""
    study, results = _aligned_results()
    assert control_points(study, results, "aligned_w1") == (
        {0.0: 8.75, 0.5: 9.3125, 1.0: 10.0, 2.0: 11.75, 3.0: 14.0, 4.0: 16.75}, [])
    w2 = control_points(study, results, "aligned_w2")[0]  # (w′ − 2)/3, the plan's 6-decimal rounding
    assert w2 == {0.0: _f(-0.666667), 0.5: _f(-0.5), 1.0: _f(-0.333333), 2.0: 10.0, 3.0: _f(0.333333),
                  4.0: _f(0.666667)}
    assert control_points(study, results, "standard") == ({}, [])
    failed = next(u for u in _units(study, method="standard", group="wcurve") if u.params["scale"] == 0.5)
    results[failed.id] = _record(failed, None, failed=True)
    assert control_points(study, results, "aligned_w1") == ({0.0: 8.75, 0.5: 9.3125, 1.0: 10.0, 3.0: 14.0,
                                                             4.0: 16.75}, [2.0])
    # the standard's own line: its grid only (not the control points at −0.5, 1.5, …), the failed run left out
    assert wcurve_points(study, results, "standard") == ({w: _f(w) for w in (0.0, 1.0, 2.0, 3.0, 4.0)}, [0.5])
    assert wcurve_points(study, results, "standard", "recall") == ({w: 0.5 for w in (0.0, 1.0, 2.0, 3.0, 4.0)},
                                                                   [0.5])


def test_steps_points_average_over_seeds_and_leave_out_a_point_with_a_failed_seed():
    study = aligned_study({}, tiny=False)
    results = {}
    for seed, fid in ((1, 10.0), (2, 12.0), (3, 14.0)):  # mean 12, sd (ddof 1) √((4 + 0 + 4)/2) = 2
        u = _units(study, method="standard", group="steps", scale=None, sampler="ddim", steps=10, seed=seed)[0]
        results[u.id] = _record(u, fid)
    u = _units(study, method="standard", group="steps", scale=None, sampler="ddim", steps=100)[0]  # one seed
    results[u.id] = _record(u, 7.5)
    for seed, failed in ((1, True), (2, False), (3, False)):
        u = _units(study, method="standard", group="steps", scale=1.0, sampler="ddim", steps=10, seed=seed)[0]
        results[u.id] = _record(u, 20.0, failed=failed)
    u = _units(study, method="standard", group="steps", scale=1.0, sampler="ddpm", steps=250, seed=2)[0]
    results[u.id] = {**_record(u, 1.0), "metrics": {}}  # a record without its FID: not drawn either
    best = steps_points(study, results, "standard", None)
    assert best[("ddim", 10)]["mean"] == pytest.approx(12.0, rel=1e-12)  # float rounding of a 3-term mean only
    assert best[("ddim", 10)]["std"] == pytest.approx(2.0, rel=1e-12)
    assert best[("ddim", 10)]["n"] == 3 and best[("ddim", 10)]["failed"] == []
    assert best[("ddim", 100)] == {"mean": 7.5, "std": None, "n": 1, "failed": []}
    assert set(best) == {("ddim", 10), ("ddim", 100)}
    common = steps_points(study, results, "standard", 1.0)
    assert common[("ddim", 10)] == {"mean": None, "std": None, "n": 3, "failed": [1]}
    assert common[("ddpm", 250)] == {"mean": None, "std": None, "n": 1, "failed": [2]}
    assert steps_points(study, results, "aligned_w1", None) == {}


def test_grid_points_mark_runs_outside_the_settled_grid_and_leave_out_failed_runs():
    study = guidance_study({}, tiny=False)
    points = {u.params["scale"]: u for u in _units(study, method="elucd_resnet32", group="grid")}
    results = {points[s].id: _record(points[s], 10.0 + abs(s - 0.5), recall=s) for s in (0.125, 0.25, 0.5, 1.0, 2.0)}
    results[points[4.0].id] = _record(points[4.0], 0.0)  # outside the settled grid: drawn hollow, chooses nothing
    data = grid_points(study, results, "elucd_resnet32", ("fid", "recall"))
    assert data["chosen"] == 0.5 and data["missing"] == []
    assert [(p["scale"], p["in_grid"], p["fid"], p["recall"]) for p in data["points"]] == [
        (0.125, True, 10.375, 0.125), (0.25, True, 10.25, 0.25), (0.5, True, 10.0, 0.5), (1.0, True, 10.5, 1.0),
        (2.0, True, 11.5, 2.0), (4.0, False, 0.0, 0.5)]
    cfg = {u.params["scale"]: u for u in _units(study, method="cfg", group="grid")}
    results[cfg[1.0].id] = _record(cfg[1.0], None, failed=True)
    results[cfg[2.0].id] = _record(cfg[2.0], 15.0)
    data = grid_points(study, results, "cfg")
    assert data == {"points": [{"scale": 2.0, "in_grid": True, "fid": 15.0}], "missing": [1.0], "chosen": None}


def test_final_points_per_method():
    study = guidance_study({}, tiny=False)
    results = {}
    for seed, fid in ((1, 20.0), (2, 21.0), (3, 25.0)):  # mean 22, sd √((4 + 1 + 9)/2) = √7
        u = _units(study, method="cfg", group="final", seed=seed)[0]
        results[u.id] = _record(u, fid)
    u = _units(study, method="none", group="final", seed=1)[0]
    results[u.id] = _record(u, None, failed=True)
    subset = _units(study, method="cfg", group="subset", seed=1)[0]  # the DDIM subset is not a final
    results[subset.id] = _record(subset, 1.0)
    finals = final_points(study, results)
    assert set(finals) == {"cfg", "none"}
    assert finals["cfg"]["mean"] == pytest.approx(22.0, rel=1e-12)  # rounding of a 3-term mean / sd only
    assert finals["cfg"]["std"] == pytest.approx(7 ** 0.5, rel=1e-12) and finals["cfg"]["n"] == 3
    assert finals["none"] == {"mean": None, "std": None, "n": 1, "failed": [1]}


def test_method_panels_group_the_methods_as_the_issue_asks():
    panels = dict(method_panels(guidance_study({}, tiny=False).methods))
    first, objectives, guides, points = panels.values()
    assert first == ["none", "cfg", "adm_g_base", "adm_g_ce", "adm_g_sece", "best_cg_plus_cfg"]
    assert objectives == ["elucd_resnet32", "tilted", "entropy_confidence", "entropy_inverse_entropy", "entropy_time",
                          "reverse_kl_a0.5_e0.9", "forward_kl_a0.5_e0.9", "js_a0.5_e0.9", "hellinger_a0.5_e0.9"]
    assert guides == ["elucd_resnet20", "elucd_resnet32", "elucd_resnet44", "elucd_resnet32_softplus3"]
    assert len(points) == 12 and all(m.endswith(("_a0.5_e0.9", "_a0.25_e0.9", "_a0.5_e0.95")) for m in points)


def _write(folder: Path, study, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for uid, record in results.items():
        (folder / f"{uid}.json").write_text(json.dumps(record))


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_reports_write_the_figures_where_they_link_them(tmp_path):
    from PIL import Image

    study, results = _aligned_results()
    for w, unit in {u.params["scale"]: u for u in _units(study, method="aligned_w1", group="wcurve")}.items():
        results[unit.id] = _record(unit, 9.0 + w, failed=w == 2.0)
    for unit in _units(study, group="steps", sampler="ddim", steps=10):
        results[unit.id] = _record(unit, 12.0 + unit.params["seed"])
    _write(tmp_path / "aligned", study, results)
    report = tmp_path / "aligned.md"
    text = aligned_report(study, tmp_path / "cache", tmp_path / "aligned", report).read_text()
    names = ("figure_fid_vs_w.png", "figure_precision_recall_vs_w.png", "figure_fid_vs_steps.png")
    assert [f"aligned/{n}" for n in names] == [link for link in _links(text) if "figure_" in link]
    assert all((report.parent / link).is_file() for link in _links(text))
    assert "plots of the curves" not in text and "aligned_w1 w=2" in text  # the failed run is listed
    first = {n: (tmp_path / "aligned" / n).read_bytes() for n in names}
    aligned_report(study, tmp_path / "cache", tmp_path / "aligned", report)
    assert {n: (tmp_path / "aligned" / n).read_bytes() for n in names} == first  # no date or version inside
    with Image.open(tmp_path / "aligned" / names[0]) as image:
        assert image.size == (825, 528)  # figsize 7.5 × 4.8 in at 110 dpi

    guidance = guidance_study({}, tiny=False)
    results = {u.id: _record(u, 10.0 + abs(u.params["scale"] - 0.5), recall=0.5 - u.params["scale"] / 10)
               for u in _units(guidance, group="grid") if u.params["method"] in ("none", "cfg", "elucd_resnet32")
               and not u.params.get("extension")}
    for unit in _units(guidance, method="cfg", group="final"):
        results[unit.id] = _record(unit, 11.0 + unit.params["seed"])
    _write(tmp_path / "guidance", guidance, results)
    report = tmp_path / "guidance.md"
    text = guidance_report(guidance, tmp_path / "cache", tmp_path / "guidance", report).read_text()
    assert [link for link in _links(text) if "figure_" in link] == [
        "guidance/figure_final_fid.png", "guidance/figure_fid_vs_scale.png", "guidance/figure_precision_vs_recall.png"]
    assert all((report.parent / link).is_file() for link in _links(text))


def test_no_data_writes_no_figure_and_says_so(tmp_path):
    study, guidance = aligned_study({}, tiny=False), guidance_study({}, tiny=False)
    (tmp_path / "none").mkdir()  # an empty results folder
    text = aligned_report(study, tmp_path / "cache", tmp_path / "none", tmp_path / "a.md").read_text()
    text += guidance_report(guidance, tmp_path / "cache", tmp_path / "none", tmp_path / "g.md").read_text()
    for figure in ("FID vs w", "precision and recall vs w", "FID vs steps", "FID of the seed 1–3 runs",
                   "FID vs scale", "precision vs recall"):
        assert f"Figure ({figure}): not yet run" in text
    # only failed runs: nothing to draw, nothing written, no crash
    failed = {u.id: _record(u, None, failed=True) for u in _units(guidance, method="cfg")}
    _write(tmp_path / "failed", guidance, failed)
    text = guidance_report(guidance, tmp_path / "cache", tmp_path / "failed", tmp_path / "f.md").read_text()
    assert "Figure (FID vs scale): not yet run" in text
    assert "Figure (FID of the seed 1–3 runs): not yet run (every method with a run has a failed seed)." in text
    assert not list(tmp_path.rglob("*.png"))
