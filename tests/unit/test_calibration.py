"""Calibration: binned ECE, smECE (oracle: relplot), ECE_t, the Smooth-ECE loss, the fine-tuning routine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import relplot
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.special import softmax
from torch import nn

from diffguide.calibration import (
    CalibrationConfig, ReliabilityBins, EpochBatches, binned_ece, ece_over_timesteps, evaluate_calibration,
    finetune_calibration, plot_ece_over_timesteps, plot_reliability_diagram, pseudo_huber_bin_loss,
    pseudo_huber_sample_loss, reliability_bins, smooth_ece, smooth_ece_at, smooth_ece_loss, top_label,
    top_label_confidence,
)
from diffguide.calibration.evaluate import check_batch, step_indices
from diffguide.schedule import NoiseSchedule


# --- synthetic problems with known calibration -----------------------------------------------------------------

class Mixture:
    """K isotropic Gaussians N(μ_k, σ²I) in R^d with a uniform prior; samples clamped to [−1, 1] (rarely active)."""

    def __init__(self, K=4, d=4, sigma=0.12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = (torch.rand(K, d, generator=g) - 0.5) * 0.8
        self.sigma, self.K, self.d = sigma, K, d

    def batches(self, count, size, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(count):
            y = torch.randint(0, self.K, (size,), generator=g)
            out.append(((self.mu[y] + self.sigma * torch.randn(size, self.d, generator=g)).clamp(-1, 1), y))
        return out


class ScaledBayes(nn.Module):
    """Clean inputs: the exact posterior logits f_k = (μ_k·x − |μ_k|²/2)/σ² times ``scale`` (> 1: overconfident)."""

    def __init__(self, mixture, scale=1.0):
        super().__init__()
        self.linear = nn.Linear(mixture.d, mixture.K)
        with torch.no_grad():
            self.linear.weight.copy_(scale * mixture.mu / mixture.sigma ** 2)
            self.linear.bias.copy_(-scale * (mixture.mu ** 2).sum(1) / (2 * mixture.sigma ** 2))

    def forward(self, x):
        return self.linear(x)


class NoisyBayes(nn.Module):
    """Noise-aware classifier(x_t, t) of the mixture. ``exact``: the true posterior, x_t | k ~ N(√ᾱ μ_k, v_t I) with
    v_t = ᾱσ² + 1 − ᾱ, so perfectly calibrated at every t. Not exact: the clean-data posterior applied to x_t/√ᾱ,
    i.e. the same logits times r_t = v_t/(ᾱσ²) — same argmax, increasingly overconfident as t grows.
    ``log_temperature`` = (a, b), learnable, zero at start, multiplies the logits by exp(a + b·log r_t)
    (a = 0, b = −1 turns the noise-blind classifier into the exact one)."""

    def __init__(self, mixture, schedule, exact=True):
        super().__init__()
        self.mixture, self.exact = mixture, exact
        self.register_buffer("alpha_bar", torch.tensor(schedule.alphas_cumprod, dtype=torch.float32))
        self.log_temperature = nn.Parameter(torch.zeros(2))

    def forward(self, x_t, t):
        ab = self.alpha_bar[t][:, None]
        variance = ab * self.mixture.sigma ** 2 + (1 - ab) if self.exact else ab * self.mixture.sigma ** 2
        logits = -((x_t[:, None, :] - ab.sqrt()[:, None] * self.mixture.mu[None]) ** 2).sum(-1) / (2 * variance)
        a, b = self.log_temperature
        log_ratio = torch.log1p((1 - ab) / (ab * self.mixture.sigma ** 2))
        return logits * torch.exp(a + b * log_ratio)


# --- smECE against relplot ------------------------------------------------------------------------------------

def _confidence_sets():
    rng = np.random.default_rng(1234)
    sets = {}
    f = rng.uniform(size=2000)
    sets["calibrated_uniform"] = (f, (rng.uniform(size=2000) < f).astype(float))
    p = rng.uniform(0.1, 1, size=3000)
    sets["overconfident_power"] = (p ** 0.3, (rng.uniform(size=3000) < p).astype(float))
    sets["random_labels"] = (rng.uniform(size=500), rng.integers(0, 2, 500).astype(float))
    for name, scale, n in (("softmax_scaled_3", 3.0, 5000), ("softmax_scaled_8", 8.0, 1000), ("softmax_small_n", 2.0, 60)):
        logits = rng.normal(size=(n, 10)) * scale
        labels = rng.integers(0, 10, n)
        logits[np.arange(n), labels] += 2.0
        probs = softmax(logits, axis=1)
        sets[name] = (probs.max(1), (probs.argmax(1) == labels).astype(float))
    # an overconfident classifier: the true posterior of a 3-class problem with its logits multiplied by 4
    n = 4000
    true_logits = rng.normal(size=(n, 3)) * 1.5
    labels = np.array([rng.choice(3, p=q) for q in softmax(true_logits, axis=1)])
    probs = softmax(4 * true_logits, axis=1)
    sets["overconfident_tempered"] = (probs.max(1), (probs.argmax(1) == labels).astype(float))
    sets["all_correct_confident"] = (rng.uniform(0.95, 1.0, size=300), np.ones(300))
    return sets


CONFIDENCE_SETS = _confidence_sets()


@pytest.mark.parametrize("name", sorted(CONFIDENCE_SETS))
def test_smooth_ece_agrees_with_relplot(name):
    conf, correct = CONFIDENCE_SETS[name]
    expected, expected_sigma = relplot.smECE(conf, correct, return_width=True)
    value, sigma = smooth_ece(conf, correct, return_sigma=True)
    assert abs(value - expected) < 1e-3
    assert sigma == pytest.approx(expected_sigma, abs=2 ** -10)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1, 0.3])
def test_smooth_ece_at_fixed_bandwidth_agrees_with_relplot(sigma):
    conf, correct = CONFIDENCE_SETS["overconfident_tempered"]
    assert smooth_ece_at(conf, correct, sigma) == pytest.approx(relplot.smECE_sigma(conf, correct, sigma), abs=1e-4)


def test_smooth_ece_is_zero_for_perfect_confident_predictions_and_accepts_tensors():
    conf = torch.ones(50, dtype=torch.float64)
    value, sigma = smooth_ece(conf, torch.ones(50), return_sigma=True)
    # every bandwidth is large enough, down to the floor min_sigma = 1e-3: the last bisection point above it is 2^-9
    assert value == 0.0 and sigma == 2 ** -9
    assert relplot.smECE(conf.numpy(), np.ones(50), return_width=True) == (0.0, 2 ** -9)


# --- binned ECE -------------------------------------------------------------------------------------------------

def test_binned_ece_hand_computed():
    # bins (0.9, 1]: conf 0.95, 0.95, 0.92 with correct 1, 0, 1 → acc 2/3, conf 0.94;  (0.6, 0.7]: 0.65 wrong;
    # (0.2, 0.3]: 0.3 exactly (right edge belongs to the lower bin), correct.
    conf = [0.95, 0.95, 0.92, 0.65, 0.3]
    correct = [1, 0, 1, 0, 1]
    expected = 3 / 5 * abs(2 / 3 - 0.94) + 1 / 5 * 0.65 + 1 / 5 * 0.7
    assert binned_ece(conf, correct) == pytest.approx(expected, abs=1e-12)
    bins = reliability_bins(conf, correct)
    assert bins.counts.tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 3]
    assert np.isnan(bins.accuracy[0]) and bins.confidence[9] == pytest.approx(0.94)
    assert binned_ece(conf, correct, num_bins=1) == pytest.approx(abs(3 / 5 - np.mean(conf)))


def test_binned_ece_agrees_with_relplot_away_from_bin_edges():
    for name in ("overconfident_tempered", "softmax_scaled_3", "calibrated_uniform"):
        conf, correct = CONFIDENCE_SETS[name]
        conf = np.clip(conf, 0, 1 - 1e-9)  # relplot puts p̂ = 1 in an eleventh bin of its own
        assert binned_ece(conf, correct, 10) == pytest.approx(relplot.metrics.binnedECE(conf, correct, 10), abs=1e-12)


def test_top_label_from_logits():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    conf, correct = top_label(logits, torch.tensor([0, 0]))
    np.testing.assert_allclose(conf, [0.75, 0.8])
    np.testing.assert_array_equal(correct, [1.0, 0.0])


def test_reliability_bins_round_trip_json():
    bins = reliability_bins([0.95, 0.55, 0.51], [1, 0, 1], num_bins=4)
    again = ReliabilityBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    np.testing.assert_array_equal(again.counts, bins.counts)
    np.testing.assert_array_equal(again.accuracy, bins.accuracy)  # NaN for the empty bins on both sides
    assert again.ece == bins.ece


# --- Smooth-ECE loss --------------------------------------------------------------------------------------------

def _logits_for(confidences):
    """Two-class logits whose softmax max is each given confidence (class 0 predicted)."""
    c = torch.tensor(confidences, dtype=torch.float64)
    return torch.stack([torch.log(c), torch.log(1 - c)], dim=1).requires_grad_(True)


def test_loss_forms_exact_values():
    logits = _logits_for([0.75, 0.9, 0.95])
    labels = torch.tensor([0, 1, 0])  # correct, wrong, correct
    beta = 1e-3
    sample = smooth_ece_loss(logits, labels, form="sample", beta=beta)
    expected = (math.sqrt(0.25 ** 2 + beta) + math.sqrt(0.9 ** 2 + beta) + math.sqrt(0.05 ** 2 + beta)) / 3
    assert sample.item() == pytest.approx(expected, abs=1e-12)
    # bins: (0.7, 0.8] holds 0.75 (acc 1); (0.8, 0.9] holds 0.9 (acc 0); (0.9, 1] holds 0.95 (acc 1)
    binned = smooth_ece_loss(logits, labels, form="bin", beta=beta)
    assert binned.item() == pytest.approx(expected, abs=1e-12)  # one sample per bin: the forms coincide
    two_per_bin = smooth_ece_loss(logits, labels, form="bin", beta=beta, num_bins=2)  # all in (0.5, 1]
    assert two_per_bin.item() == pytest.approx(math.sqrt((np.mean([0.75, 0.9, 0.95]) - 2 / 3) ** 2 + beta), abs=1e-12)


def test_loss_gradient_matches_closed_form_and_is_finite():
    logits = _logits_for([0.75, 0.9])
    labels = torch.tensor([0, 1])
    beta = 1e-3
    loss = smooth_ece_loss(logits, labels, beta=beta)
    (grad,) = torch.autograd.grad(loss, logits)
    # dL/dp̂_i = (p̂_i − a_i)/(n·sqrt((p̂_i − a_i)² + β)); dp̂/df for 2 classes = p̂(1 − p̂)·(+1, −1)
    p, a = np.array([0.75, 0.9]), np.array([1.0, 0.0])
    d_conf = (p - a) / (2 * np.sqrt((p - a) ** 2 + beta))
    expected = np.stack([d_conf * p * (1 - p), -d_conf * p * (1 - p)], axis=1)
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-12)
    for form in ("sample", "bin"):
        extreme = torch.tensor([[80.0, -80.0], [0.0, 0.0], [30.0, 29.0]], requires_grad=True)
        (g,) = torch.autograd.grad(smooth_ece_loss(extreme, torch.tensor([0, 1, 1]), form=form), extreme)
        assert torch.isfinite(g).all()


def test_bin_form_skips_empty_bins_and_handles_one_bin_and_empty_batches():
    logits = _logits_for([0.71, 0.72, 0.73, 0.99])
    labels = torch.tensor([0, 0, 1, 0])
    beta = 1e-3
    loss = smooth_ece_loss(logits, labels, form="bin", beta=beta, num_bins=10)  # 8 of 10 bins empty
    expected = 0.75 * math.sqrt((0.72 - 2 / 3) ** 2 + beta) + 0.25 * math.sqrt(0.01 ** 2 + beta)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    one_bin = smooth_ece_loss(logits[:3], labels[:3], form="bin", beta=beta)
    assert one_bin.item() == pytest.approx(math.sqrt((0.72 - 2 / 3) ** 2 + beta), abs=1e-12)
    for form in ("sample", "bin"):  # an empty batch: zero loss, zero gradient, no NaN
        empty = torch.zeros(0, 5, requires_grad=True)
        value = smooth_ece_loss(empty, torch.zeros(0, dtype=torch.long), form=form)
        value.backward()
        assert value.item() == 0.0 and empty.grad.shape == (0, 5)


def test_beta_effect():
    logits = _logits_for([0.6, 0.8, 0.97])
    labels = torch.tensor([0, 1, 0])
    gaps = np.abs(np.array([0.6, 0.8, 0.97]) - np.array([1.0, 0.0, 1.0]))
    values = [smooth_ece_loss(logits, labels, beta=b).item() for b in (1e-12, 1e-3, 1e-1)]
    assert values[0] == pytest.approx(gaps.mean(), abs=1e-6)  # β → 0: the mean absolute gap
    assert values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(np.mean(np.sqrt(gaps ** 2 + 0.1)), abs=1e-12)
    assert smooth_ece_loss(_logits_for([1 - 1e-9]), torch.tensor([0]), beta=0.04).item() == pytest.approx(0.2, abs=1e-8)


def test_bin_form_never_exceeds_sample_form():
    """Jensen: sqrt(x² + β) is convex, so the bin form (of bin-mean gaps) ≤ the per-sample form."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = torch.randn(200, 10, generator=g, dtype=torch.float64) * 3
        labels = torch.randint(0, 10, (200,), generator=g)
        assert smooth_ece_loss(logits, labels, form="bin") <= smooth_ece_loss(logits, labels, form="sample") + 1e-15


