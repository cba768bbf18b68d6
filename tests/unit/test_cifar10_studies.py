"""The CIFAR-10 study pipelines (issues 13 and 14): the plans are the issues' protocols, and the --tiny pipeline
runs end to end, skips finished units, resumes partial ones and reports what is missing."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffguide.studies.cifar10 import aligned_plan, aligned_study, guidance_plan, guidance_study, run_next
from diffguide.studies.cifar10.assets import tiny_assets
from diffguide.studies.cifar10.report import aligned_report
from diffguide.studies.cifar10.plan import extension_scales
from diffguide.studies.cifar10.runner import RECREATED_KINDS, chosen_scale, grid_scales, load_results, needed, run_training


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
        mine = [u for u in grid if u.params["method"] == method]
        assert [u.params["scale"] for u in mine if "extension" not in u.params] == list(methods[method]["grid"])
        assert [(u.params["extension"], u.params["scale"]) for u in mine if "extension" in u.params] \
            == extension_scales(methods[method]["grid"], 2)
    assert extension_scales((0.125, 0.25, 0.5, 1.0, 2.0), 2) == [(-1, 0.0625), (-2, 0.03125), (1, 4.0), (2, 8.0)]
    assert extension_scales((0.0,), 2) == []  # no guidance: nothing to extend
    assert methods["elucd_resnet32"]["grid"] == methods["js_a0.5_e0.9"]["grid"] == (0.125, 0.25, 0.5, 1.0, 2.0)
    assert {(u.params["sampler"], u.params["steps"], u.params["seed"]) for u in subset} \
        == {("ddim", 50, s) for s in (1, 2, 3)}
    assert methods["cfg"]["grid"] == (0.25, 0.5, 1.0, 2.0, 3.0)
    assert methods["elucd_resnet32"]["schedule_params"] == {"gamma": 0.3}
    assert methods["elucd_resnet32"]["objective_params"] == {"tau1": 1.0, "tau2": 0.5}
    assert methods["tilted"]["objective_params"] == {"t_tilde": -0.2}
    x0_betas = {name: spec["softplus_beta"] for name, spec in methods.items() if str(spec.get("guide")).startswith("resnet")}
    assert x0_betas.pop("elucd_resnet32_softplus3") == 3.0 and set(x0_betas.values()) == {10.0}  # amendment 2
    assert {methods[f"entropy_{r}"]["objective_params"]["rule"] for r in ("confidence", "inverse_entropy", "time")} \
        == {"confidence", "inverse_entropy", "time"}
    base, ce, sece = guidance_plan.classifier_units()
    assert (base.kind, ce.kind, sece.kind) == ("train_classifier", "calibrate", "calibrate")
    assert (base.params["ece_weight"], ce.params["ece_weight"], sece.params["ece_weight"]) == (0.0, 0.0, 0.1)
    assert ce.needs == sece.needs == ("clf_base",) and ce.params["init_from"] == sece.params["init_from"] == "clf_base"
    assert {k: v for k, v in ce.params.items() if k != "ece_weight"} == \
        {k: v for k, v in sece.params.items() if k != "ece_weight"}  # the matched control: only λ differs
    assert (sece.params["lr"], sece.params["weight_decay"]) == (1e-5, 0.0)  # the spec's fine-tuning values
    assert {m: methods[m]["guide"] for m in ("adm_g_base", "adm_g_ce", "adm_g_sece")} == \
        {"adm_g_base": "clf_base", "adm_g_ce": "clf_ce", "adm_g_sece": "clf_sece"}
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
    seeds = {}
    for u in steps:
        seeds.setdefault((u.params["method"], u.params["scale"], u.params["sampler"], u.params["steps"]), []).append(
            u.params["seed"])
    for (arm, scale, sampler, n), found in seeds.items():  # 3 seeds at the common w and at the claims' best-w points
        claim = (sampler, n) in (("ddim", 10), ("ddim", 20), ("ddim", 50))
        assert found == ([1, 2, 3] if scale == 1.0 or claim else [1]), (arm, scale, sampler, n)
    order = [u.id for u in units if u.kind == "train"]
    assert order == ["standard", "aligned_ft_w1", "aligned_w1", "aligned_w2", "aligned_w1_stopgrad"]  # amendment 3
    assert units[-1].params["sampler"] == "ddpm"  # DDPM 250, the reference point, runs last
    # amendment 3: all that needs the standard model's weights (but the non-claim step points) precedes the first
    # from-scratch aligned arm, which is trained once and used as one block before the next arm is trained
    ids = [u.id for u in units]
    claim_points = set(aligned_plan.CLAIM_STEP_POINTS)

    def in_block(u):
        return u.params.get("group") != "steps" or (u.params["sampler"], u.params["steps"]) in claim_points

    uses = {arm: [i for i, u in enumerate(units) if in_block(u) and arm in (u.id, *u.needs)]
            for arm in aligned_plan.ARMS}
    assert max(uses["standard"] + uses["aligned_ft_w1"]) < ids.index("aligned_w1")
    for arm, nxt in (("aligned_w1", "aligned_w2"), ("aligned_w2", "aligned_w1_stopgrad")):
        assert min(uses[arm]) == ids.index(arm) and max(uses[arm]) < ids.index(nxt)
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


def test_edge_rule_extends_a_grid_whose_best_is_at_its_end():
    """EluCD's grid (0.125 … 2) with FID falling towards 0: the rule asks for 0.0625, then 0.03125 (two halvings at
    most), never for the points above; a minimum inside the grid settles it at once."""
    study = guidance_study({}, tiny=False)
    points = {u.params["scale"]: u for u in _samples(study.units, "grid") if u.params["method"] == "elucd_resnet32"}
    results = {points[s].id: _fake(points[s], 10.0 + s) for s in (0.125, 0.25, 0.5, 1.0, 2.0)}
    assert grid_scales(study, "elucd_resnet32", results) == ([0.0625, 0.125, 0.25, 0.5, 1.0, 2.0], False)
    assert chosen_scale(study, "elucd_resnet32", results) is None
    assert needed(study, points[0.0625], results) is True and needed(study, points[0.03125], results) is None
    results[points[0.0625].id] = _fake(points[0.0625], 10.0 + 0.0625)
    results[points[0.03125].id] = _fake(points[0.03125], 10.0 + 0.03125)
    assert grid_scales(study, "elucd_resnet32", results) == ([0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0], True)
    assert chosen_scale(study, "elucd_resnet32", results) == 0.03125  # at the edge after two extensions: kept
    assert needed(study, points[4.0], results) is False and needed(study, points[8.0], results) is False
    results = {points[s].id: _fake(points[s], 10.0 + abs(s - 0.5)) for s in (0.125, 0.25, 0.5, 1.0, 2.0)}
    assert chosen_scale(study, "elucd_resnet32", results) == 0.5
    assert needed(study, points[0.0625], results) is False
    results[points[4.0].id] = _fake(points[4.0], 0.0)  # a run outside the settled grid chooses nothing
    assert chosen_scale(study, "elucd_resnet32", results) == 0.5


def test_guidance_plan_runs_tier_by_tier():
    units = [u for u in guidance_plan.units() if u.kind != "sample" or u.params["group"] not in ("subset", "moreseeds")]
    position = {u.id: i for i, u in enumerate(units)}
    first = [u for u in units if u.kind == "sample" and u.params["method"] in guidance_plan.TIERS[0]]
    second = [u for u in units if u.kind == "sample" and u.params["method"] in guidance_plan.TIERS[1]]
    assert max(position[u.id] for u in first) < position["clf_base"] < min(position[u.id] for u in second)
    last_final = max(position[u.id] for u in second if u.params["group"] == "final")
    third = [u for u in units if u.kind == "sample" and u.params["method"] in guidance_plan.TIERS[2]]
    assert last_final < min(position[u.id] for u in third)
    others = [u for u in units if u.kind == "sample" and u.params["method"] == "hellinger_a0.25_e0.9"]
    assert min(position[u.id] for u in others) > max(position[u.id] for u in third + second + first)


def test_guidance_plan_runs_the_pictures_and_subset_after_tier_4_and_before_the_other_grids():
    """Amendment 8: after tier 4's last final come ‖∇J‖, the sample grids and the DDIM-50 subset of every method
    with a chosen scale (those needing a noise-aware classifier earlier, after tier 2: amendment 7), then the other
    methods' grids; the combination with CFG's sample grid comes after its own finals. Same units as before."""
    units = guidance_plan.units()
    position = {u.id: i for i, u in enumerate(units)}
    assert len(position) == len(units)
    fourth = [u for u in units if u.kind == "sample" and u.params["method"] in guidance_plan.TIERS[3]
              and u.params["group"] in ("grid", "final")]
    moved = [u for u in units if (u.kind in ("gradnorm", "sample_grid") or u.params.get("group") == "subset")
             and not set(u.needs) & set(guidance_plan.NOISE_AWARE.values())
             and u.params.get("method") != "best_cg_plus_cfg"]
    assert {u.kind for u in moved} == {"gradnorm", "sample_grid", "sample"}
    combination = [u for u in units if u.params.get("method") == "best_cg_plus_cfg"]
    other_grids = [u for u in units if u.params.get("group") == "grid" and u.params["method"] == "elucd_resnet44"]
    assert max(position[u.id] for u in fourth) < min(position[u.id] for u in moved)
    assert max(position[u.id] for u in moved) < min(position[u.id] for u in other_grids)
    combined_grid = next(u for u in combination if u.kind == "sample_grid")
    assert max(position[u.id] for u in combination if u.kind == "sample") < position[combined_grid.id]


def setting_measurement(path: Path, current_steps_per_s: float, candidate_steps_per_s: float) -> Path:
    """A cifar_throughput JSON with amendment 5's two rows, and rows its rule must ignore (eager, batch 256)."""
    def row(qkv, memory_format, steps_per_s, fast=True, batch=128):
        return {"section": "train", "fast": fast, "batch": batch, "steps_per_s": steps_per_s, "loss": "standard",
                "qkv_layout": qkv, "memory_format": memory_format}

    rows = [row("strided", "eager", 99.0, fast=False), row("strided", "channels_last", current_steps_per_s),
            row("contiguous", "contiguous", candidate_steps_per_s), row("strided", "channels_last", 99.0, batch=256)]
    path.write_text(json.dumps({"benchmark": "cifar_throughput", "rows": rows}))
    return path


