"""Guidance objectives (spec guidance.md §3): closed-form gradients against autograd in float64, properties, errors.

The closed forms live here (``_closed_forms``), written from the spec's tables, independently of the library's
log-space implementation; divergence values are also checked against SciPy.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import entr, rel_entr

from diffguide.guidance.objectives import (
    DIVERGENCES, OBJECTIVES, EntropyRegularized, FDivergence, LogLikelihood, Tilted, check_logits, entropy,
    make_objective, smoothed_target, tilted_mean, tilted_weights,
)
from diffguide.guidance.step import GuidanceStep

F64 = torch.float64
TOL = 1e-8
NUM_CLASSES = 7
LOGIT_KINDS = ("random", "near_one_hot", "confident_wrong", "very_near_one_hot")


def _logits(kind: str = "random", batch: int = 6, num_classes: int = NUM_CLASSES, seed: int = 0):
    """Random float64 logits [B, K] and labels; near-one-hot kinds add a logit gap of 30 (p_y ≈ 1 − 1e-12) or 200."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, num_classes, generator=gen, dtype=F64)
    labels = torch.randint(num_classes, (batch,), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(F64)
    if kind == "near_one_hot":
        logits = logits + 30 * onehot
    elif kind == "very_near_one_hot":
        logits = logits + 200 * onehot
    elif kind == "confident_wrong":
        logits = logits + 30 * torch.nn.functional.one_hot((labels + 1) % num_classes, num_classes).to(F64)
    return logits, labels


def _autograd(objective, logits, labels, step=None):
    """dJ/dlogits [B, K] with J = objective(logits, labels, step).sum()."""
    logits = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(logits, labels, step).sum(), logits)
    return grad