def test_sample_form_is_minimised_by_sharpening_the_bin_form_by_calibration():
    """A constant confidence c on samples that are right with frequency q = 0.8: the bin form has zero gradient at
    the calibrated c = q; the per-sample form (≈ mean |c − a|, a median-type loss) still pushes c up towards 1."""
    correct = torch.tensor([1.0] * 8 + [0.0] * 2, dtype=torch.float64)
    c = torch.full((10,), 0.8, dtype=torch.float64, requires_grad=True)
    (grad_bin,) = torch.autograd.grad(pseudo_huber_bin_loss(c, correct), c)
    (grad_sample,) = torch.autograd.grad(pseudo_huber_sample_loss(c, correct), c)
    assert grad_bin.abs().max().item() < 1e-15
    beta = 1e-3  # dL/dc = (1/n)·Σ (c − a)/sqrt((c − a)² + β): 8 terms at −0.2, 2 at +0.8
    expected = (8 * -0.2 / math.sqrt(0.04 + beta) + 2 * 0.8 / math.sqrt(0.64 + beta)) / 10
    assert grad_sample.sum().item() == pytest.approx(expected, abs=1e-12) and expected < -0.5


# --- ECE_t ------------------------------------------------------------------------------------------------------

def test_ece_t_of_exact_and_overconfident_noise_aware_classifiers():
    schedule = NoiseSchedule.create("linear")
    mixture = Mixture(seed=0)
    data = mixture.batches(4, 1000, seed=7)
    timesteps = [0, 300, 500, 700, 999]
    exact = ece_over_timesteps(NoisyBayes(mixture, schedule, exact=True), data, schedule, timesteps, seed=0)
    naive = ece_over_timesteps(NoisyBayes(mixture, schedule, exact=False), data, schedule, timesteps, seed=0)
    assert [row["t"] for row in exact] == timesteps
    # the exact posterior is calibrated at every t (measured max over 8 seeds: 0.017 at n = 4000)
    assert max(row["ece"] for row in exact) < 0.03
    # measured on this seed: accuracy 0.923, 0.341, 0.281, 0.257, 0.250
    np.testing.assert_allclose([row["accuracy"] for row in exact], [0.923, 0.341, 0.281, 0.257, 0.250], atol=6e-4)
    assert abs(exact[-1]["mean_confidence"] - 0.25) < 0.005  # at t = 999 nothing is left to see: p ≈ uniform
    for e, n in zip(exact, naive):
        assert n["accuracy"] == e["accuracy"]  # same argmax
        assert n["mean_confidence"] >= e["mean_confidence"] - 1e-12
    # the noise-blind classifier is overconfident at high noise: ECE_t grows towards 1 − 1/K (measured min 0.596)
    assert naive[0]["ece"] < 0.03
    assert all(n["ece"] > 0.55 for n in naive[1:])
    assert [n["ece"] for n in naive[1:]] == sorted(n["ece"] for n in naive[1:])
    assert naive[-1]["ece"] == pytest.approx(naive[-1]["mean_confidence"] - naive[-1]["accuracy"], abs=1e-12)


