"""Smoke tests of the two testbed studies (scripts/toy_guidance_study.py, scripts/toy_calibration_study.py): each
script's core on a tiny setting, the structure of what it writes, and exact facts it relies on."""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from diffguide.guidance import ClassifierGuidance, EluCDMeanShift, Guidance
from diffguide.adapter import Denoiser
from diffguide.noise import SeededNoise
from diffguide.samplers import ddpm
from diffguide.schedule import NoiseSchedule
from diffguide.toy import BayesClassifier, ExactEps, study_mixture

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
VERDICTS = {"held", "did not hold", "mixed", "not measurable"}


def _load(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def guidance_study():
    return _load("toy_guidance_study")


@pytest.fixture(scope="module")
def calibration_study(guidance_study):
    return _load("toy_calibration_study")


def test_onehot_table_matches_proposition_3_limits(guidance_study):
    table = guidance_study.onehot_gradient_table(gaps=(0, 64), alpha=1.0, epsilon=0.9)
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


def test_block_batched_sampling_equals_separate_runs(guidance_study):
    """Blocks of different objectives, scales and seeds in one call give exactly the samples of separate runs
    (tilted's batch is its own block)."""
    study = guidance_study
    mixture = study_mixture()
    n, steps, seeds = 8, 6, [3, 5]
    methods = [study.Method("tilted", "tilted", (("t_tilde", -0.2),), 0.1, 3.0),
               study.Method("reverse_kl", "reverse_kl", (("alpha", 0.5), ("epsilon", 0.9)), 1.0, 1.0)]
    draws = study.seed_draws(seeds, n, 2, steps)
    runs = study.guided_runs(mixture, methods, seeds, n, steps, draws, progress=False)
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


def test_sample_metrics_on_exact_samples(guidance_study):
    study = guidance_study
    mixture = study_mixture()
    labels = torch.arange(4000) % 4
    x, _ = mixture.sample(4000, labels, generator=torch.Generator().manual_seed(0))
    thresholds = study.precision_thresholds(mixture, n=4000)
    metrics = study.sample_metrics(mixture, x, labels, thresholds, seed=0)
    assert metrics["diverged"] == 0
    assert metrics["precision"] == pytest.approx(0.95, abs=0.02)  # exact samples: 95 % inside the 95 % region
    assert metrics["minority_ratio"] == pytest.approx(1.0, abs=0.1)
    x[:40] = float("inf")  # 40 diverged samples count as wrong and leave the rest alone
    broken = study.sample_metrics(mixture, x, labels, thresholds, seed=0)
    assert broken["diverged"] == pytest.approx(0.01)
    assert broken["accuracy"] <= metrics["accuracy"] - 0.009


def test_guidance_study_quick_writes_documented_outputs(guidance_study, tmp_path):
    data = guidance_study.run_study(tmp_path, seeds=[0, 1], quick=True, progress=False, figures=False)
    saved = json.loads((tmp_path / "toy_guidance.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1] and saved["settings"]["samples_per_run"] == 40
    assert len(saved["results"]) == len(saved["methods"]) == data["guided_configurations"]
    for result in saved["results"].values():
        assert len(result["per_seed"]) == 2
        assert set(result["mean"]) >= {"accuracy", "precision", "coverage", "minority_ratio", "distance", "grad_late"}
    assert set(saved["references"]) == {"unguided", "exact conditional", "noise-aware exact p(y|x_t), s=1"}
    assert saved["references"]["exact conditional"]["mean"]["diverged"] == 0
    assert {c["verdict"] for c in saved["claims"]} <= VERDICTS and len(saved["claims"]) >= 5
    text = (tmp_path / "toy_guidance.md").read_text()
    assert "--quick" in text and "mean ± std" in text and "| claim |" in text


def test_objective_level_figure_is_written(guidance_study, tmp_path):
    """Figures are left out of the quick runs above (matplotlib layout is slow); one of them is drawn here."""
    guidance_study.plot_onehot(guidance_study.onehot_gradient_table(gaps=(0, 8)), tmp_path / "onehot.png")
    assert (tmp_path / "onehot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibration_study_quick_writes_documented_outputs(calibration_study, tmp_path):
    data = calibration_study.run_study(tmp_path, seeds=[0], quick=True, progress=False, figures=False)
    saved = json.loads((tmp_path / "toy_calibration.json").read_text())
    names = ["CE only (before)", "CE only (control)", "CE + 1·SECE (sample form)", "exact p(y|x_t)"]
    assert list(saved["calibration"]) == names
    for name in names:
        assert saved["calibration"][name]["ece_t"]["t"] == [0, 500, 999]
        assert 0 <= saved["calibration"][name]["mean"]["ece"] <= 1
    # the guided runs of a classifier and the references all exist, one block of 40 samples each
    assert set(saved["sampling"]) == {f"{n}, s=1" for n in names} | {"unguided", "exact conditional"}
    assert {c["verdict"] for c in saved["claims"]} <= VERDICTS and len(saved["claims"]) == 7
    assert "| claim |" in (tmp_path / "toy_calibration.md").read_text()
    assert data["seeds"] == [0]


def test_calibration_arms_without_steps_keep_the_pretrained_classifier(calibration_study):
    """A fine-tune of 0 steps is the pre-trained classifier: identical weights and identical calibration report."""
    study = calibration_study
    settings = dataclasses.replace(study.Settings.quick(), finetune_steps=0)
    trained = study.train_arms(study.calibration_mixture(), settings, seed=1)
    before = trained["classifiers"]["CE only (before)"].state_dict()
    for name, _, _ in settings.arms:
        for key, value in trained["classifiers"][name].state_dict().items():
            assert torch.equal(value, before[key])
        assert trained["reports"][name]["summary"]["ece"] == trained["reports"]["CE only (before)"]["summary"]["ece"]