class _closed_forms:
    """dJ/df per sample (a K-vector per row) from the spec's formulas; ∇f_i = e_i in logit space, so the spec's
    Σ_i c_i ∇f_i is the vector c and g_i = e_i − p."""

    @staticmethod
    def onehot(labels, num_classes):
        return torch.nn.functional.one_hot(labels, num_classes).to(F64)

    @staticmethod
    def log_likelihood(logits, labels, tau1, tau2):
        """ℓ = τ1 f_y − log Σ exp(τ2 f), written out (no library call)."""
        shift = (tau2 * logits).max(1).values
        return tau1 * logits[torch.arange(len(labels)), labels] - shift - torch.log(
            torch.exp(tau2 * logits - shift[:, None]).sum(1))

    @classmethod
    def grad_log_likelihood(cls, logits, labels, tau1=1.0, tau2=0.5):
        """τ1∇f_y − τ2 Σ_i softmax(τ2 f)_i ∇f_i."""
        return tau1 * cls.onehot(labels, logits.shape[1]) - tau2 * torch.softmax(tau2 * logits, 1)

    @classmethod
    def grad_tilted(cls, logits, labels, t_tilde, times_batch_size=True, tau1=1.0, tau2=0.5):
        """ω_n·N·∇ℓ_n, ω = softmax_n(t̃ ℓ) (without the factor N when ``times_batch_size`` is False)."""
        ell = cls.log_likelihood(logits, labels, tau1, tau2)
        weights = torch.exp(t_tilde * ell - (t_tilde * ell).max())
        weights = weights / weights.sum()
        scale = len(labels) if times_batch_size else 1
        return scale * weights[:, None] * cls.grad_log_likelihood(logits, labels, tau1, tau2)

    @staticmethod
    def accurate_log_softmax(logits):
        """log p with log p_m = −log(1 + Σ_{k≠m} exp(f_k − f_m)) for the top class m (accurate near one-hot)."""
        top, where = logits.max(1, keepdim=True)
        ratios = torch.exp(logits - top).scatter(1, where, 0.0)  # exp(f_k − f_m), k ≠ m
        return logits - top - torch.log1p(ratios.sum(1, keepdim=True))

    @classmethod
    def grad_entropy(cls, logits):
        """∇H = −Σ_i p_i (log p_i + H) ∇f_i, and H."""
        log_p = cls.accurate_log_softmax(logits)
        p = log_p.exp()
        h = -(p * log_p).sum(1, keepdim=True)
        return -p * (log_p + h), h.squeeze(1)

    @staticmethod
    def lambdas(h, num_classes, rule, lambda0, step):
        if rule == "confidence":
            return lambda0 * (1 - h / math.log(num_classes))
        if rule == "inverse_entropy":
            return lambda0 * math.log(num_classes) / h
        return lambda0 * math.sin(math.pi * step.i / step.num_steps) * torch.ones_like(h)

    @staticmethod
    def target(labels, num_classes, epsilon):
        """q_y(i) = (1−ε)/K + ε·1[i=y]."""
        return (1 - epsilon) / num_classes + epsilon * torch.nn.functional.one_hot(labels, num_classes).to(F64)

    @classmethod
    def neg_grad_divergence_table(cls, logits, labels, name, epsilon):
        """−∇D from the spec's f-divergence table (column "−∇D (what α multiplies)")."""
        q = cls.target(labels, logits.shape[1], epsilon)
        log_p = torch.log_softmax(logits, 1)
        p = log_p.exp()
        if name == "reverse_kl":
            return q - p
        if name == "forward_kl":
            log_ratio = log_p - q.log()
            return -p * (log_ratio - (p * log_ratio).sum(1, keepdim=True))
        if name == "js":
            log_ratio = log_p - torch.log((p + q) / 2)
            return -0.5 * p * (log_ratio - (p * log_ratio).sum(1, keepdim=True))
        root = torch.sqrt(p * q)
        return root - p * root.sum(1, keepdim=True)

    # f'(u) for the four f's of the spec: −log u, u log u, ½[u log u − (1+u) log((1+u)/2)], (√u − 1)²
    F_PRIME = {
        "reverse_kl": lambda u: -1 / u,
        "forward_kl": lambda u: torch.log(u) + 1,
        "js": lambda u: 0.5 * torch.log(2 * u / (1 + u)),
        "hellinger": lambda u: 1 - 1 / torch.sqrt(u),
    }
    F = {
        "reverse_kl": lambda u: -np.log(u),
        "forward_kl": lambda u: u * np.log(u),
        "js": lambda u: 0.5 * (u * np.log(u) - (1 + u) * np.log((1 + u) / 2)),
        "hellinger": lambda u: (np.sqrt(u) - 1) ** 2,
    }

    @classmethod
    def neg_grad_divergence_generic(cls, logits, labels, name, epsilon):
        """−∇D = −Σ_i w_f(q_i, p_i) g_i with w_f(q, p) = p·f'(p/q), g_i = ∇f_i − Σ_j p_j ∇f_j (needs q > 0)."""
        q = cls.target(labels, logits.shape[1], epsilon)
        p = torch.softmax(logits, 1)
        w = p * cls.F_PRIME[name](p / q)
        return -(w - p * w.sum(1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------------
# closed-form gradients = autograd (float64, max abs error 1e-8)


@pytest.mark.parametrize("kind", LOGIT_KINDS)
@pytest.mark.parametrize("tau1, tau2", [(1.0, 0.5), (1.0, 1.0), (2.0, 0.3)])
def test_baseline_gradient_matches_closed_form(kind, tau1, tau2):
    logits, labels = _logits(kind)
    objective = LogLikelihood(tau1, tau2)
    expected = _closed_forms.grad_log_likelihood(logits, labels, tau1, tau2)
    assert (_autograd(objective, logits, labels) - expected).abs().max() < TOL
    assert torch.allclose(objective(logits, labels), _closed_forms.log_likelihood(logits, labels, tau1, tau2),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", LOGIT_KINDS)
@pytest.mark.parametrize("t_tilde", [-0.2, -3.0, 0.7, 0.0])
@pytest.mark.parametrize("times_batch_size", [True, False])
def test_tilted_gradient_matches_closed_form(kind, t_tilde, times_batch_size):
    logits, labels = _logits(kind)
    objective = Tilted(t_tilde=t_tilde, times_batch_size=times_batch_size, tau2=0.4)
    expected = _closed_forms.grad_tilted(logits, labels, t_tilde, times_batch_size, tau2=0.4)
    assert objective(logits, labels).ndim == 0
    assert (_autograd(objective, logits, labels) - expected).abs().max() < TOL


@pytest.mark.parametrize("kind", LOGIT_KINDS)
@pytest.mark.parametrize("rule", ["confidence", "inverse_entropy", "time"])
def test_entropy_gradient_matches_closed_form(kind, rule):
    logits, labels = _logits(kind)
    step = SimpleNamespace(i=37, num_steps=100)
    objective = EntropyRegularized(lambda0=0.5, rule=rule)
    grad_h, h = _closed_forms.grad_entropy(logits)
    lam = _closed_forms.lambdas(h, NUM_CLASSES, rule, 0.5, step)
    expected = _closed_forms.grad_log_likelihood(logits, labels) + lam[:, None] * grad_h
    assert (_autograd(objective, logits, labels, step) - expected).abs().max() < TOL
    value = _closed_forms.log_likelihood(logits, labels, 1.0, 0.5) + lam * h
    assert torch.allclose(objective(logits, labels, step), value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", LOGIT_KINDS)
@pytest.mark.parametrize("name, epsilon", [(name, epsilon) for name in sorted(DIVERGENCES)
                                           for epsilon in (0.5, 0.9, 0.99, 1.0)
                                           if (name, epsilon) != ("forward_kl", 1.0)])  # undefined: an error below
def test_divergence_gradient_matches_table_and_generic_w_f(kind, name, epsilon):
    logits, labels = _logits(kind)
    alpha = 0.25
    objective = FDivergence(name, alpha=alpha, epsilon=epsilon)
    table = _closed_forms.neg_grad_divergence_table(logits, labels, name, epsilon)
    expected = _closed_forms.grad_log_likelihood(logits, labels) + alpha * table
    assert (_autograd(objective, logits, labels) - expected).abs().max() < TOL
    if epsilon < 1:  # the generic w_f form divides by q
        generic = _closed_forms.neg_grad_divergence_generic(logits, labels, name, epsilon)
        assert (generic - table).abs().max() < TOL


# ---------------------------------------------------------------------------------------------------------------------
# properties


def test_tilted_at_zero_is_the_baseline_exactly():
    logits, labels = _logits("random", batch=9)
    baseline, tilted = LogLikelihood(), Tilted(t_tilde=0.0)
    assert torch.equal(tilted(logits, labels), baseline(logits, labels).sum())
    assert torch.equal(_autograd(tilted, logits, labels), _autograd(baseline, logits, labels))
    literal = Tilted(t_tilde=0.0, times_batch_size=False)
    assert torch.allclose(literal(logits, labels), baseline(logits, labels).mean(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("t_tilde", [1e-5, -1e-5])
def test_tilted_small_t_follows_its_expansion(t_tilde):
    """J(t̃) = Σℓ + t̃·N·Var(ℓ)/2 + O(t̃²): the limit t̃ → 0 is approached without cancellation error."""
    logits, labels = _logits("random", batch=9)
    ell = LogLikelihood()(logits, labels)
    slope = (Tilted(t_tilde=t_tilde)(logits, labels) - ell.sum()) / t_tilde
    assert slope.item() == pytest.approx((9 * ell.var(unbiased=False) / 2).item(), rel=1e-3)
    tiny = Tilted(t_tilde=1e-13)
    assert abs(tiny(logits, labels) - ell.sum()) < 1e-11
    assert (_autograd(tiny, logits, labels) - _autograd(LogLikelihood(), logits, labels)).abs().max() < 1e-11


@pytest.mark.parametrize("t_tilde", [-50.0, 40.0])
def test_tilted_value_with_large_t_matches_logsumexp(t_tilde):
    logits, labels = _logits("confident_wrong", batch=8)
    ell = LogLikelihood()(logits, labels)
    value = Tilted(t_tilde=t_tilde)(logits, labels)
    expected = 8 * (torch.logsumexp(t_tilde * ell, 0) - math.log(8)) / t_tilde
    assert torch.isfinite(value) and abs(value - expected) < 1e-10 * abs(expected)


@pytest.mark.parametrize("t_tilde", [-0.2, 2.0])
def test_tilted_weights_sum_to_one_and_favour_the_tilt(t_tilde):
    logits, labels = _logits("random", batch=10)
    objective = Tilted(t_tilde=t_tilde)
    weights = objective.weights(logits, labels)
    ell = LogLikelihood()(logits, labels)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(weights, tilted_weights(ell, t_tilde))
    favoured = ell.argmin() if t_tilde < 0 else ell.argmax()
    assert weights.argmax() == favoured
    ell_grad = ell.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(tilted_mean(ell_grad, t_tilde), ell_grad)
    assert (grad - weights).abs().max() < 1e-15


def test_tilted_batch_of_one_is_the_baseline_and_warns():
    logits, labels = _logits("random", batch=1)
    with pytest.warns(UserWarning, match="batch of one"):
        value = Tilted(t_tilde=-0.2)(logits, labels)
    assert value.item() == pytest.approx(LogLikelihood()(logits, labels).item(), abs=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tilted(t_tilde=0.0)(logits, labels)


def test_reverse_kl_at_epsilon_one_is_baseline_plus_alpha_grad_log_p():
    logits, labels = _logits("random")
    alpha = 0.7
    grad = _autograd(FDivergence("reverse_kl", alpha=alpha, epsilon=1.0), logits, labels)
    grad_log_p = _autograd(LogLikelihood(1.0, 1.0), logits, labels)
    assert (grad - (_autograd(LogLikelihood(), logits, labels) + alpha * grad_log_p)).abs().max() < 1e-14


def _divergence_gradient(name, logits, labels, epsilon):
    """dD/dlogits for the divergence term alone."""
    term = FDivergence(name, epsilon=epsilon)
    logits = logits.clone().requires_grad_(True)
    value = term.divergence_term(logits, labels)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


@pytest.mark.parametrize("gap", [1000.0, 100.0])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_regularizer_force_at_one_hot(name, gap):
    """At p = one-hot(y) (exactly for gap 1000, the limit for gap 100) the forward KL, JS and Hellinger forces
    vanish; reverse KL's is q − one-hot(y) = (1−ε)(1/K − 1[i=y]) ≠ 0. Values: forward KL −log q_y, JS and
    Hellinger their closed forms (not zero); reverse KL grows with the gap (∞ in the limit)."""
    epsilon = 0.9
    labels = torch.tensor([0, 3, 6])
    logits = gap * torch.nn.functional.one_hot(labels, NUM_CLASSES).to(F64)
    value, grad = _divergence_gradient(name, logits, labels, epsilon)
    q_y = (1 - epsilon) / NUM_CLASSES + epsilon
    if name == "reverse_kl":
        expected = (1 - epsilon) * (1 / NUM_CLASSES - _closed_forms.onehot(labels, NUM_CLASSES))
        assert (-grad - expected).abs().max() < 1e-15
        assert (-grad).abs().max() > 0.05
        q = _closed_forms.target(labels, NUM_CLASSES, epsilon)
        assert value.numpy() == pytest.approx(((1 - q_y) * gap + (q * q.log()).sum(1)).numpy(), abs=1e-12)
        return
    assert grad.abs().max() < 1e-12
    q = _closed_forms.target(labels, NUM_CLASSES, epsilon)[0].numpy()
    one_hot = np.eye(NUM_CLASSES)[0]
    expected_value = {
        "forward_kl": -math.log(q_y),
        "js": jensenshannon(one_hot, q) ** 2,
        "hellinger": (1 - math.sqrt(q_y)) ** 2 + (1 - q_y),
    }[name]
    assert value.numpy() == pytest.approx(np.full(3, expected_value), abs=1e-12)
    assert expected_value > 0.004


@pytest.mark.parametrize("epsilon", [0.5, 0.95])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_values_match_generic_f_and_scipy(name, epsilon):
    """D_f(q‖p) = Σ_i q_i f(p_i/q_i) (the spec's definition) and SciPy's KL / Jensen–Shannon."""
    logits, labels = _logits("random")
    value, _ = _divergence_gradient(name, logits, labels, epsilon)
    p = torch.softmax(logits, 1).numpy()
    q = _closed_forms.target(labels, NUM_CLASSES, epsilon).numpy()
    generic = (q * _closed_forms.F[name](p / q)).sum(1)
    assert value.numpy() == pytest.approx(generic, abs=1e-12)
    oracle = {
        "reverse_kl": rel_entr(q, p).sum(1),
        "forward_kl": rel_entr(p, q).sum(1),
        "js": jensenshannon(p, q, axis=1) ** 2,
        "hellinger": ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(1),
    }[name]
    assert value.numpy() == pytest.approx(oracle, abs=1e-12)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_is_nonnegative_and_zero_only_at_the_target(name):
    epsilon = 0.8
    _, labels = _logits("random", batch=5)
    at_target = torch.log(_closed_forms.target(labels, NUM_CLASSES, epsilon))
    value, grad = _divergence_gradient(name, at_target, labels, epsilon)
    assert value.abs().max() < 1e-14 and grad.abs().max() < 1e-14
    for kind in LOGIT_KINDS:
        logits, labels = _logits(kind, batch=5, seed=3)
        value, _ = _divergence_gradient(name, logits, labels, epsilon)
        assert (value > 1e-6).all()
    perturbed = at_target + 1e-3 * torch.randn(at_target.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert (_divergence_gradient(name, perturbed, labels, epsilon)[0] > 0).all()


def test_js_and_hellinger_are_bounded_and_reach_their_bounds():
    """JS ≤ log 2 and squared Hellinger ≤ 2, attained for disjoint supports (ε = 1, p one-hot on another class)."""
    labels = torch.tensor([0, 4])
    wrong = 1000.0 * torch.nn.functional.one_hot((labels + 1) % NUM_CLASSES, NUM_CLASSES).to(F64)
    assert _divergence_gradient("js", wrong, labels, 1.0)[0].numpy() == pytest.approx([math.log(2)] * 2, abs=1e-15)
    assert _divergence_gradient("hellinger", wrong, labels, 1.0)[0].numpy() == pytest.approx([2.0] * 2, abs=1e-15)
    for seed in range(5):
        logits, labels = _logits("confident_wrong", batch=20, seed=seed)
        logits = logits * 10
        for epsilon in (0.5, 1.0):
            assert (_divergence_gradient("js", logits, labels, epsilon)[0] <= math.log(2) + 1e-15).all()
            assert (_divergence_gradient("hellinger", logits, labels, epsilon)[0] <= 2 + 1e-15).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_finite_at_extreme_confidence(name, dtype):
    """Logit gaps of 1e4 (p exactly one-hot in float32 and float64): finite values and gradients."""
    labels = torch.tensor([0, 1, 2, 2])
    logits = torch.zeros(4, NUM_CLASSES, dtype=dtype)
    logits[torch.arange(4), torch.tensor([0, 1, 3, 2])] = 1e4
    objective = make_objective(name)
    step = SimpleNamespace(i=10, num_steps=20)
    assert torch.isfinite(objective(logits, labels, step)).all()
    assert torch.isfinite(_autograd(objective, logits, labels, step)).all()


def test_gaussian_mixture_reverse_kl_force_matches_proposition_3():
    """f_k = −‖x−μ_k‖²/(2σ²): ∇_x J = (1/σ²)[(τ1 + αε)(μ_y − x) + α(1−ε)/K Σ_k (μ_k − x)
    − τ2 Σ_k softmax(τ2 f)_k (μ_k − x) − α Σ_k p_k (μ_k − x)] (the last two: the current-direction terms)."""
    gen = torch.Generator().manual_seed(4)
    num_classes, dim, sigma, alpha, epsilon, tau1, tau2 = 5, 3, 0.7, 0.5, 0.9, 1.0, 0.5
    means = 2 * torch.randn(num_classes, dim, generator=gen, dtype=F64)
    x = (2 * torch.randn(16, dim, generator=gen, dtype=F64)).requires_grad_(True)
    labels = torch.randint(num_classes, (16,), generator=gen)
    logits = -((x[:, None, :] - means) ** 2).sum(-1) / (2 * sigma**2)
    objective = FDivergence("reverse_kl", alpha=alpha, epsilon=epsilon, tau1=tau1, tau2=tau2)
    (grad,) = torch.autograd.grad(objective(logits, labels).sum(), x)
    with torch.no_grad():
        to_means = means[None] - x[:, None, :]  # μ_k − x [B, K, d]
        p, s = torch.softmax(logits, 1), torch.softmax(tau2 * logits, 1)
        force = ((tau1 + alpha * epsilon) * to_means[torch.arange(16), labels]
                 + alpha * (1 - epsilon) / num_classes * to_means.sum(1)
                 - tau2 * (s[..., None] * to_means).sum(1) - alpha * (p[..., None] * to_means).sum(1)) / sigma**2
    assert (grad - force).abs().max() < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# entropy rules, registry, errors


def test_entropy_rules_at_uniform_and_one_hot():
    uniform = torch.zeros(2, NUM_CLASSES, dtype=F64)
    one_hot = 1e4 * torch.nn.functional.one_hot(torch.tensor([1, 2]), NUM_CLASSES).to(F64)
    assert entropy(torch.log_softmax(uniform, 1)).numpy() == pytest.approx([math.log(NUM_CLASSES)] * 2, abs=1e-15)
    confidence = EntropyRegularized(lambda0=0.05)
    inverse = EntropyRegularized(lambda0=0.05, rule="inverse_entropy")
    h_uniform = torch.full((2,), math.log(NUM_CLASSES), dtype=F64)
    assert confidence.lambdas(h_uniform, NUM_CLASSES).numpy() == pytest.approx([0, 0], abs=1e-15)
    assert inverse.lambdas(h_uniform, NUM_CLASSES).numpy() == pytest.approx([0.05, 0.05], abs=1e-15)
    assert confidence.lambdas(torch.zeros(2, dtype=F64), NUM_CLASSES).numpy() == pytest.approx([0.05, 0.05])
    assert torch.isfinite(inverse.lambdas(torch.zeros(2, dtype=F64), NUM_CLASSES)).all()
    labels = torch.tensor([1, 2])
    assert torch.equal(inverse(one_hot, labels), LogLikelihood()(one_hot, labels))


def test_entropy_matches_scipy_and_stays_accurate_near_one_hot():
    logits, _ = _logits("random")
    assert entropy(torch.log_softmax(logits, 1)).numpy() == pytest.approx(
        entr(torch.softmax(logits, 1).numpy()).sum(1), rel=1e-13)
    for kind in ("near_one_hot", "very_near_one_hot"):
        logits, _ = _logits(kind)
        _, expected = _closed_forms.grad_entropy(logits)
        assert (entropy(torch.log_softmax(logits, 1)) / expected - 1).abs().max() < 1e-12


def test_inverse_entropy_force_does_not_vanish_at_one_hot():
    """Rule (b): λ_n∇H = λ0·log K·∇H/H → −λ0·log K·(e_y − p̃) as p → one-hot(y), p̃ = p renormalised off y
    (at a logit gap g the remaining error is O(1/g)); rule (a)'s force vanishes with ∇H."""
    lambda0 = 0.5
    logits, labels = _logits("random")
    logits = logits + 300 * _closed_forms.onehot(labels, NUM_CLASSES)
    baseline = _autograd(LogLikelihood(), logits, labels)
    force = _autograd(EntropyRegularized(lambda0=lambda0, rule="inverse_entropy"), logits, labels) - baseline
    off_label = torch.softmax(logits - 1e4 * _closed_forms.onehot(labels, NUM_CLASSES), 1)
    limit = -lambda0 * math.log(NUM_CLASSES) * (_closed_forms.onehot(labels, NUM_CLASSES) - off_label)
    assert (force - limit).abs().max() < 0.01 * lambda0 * math.log(NUM_CLASSES)
    confidence = _autograd(EntropyRegularized(lambda0=lambda0), logits, labels) - baseline
    assert confidence.abs().max() < 1e-100


@pytest.mark.parametrize("gap", [15.0, 40.0, 300.0])
def test_inverse_entropy_gradient_is_accurate_in_float32(gap):
    """float32 logits: ∇H/H must not be lost to cancellation (a plain H = −Σ p log p in float32 is off by O(1)
    from a gap of ~15)."""
    logits, labels = _logits("random")
    logits = logits + gap * _closed_forms.onehot(labels, NUM_CLASSES)
    objective = EntropyRegularized(lambda0=0.5, rule="inverse_entropy")
    single = _autograd(objective, logits.float(), labels) - _autograd(LogLikelihood(), logits.float(), labels)
    double = _autograd(objective, logits, labels) - _autograd(LogLikelihood(), logits, labels)
    assert single.dtype == torch.float32 and objective(logits.float(), labels).dtype == torch.float32
    assert (single.double() - double).abs().max() < 1e-6


def test_entropy_time_rule_reads_the_guidance_step():
    logits, labels = _logits("random", batch=3)
    step = GuidanceStep(i=25, num_steps=100, num_train_timesteps=1000, t=torch.full((3,), 250), x_t=torch.zeros(3, 2),
                        prediction=None, labels=labels, max_variance=torch.ones(3))
    objective = EntropyRegularized(lambda0=0.5, rule="time")
    h = entropy(torch.log_softmax(logits, 1))
    expected = LogLikelihood()(logits, labels) + 0.5 * math.sin(math.pi / 4) * h
    assert torch.allclose(objective(logits, labels, step), expected, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="step"):
        objective(logits, labels, None)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_make_objective_builds_every_registered_name(name):
    objective = make_objective(name)
    if name in DIVERGENCES:
        assert isinstance(objective, FDivergence) and objective.divergence == name
        assert (objective.alpha, objective.epsilon, objective.tau1, objective.tau2) == (0.5, 0.9, 1.0, 0.5)
    expected_type = {"log_softmax": LogLikelihood, "baseline": LogLikelihood, "tilted": Tilted,
                     "entropy": EntropyRegularized}.get(name, FDivergence)
    assert type(objective) is expected_type
    logits, labels = _logits("random")
    assert torch.isfinite(objective(logits, labels, SimpleNamespace(i=1, num_steps=2))).all()


def test_defaults_are_the_stated_ones():
    assert Tilted() == Tilted(tau1=1.0, tau2=0.5, t_tilde=-0.2, times_batch_size=True)
    assert EntropyRegularized() == EntropyRegularized(lambda0=0.1, rule="confidence", tau1=1.0, tau2=0.5)
    assert make_objective("log_softmax") == LogLikelihood(1.0, 1.0)
    assert make_objective("tilted", t_tilde=-1.0).t_tilde == -1.0


def test_smoothed_target_values():
    q = smoothed_target(torch.tensor([0, 2]), 4, 0.9, dtype=F64)
    assert q.numpy() == pytest.approx(np.array([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]]))


_BAD_INPUTS = [
    (lambda: make_objective("tiltd"), "objective"),
    (lambda: make_objective("js", alpha=0.1, beta=2), "beta"),
    (lambda: make_objective("js", divergence="hellinger"), "divergence"),
    (lambda: make_objective("log_softmax", tau2=0.5), "tau2"),
    (lambda: FDivergence("kl"), "divergence"),
    (lambda: FDivergence("js", alpha=-0.1), "alpha"),
    (lambda: FDivergence("js", alpha=float("inf")), "alpha"),
    (lambda: FDivergence("reverse_kl", epsilon=0.0), "epsilon"),
    (lambda: FDivergence("reverse_kl", epsilon=1.5), "epsilon"),
    (lambda: FDivergence("hellinger", epsilon=float("nan")), "epsilon"),
    (lambda: FDivergence("forward_kl", epsilon=1.0), "epsilon"),
    (lambda: Tilted(t_tilde=float("nan")), "t_tilde"),
    (lambda: Tilted(times_batch_size=1), "times_batch_size"),
    (lambda: Tilted(tau2="0.5"), "tau2"),
    (lambda: EntropyRegularized(lambda0=-0.1), "lambda0"),
    (lambda: EntropyRegularized(rule="adaptive"), "rule"),
    (lambda: EntropyRegularized()(torch.zeros(2, 1, dtype=F64), torch.zeros(2, dtype=torch.long)), "logits"),
]


@pytest.mark.parametrize("build, parameter", _BAD_INPUTS, ids=[p for _, p in _BAD_INPUTS])
def test_bad_parameters_raise_value_errors_naming_them(build, parameter):
    with pytest.raises(ValueError, match=parameter):
        build()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bad_logits_and_labels_raise_value_errors(name):
    objective = make_objective(name)
    logits, labels = _logits("random", batch=3)
    step = SimpleNamespace(i=1, num_steps=2)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = logits.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="logits"):
            check_logits(broken, labels)
        # inside a sampler (a step given) values are not read on the host: the guided denoiser checks the labels
        # once per run and catches a non-finite gradient (test_guidance_core)
    with pytest.raises(ValueError, match="labels"):
        check_logits(logits, torch.tensor([0, 1, NUM_CLASSES]))
    with pytest.raises(ValueError, match="labels"):
        objective(logits, labels.to(F64), step)
    with pytest.raises(ValueError, match="labels"):
        objective(logits, labels[:2], step)
    with pytest.raises(ValueError, match="logits"):
        check_logits(logits[0], labels)