def test_timesteps_must_be_kept_by_a_respaced_schedule():
    schedule = NoiseSchedule.create("linear", "10")
    assert step_indices(schedule, [0, 999]) == [0, 9]
    with pytest.raises(ValueError, match="timesteps"):
        step_indices(schedule, [500])


# --- fine-tuning ------------------------------------------------------------------------------------------------

def _overconfident_problem(seed):
    mixture = Mixture(K=4, d=4, sigma=0.3, seed=seed)
    return ScaledBayes(mixture, scale=3.0), mixture.batches(25, 128, seed=100 + seed), mixture.batches(2, 1000, 200 + seed)


def test_finetune_lowers_ece_of_an_overconfident_classifier():
    model, train, test = _overconfident_problem(seed=0)
    config = CalibrationConfig(steps=80, lr=5e-2, checkpoint_every=40)
    report = finetune_calibration(model, train, test, config, progress=False)
    before, after = report["before"]["summary"], report["after"]["summary"]
    # seed 0 measured: ECE 0.2014 → 0.1226, smECE 0.2082 → 0.1232, accuracy 0.6270 → 0.6235.
    # Seeds 0-9 of this problem: ECE drop 0.038-0.164, smECE drop ≥ 0.046, confidence drop ≥ 0.039, |Δ accuracy| ≤ 0.010
    assert before["ece"] == pytest.approx(0.2014, abs=5e-4)
    assert after["ece"] < before["ece"] - 0.035
    assert after["smece"] < before["smece"] - 0.035
    assert after["mean_confidence"] < before["mean_confidence"] - 0.03
    assert abs(after["accuracy"] - before["accuracy"]) <= 0.015
    assert [h["step"] for h in report["history"]] == [40, 80] and report["steps"] == 80


