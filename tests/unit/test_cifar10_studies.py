"""The CIFAR-10 study pipelines (issues 13 and 14): the plans are the issues' protocols, and the --tiny pipeline
runs end to end, skips finished units, resumes partial ones and reports what is missing."""

import json
import os

import pytest

from diffguide.studies.cifar10 import aligned_plan, aligned_study, guidance_plan, guidance_study, run_next
from diffguide.studies.cifar10.assets import tiny_assets
from diffguide.studies.cifar10.report import aligned_report
from diffguide.studies.cifar10.runner import chosen_scale, load_results, run_training


def _samples(units, group):
    return [u for u in units if u.kind == "sample" and u.params["group"] == group]


def test_guidance_plan_is_issue_13_protocol():
    units = guidance_plan.units()
    grid, final, subset = (_samples(units, g) for g in ("grid", "final", "subset"))
    assert {(u.params["seed"], u.params["num_samples"], u.params["sampler"], u.params["steps"]) for u in grid} \
        == {(0, 5000, "ddpm", 100)}
    assert {(u.params["num_samples"], u.params["sampler"], u.params["steps"]) for u in final} == {(10000, "ddpm", 100)}
    assert {u.params["scale"] for u in final} == {None}  # chosen from the seed-0 grid, never fixed here
    methods = guidance_plan.methods()
    for method in methods:
        assert sorted(u.params["seed"] for u in final if u.params["method"] == method) == [1, 2, 3]
        assert [u.params["scale"] for u in grid if u.params["method"] == method] == list(methods[method]["grid"])
    assert {(u.params["sampler"], u.params["steps"], u.params["seed"]) for u in subset} \
        == {("ddim", 50, s) for s in (1, 2, 3)}
    assert methods["cfg"]["grid"] == (0.25, 0.5, 1.0, 2.0, 3.0)
    assert methods["elucd_resnet32"]["schedule_params"] == {"gamma": 0.3}
    assert methods["elucd_resnet32"]["objective_params"] == {"tau1": 1.0, "tau2": 0.5}
    assert methods["tilted"]["objective_params"] == {"t_tilde": -0.2}
    assert {methods[f"entropy_{r}"]["objective_params"]["rule"] for r in ("confidence", "inverse_entropy", "time")} \
        == {"confidence", "inverse_entropy", "time"}
    ce, sece = guidance_plan.classifier_units()
    assert (ce.params["ece_weight"], sece.params["ece_weight"]) == (0.0, 1.0)
    assert ce.params["steps"] == sece.params["steps"] and ce.params["seed"] == sece.params["seed"] == 0
    assert len({u.id for u in units}) == len(units)


def test_aligned_plan_is_issue_14_protocol():
    units = aligned_plan.units()
    curve = _samples(units, "wcurve")
    for arm in aligned_plan.ARMS:
        points = [u for u in curve if u.params["method"] == arm and u.params["scale"] in aligned_plan.W_GRID]
        assert sorted(u.params["scale"] for u in points) == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    assert {(u.params["sampler"], u.params["steps"], u.params["seed"], u.params["num_samples"]) for u in curve} \
        == {("ddim", 50, 0, 10000)}
    control = {u.params["scale"] for u in curve if u.params["method"] == "standard"}
    # w_eff = (w' − w_train)/(1 + w_train): w_train = 1 gives (w'−1)/2, w_train = 2 gives (w'−2)/3
    assert {round((w - 1) / 2, 6) for w in aligned_plan.W_GRID} <= control
    assert {round((w - 2) / 3, 6) for w in aligned_plan.W_GRID} <= control
    steps = _samples(units, "steps")
    assert {(u.params["sampler"], u.params["steps"]) for u in steps} == {
        ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100), ("dpmpp_2m", 10), ("dpmpp_2m", 20), ("ddpm", 250)}
    assert {u.params["scale"] for u in steps} == {None, 1.0} and {u.params["seed"] for u in steps} == {1, 2, 3}
    train = {u.id: u.params for u in units if u.kind == "train"}
    assert train["standard"]["steps"] == 23679 and train["aligned_ft_w1"]["steps"] == 2368  # 10% of the budget
    assert train["aligned_ft_w1"]["init_from"] == "standard"
    assert train["aligned_w2"]["loss"] == {"kind": "aligned", "w_train": 2.0, "stop_grad_null": False,
                                           "mix_lambda": None}


def _fake(unit, fid):
    return {"seed": unit.params["seed"], "scale": unit.params["scale"], "failed": False, "metrics": {"fid": fid}}


