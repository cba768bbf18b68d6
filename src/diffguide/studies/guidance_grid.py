"""The regularized-guidance study's configurations (the grid, fixed before the runs) and its objective-level
measurements (Proposition 3 of the paper: logit gradients of each regularizer as p approaches one-hot)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from diffguide.guidance import make_objective
from diffguide.toy import BayesClassifier, GaussianMixture

from .sweep import study_labels

__all__ = ["Method", "DEFAULTS", "DIVERGENCES", "Grid", "default_methods", "method_grid", "regularizer_terms",
           "reverse_kl_limit", "onehot_gradient_table", "tilted_effective_batch"]

_LOG_SOFTMAX, _BASELINE = make_objective("log_softmax"), make_objective("baseline")  # ℓ with τ2 = 1 and τ2 = 0.5


@dataclass(frozen=True)
class Method:
    """One guided-sampling configuration: objective ``objective`` with ``params``, classifier temperature, scale s."""

    family: str
    objective: str
    params: tuple = ()  # ((name, value), ...): hashable, so a Method can key a dict
    temperature: float = 0.1
    scale: float = 1.0
    logits: str = "posterior"  # 'posterior': f = log p(y|x)/T (BayesClassifier); 'joint': f = log p(x, y)/T

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
        return f"{self.objective}({shown})" if shown else self.objective

    @property
    def key(self) -> str:
        return f"{self.label} T={self.temperature:g} s={self.scale:g}" + ("" if self.logits == "posterior" else
                                                                           f" logits={self.logits}")

    def build_objective(self):
        return make_objective(self.objective, **dict(self.params))


DEFAULTS = {  # the default-parameter member of each family (headline rows and figures)
    "log_softmax": {}, "baseline": {}, "tilted": {"t_tilde": -0.2}, "entropy": {"lambda0": 0.1},
    "reverse_kl": {"alpha": 0.5, "epsilon": 0.9}, "forward_kl": {"alpha": 0.5, "epsilon": 0.9},
    "js": {"alpha": 0.5, "epsilon": 0.9}, "hellinger": {"alpha": 0.5, "epsilon": 0.9},
}
DIVERGENCES = ("reverse_kl", "forward_kl", "js", "hellinger")


@dataclass(frozen=True)
class Grid:
    """The grid of the study, fixed before the reported runs and reported in full (``quick``: smoke test only).

    A pilot on a few methods (not the reported numbers) set the step count and the cross design for run time;
    nothing was chosen by which method came out ahead."""

    scales: tuple = (1.0, 3.0)
    temperature: float = 0.1
    control_temperature: float = 1.0
    t_tilde: tuple = (-1.0, -0.2, 0.2)
    lambda0: tuple = (0.01, 0.05, 0.1, 0.5)
    alpha: tuple = (0.1, 0.25, 0.5, 1.0)  # swept at epsilon = 0.9
    epsilon: tuple = (0.5, 0.8, 0.9, 0.95, 0.99)  # swept at alpha = 0.5 (a cross through the α × ε grid: run time)
    joint_logits: bool = True  # supplement: the default methods with f = log p(x, y)/T (Proposition 3's logits)
    control_families: tuple = tuple(DEFAULTS)  # families run at the control temperature and with joint logits

    @classmethod
    def quick(cls) -> "Grid":
        return cls(scales=(1.0,), t_tilde=(-0.2,), lambda0=(0.1,), alpha=(0.5,), epsilon=(0.9,), joint_logits=True,
                   control_families=("log_softmax", "baseline", "reverse_kl", "forward_kl"))

    def divergence_params(self) -> list[tuple[float, float]]:
        """(α, ε) pairs: every α at the default ε = 0.9, every ε at the default α = 0.5."""
        pairs = [(a, 0.9) for a in self.alpha] + [(0.5, e) for e in self.epsilon]
        return list(dict.fromkeys(pairs))


def default_methods(temperature: float, scale: float, logits: str = "posterior", rules: bool = True,
                    families=tuple(DEFAULTS)) -> list[Method]:
    """The default member of each family (and, with ``rules``, the two other entropy rules at λ0 = 0.1)."""
    methods = [Method(f, f, tuple(DEFAULTS[f].items()), temperature, scale, logits) for f in families]
    if rules:
        methods += [Method("entropy", "entropy", (("lambda0", 0.1), ("rule", r)), temperature, scale, logits)
                    for r in ("inverse_entropy", "time")]
    return methods


def method_grid(grid: Grid) -> list[Method]:
    """Every guided configuration of the study, in a fixed order."""
    methods = []
    for s in grid.scales:
        T = grid.temperature
        methods += [Method("log_softmax", "log_softmax", (), T, s), Method("baseline", "baseline", (), T, s)]
        methods += [Method("tilted", "tilted", (("t_tilde", t),), T, s) for t in grid.t_tilde]
        methods += [Method("entropy", "entropy", (("lambda0", lam),), T, s) for lam in grid.lambda0]
        methods += [Method("entropy", "entropy", (("lambda0", 0.1), ("rule", r)), T, s)
                    for r in ("inverse_entropy", "time")]
        methods += [Method(d, d, (("alpha", a), ("epsilon", e)), T, s)
                    for d in DIVERGENCES for a, e in grid.divergence_params()]
    for s in grid.scales:
        methods += default_methods(grid.control_temperature, s, rules=False, families=grid.control_families)
        if grid.joint_logits:
            methods += default_methods(grid.temperature, s, "joint", rules=False, families=grid.control_families)
    unique = list(dict.fromkeys(methods))
    return unique


# ---------------------------------------------------------------------------------------------------------------------
# objective level: Proposition 3


def regularizer_terms(lambda0: float = 0.1, alpha: float = 1.0, epsilon: float = 0.9) -> dict:
    """Each term whose logit gradient Proposition 3 is about, as a function term(logits, labels) -> [B].

    ℓ terms are the full log-likelihoods; the regularizer terms are J − ℓ_baseline (λ_n·H(p_n) for entropy,
    −α·D_f(q_y ‖ p) for the f-divergences), so the table isolates what each regularizer adds.
    """
    half = SimpleNamespace(i=50, num_steps=100)  # time rule at its peak, sin(π/2) = 1

    def added(name, **params):
        objective = make_objective(name, **params)
        return lambda f, y: objective(f, y, half) - _BASELINE(f, y, half)

    terms = {
        "log_softmax ℓ (τ2=1)": lambda f, y: _LOG_SOFTMAX(f, y, half),
        "baseline ℓ (τ2=0.5)": lambda f, y: _BASELINE(f, y, half),
    }
    for rule in ("confidence", "inverse_entropy", "time"):
        terms[f"entropy λ·H, {rule} (λ0={lambda0:g})"] = added("entropy", lambda0=lambda0, rule=rule)
    for d in DIVERGENCES:
        terms[f"{d} −α·D (α={alpha:g}, ε={epsilon:g})"] = added(d, alpha=alpha, epsilon=epsilon)
    return terms


def reverse_kl_limit(num_classes: int, alpha: float, epsilon: float) -> float:
    """‖−α∇_f KL(q_y‖p)‖ at p = one-hot(y): α‖q_y − e_y‖ = α(1−ε)·sqrt((K−1)/K)."""
    return alpha * (1 - epsilon) * math.sqrt((num_classes - 1) / num_classes)


def onehot_gradient_table(gaps=(0, 1, 2, 4, 8, 16, 32, 64), num_classes: int = 4, **term_params) -> dict:
    """‖∇_f term‖₂ (autograd, float64) at logits f = (Δ, 0, …, 0), label y = 0, for each logit gap Δ:
    p_y = e^Δ/(e^Δ + K − 1) → 1 (one-hot) as Δ grows."""
    terms = regularizer_terms(**term_params)
    labels = torch.zeros(1, dtype=torch.long)
    rows = []
    for gap in gaps:
        logits = torch.zeros(1, num_classes, dtype=torch.float64)
        logits[0, 0] = gap
        row = {"gap": gap, "p_y": float(torch.softmax(logits, 1)[0, 0]), "norms": {}}
        for name, term in terms.items():
            f = logits.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(term(f, labels).sum(), f)
            row["norms"][name] = float(grad.norm())
        rows.append(row)
    params = {"lambda0": 0.1, "alpha": 1.0, "epsilon": 0.9, **term_params}
    return {"num_classes": num_classes, "params": params, "rows": rows,
            "reverse_kl_limit": reverse_kl_limit(num_classes, params["alpha"], params["epsilon"])}


def tilted_effective_batch(mixture: GaussianMixture, temperatures, t_tildes, n: int = 1000, seed: int = 0) -> list:
    """How many samples the tilted weights ω = softmax_n(t̃·ℓ_n) really use: the effective batch size 1/Σω² and the
    spread max ℓ − min ℓ of the batch, for ℓ of the BayesClassifier at temperature T (τ2 = 0.5) on two batches with
    targets y_i = i mod K: x ~ p(x) (unguided samples: most targets disagree with x) and x ~ p(x | y_i) (perfectly
    guided samples)."""
    labels = study_labels(n, mixture.num_classes)
    g = torch.Generator().manual_seed(seed)
    batches = {"x ~ p(x)": mixture.sample(n, generator=g)[0], "x ~ p(x|y)": mixture.sample(n, labels, generator=g)[0]}
    rows = []
    for name, x in batches.items():
        for T in temperatures:
            ell = _BASELINE(BayesClassifier(mixture, T)(x), labels, None)
            for t_tilde in t_tildes:
                w = torch.softmax(t_tilde * ell, 0)
                rows.append({"batch": name, "temperature": T, "t_tilde": t_tilde, "n": n,
                             "ell_spread": float(ell.max() - ell.min()), "effective_batch": float(1 / (w ** 2).sum())})
    return rows