def test_amendment_5_switches_the_training_setting_at_a_tenth_less_step_time(tmp_path):
    """aligned_plan.training_setting: the candidate (q/k/v contiguous, contiguous memory) when its step takes at
    least 10% less time than the current setting's (steps/s 36 vs 40: exactly 10%; 36 vs 39.9: 9.8%), the current
    one below that or without a measurement; a measurement without the two rows is an error, not a silent default."""
    from diffguide.studies.cifar10.plan import TrainingSetting

    candidate, current = aligned_plan.CANDIDATE_SETTING, TrainingSetting()
    assert candidate.record() == {"attention_qkv": "contiguous", "memory_format": "contiguous"}
    assert current.record() == {"attention_qkv": "strided", "memory_format": "channels_last"}
    decide = lambda a, b: aligned_plan.training_setting(setting_measurement(tmp_path / "m.json", a, b))  # noqa: E731
    assert decide(36.0, 40.0) == candidate and decide(36.0, 44.0) == candidate
    assert decide(36.0, 39.9) == current and decide(40.0, 36.0) == current
    assert aligned_plan.training_setting(None) == current == aligned_plan.training_setting(tmp_path / "absent.json")
    (tmp_path / "m.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="expected fast batch-128 standard-loss rows"):
        aligned_plan.training_setting(tmp_path / "m.json")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny aligned study, whole, with amendment 5's candidate setting (its rule given a measurement that
    triggers it), noting the attention layout and memory format each training and sampling unit ran in."""
    import diffguide.accel as accel
    import diffguide.nets.adm as adm
    from diffguide.studies.cifar10 import runner

    root = tmp_path_factory.mktemp("cifar10_tiny")
    study = aligned_study(tiny_assets(root / "assets"), tiny=True,
                          setting_measurement=setting_measurement(root / "measurement.json", 36.0, 42.0))
    seen = {}

    def noting(function):
        def wrapped(study, unit, *args, **kwargs):
            seen[unit.id] = (adm.QKV_CONTIGUOUS, accel.channels_last_enabled())
            return function(study, unit, *args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        for name in ("run_training", "run_sample"):
            patch.setattr(runner, name, noting(getattr(runner, name)))
        first = run_next(study, root / "cache", root / "results", budget_s=600)
    first["computed_as"] = seen
    return study, root, first


def test_training_units_compute_as_the_study_setting_says_and_record_it(tiny_run):
    """Amendment 5 in effect: every training unit ran with q/k/v contiguous and the contiguous memory format, and
    its record says so; every sampling unit ran q/k/v contiguous and channels-last, as before, and says so."""
    from diffguide.studies.cifar10.provenance import load_trainings

    study, root, first = tiny_run
    seen = first["computed_as"]
    trainings = [u.id for u in study.units if u.kind == "train"]
    samples = [u.id for u in study.units if u.kind == "sample"]
    assert trainings and samples and set(seen) == set(trainings + samples)
    assert all(seen[u] == (True, False) for u in trainings) and all(seen[u] == (True, True) for u in samples)
    assert {(r["attention_qkv"], r["memory_format"]) for r in load_trainings(root / "results")} == \
        {("contiguous", "contiguous")}
    records = [r for r in load_results(root / "results").values() if "metrics" in r]
    assert records and {(r["attention_qkv"], r["memory_format"]) for r in records} == {("contiguous", "channels_last")}


def test_tiny_pipeline_runs_every_unit(tiny_run):
    study, root, first = tiny_run
    assert first["left"] == 0 and first["finished"] == [u.id for u in study.units]
    results = load_results(root / "results")
    assert len(results) == sum(u.kind in ("sample", "sample_grid") for u in study.units)
    record = next(r for r in results.values() if "metrics" in r)
    for key in ("seed", "num_samples", "gpu", "torch", "precision", "seconds_per_1k_samples", "judge_device"):
        assert key in record
    assert record["metrics"]["num_samples"] == 24


def test_each_result_names_the_weights_it_sampled_with(tiny_run, tmp_path):
    """Every finished training leaves a record (its weights' SHA-256, computed here independently, and its steps);
    every sampling record names the digest of the arm it sampled; the report counts the results per weights, and
    results without a name (from before the records) are counted apart."""
    import hashlib
    import json

    from diffguide.studies.cifar10.provenance import load_trainings
    from diffguide.studies.cifar10.report import trainings_section

    study, root, _ = tiny_run
    cache = root / "cache" / study.name / "train"
    trained = [u for u in study.units if u.kind == "train"]
    digests = {u.id: hashlib.sha256((cache / u.id / "model" / "model.safetensors").read_bytes()).hexdigest()[:16]
               for u in trained}
    records = load_trainings(root / "results")
    assert {(r["unit"], r["digest"]) for r in records} == set(digests.items())
    assert all(r["steps"] == study.unit(r["unit"]).params["steps"] and r["final_loss"] > 0 for r in records)
    results = load_results(root / "results")
    samples = [r for r in results.values() if r.get("group") in ("wcurve", "steps")]
    assert samples and all(r["weights"] == {r["method"]: digests[r["method"]]} for r in samples)
    table = "\n".join(trainings_section(study, results, root / "results"))
    arm = trained[0].id
    using = sum(arm in r.get("weights", {}) for r in results.values())
    row = next(line for line in table.splitlines() if line.startswith(f"| `{arm}` | `{digests[arm]}` |"))
    assert row.startswith(f"| `{arm}` | `{digests[arm]}` | {trained[0].params['steps']} |")
    assert using > 0 and row.endswith(f"| {using} |") and " | q/k/v contiguous, contiguous | " in row
    old = {k: {**v, "weights": {}} if k == samples[0]["unit"] else v for k, v in results.items()}
    assert f"| `{samples[0]['method']}` | not recorded" in "\n".join(trainings_section(study, old, root / "results"))
    assert json.loads(json.dumps(records)) == records  # plain JSON


def test_a_steps_cell_whose_seeds_used_two_trainings_is_marked(tiny_run, tmp_path):
    """A FID-vs-steps cell whose seeds sampled different weights of one arm (trained again from the same seed)
    gets a dagger and the footnote; the tiny run, one training per arm, has neither. The cell's number is unchanged."""
    import shutil

    study, root, _ = tiny_run
    clean = aligned_report(study, root / "cache", root / "results", tmp_path / "clean.md").read_text()
    assert "†" not in clean
    folder = tmp_path / "results"
    shutil.copytree(root / "results", folder)
    records = {u: r for u, r in load_results(folder).items() if r.get("group") == "steps"}
    cell = {}
    for uid, r in records.items():
        cell.setdefault((r["method"], r["scale"], r["sampler"], r["steps"]), []).append(uid)
    key, uids = next((k, v) for k, v in cell.items() if len(v) > 1)
    first = json.loads((folder / f"{uids[0]}.json").read_text())
    (folder / f"{uids[0]}.json").write_text(json.dumps({**first, "weights": {key[0]: "0" * 16}}))
    marked = aligned_report(study, root / "cache", folder, tmp_path / "marked.md").read_text()
    assert marked.count(" †") == 1 and "† its seeds sampled more than one training" in marked
    row = next(line for line in marked.splitlines() if " †" in line)
    assert row.startswith(f"| {key[0]} | ")
    assert row.replace(" †", "") in clean.splitlines()


def test_scoring_with_the_kept_assets_gives_the_numbers_of_a_fresh_load(tiny_run):
    """The units of one process share the Inception network, the reference (and its k-NN radii) and the judge
    (accel.kept); scoring a unit's samples again with everything loaded afresh gives exactly its recorded metrics
    and judge accuracy (the same arithmetic on the same inputs; the JSON keeps floats exactly)."""
    from diffguide.metrics import InceptionFeatures, Reference, evaluate_features
    from diffguide.studies.cifar10.assets import load_judge

    study, root, _ = tiny_run
    cache = root / "cache" / study.name
    results = load_results(root / "results")
    scored = [r for r in results.values() if "metrics" in r]
    assert len(scored) > 2
    for record in scored[:2]:
        assert set(record["timing"]) == {"sampling_s", "features_s", "metrics_s", "judge_s"}
        assert record["timing"]["sampling_s"] == record["sampling_seconds"]
        with np.load(cache / "samples" / record["unit"] / "samples.npz") as data:
            images, labels = data["arr_0"], data["arr_1"]
        features = InceptionFeatures(study.assets["inception"], device="cpu")(images)
        fresh = evaluate_features(features, Reference.load(cache / "reference.npz"), seed=record["seed"],
                                  device="cpu")
        assert record["metrics"] == fresh
        judge = load_judge(study.assets["judge"], "cpu")
        with torch.no_grad():
            predicted = judge(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).argmax(1).numpy()
        assert record["judge_consistency"] == float((predicted == labels).mean())


def test_kept_assets_load_once_per_key_and_drop_the_least_recently_used(tmp_path):
    from diffguide import accel
    from diffguide.accel import file_identity

    loads = []
    kept = lambda key: accel.kept("test-kind", key, lambda: loads.append(key) or object())  # noqa: E731
    first = kept(("a",))
    assert kept(("a",)) is first and loads == [("a",)]
    for name in "bcde":  # 4 more keys: "a" (the least recently used) is dropped
        kept((name,))
    assert kept(("e",)) is not first and loads == [("a",), ("b",), ("c",), ("d",), ("e",)]
    kept(("a",))
    assert loads[-1] == ("a",)
    path = tmp_path / "weights.th"
    path.write_bytes(b"1")
    before = file_identity(path)
    path.write_bytes(b"22")  # rewritten on disk: another key, loaded afresh
    assert file_identity(path) != before
    accel._kept.pop("test-kind")


def test_second_run_skips_and_partial_unit_resumes(tiny_run):
    study, root, _ = tiny_run
    folder = root / "results"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    again = run_next(study, root / "cache", folder, budget_s=600)
    assert again["ran"] == [] and {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == mtimes
    os.remove(root / "cache" / study.name / "train" / "aligned_w1" / "done.json")  # a training cut short
    assert run_next(study, root / "cache", folder, budget_s=600)["ran"] == []  # ... that nothing left needs
    victim = next(u for u in study.units if u.kind == "sample" and u.params["group"] == "steps"
                  and "aligned_w1" in u.needs)
    (folder / f"{victim.id}.json").unlink()
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
    # steps waits; aligned_w2, whose units are all done, is not trained again
    assert picked["ran"] == [u.id for u in curve[:2]] and picked["left"] == 1
    rest = run_next(study, root / "cache", folder, budget_s=600)
    assert rest["ran"] == [steps.id] and rest["left"] == 0


def test_report_lists_missing_runs(tiny_run, tmp_path):
    study, root, _ = tiny_run
    empty = aligned_report(study, tmp_path / "cache", tmp_path / "results", tmp_path / "empty.md").read_text()
    counted = [u for u in study.units if u.kind not in RECREATED_KINDS]  # the reference is listed apart
    assert f"{len(counted)} of {len(study.units)} units" in empty and len(counted) < len(study.units)
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


# --- the diagnostic units: trajectories, calibration, ‖∇J‖ along t, sample grids ---

def _needs_come_first(units):
    seen = set()
    for unit in units:
        assert set(unit.needs) <= seen, (unit.id, set(unit.needs) - seen)
        seen.add(unit.id)


def test_diagnostic_units_follow_what_they_need_in_both_plans():
    units = guidance_plan.units()
    _needs_come_first(units)
    _needs_come_first(aligned_plan.units())
    calibration = {u.params["guide"]: u for u in units if u.kind == "calibration"}
    assert set(calibration) == {"resnet20", "resnet32", "resnet44", "clf_base", "clf_ce", "clf_sece"}  # every guide
    assert calibration["clf_sece"].needs == ("trajectories__ddpm100__seed10__n500", "clf_sece")
    (gradnorm,) = [u for u in units if u.kind == "gradnorm"]
    assert gradnorm.params["methods"] == ["elucd_resnet32", "reverse_kl_a0.5_e0.9", "js_a0.5_e0.9"]
    ids = [u.id for u in units]
    for i, u in enumerate(units):  # pictures wait for chosen scales: planned after the seed-0 grids they read
        if u.kind in ("gradnorm", "sample_grid"):
            read = u.params.get("methods") or [u.params["method"]]
            assert all(j < i for j, v in enumerate(units) if v.params.get("group") == "grid"
                       and v.params["method"] in read), u.id
    # amendment 7: everything that needs a noise-aware classifier runs before tier 3, so one training serves it
    tier3 = min(i for i, u in enumerate(units) if u.params.get("method") == "js_a0.5_e0.9")
    classifier_users = [i for i, u in enumerate(units) if {"clf_base", "clf_ce", "clf_sece"} & {u.id, *u.needs}]
    assert max(classifier_users) < tier3 and ids.index("subset__adm_g_sece__sbest__ddim50__seed3__n10000") < tier3
    grids = [u for u in units if u.kind == "sample_grid"]
    assert {u.params["scale"] for u in grids} == {None} and {u.params["num_samples"] for u in grids} == {100}
    aligned = [u for u in aligned_plan.units() if u.kind == "sample_grid"]
    assert sorted((u.params["method"], u.params["scale"]) for u in aligned) == sorted(
        (arm, w) for arm in ("standard", "aligned_w1", "aligned_w2") for w in (0.0, 1.0, 3.0))
    assert all(u.est_s > 0 for u in units if u.kind not in ("sample", "train", "train_classifier", "reference"))


class _EncodedConfusion(torch.nn.Module):
    """Off-the-shelf stand-in with a known confusion: x[:, 0, 0, 0] = p/8 − 1/2 encodes the predicted class p and
    x[:, 1, 0, 0] = 2c − 1 the confidence c; logits log c at p, log((1 − c)/9) elsewhere, so softmax_p = c."""

    def forward(self, x):
        predicted = torch.round((x[:, 0, 0, 0].double() + 0.5) * 8).long()
        confidence = (x[:, 1, 0, 0].double() + 1) / 2
        logits = torch.log((1 - confidence) / 9)[:, None].repeat(1, 10)
        logits[torch.arange(len(x)), predicted] = torch.log(confidence)
        return logits


class _ConfidenceOverTime(torch.nn.Module):
    """Noise-aware stand-in: always class 0 with confidence c(t) = 0.5 + 0.4·t/999, whatever x_t."""

    def forward(self, x, t):
        c = 0.5 + 0.4 * t.double() / 999
        logits = torch.log((1 - c) / 9)[:, None].repeat(1, 10)
        logits[:, 0] = torch.log(c)
        return logits


def _encoded(predicted, confidence):
    x = np.zeros((len(predicted), 3, 4, 4), dtype=np.float16)  # both codes are multiples of 1/8: exact in float16
    x[:, 0, 0, 0], x[:, 1, 0, 0] = np.asarray(predicted) / 8 - 0.5, 2 * np.asarray(confidence) - 1
    return x


def test_calibration_of_a_known_confusion_along_a_trajectory():
    """40 samples, labels k mod 10. Step t = 999: c = 0.5 for all, 10 correct → accuracy 0.25, ECE = |0.25 − 0.5|.
    Step t = 0: c = 0.75 for 20 samples (15 correct: gap 0) and 0.5 for 20 (5 correct: gap 0.25) → ECE = ½·0.25.
    Pooled: bin 0.5 holds 60 samples, 15 correct (gap 0.25), bin 0.75 holds 20 (gap 0) → ECE = ¾·0.25. At one
    confidence level the smoothed residual r̂(t) is the constant p̂ − acc, so smECE = |p̂ − acc| for any bandwidth.
    Tolerance 1e-9: float64 softmax round-off (~1e-16) and smECE's grid interpolation of a constant ratio."""
    from diffguide.studies.cifar10.calibration import trajectory_calibration

    labels = np.arange(40) % 10
    wrong = (labels + 1) % 10
    first = np.where(np.arange(40) < 10, labels, wrong)
    last = np.where(np.arange(40) < 15, labels, wrong)
    last[20:25] = labels[20:25]
    conf_last = np.where(np.arange(40) < 20, 0.75, 0.5)
    x0 = np.stack([_encoded(first, np.full(40, 0.5)), _encoded(last, conf_last)])
    result = trajectory_calibration(_EncodedConfusion(), "x0", {"x0": x0, "t": np.array([999, 0]), "labels": labels})
    rows = {row["t"]: row for row in result["ece_t"]}
    assert rows[999]["accuracy"] == 0.25 and rows[0]["accuracy"] == 0.5
    assert rows[999]["ece"] == pytest.approx(0.25, abs=1e-9) and rows[999]["smece"] == pytest.approx(0.25, abs=1e-9)
    assert rows[0]["ece"] == pytest.approx(0.125, abs=1e-9)
    assert result["pooled"]["ece"] == pytest.approx(0.1875, abs=1e-9) and result["pooled"]["n"] == 80


def test_noise_aware_calibration_reads_x_t_at_its_own_t_and_clean_at_t_0():
    """Always class 0 at confidence c(t), labels k mod 10: accuracy 0.1 and ECE = smECE = c(t) − 0.1 (one
    confidence level; see above); c(999) = 0.9, c(500) = 0.5 + 0.4·500/999, c(0) = 0.5. x_t unbounded (×5)."""
    from diffguide.studies.cifar10.calibration import clean_calibration, image_batches, trajectory_calibration

    labels = np.arange(30) % 10
    x_t = 5 * np.random.default_rng(0).standard_normal((3, 30, 3, 4, 4)).astype(np.float16)
    result = trajectory_calibration(_ConfidenceOverTime(), "x_t", {"x_t": x_t, "t": np.array([999, 500, 0]),
                                                                   "labels": labels})
    for row, c in zip(result["ece_t"], (0.9, 0.5 + 0.4 * 500 / 999, 0.5)):
        assert row["accuracy"] == pytest.approx(0.1, abs=1e-12)
        assert row["ece"] == pytest.approx(c - 0.1, abs=1e-9) and row["smece"] == pytest.approx(c - 0.1, abs=1e-9)
    images = np.random.default_rng(1).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    clean = clean_calibration(_ConfidenceOverTime(), "x_t", image_batches(images, labels, batch=7))
    assert clean["n"] == 30 and clean["ece"] == pytest.approx(0.4, abs=1e-9)


GUIDANCE_PARTS = ["reference", "clf_*", "trajectories__*", "calibration__*", "grid__none__*", "grid__cfg__*",
                  "grid__adm_g_*", "grid__elucd_resnet32__*", "grid__reverse_kl_a0.5_e0.9__*",
                  "grid__js_a0.5_e0.9__*", "gradnorm__*", "samplegrid__*"]


@pytest.fixture(scope="module")
def tiny_guidance(tmp_path_factory):
    """The tiny guidance study, run for the diagnostic units and what they need (grids of 7 methods only)."""
    root = tmp_path_factory.mktemp("cifar10_guidance_tiny")
    study = guidance_study(tiny_assets(root / "assets"), tiny=True)
    first = run_next(study, root / "cache", root / "results", budget_s=600, only=GUIDANCE_PARTS)
    return study, root, first


def test_the_two_fine_tunes_start_from_the_base_classifier_and_differ_in_lambda_only(tiny_guidance):
    """clf_ce and clf_sece are fine-tuned from clf_base: their 'before' evaluations (the base weights, the same
    seeded ECE_t noise) are identical, their configs differ in λ alone, and each releases a model/ folder."""
    study, root, _ = tiny_guidance
    train = root / "cache" / study.name / "train"
    configs = {g: json.loads((train / g / "calibration_config.json").read_text()) for g in ("clf_ce", "clf_sece")}
    assert (configs["clf_ce"].pop("ece_weight"), configs["clf_sece"].pop("ece_weight")) == (0.0, 0.1)
    assert configs["clf_ce"] == configs["clf_sece"] and configs["clf_ce"]["noise_aware"] is True
    assert configs["clf_ce"]["lr"] == 1e-5 and configs["clf_ce"]["weight_decay"] == 0.0
    before = [(train / g / "calibration_before.json").read_text() for g in ("clf_ce", "clf_sece")]
    assert before[0] == before[1]
    assert all((train / g / "model" / "config.json").is_file() for g in ("clf_base", "clf_ce", "clf_sece"))


def test_tiny_guidance_runs_the_diagnostic_units_and_skips_them_when_done(tiny_guidance):
    from diffguide.studies.cifar10.runner import status

    study, root, first = tiny_guidance
    folder = root / "results"
    diagnostic = [u for u in study.units if u.kind in ("trajectories", "calibration", "gradnorm", "sample_grid")]
    ran = set(first["finished"])
    waits = {u.id for u in diagnostic if u.params.get("method") in
             ("tilted", "entropy_confidence", "forward_kl_a0.5_e0.9", "hellinger_a0.5_e0.9", "best_cg_plus_cfg")}
    assert {u.id for u in diagnostic} - waits <= ran and not waits & ran  # their grids were not run: they wait
    assert waits <= set(status(study, root / "cache", folder)["waiting"])
    gradnorm = json.loads((folder / "gradnorm__ddpm3__seed1__n20.json").read_text())
    assert set(gradnorm["curves"]) == {"elucd_resnet32", "reverse_kl_a0.5_e0.9", "js_a0.5_e0.9"}
    assert (folder / gradnorm["plot"]).is_file()
    for u in (u for u in diagnostic if u.kind == "calibration"):
        record = json.loads((folder / f"{u.id}.json").read_text())
        assert all((folder / name).is_file() for name in record["plots"].values())
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert run_next(study, root / "cache", folder, budget_s=600, only=GUIDANCE_PARTS)["ran"] == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    (folder / "calibration__resnet32.json").unlink()
    assert run_next(study, root / "cache", folder, budget_s=600, only=GUIDANCE_PARTS)["ran"] == [
        "calibration__resnet32"]


def test_a_noise_aware_guides_own_accuracy_is_its_t0_prediction_on_the_samples(tiny_guidance):
    """ADM-G units report the guiding classifier's own accuracy beside the judge's: the noise-aware classifier at
    t = 0 on the unit's samples, recomputed here from its release and the samples file (the same float32 CPU ops,
    so the same argmax: equal exactly). That t = 0 is read, not another t, is the next test's: these tiny
    classifiers barely depend on t."""
    from diffguide.api import load_guidance_classifier

    study, root, _ = tiny_guidance
    unit = next(u.id for u in study.units if u.id.startswith("grid__adm_g_sece__"))
    record = json.loads((root / "results" / f"{unit}.json").read_text())
    with np.load(root / "cache" / study.name / "samples" / unit / "samples.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    classifier, on = load_guidance_classifier(str(root / "cache" / study.name / "train" / "clf_sece" / "model"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        predictions = classifier(x, torch.zeros(len(x), dtype=torch.long)).argmax(1).numpy()
    assert on == "x_t" and record["guide_accuracy"] == float((predictions == labels).mean())


def test_gradnorm_records_the_objectives_own_gradient_at_the_first_step(tiny_guidance):
    """At the first step x_t = x_T (the noise stream's first draw) whatever the guidance, so ‖∇J‖ there is the norm of
    ∇_{x_T} J(classifier(x_T, 999), y), computed here directly; the run's s·w(u) (EluCD: s = chosen, sine weight
    1 + 0.3·sin(π·0.999) ≠ 1) must be divided out. Tolerance: the same float32 operations, 1e-5 relative."""
    from diffguide.api import load_guidance_classifier
    from diffguide.guidance import make_objective
    from diffguide.noise import SeededNoise

    study, root, _ = tiny_guidance
    curve = json.loads((root / "results" / "gradnorm__ddpm3__seed1__n20.json").read_text())["curves"]["elucd_resnet32"]
    assert curve["t"][0] == 999 and curve["applied_norm_mean"][0] != pytest.approx(curve["grad_norm_mean"][0])
    guide, _ = load_guidance_classifier(study.assets["guides"]["resnet32"][1])
    x = SeededNoise(1, range(20), (3, 8, 8)).initial().requires_grad_(True)
    labels = torch.arange(20) % 10
    objective = make_objective("baseline", tau1=1.0, tau2=0.5)(guide(x, torch.full((20,), 999)), labels)
    (grad,) = torch.autograd.grad(objective.sum(), x)
    assert curve["grad_norm_mean"][0] == pytest.approx(float(grad.flatten(1).norm(dim=1).mean()), rel=1e-5)


def test_reports_show_the_diagnostic_units(tiny_guidance, tiny_run, tmp_path):
    from PIL import Image

    from diffguide.studies.cifar10.report import guidance_report

    study, root, _ = tiny_guidance
    text = guidance_report(study, root / "cache", root / "results", root / "report.md").read_text()
    clf = json.loads((root / "results" / "calibration__clf_sece.json").read_text())
    row = clf["noised"]["ece_t"][-1]
    assert f"| {row['t']} |" in text and f"{row['ece']:.4f}" in text  # the ECE_t table is read from the JSON
    base = json.loads((root / "results" / "calibration__clf_base.json").read_text())["noised"]["ece_t"][-1]
    cells = " | ".join(f"{base[m]:.4f}" for m in ("accuracy", "ece", "smece"))
    assert f"| {base['t']} | {cells} | " in text  # before (the base classifier) first, then the two fine-tunes
    assert "![clf_sece noised](results/calibration__clf_sece_noised.png)" in text
    assert "(results/gradnorm__ddpm3__seed1__n20.png)" in text
    assert "| best_cg_plus_cfg | – | not yet run (waits for the seed-0 grid) |" in text
    empty = guidance_report(study, tmp_path / "c", tmp_path / "r", tmp_path / "empty.md").read_text()
    assert "| clf_ce | – | – | not yet run |" in empty and "`gradnorm__ddpm3__seed1__n20`" in empty
    aligned, aligned_root, _ = tiny_run
    text = aligned_report(aligned, aligned_root / "cache", aligned_root / "results", aligned_root / "r.md").read_text()
    grid = "samplegrid__aligned_w2__s3__ddim3__seed0__n100"
    assert f"(results/{grid}.png)" in text
    record = json.loads((aligned_root / "results" / f"{grid}.json").read_text())
    assert record["class_counts"] == [10] * 10 and record["settings"]["cfg_w"] == 3.0
    with Image.open(aligned_root / "results" / f"{grid}.png") as image:  # 10 rows of 8-pixel tiles, 2-pixel gaps
        assert image.size[1] == 2 + 10 * (8 + 2)


def test_claims_table_shows_both_sides_and_the_paired_test():
    """A claim's row: each side's mean ± std over the paired seeds, Δ and the one-sided paired t-test's p (here by
    hand: d = (0.2, 0.1, 0.3), t = 0.2 / (0.1/√3) = 3.464, df 2: p = (1 − t/√(t² + 2))/2 = 0.0371). With one of
    its comparisons unrun the claim has no verdict yet."""
    from diffguide.studies.cifar10.report import claims_table
    from diffguide.studies.verdict import compare

    favoured, reference = [10.2, 10.1, 10.3], [10.0, 10.0, 10.0]
    result = {**compare(favoured, reference, sign=1), "favoured": favoured, "reference": reference}
    rows = claims_table([("higher is better: vs ref", result), ("higher is better: vs other", None)])
    assert rows[2] == ("| higher is better | vs ref | 3 | 10.2 ± 0.1 | 10 ± 0 | 0.2 | 0.0371 | agrees | NOT YET RUN |")
    assert rows[3].startswith("| higher is better | vs other | – |")


@pytest.mark.parametrize("error, recorded", [(FloatingPointError("x̂0 overflowed"), True),
                                             (RuntimeError("probabilities contain nan"), True),
                                             (torch.OutOfMemoryError("CUDA out of memory"), False),
                                             (type("CompilerFailed", (torch._dynamo.exc.TorchDynamoException,), {})(
                                                 "inductor failed"), False)])
def test_a_sampling_error_is_the_methods_failure_only_when_it_is_not_the_machines(tiny_run, tmp_path, monkeypatch,
                                                                                   error, recorded):
    """A diverged run (FloatingPointError, a NaN RuntimeError) is recorded as a failure of its method; out of memory
    or a compiler failure says nothing about the method: it is raised and nothing is written, so the unit stays
    unrun instead of counting against the method."""
    import diffguide.api as api
    from diffguide.studies.cifar10.runner import result_path, run_sample

    study, root, _ = tiny_run
    unit = next(u for u in study.units if u.kind == "sample")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(api, "sample", fail)
    if recorded:
        record = run_sample(study, unit, root / "cache" / study.name, tmp_path, load_results(root / "results"))
        assert record["failed"] and json.loads(result_path(tmp_path, unit).read_text())["failed"]
    else:
        with pytest.raises(type(error)):
            run_sample(study, unit, root / "cache" / study.name, tmp_path, load_results(root / "results"))
        assert not result_path(tmp_path, unit).exists()


def test_the_judge_runs_on_the_units_device_when_none_is_named(monkeypatch):
    """A real study names no device (None: the GPU when there is one). The judge must be loaded on that resolved
    device like every other network of a unit; it used to receive None and fall back to the CPU (4–7 s of every H200
    unit). Here the resolved device is a stand-in CUDA name that the recording loader only notes."""
    import diffguide.accel as accel
    import diffguide.devices as devices
    from diffguide.studies.cifar10 import assets, scoring

    monkeypatch.setattr(accel, "_kept", {})
    monkeypatch.setattr(devices, "resolve_device", lambda device=None, **kw: torch.device(device or "cuda:3"))
    loaded, original = [], assets.load_judge

    def load(spec, device):
        loaded.append(device)
        return original(spec, "cpu")

    monkeypatch.setattr(assets, "load_judge", load)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    share = scoring.judge_accuracy("random:0", images, np.zeros(6, dtype=np.int64), None)
    assert loaded == [torch.device("cuda:3")] and 0 <= share <= 1


def test_a_noise_aware_judge_reads_the_images_at_t0(tmp_path):
    """``noise-aware:FOLDER`` (how a unit scores its noise-aware guide's own accuracy) is the classifier at t = 0:
    its logits equal f(x, 0) exactly (the same CPU ops) and differ from f(x, 999), so a wrong timestep fails here
    (the tiny study's classifiers barely depend on t)."""
    from diffguide.checkpoints import save_network
    from diffguide.nets import EncoderUNetModel
    from diffguide.studies.cifar10.assets import load_judge

    torch.manual_seed(0)
    net = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=10, num_res_blocks=1,
                           attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32, pool="attention")
    with torch.no_grad():
        for p in net.parameters():  # away from the zero-initialised output layers, so t changes the logits
            p.normal_(0, 0.2)
    folder = save_network(net.eval(), tmp_path / "clf")
    judge = load_judge(f"noise-aware:{folder}")
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        logits = judge(x)
        assert torch.equal(logits, net(x, torch.zeros(8, dtype=torch.long)))
        assert not torch.allclose(logits, net(x, torch.full((8,), 999)), atol=1e-3)


def test_a_study_samples_contiguous_and_trains_strided(tmp_path, monkeypatch):
    """plan.attention_qkv_contiguous: sampling units run with q, k, v contiguous, training units (here the tiny
    noise-aware classifier, which has attention) strided, the layout the trained arms they are compared with ran
    with; SDPA is handed q in the layout of the moment; each unit's JSON records it, and the library's default is
    back once the command is over."""
    import diffguide.nets.adm as adm
    from diffguide.studies.cifar10 import plan, runner

    study = guidance_study(tiny_assets(tmp_path / "assets"), tiny=True)  # (its stand-in model trains unpinned)
    seen, layout_at_start = [], {}
    original = adm.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((adm.QKV_CONTIGUOUS, q.stride(-1) == 1))
        return original(q, k, v, *args, **kwargs)

    def recording(name, function):
        def wrapped(study, unit, *args, **kwargs):
            layout_at_start[unit.id] = adm.QKV_CONTIGUOUS
            return function(study, unit, *args, **kwargs)
        monkeypatch.setattr(runner, name, wrapped)

    recording("run_sample", runner.run_sample)
    recording("run_training", runner.run_training)
    monkeypatch.setattr(adm.F, "scaled_dot_product_attention", spy)
    with adm.qkv_layout(False):  # a caller's layout is not what the units run with
        run_next(study, tmp_path / "cache", tmp_path / "results", budget_s=600,
                 only=["reference", "grid__none__*", "clf_base"])
    grids = [u for u in layout_at_start if u.startswith("grid__none__")]
    assert grids and all(layout_at_start[u] is True for u in grids) and layout_at_start["clf_base"] is False
    record = json.loads(next((tmp_path / "results").glob("grid__none__*.json")).read_text())
    assert record["attention_qkv"] == "contiguous"
    assert {layout for layout, _ in seen} == {True, False} and all(layout == contiguous for layout, contiguous in seen)
    assert [plan.attention_qkv_contiguous(k) for k in ("sample", "sample_grid", "calibration", "train",
                                                       "train_classifier", "calibrate")] == [True] * 3 + [False] * 3
    assert adm.QKV_CONTIGUOUS is True


def test_the_committed_sampling_runs_of_one_study_share_one_layout():
    """The claims and the main tables compare units of one attention layout: every committed scored run but the
    seed-0 grids (which only choose scales) ran contiguous; the strided ones are kept apart, and are strided."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results"
    kept_apart = sorted((root / "cifar10_guidance_strided").glob("final__*.json"))
    assert len(kept_apart) == 12  # the rule's 12 finals (plan.attention_qkv_contiguous)
    for study in ("cifar10_guidance", "cifar10_cfg_aligned"):
        for path in sorted((root / study).glob("*.json")):
            record = json.loads(path.read_text())
            if "metrics" in record and record.get("group") != "grid":
                assert record.get("attention_qkv") == "contiguous", path
        for path in sorted((root / f"{study}_strided").glob("*.json")):
            assert json.loads(path.read_text()).get("attention_qkv", "strided") == "strided", path


def test_the_report_shows_a_strided_run_beside_its_contiguous_rerun(tmp_path):
    """strided_section: each kept-apart strided run beside the contiguous run of the same id (or 'not yet run')."""
    from diffguide.studies.cifar10.report import strided_section

    def record(fid, precision, recall):
        return {"metrics": {"fid": fid, "precision": precision, "recall": recall}}

    results, kept = tmp_path / "study", tmp_path / "study_strided"
    kept.mkdir()
    (kept / "final__a__sbest.json").write_text(json.dumps(record(9.5, 0.7, 0.5)))
    (kept / "final__b__sbest.json").write_text(json.dumps(record(11.0, 0.6, 0.55)))
    lines = strided_section({"final__a__sbest": record(9.25, 0.71, 0.49)}, results)
    assert "| `final__a__sbest` | 9.5 | 9.25 | -0.250 | 0.7000 / 0.7100 | 0.5000 / 0.4900 |" in lines
    assert "| `final__b__sbest` | 11 | not yet run | – | 0.6000 / – | 0.5500 / – |" in lines
    assert strided_section({}, tmp_path / "other") == []


def test_a_cache_unit_is_made_only_while_a_unit_left_to_run_needs_it(tmp_path):
    """A fresh machine's cache has no weights, reference or trajectories: such a unit is 'ready' while something
    left to run needs it (directly, or through another cache unit), and 'not needed' once all that needs it is done,
    so that nothing is trained or sampled again for units already finished."""
    from diffguide.studies.cifar10.plan import Unit
    from diffguide.studies.cifar10.runner import Study, status

    units = [Unit("trajectories", "trajectories"), Unit("calibration__a", "calibration", needs=("trajectories",)),
             Unit("clf", "train_classifier"), Unit("clf_ft", "calibrate", needs=("clf",)),
             Unit("calibration__clf_ft", "calibration", needs=("clf_ft", "trajectories")),
             Unit("model", "train"), Unit("calibration__b", "calibration", needs=("model",))]
    study = Study("s", units, {}, {})

    def states(done):
        out = status(study, tmp_path / "cache", tmp_path / "results" / "none")
        return {uid: state for state, ids in out.items() for uid in ids if uid not in done}

    assert states({}) == {"trajectories": "ready", "calibration__a": "blocked", "clf": "ready", "clf_ft": "blocked",
                          "calibration__clf_ft": "blocked", "model": "ready", "calibration__b": "blocked"}
    results = tmp_path / "results" / "none"
    results.mkdir(parents=True)
    for uid in ("calibration__a", "calibration__b"):
        (results / f"{uid}.json").write_text("{}")
    assert states({"calibration__a", "calibration__b"}) == {
        "trajectories": "ready", "clf": "ready", "clf_ft": "blocked", "calibration__clf_ft": "blocked",
        "model": "not needed"}
    (results / "calibration__clf_ft.json").write_text("{}")
    assert set(states({"calibration__a", "calibration__b", "calibration__clf_ft"}).values()) == {"not needed"}


def test_the_cost_column_is_the_fastest_seed():
    """CFG's seeds 1 and 3 (the first of their processes for the [cond, ∅] shape: 104.7 and 105.8 s with
    compilation) against seed 2 (72.0 s): the median would report a compiling run, the minimum the steady cost."""
    from diffguide.studies.cifar10.report import sampling_cost

    assert sampling_cost([{"seconds_per_1k_samples": v} for v in (10.47, 7.20, 10.58)]) == "7.2"
    assert sampling_cost([]) == "–"


def test_a_training_starts_only_if_it_fits_the_session(tmp_path):
    """fits_session: a training not started in this cache needs its whole estimate left to the session (a cache
    does not outlive its machine); a started one goes on; sampling units are held to the command budget instead."""
    from diffguide.studies.cifar10.plan import Unit
    from diffguide.studies.cifar10.runner import fits_session

    train, sample = Unit("arm", "train", est_s=1200.0), Unit("wcurve__arm", "sample", est_s=5000.0)
    assert fits_session(train, tmp_path, 1200.0) and not fits_session(train, tmp_path, 1199.0)
    assert fits_session(train, tmp_path, None) and fits_session(sample, tmp_path, 10.0)
    (tmp_path / "train" / "arm").mkdir(parents=True)  # started here: its checkpoint is in this cache
    assert fits_session(train, tmp_path, 10.0)


def test_the_runner_counts_compilation_and_the_session_clock(tmp_path, monkeypatch):
    """run_next on a fake clock where each unit takes its estimate, plus FIRST_COMPILE_S (75 s) for the first of its
    compile key in the process. Budget 200 s: CFG seed 1 starts (60 + 75 = 135 ≤ 200, clock 135), CFG seed 2 (60 ≤ 65,
    clock 195), then no guidance would need 60 + 75 > 5 and the command stops. Without the allowance the first unit
    would be believed to take 60 s and the budget would overrun by 75 s; a run starting with budget 130 must not
    start it at all (135 > 130). The session clock: with 250 s left to the session at the start, a training of
    estimate 100 s is not started after the two CFG units (250 − 195 = 55 left), though it fits 250."""
    from diffguide.studies.cifar10 import runner
    from diffguide.studies.cifar10.plan import FIRST_COMPILE_S, Unit
    from diffguide.studies.cifar10.runner import Study, start_estimate

    assert FIRST_COMPILE_S == 75.0
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    methods = {"cfg": {"guide": None, "cfg": True}, "none": {"guide": None}}
    units = [Unit(f"final__cfg__seed{s}", "sample", {"method": "cfg", "scale": 1.0}, (), 60.0) for s in (1, 2)]
    units += [Unit("model", "train", {}, (), 100.0),
              Unit("final__none__seed1", "sample", {"method": "none", "scale": 0.0}, (), 60.0)]
    study = Study("s", units, methods, {})
    seen = set()

    def fake_sample(study, unit, cache, results_dir, results):
        clock[0] += start_estimate(study, unit, seen)
        seen.add(runner.compile_key(study, unit))
        (results_dir / f"{unit.id}.json").write_text("{}")

    monkeypatch.setattr(runner, "run_sample", fake_sample)
    monkeypatch.setattr(runner, "run_training", lambda *a: pytest.fail("the training must not start"))
    assert run_next(study, tmp_path / "c", tmp_path / "short", budget_s=130)["ran"] == []
    out = run_next(study, tmp_path / "c", tmp_path / "r", budget_s=200, session_left_s=250)
    assert out["ran"] == ["final__cfg__seed1", "final__cfg__seed2"] and clock[0] == 195.0
    assert start_estimate(study, units[3], seen) == 135.0 and start_estimate(study, units[1], seen) == 60.0


def test_amendment_9_plans_seeds_4_to_6_of_every_claimed_method_after_amendment_8():
    units = guidance_plan.units()
    position = {u.id: i for i, u in enumerate(units)}
    more = _samples(units, "moreseeds")
    claimed = {m for _, favoured, reference, _, _ in guidance_plan.CLAIMS for m in (favoured, reference)}
    assert {(u.params["method"], u.params["seed"]) for u in more} == {(m, s) for m in claimed for s in (4, 5, 6)}
    assert {(u.params["scale"], u.params["num_samples"], u.params["sampler"], u.params["steps"]) for u in more} \
        == {(None, 10000, "ddpm", 100)}
    noise_aware = [u for u in more if any(n.startswith("clf_") for n in u.needs)]
    assert {u.params["method"] for u in noise_aware} == {"adm_g_sece", "adm_g_ce"}  # the one claim on that arm
    more = [u for u in more if u not in noise_aware]
    pictures = [u for u in units if u.kind in ("gradnorm", "sample_grid") and u.params.get("method") != "best_cg_plus_cfg"]
    other_grids = [u for u in _samples(units, "grid") if u.params["method"] == "elucd_resnet44"]
    assert max(position[u.id] for u in pictures) < min(position[u.id] for u in more)
    assert max(position[u.id] for u in more) < min(position[u.id] for u in other_grids)
    # amendment 7's rule holds for them: after tier 2's finals, before tier 3's first unit
    tier2_finals = [u for u in _samples(units, "final") if u.params["method"] in guidance_plan.TIERS[1]]
    tier3 = min(i for i, u in enumerate(units) if u.params.get("method") in guidance_plan.TIERS[2])
    assert max(position[u.id] for u in tier2_finals) < min(position[u.id] for u in noise_aware)
    assert max(position[u.id] for u in noise_aware) < tier3


def _claim_results(study, favoured, reference, differences, seeds=(1, 2, 3), base=10.0):
    """FIDs of a lower-is-better claim's two methods: the reference at ``base``, the favoured lower by each
    difference d_s (so the paired test reads d_s = reference − favoured)."""
    out = {}
    for u in study.units:
        if u.kind == "sample" and u.params["group"] in ("final", "moreseeds") and u.params["seed"] in seeds:
            d = dict(zip(seeds, differences))[u.params["seed"]]
            if u.params["method"] == reference:
                out[u.id] = _fake(u, base)
            elif u.params["method"] == favoured:
                out[u.id] = _fake(u, base - d)
    return out


def test_a_borderline_claim_asks_for_seeds_4_to_6_of_both_its_methods():
    """Amendment 9's band, by hand (df 2: P(T ≥ t) = (1 − t/√(t² + 2))/2). d = (0.1, 0.2, 0.05): mean 0.35/3,
    sd √(0.0175/3), t = √7, p = (1 − √7/3)/2 = 0.0590: within noise and below 2α = 0.10, so borderline — and so is
    the mirror image, d → −d (p = 0.941 the claim's way, 0.0590 the other). d = (0.1, 0.2, 0): t = √3,
    p = (1 − √(3/5))/2 = 0.1127, not borderline; d = (0.2, 0.1, 0.3): p = 0.0371 < α, agrees, not borderline."""
    from diffguide.studies.cifar10.claims import claim_comparison, more_seeds_needed

    study = guidance_study({}, tiny=False)
    fav, ref = "entropy_confidence", "elucd_resnet32"
    more = {(u.params["method"], u.params["seed"]): u for u in _samples(study.units, "moreseeds")}
    others = ("tilted", "entropy_time", "reverse_kl_a0.5_e0.9", "entropy_inverse_entropy")
    background = {}
    for other in others:  # the baseline's other claims: far from borderline (contradicts)
        background.update({k: v for k, v in _claim_results(study, other, ref, (-1.0, -1.1, -1.2)).items()
                           if v["metrics"]["fid"] != 10.0})
    for d, borderline in (((0.1, 0.2, 0.05), True), ((-0.1, -0.2, -0.05), True), ((0.1, 0.2, 0.0), False),
                          ((0.2, 0.1, 0.3), False)):
        results = {**background, **_claim_results(study, fav, ref, d)}
        first = claim_comparison(study, results, fav, ref, "fid", -1)
        assert first["n"] == 3 and bool(first.get("pending")) is borderline
        if d == (0.1, 0.2, 0.05):
            assert first["p"] == pytest.approx((1 - 7 ** 0.5 / 3) / 2, rel=1e-9)
        if d == (0.1, 0.2, 0.0):
            assert first["p"] == pytest.approx((1 - (3 / 5) ** 0.5) / 2, rel=1e-9)
        for method in (fav, ref):
            assert more_seeds_needed(study, more[method, 4], results) is borderline
        assert more_seeds_needed(study, more["tilted", 4], results) is False  # its only claim is settled
    results = _claim_results(study, fav, ref, (0.1, 0.2, 0.05))
    assert more_seeds_needed(study, more[fav, 4], results) is True
    assert more_seeds_needed(study, more["tilted", 4], results) is None  # its claim's seeds 1–3 have not all run
    del results[next(u.id for u in _samples(study.units, "final") if u.params["method"] == fav and u.params["seed"] == 3)]
    assert more_seeds_needed(study, more[fav, 4], results) is None  # seeds 1–2 decide nothing
    assert needed(study, more[fav, 4], results) is None


def test_a_borderline_claim_is_decided_on_seeds_1_to_6_and_the_others_stay_on_1_to_3():
    """Seeds 1–3 borderline (d = (0.1, 0.2, 0.05), above); seeds 4–6 with d = (0.15, 0.12, 0.1) make six
    differences of mean 0.12 and sd √0.0026 = 0.0510: t = 5.765, df 5, p = 0.00110 (scipy) — agrees. The tilted claim shares
    the reference's seeds 4–6 but is not borderline: it stays on its seeds 1–3."""
    from scipy import stats

    from diffguide.studies.cifar10.claims import claim_comparison

    study = guidance_study({}, tiny=False)
    fav, ref = "entropy_confidence", "elucd_resnet32"
    d = (0.1, 0.2, 0.05, 0.15, 0.12, 0.1)
    results = _claim_results(study, fav, ref, d, seeds=(1, 2, 3, 4, 5, 6))
    results.update({k: v for k, v in _claim_results(study, "tilted", ref, (-1.0, -1.1, -1.2, -1.0, -1.0, -1.0),
                                                    seeds=(1, 2, 3, 4, 5, 6)).items() if v["metrics"]["fid"] != 10.0})
    decided = claim_comparison(study, results, fav, ref, "fid", -1)
    t = np.mean(d) / (np.std(d, ddof=1) / np.sqrt(6))
    assert decided["n"] == 6 and decided["outcome"] == "agrees" and not decided.get("pending")
    assert decided["p"] == pytest.approx(stats.t.sf(t, 5), rel=1e-9) == pytest.approx(0.00110, abs=5e-6)
    assert decided["first_stage"]["n"] == 3
    tilted = claim_comparison(study, results, "tilted", ref, "fid", -1)
    assert tilted["n"] == 3 and tilted["outcome"] == "contradicts"
    del results[next(u.id for u in _samples(study.units, "moreseeds") if u.params["method"] == fav
                     and u.params["seed"] == 6)]
    assert claim_comparison(study, results, fav, ref, "fid", -1)["pending"]  # seeds 4–5 alone decide nothing