def test_best_scale_reads_seed_0_grid_only():
    study = guidance_study({}, tiny=False)
    grid = [u for u in _samples(study.units, "grid") if u.params["method"] == "cfg"]
    results = {u.id: _fake(u, 10.0 + abs(u.params["scale"] - 2.0)) for u in grid}  # lowest at w = 2
    assert chosen_scale(study, "cfg", results) == 2.0
    for u in _samples(study.units, "final"):  # later seeds with far lower FIDs must not move the choice
        if u.params["method"] == "cfg":
            results[u.id] = {**_fake(u, 0.0), "scale": 0.25}
    assert chosen_scale(study, "cfg", results) == 2.0
    del results[grid[0].id]
    assert chosen_scale(study, "cfg", results) is None  # an incomplete grid chooses nothing


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10_tiny")
    study = aligned_study(tiny_assets(root / "assets"), tiny=True)
    first = run_next(study, root / "cache", root / "results", budget_s=600)
    return study, root, first


def test_tiny_pipeline_runs_every_unit(tiny_run):
    study, root, first = tiny_run
    assert first["left"] == 0 and first["finished"] == [u.id for u in study.units]
    results = load_results(root / "results")
    assert len(results) == sum(u.kind in ("sample", "sample_grid") for u in study.units)
    record = next(r for r in results.values() if "metrics" in r)
    for key in ("seed", "num_samples", "gpu", "torch", "precision", "seconds_per_1k_samples"):
        assert key in record
    assert record["metrics"]["num_samples"] == 24


def test_second_run_skips_and_partial_unit_resumes(tiny_run):
    study, root, _ = tiny_run
    folder = root / "results"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    again = run_next(study, root / "cache", folder, budget_s=600)
    assert again["ran"] == [] and {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == mtimes
    victim = next(u for u in study.units if u.kind == "sample" and u.params["group"] == "steps")
    (folder / f"{victim.id}.json").unlink()
    os.remove(root / "cache" / study.name / "train" / "aligned_w1" / "done.json")  # a training cut short
    third = run_next(study, root / "cache", folder, budget_s=600)
    assert third["ran"] == ["aligned_w1", victim.id] and third["left"] == 0


def test_only_runs_the_matching_units_in_plan_order(tiny_run):
    study, root, _ = tiny_run
    folder = root / "results"
    curve = [u for u in study.units if u.kind == "sample" and u.id.startswith("wcurve__standard__")]
    steps = next(u for u in study.units if u.kind == "sample" and u.params["group"] == "steps")
    for unit in (*curve[:2], steps):
        (folder / f"{unit.id}.json").unlink()
    os.remove(root / "cache" / study.name / "train" / "aligned_w2" / "done.json")
    picked = run_next(study, root / "cache", folder, budget_s=600, only=["reference", "wcurve__standard__*"])
    assert picked["ran"] == [u.id for u in curve[:2]] and picked["left"] == 2  # aligned_w2 and steps wait
    rest = run_next(study, root / "cache", folder, budget_s=600)
    assert rest["ran"] == ["aligned_w2", steps.id] and rest["left"] == 0


def test_report_lists_missing_runs(tiny_run, tmp_path):
    study, root, _ = tiny_run
    empty = aligned_report(study, tmp_path / "cache", tmp_path / "results", tmp_path / "empty.md").read_text()
    assert f"{len(study.units)} of {len(study.units)} units" in empty
    assert all(f"`{u.id}`" in empty for u in study.units)
    full = aligned_report(study, root / "cache", root / "results", tmp_path / "full.md").read_text()
    assert "Nothing: every unit of the plan is done." in full and "TINY CPU CHECK" in full
    json.loads(next((root / "results").glob("*.json")).read_text())  # valid JSON, atomically written


def test_a_resumed_training_gets_its_commands_budget_on_top_of_what_it_trained(tiny_run, tmp_path):
    """The trainer's time limit counts a run's whole training, resumes included: a command resuming a run that has
    trained 1e6 s already must still train (the bug this guards: it stopped after one step)."""
    import dataclasses

    import torch

    study, _, _ = tiny_run
    unit = dataclasses.replace(study.unit("standard"), params={**study.unit("standard").params, "steps": 5})
    cache, out = tmp_path, tmp_path / "train" / "standard"
    assert run_training(study, unit, cache, time_limit_s=1e-9) is False  # stops after its first step
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1
    state["train_seconds"] = 1e6  # as if it had trained for 1e6 s
    torch.save(state, out / "checkpoint.pt")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    records[-1]["train_seconds"] = 1e6
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_training(study, unit, cache, time_limit_s=600) is True
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_ddpm_units_sample_with_fixed_small_and_the_others_with_the_checkpoints_variance(tiny_run):
    from diffguide.studies.cifar10.runner import build_settings, resolve

    study, root, _ = tiny_run
    results = load_results(root / "results")
    for sampler, expected in (("ddpm", "fixed_small"), ("ddim", None)):
        unit = next(u for u in _samples(study.units, "steps") if u.params["sampler"] == sampler)
        spec, scale, extra = resolve(study, unit, results)
        assert build_settings(study, unit, spec, scale, extra, root / "cache").variance == expected