class _Interrupt(Exception):
    pass


class _StopAfter:
    """The batches of a list, but raising after ``limit`` batches in total (a crash in the middle of training)."""

    def __init__(self, batches, limit):
        self.batches, self.limit, self.drawn = batches, limit, 0

    def __iter__(self):
        for batch in self.batches:
            if self.drawn == self.limit:
                raise _Interrupt
            self.drawn += 1
            yield batch


def test_checkpoint_resume_is_bit_exact(tmp_path):
    schedule = NoiseSchedule.create("linear")
    mixture = Mixture(seed=3)
    train, test = mixture.batches(3, 64, seed=1), mixture.batches(1, 200, seed=2)
    config = CalibrationConfig(steps=7, lr=1e-2, noise_aware=True, checkpoint_every=2, eval_timesteps=[0, 500, 999],
                               ece_form="bin", seed=5)

    def model():
        return NoisyBayes(mixture, schedule, exact=False)

    straight = model()
    report = finetune_calibration(straight, train, test, config, out_dir=tmp_path / "straight", progress=False,
                                  diagrams=False)
    interrupted = model()
    with pytest.raises(_Interrupt):  # dies while drawing batch 6, after the checkpoint of step 4
        finetune_calibration(interrupted, _StopAfter(train, 5), test, config, out_dir=tmp_path / "resumed",
                             progress=False, diagrams=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = model()
    report_resumed = finetune_calibration(resumed, train, test, config, out_dir=tmp_path / "resumed", progress=False,
                                          diagrams=False)
    assert torch.equal(straight.log_temperature, resumed.log_temperature)
    assert not torch.equal(straight.log_temperature, torch.zeros(2))
    assert report_resumed == report
    assert report["after"]["ece_t"][-1]["t"] == 999 and len(report["after"]["ece_t"]) == 3

    with pytest.raises(ValueError, match="lr"):  # a different configuration does not resume silently
        finetune_calibration(model(), train, test, CalibrationConfig(**{**config.to_dict(), "lr": 1e-3}),
                             out_dir=tmp_path / "resumed", progress=False)


def test_finetune_writes_weights_config_report_and_diagrams(tmp_path):
    model, train, test = _overconfident_problem(seed=1)
    config = CalibrationConfig(steps=3, lr=1e-3, checkpoint_every=10)
    report = finetune_calibration(model, train, test, config, out_dir=tmp_path, progress=False)
    weights = load_file(tmp_path / "classifier.safetensors")
    assert torch.equal(weights["linear.weight"], model.linear.weight.detach())
    assert CalibrationConfig.from_dict(json.loads((tmp_path / "calibration_config.json").read_text())) == config
    assert json.loads((tmp_path / "calibration_report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("reliability_before.png", "reliability_after.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert not list(tmp_path.glob(".*.tmp"))


def test_noise_aware_finetune_learns_to_be_less_confident_at_high_noise(tmp_path):
    schedule = NoiseSchedule.create("linear")
    mixture = Mixture(seed=0)
    model = NoisyBayes(mixture, schedule, exact=False)
    train, test = mixture.batches(20, 128, seed=1), mixture.batches(1, 1000, seed=2)
    config = CalibrationConfig(steps=60, lr=0.05, noise_aware=True, eval_timesteps=[0, 300, 700, 999],
                               checkpoint_every=60)
    report = finetune_calibration(model, train, test, config, out_dir=tmp_path, progress=False)
    before, after = report["before"], report["after"]
    ece_before = [row["ece"] for row in before["ece_t"]]
    ece_after = [row["ece"] for row in after["ece_t"]]
    # measured (this seed): ECE_t [0.011, 0.659, 0.757, 0.766] → [0.076, 0.252, 0.266, 0.202], pooled 0.545 → 0.160;
    # over 6 seeds: ECE_999 after ≤ 0.202 (drop ≥ 0.53), pooled after ≤ 0.171 (drop ≥ 0.35)
    assert ece_before[-1] > 0.7
    assert ece_after[-1] < ece_before[-1] - 0.45
    assert max(ece_after[1:]) < 0.35
    assert after["summary"]["ece"] < before["summary"]["ece"] - 0.3
    assert [r["accuracy"] for r in after["ece_t"]] == [r["accuracy"] for r in before["ece_t"]]  # only a temperature
    with Image.open(tmp_path / "ece_t.png") as image:
        assert image.format == "PNG"


def test_seeded_batches_replay_and_cover_every_sample():
    x = np.arange(10, dtype=np.float32)[:, None] / 10
    y = np.arange(10)
    source, again_source = EpochBatches(x, y, 4, seed=3), EpochBatches(x, y, 4, seed=3)
    first = [b[1].tolist() for _ in range(2) for b in source]
    again = [b[1].tolist() for _ in range(2) for b in again_source]
    assert first == again and len(again_source) == 3
    assert sorted(sum(first[:3], [])) == list(range(10)) and first[:3] != first[3:]


# --- plots ------------------------------------------------------------------------------------------------------

def test_plots_write_png(tmp_path):
    conf, correct = CONFIDENCE_SETS["overconfident_tempered"]
    path = plot_reliability_diagram(reliability_bins(conf, correct), tmp_path / "sub" / "rel.png", title="toy",
                                    smece=0.1)
    rows = [{"t": t, "ece": 0.1, "accuracy": 0.5, "mean_confidence": 0.6} for t in (0, 500, 999)]
    curve = plot_ece_over_timesteps({"a": rows, "b": rows}, tmp_path / "ecet.png")
    for p in (path, curve):
        with Image.open(p) as image:
            assert image.format == "PNG"


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conf, correct, match", [
    ([0.5, 1.2], [1, 0], "confidences"),
    ([0.5, 0.7], [1], "same length"),
    ([], [], "at least one"),
    ([0.5, float("nan")], [1, 0], "finite"),
    ([0.5, 0.6], [1, 0.5], "correct"),
    ([[0.5]], [[1]], "1-D"),
])
def test_metrics_reject_bad_input(conf, correct, match):
    for metric in (binned_ece, smooth_ece):
        with pytest.raises(ValueError, match=match):
            metric(conf, correct)


def test_metric_and_loss_parameters_are_checked():
    with pytest.raises(ValueError, match="num_bins"):
        binned_ece([0.5], [1], num_bins=0)
    with pytest.raises(ValueError, match="sigma"):
        smooth_ece_at([0.5], [1], sigma=0.0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    for kwargs, match in (({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"), ({"form": "huber"}, "form"),
                          ({"form": "bin", "num_bins": 0}, "num_bins")):
        with pytest.raises(ValueError, match=match):
            smooth_ece_loss(logits, labels, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        smooth_ece_loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        top_label_confidence(logits, labels.float())
    with pytest.raises(ValueError, match="3 outputs"):
        top_label(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="logits"):
        smooth_ece_loss(torch.tensor([[0.0, float("inf")]]), torch.tensor([0]))


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("steps", -1), ("ece_form", "l1"), ("beta", 0.0),
                                          ("ece_weight", -0.1), ("schedule", "sigmoid"), ("eval_timesteps", [1000]),
                                          ("checkpoint_every", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        CalibrationConfig(**{field: value})


def test_batches_are_checked():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        check_batch(torch.full((2, 3), 2.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        check_batch(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="float"):
        check_batch(torch.zeros(2, 3, dtype=torch.uint8), torch.tensor([0, 1]))
    model, _, test = _overconfident_problem(seed=0)
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate_calibration(model, [])
    with pytest.raises(TypeError, match="config"):
        finetune_calibration(model, test, test, {"lr": 1e-3}, progress=False)


# --- command line (a tiny image folder and a tiny classifier in place of a CIFAR ResNet) --------------------------

class Brightness(nn.Module):
    """Two classes told apart by mean brightness m: logits (−s·m, s·m); a large s is overconfident."""

    def __init__(self, scale=25.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-self.scale * m, self.scale * m], dim=1)


class NoisyBrightness(Brightness):
    def forward(self, x, t):
        return super().forward(x) / (1 + t.float()[:, None] / 100)


def _image_folder(root, per_class=(24, 20)):
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for label, (low, high) in enumerate(((0, 190), (65, 256))):  # overlapping brightness: some errors
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for k in range(count):
                level = rng.integers(low, high)
                pixels = np.clip(level + rng.integers(-20, 21, size=(8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return root


def test_cli_calibrate_then_eval_classifier(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diffguide.cli import main

    monkeypatch.setattr("diffguide.classifiers.load_architecture", lambda path: Brightness())
    data = _image_folder(tmp_path / "data")
    checkpoint = tmp_path / "brightness.th"
    checkpoint.write_bytes(b"placeholder")
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", "--classifier", str(checkpoint), "--data", str(data), "--out", str(out),
                                  "--steps", "6", "--lr", "2.0", "--batch-size", "16", "--eval-batch-size", "15",
                                  "--checkpoint-every", "3", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["steps"] == 6 and report["before"]["summary"]["n"] == 40
    assert report["after"]["summary"]["ece"] < report["before"]["summary"]["ece"]
    assert "before" in result.output and "smECE" in result.output
    for name in ("classifier.safetensors", "calibration_config.json", "classifier_source.json", "checkpoint.pt",
                 "reliability_before.png", "reliability_after.png"):
        assert (out / name).exists(), name
    result = runner.invoke(main, ["calibrate", "--classifier", str(checkpoint), "--data", str(data), "--out", str(out),
                                  "--steps", "6", "--lr", "1.0", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 1 and "lr differ" in result.output  # no silent resume with another configuration

    evaluation = tmp_path / "eval"
    result = runner.invoke(main, ["eval-classifier", "--classifier", str(checkpoint), "--weights",
                                  str(out / "classifier.safetensors"), "--data", str(data), "--out", str(evaluation),
                                  "--batch-size", "7", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((evaluation / "eval_classifier.json").read_text())["summary"]
    for key in ("accuracy", "ece", "smece", "nll"):  # the same weights on the same images as the report's "after"
        assert summary[key] == pytest.approx(report["after"]["summary"][key], abs=1e-6)
    assert (evaluation / "reliability.png").exists()

    result = runner.invoke(main, ["eval-classifier", "--classifier", str(checkpoint), "--data", str(data), "--out",
                                  str(evaluation), "--noise-aware", "--device", "cpu"])
    assert result.exit_code == 2 and "does not take a timestep" in result.output

    monkeypatch.setattr("diffguide.classifiers.load_architecture", lambda path: NoisyBrightness())
    result = runner.invoke(main, ["eval-classifier", "--classifier", str(checkpoint), "--data", str(data), "--out",
                                  str(evaluation), "--noise-aware", "--timesteps", "0,500,999", "--device", "cpu",
                                  "--no-progress", "--overwrite"])  # replaces the report written above
    assert result.exit_code == 0, result.output
    rows = json.loads((evaluation / "eval_classifier.json").read_text())["ece_t"]
    assert [row["t"] for row in rows] == [0, 500, 999] and (evaluation / "ece_t.png").exists()
    result = runner.invoke(main, ["eval-classifier", "--classifier", str(checkpoint), "--data", str(data), "--out",
                                  str(evaluation), "--noise-aware", "--timesteps", "0,x", "--device", "cpu"])
    assert result.exit_code == 2 and "--timesteps" in result.output


def test_frozen_wrapper_cannot_be_fine_tuned_in_train_mode():
    from diffguide.classifiers import ImageClassifier

    model, train, test = _overconfident_problem(seed=0)
    wrapped = ImageClassifier(model.linear, num_classes=4, in_channels=4)
    with pytest.raises(ValueError, match="no trainable parameters"):  # loaded frozen, for guidance
        finetune_calibration(wrapped, train, test, CalibrationConfig(steps=1), progress=False)
    wrapped.requires_grad_(True)
    with pytest.raises(ValueError, match="train_mode=True"):  # ImageClassifier.train() keeps eval mode
        finetune_calibration(wrapped, train, test, CalibrationConfig(steps=1, train_mode=True), progress=False)


def test_cli_calibrate_fine_tunes_a_noise_aware_classifier_folder(tmp_path):
    """`calibrate --classifier FOLDER` on the model/ folder of `train-classifier` (an EncoderUNetModel, called as
    classifier(x_t, t)) fine-tunes it on x_t with the folder's schedule, reports ECE_t, and writes weights that
    `eval-classifier --noise-aware` scores exactly as the report's "after"."""
    from click.testing import CliRunner

    from diffguide.calibration import evaluate_calibration
    from diffguide.checkpoints import load_network
    from diffguide.cli import main
    from diffguide.data import load_dataset, to_model_range
    from diffguide.schedule import NoiseSchedule
    from diffguide.train import ClassifierTrainConfig, NetConfig, OptimConfig, train_classifier

    data = _image_folder(tmp_path / "data")
    tiny = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[])
    config = ClassifierTrainConfig(net=NetConfig(arch="small_classifier", **tiny), steps=4, log_every=2,
                                   optim=OptimConfig(batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.0),
                                   eval_split=None, num_train_timesteps=100)
    release = train_classifier(config, tmp_path / "trained", dataset=load_dataset(str(data), "train"),
                               progress=False)["release"]
    out = tmp_path / "cal"
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", "--classifier", release, "--data", str(data), "--out", str(out),
                                  "--steps", "4", "--lr", "1e-3", "--batch-size", "16", "--eval-batch-size", "20",
                                  "--checkpoint-every", "2", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["config"]["noise_aware"] and report["config"]["num_train_timesteps"] == 100
    assert report["steps"] == 4 and [row["t"] for row in report["before"]["ece_t"]] == \
        [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]  # default_timesteps(100): 0, T/10, ..., T−1
    # "before" is the released classifier's own ECE_t evaluation: the same weights, images, ε and t (seed 0),
    # computed by the same code, so equal to the last bit
    net, _ = load_network(release)
    test = load_dataset(str(data), "test")
    expected = evaluate_calibration(net, EpochBatches(test.images, test.labels, 20, shuffle=False,
                                                       convert=to_model_range),
                                    noise_aware=True, schedule=NoiseSchedule.create("linear", num_train_timesteps=100))
    assert report["before"]["summary"] == expected["summary"]
    assert report["before"]["summary"]["n"] == 40 * 11  # 40 test images at each of the 11 timesteps
    assert (out / "ece_t.png").exists()

    evaluation = tmp_path / "eval"
    result = runner.invoke(main, ["eval-classifier", "--classifier", release, "--weights",
                                  str(out / "classifier.safetensors"), "--data", str(data), "--out", str(evaluation),
                                  "--noise-aware", "--timesteps", ",".join(str(row["t"]) for row in
                                                                          report["after"]["ece_t"]),
                                  "--batch-size", "20", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = json.loads((evaluation / "eval_classifier.json").read_text())["ece_t"]
    # safetensors stores the float32 weights exactly, and the batches, ε and t are the same (batch 20, seed 0, the
    # folder's T = 100 — not --schedule's default T = 1000), so the rows are the same numbers, not approximately
    assert [row["t"] for row in rows] == [row["t"] for row in report["after"]["ece_t"]]
    for row, after in zip(rows, report["after"]["ece_t"]):
        assert row["ece"] == after["ece"] and row["accuracy"] == after["accuracy"]
    # the fine-tuned classifier is also a network folder with its config, loadable like every released network
    calibrated, calibrated_config = load_network(out / "model")
    weights = load_file(str(out / "classifier.safetensors"))
    assert set(weights) == set(calibrated.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in calibrated.state_dict().items())
    assert (calibrated_config.schedule, calibrated_config.num_train_timesteps) == ("linear", 100)
    assert calibrated_config.extra["calibration"] == report["config"]
