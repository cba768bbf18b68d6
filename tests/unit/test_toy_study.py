"""Smoke tests of the two testbed studies (diffguide.studies; scripts/toy_guidance_study.py and
scripts/toy_calibration_study.py only parse arguments): each study's core on a tiny setting, the structure of what it
writes, and exact facts it relies on."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from diffguide.adapter import Denoiser
from diffguide.guidance import ClassifierGuidance, EluCDMeanShift, Guidance
from diffguide.noise import SeededNoise
from diffguide.samplers import ddpm
from diffguide.schedule import NoiseSchedule
from diffguide.studies import calibration_study, guidance_claims, guidance_grid, guidance_study, metrics, plots, sweep
from diffguide.studies.verdict import AGREES, CONTRADICTS, DIVERGED
from diffguide.studies.options import parse_seeds
from diffguide.toy import BayesClassifier, ExactEps, class_accuracy, mode_coverage, study_mixture

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = {"held", "did not hold", "within noise", "mixed", "not measurable"}


def test_onehot_table_matches_proposition_3_limits():
    table = guidance_grid.onehot_gradient_table(gaps=(0, 64), alpha=1.0, epsilon=0.9)
    far = table["rows"][-1]["norms"]
    by_family = {name.split(" ")[0]: value for name, value in far.items()}
    # reverse KL: ‖α(q_y − e_y)‖ = α(1−ε)·sqrt((K−1)/K), independent of how one-hot p is
    assert table["reverse_kl_limit"] == pytest.approx(0.1 * math.sqrt(3 / 4), rel=1e-12)
    assert by_family["reverse_kl"] == pytest.approx(table["reverse_kl_limit"], rel=1e-9)
    # forward KL, JS, Hellinger and log-softmax vanish (e^{-64}·poly or e^{-32} for Hellinger)
    for family in ("forward_kl", "js", "log_softmax"):
        assert by_family[family] < 1e-24
    assert by_family["hellinger"] < 1e-12
    # the baseline keeps (τ1 − τ2)·e_y = 0.5·e_y in logit space
    assert far["baseline ℓ (τ2=0.5)"] == pytest.approx(0.5, rel=1e-12)
    # at Δ = 0 (uniform p) every f-divergence term pushes
    assert all(v > 1e-3 for k, v in table["rows"][0]["norms"].items() if "−α·D" in k)


def test_block_batched_sampling_equals_separate_runs():
    """Blocks of different objectives, scales and seeds in one call give exactly the samples of separate runs
    (tilted's batch is its own block)."""
    mixture = study_mixture()
    n, steps, seeds = 8, 6, [3, 5]
    methods = [guidance_grid.Method("tilted", "tilted", (("t_tilde", -0.2),), 0.1, 3.0),
               guidance_grid.Method("reverse_kl", "reverse_kl", (("alpha", 0.5), ("epsilon", 0.9)), 1.0, 1.0)]
    draws = sweep.seed_draws(seeds, n, 2, steps)
    runs = guidance_study.guided_runs(mixture, methods, seeds, n, steps, draws, progress=False)
    uncond = ExactEps(mixture)
    labels = torch.arange(n) % 4
    for m in methods:
        for seed in seeds:
            guidance = Guidance(classifier=ClassifierGuidance(BayesClassifier(mixture, m.temperature), on="x0",
                                                              objective=m.build_objective(), scale=m.scale,
                                                              softplus_beta=None),
                                rule=EluCDMeanShift(0.3))
            alone = ddpm(Denoiser(lambda x, t, y: uncond(x, t, None), NoiseSchedule.create("linear", str(steps)),
                                  clip_x0=False),
                         SeededNoise(seed, range(n), (2,), dtype=torch.float64), labels, guidance=guidance).samples
            torch.testing.assert_close(runs[(m, seed)]["x"], alone, rtol=1e-9, atol=1e-9)
            assert len(runs[(m, seed)]["t"]) == steps


def test_sample_metrics_on_exact_samples():
    mixture = study_mixture()
    labels = torch.arange(4000) % 4
    x, _ = mixture.sample(4000, labels, generator=torch.Generator().manual_seed(0))
    thresholds = metrics.precision_thresholds(mixture, n=4000)
    exact = metrics.sample_metrics(mixture, x, labels, thresholds, seed=0)
    assert exact["diverged"] == 0
    # exact samples: 95 % inside the 95 % region; the threshold is a quantile of 4000 draws and the test share a mean
    # of 4000 more: each has sd sqrt(0.95·0.05/4000) = 0.0034, so ±0.02 is > 4 sd of their difference
    assert exact["precision"] == pytest.approx(0.95, abs=0.02)
    assert exact["minority_ratio"] == pytest.approx(1.0, abs=0.1)  # share ~1/3 of 1000: sd 0.015/0.33 = 0.045 → 2 sd


def test_diverged_samples_are_failures_in_every_metric():
    """40 diverged samples (10 per class of 1000) are scored, not dropped: accuracy and precision lose exactly their
    share, each class's mode shares are those of its 990 good samples out of 1000, and the distance stays finite and
    grows."""
    mixture = study_mixture()
    labels = torch.arange(4000) % 4
    x, _ = mixture.sample(4000, labels, generator=torch.Generator().manual_seed(0))
    thresholds = metrics.precision_thresholds(mixture, n=4000)
    exact = metrics.sample_metrics(mixture, x, labels, thresholds, seed=0)
    broken_x = x.clone()
    broken_x[:20] = float("inf")
    broken_x[20:40] = torch.tensor([50.0, -3.0], dtype=x.dtype)  # finite but far outside ±12
    broken = metrics.sample_metrics(mixture, broken_x, labels, thresholds, seed=0)
    assert broken["diverged"] == pytest.approx(0.01, abs=1e-12)
    assert broken["accuracy"] == pytest.approx(class_accuracy(mixture, x[40:], labels[40:]) * 0.99, rel=1e-12)
    inside = metrics.log_conditional_density(mixture, x[40:], labels[40:]) >= thresholds[labels[40:]]
    assert broken["precision"] == pytest.approx(float(inside.double().sum()) / 4000, rel=1e-12)
    shares = mode_coverage(mixture, metrics.clamp_diverged(broken_x), labels, valid=~metrics.diverged_mask(broken_x))
    kept = mode_coverage(mixture, x[40:], labels[40:])  # the 990 good samples of each class, shares out of 990
    # shares are stored in float32: 1e-6 is ~10 ulps at 0.3
    assert shares["mode_share"] == pytest.approx([v * 990 / 1000 for v in kept["mode_share"]], abs=1e-6)
    assert math.isfinite(broken["distance"]) and broken["distance"] > exact["distance"]
    # a whole class diverged: still measurable (no NaN), that class scores zero
    gone = x.clone()
    gone[labels == 3] = float("nan")
    dead = metrics.sample_metrics(mixture, gone, labels, thresholds, seed=0)
    assert dead["diverged"] == pytest.approx(0.25) and dead["minority_c3"] == 0.0
    assert all(math.isfinite(v) for v in dead.values())


def test_guidance_study_quick_writes_documented_outputs(tmp_path):
    data = guidance_study.run_study(tmp_path, seeds=[0, 1], quick=True, progress=False, figures=False)
    saved = json.loads((tmp_path / "toy_guidance.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1] and saved["settings"]["samples_per_run"] == 40
    assert saved["environment"]["torch"] == torch.__version__
    assert saved["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(saved["results"]) == len(saved["methods"]) == data["guided_configurations"]
    for result in saved["results"].values():
        assert len(result["per_seed"]) == 2
        assert set(result["mean"]) >= {"accuracy", "precision", "coverage", "minority_ratio", "distance", "grad_late"}
        assert all(math.isfinite(result["mean"][k]) for k in ("accuracy", "precision", "distance", "minority_ratio"))
    assert set(saved["references"]) == {"unguided", "exact conditional", "noise-aware exact p(y|x_t), s=1"}
    assert saved["references"]["exact conditional"]["mean"]["diverged"] == 0
    assert {c["verdict"] for c in saved["claims"]} <= VERDICTS and len(saved["claims"]) >= 5
    for c in saved["claims"]:
        assert sum(c["counts"].values()) == len(c["comparisons"]) > 0
    text = (tmp_path / "toy_guidance.md").read_text()
    assert "--quick" in text and "| claim |" in text and "arXiv 2511.05844" in text and "mode coverage" in text
    # the protocol and the environment come before the numbers
    assert text.index("**Environment**") < text.index("## Protocol") < text.index("## Claims")
    assert "α = 0.05" in text and "wall time" not in text


def test_render_from_json_reproduces_the_report(tmp_path):
    """--render-only recomputes the claims from the JSON alone and writes the same report; a comparison with a run
    on the same kernel set lists every verdict as unchanged."""
    guidance_study.run_study(tmp_path, seeds=[0, 1], quick=True, progress=False, figures=False)
    text, saved = (tmp_path / "toy_guidance.md").read_text(), (tmp_path / "toy_guidance.json").read_text()
    guidance_study.render(tmp_path)
    assert (tmp_path / "toy_guidance.md").read_text() == text
    assert (tmp_path / "toy_guidance.json").read_text() == saved
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "toy_guidance.json").write_text(saved)
    data = guidance_study.render(tmp_path, tmp_path / "other" / "toy_guidance.json")
    compared = (tmp_path / "toy_guidance.md").read_text()
    assert f"0 of {len(data['claims'])} verdicts differ between the two kernel sets." in compared


def _result(grad_late, vanished_late=0.0, diverged=0.0):
    """A summarized configuration with the given per-seed late ‖∇J‖ (and constant vanished / diverged shares)."""
    rows = [{"grad_late": g, "vanished_late": vanished_late, "diverged": diverged} for g in grad_late]
    return {"per_seed": rows, "mean": {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}}


def test_alive_vanished_and_exploding_gradients_are_told_apart():
    vanished_reference = _result([1e-40, 1e-41, 1e-39], vanished_late=0.9)
    alive = _result([0.5, 0.7, 0.6])  # ≥ 10× the reference at every seed, nothing vanished or diverged
    assert guidance_claims.gradient_state(alive) == "alive"
    assert guidance_claims.alive_comparison(alive, vanished_reference)["outcome"] == AGREES
    runaway = _result([5e20, 1e19, 3e20], diverged=0.8)  # late ‖∇J‖ > 1e3: exploding, a failure
    assert guidance_claims.gradient_state(runaway) == "exploding"
    assert guidance_claims.alive_comparison(runaway, vanished_reference)["outcome"] == DIVERGED
    many_diverged = _result([0.5, 0.7, 0.6], diverged=0.06)  # > 5 % of samples diverged: exploding too
    assert guidance_claims.gradient_state(many_diverged) == "exploding"
    faded = _result([0.5, 0.7, 0.6], vanished_late=0.2)  # > 5 % of its samples vanished
    assert guidance_claims.gradient_state(faded) == "vanished"
    assert guidance_claims.alive_comparison(faded, vanished_reference)["outcome"] == CONTRADICTS
    # a reference whose gradient did not vanish: the claimed contrast is absent
    live_reference = _result([1e-40, 1e-41, 1e-39], vanished_late=0.2)
    assert guidance_claims.alive_comparison(alive, live_reference)["outcome"] == CONTRADICTS
    # only 3× larger at every seed: the t-test on log10(ratio) − 1 contradicts "≥ 10×"
    weak = _result([3e-40, 3e-41, 3e-39])
    assert guidance_claims.alive_comparison(weak, vanished_reference)["outcome"] == CONTRADICTS


def test_objective_level_figure_is_written(tmp_path):
    """Figures are left out of the quick runs above (matplotlib layout is slow); one of them is drawn here."""
    plots.plot_onehot(guidance_grid.onehot_gradient_table(gaps=(0, 8)), tmp_path / "onehot.png")
    assert (tmp_path / "onehot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibration_study_quick_writes_documented_outputs(tmp_path):
    data = calibration_study.run_study(tmp_path, seeds=[0, 1], quick=True, progress=False, figures=False)
    saved = json.loads((tmp_path / "toy_calibration.json").read_text())
    names = ["CE only (before)", "CE only (control)", "CE + 1·SECE (sample form)", "exact p(y|x_t)"]
    assert list(saved["calibration"]) == names
    for name in names:
        assert saved["calibration"][name]["ece_t"]["t"] == [0, 500, 999]
        assert 0 <= saved["calibration"][name]["mean"]["ece"] <= 1
    # the guided runs of a classifier and the references all exist, one block of 40 samples each
    assert set(saved["sampling"]) == {f"{n}, s=1" for n in names} | {"unguided", "exact conditional"}
    assert {c["verdict"] for c in saved["claims"]} <= VERDICTS and len(saved["claims"]) == 7
    # every comparison is against the CE-only control, never against the classifier before fine-tuning
    for c in saved["claims"]:
        assert c["comparisons"] and all("before" not in x["label"] for x in c["comparisons"])
    text = (tmp_path / "toy_calibration.md").read_text()
    assert "| claim |" in text and text.index("## Protocol") < text.index("## Claims")
    assert data["seeds"] == [0, 1]
    calibration_study.render(tmp_path)  # the report again from the JSON alone: the same text
    assert (tmp_path / "toy_calibration.md").read_text() == text


def test_calibration_arms_without_steps_keep_the_pretrained_classifier():
    """A fine-tune of 0 steps is the pre-trained classifier: identical weights and identical calibration report."""
    settings = dataclasses.replace(calibration_study.Settings.quick(), finetune_steps=0)
    trained = calibration_study.train_arms(calibration_study.calibration_mixture(), settings, seed=1)
    before = trained["classifiers"]["CE only (before)"].state_dict()
    for name, _, _ in settings.arms:
        for key, value in trained["classifiers"][name].state_dict().items():
            assert torch.equal(value, before[key])
        assert trained["reports"][name]["summary"]["ece"] == trained["reports"]["CE only (before)"]["summary"]["ece"]


@pytest.mark.parametrize("script, seeds", [("toy_guidance_study.py", "3"), ("toy_calibration_study.py", "0,x")])
def test_scripts_reject_bad_seeds_with_a_one_line_error(script, seeds, tmp_path):
    """Bad --seeds is a usage error naming the option (exit 2, no traceback, nothing written)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(tmp_path / "o"),
                           "--seeds", seeds], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "--seeds" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value, seeds", [("0,1,2", [0, 1, 2]), (" 4, 7 ", [4, 7])])
def test_parse_seeds(value, seeds):
    assert parse_seeds(value) == seeds


@pytest.mark.parametrize("value", ["3", "0,x", "1,1", "-1,2", ""])
def test_parse_seeds_rejects(value):
    with pytest.raises(click.BadParameter, match="at least two distinct"):
        parse_seeds(value)


def test_scripts_are_thin():
    for script in ("toy_guidance_study.py", "toy_calibration_study.py"):
        assert len((ROOT / "scripts" / script).read_text().splitlines()) <= 300
