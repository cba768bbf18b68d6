"""An exact testbed: Gaussian mixtures in d dimensions, K classes, each class one or more isotropic modes.

Under the forward process x_t = sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε, mode m (mean μ_m, std σ_m, weight π_m) becomes
N(sqrt(ᾱ)·μ_m, (ᾱ·σ_m² + 1 − ᾱ)·I), so the noised density, its score, ε*, p(y | x_t) and the clean-data Bayes classifier are all
closed forms. Everything a guidance method claims (accuracy, mode coverage, distance to the true conditional, the
vanishing guidance gradient) can be measured against the truth here before touching images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .schedule import NoiseSchedule

__all__ = [
    "GaussianMixture", "ExactEps", "ExactNoisyClassifier", "BayesClassifier", "GradientNormRecorder",
    "class_accuracy", "mode_coverage", "sliced_wasserstein", "conditional_distance", "exact_distance_spread",
    "demo_mixture", "study_mixture",
]


@dataclass
class GaussianMixture:
    """Modes m = 0..M−1 with ``means`` [M, d], ``stds`` [M], ``weights`` [M] (summing to 1) and ``classes`` [M] ∈ [0, K).

    The class prior is p(y) = Σ_{m ∈ y} π_m.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor
    classes: Tensor
    num_classes: int = field(default=0)

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        m, _ = self.means.shape
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64).reshape(m)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64).reshape(m)
        self.classes = torch.as_tensor(self.classes, dtype=torch.long).reshape(m)
        if not self.num_classes:
            self.num_classes = int(self.classes.max()) + 1
        if (self.stds <= 0).any() or (self.weights <= 0).any():
            raise ValueError("stds and weights: expected positive values")
        if abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError(f"weights: expected to sum to 1, got {float(self.weights.sum())}")
        missing = set(range(self.num_classes)) - set(self.classes.tolist())
        if missing:
            raise ValueError(f"classes: every class needs at least one mode; classes {sorted(missing)} have none")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def class_prior(self) -> Tensor:
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.weights)

    def modes_of(self, label: int) -> Tensor:
        return (self.classes == label).nonzero().flatten()

    def log_joint(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """log π_m + log N(x; sqrt(ᾱ)μ_m, (ᾱσ_m² + 1 − ᾱ)I), shape [B, M]."""
        ab = _column(alpha_bar, x)
        means = self.means.to(x)
        var = ab * self.stds.to(x) ** 2 + (1 - ab)  # [B, M]
        sq = ((x[:, None, :] - ab.sqrt()[..., None] * means[None]) ** 2).sum(-1)
        d = x.shape[1]
        return torch.log(self.weights.to(x)) - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)

    def _mask(self, labels: Tensor | None, like: Tensor) -> Tensor:
        if labels is None:
            return torch.zeros(1, self.classes.numel(), dtype=like.dtype, device=like.device)
        same = self.classes.to(labels.device)[None, :] == labels[:, None]
        return torch.where(same, 0.0, -math.inf).to(like)

    def score(self, x: Tensor, alpha_bar: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """∇_x log p_t(x) (or log p_t(x | y)): Σ_m r_m·(sqrt(ᾱ)μ_m − x)/v_m with responsibilities r over the (class's) modes."""
        ab = _column(alpha_bar, x)
        var = ab * self.stds.to(x) ** 2 + (1 - ab)
        r = torch.softmax(self.log_joint(x, alpha_bar) + self._mask(labels, x), dim=1)
        means = ab.sqrt()[..., None] * self.means.to(x)[None]
        return ((r / var)[..., None] * (means - x[:, None, :])).sum(1)

    def eps(self, x: Tensor, alpha_bar: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """ε*(x_t, t[, y]) = −sqrt(1 − ᾱ)·∇ log p_t(x_t[ | y])."""
        return -torch.sqrt(1 - _column(alpha_bar, x)) * self.score(x, alpha_bar, labels)

    def class_log_posterior(self, x: Tensor, alpha_bar: Tensor | float = 1.0) -> Tensor:
        """log p(y | x_t) for every class, [B, K] (ᾱ = 1: the clean-data Bayes posterior)."""
        lj = self.log_joint(x, alpha_bar)
        per_class = torch.full((x.shape[0], self.num_classes), -math.inf, dtype=x.dtype, device=x.device)
        for k in range(self.num_classes):
            per_class[:, k] = torch.logsumexp(lj[:, self.classes.to(x.device) == k], dim=1)
        return per_class - torch.logsumexp(per_class, dim=1, keepdim=True)

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact samples of p(x) (labels None) or p(x | y) for the given labels; returns (x [n, d], labels [n])."""
        if labels is None:
            modes = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            labels = self.classes[modes]
        else:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (n,):
                raise ValueError(f"labels: expected shape [{n}], got {list(labels.shape)}")
            modes = torch.empty(n, dtype=torch.long)
            for k in labels.unique().tolist():
                idx = (labels == k).nonzero().flatten()
                own = self.modes_of(k)
                pick = torch.multinomial(self.weights[own], len(idx), replacement=True, generator=generator)
                modes[idx] = own[pick]
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[modes] + self.stds[modes, None] * z, labels

    def nearest_mode(self, x: Tensor) -> Tensor:
        """The mode with the highest clean-data responsibility for each point."""
        return self.log_joint(x, 1.0).argmax(1)


def _column(alpha_bar, x: Tensor) -> Tensor:
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    return ab.reshape(-1, 1) if ab.ndim else ab.reshape(1, 1)


class _OnSchedule(nn.Module):
    """Base for the exact 'networks': maps original timesteps t to ᾱ_t of the training schedule."""

    def __init__(self, mixture: GaussianMixture, schedule: str = "linear", num_train_timesteps: int = 1000):
        super().__init__()
        self.mixture = mixture
        self.register_buffer("alphas_cumprod",
                             torch.from_numpy(NoiseSchedule.create(schedule, None, num_train_timesteps).alphas_cumprod))

    def alpha_bar(self, t: Tensor) -> Tensor:
        return self.alphas_cumprod[t.long()]


class ExactEps(_OnSchedule):
    """ε*(x_t, t) or ε*(x_t, t, y) of the mixture, as a network ``net(x, t, y=None)``."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mixture.eps(x, self.alpha_bar(t).to(x), y)


class ExactNoisyClassifier(_OnSchedule):
    """The exact noise-aware classifier: logits log p(y | x_t), called as ``classifier(x_t, t)``."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.class_log_posterior(x, self.alpha_bar(t).to(x))


class BayesClassifier(nn.Module):
    """The clean-data Bayes classifier, logits log p(y | x) / temperature; temperature < 1 makes it overconfident.

    Used "off the shelf" on x̂0, as EluCD uses an ImageNet classifier.
    """

    def __init__(self, mixture: GaussianMixture, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        self.mixture, self.temperature = mixture, temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.mixture.class_log_posterior(x, 1.0) / self.temperature


class GradientNormRecorder:
    """A sampler callback that records the mean per-sample L2 norm of the guidance gradient at each step."""

    def __init__(self):
        self.t: list[int] = []
        self.norm: list[float] = []

    def __call__(self, record) -> None:
        if record.guidance_grad is None:
            return
        self.t.append(int(record.t[0]))
        self.norm.append(float(record.guidance_grad.flatten(1).norm(dim=1).mean()))


# --- metrics against the exact distribution ---

def class_accuracy(mixture: GaussianMixture, x: Tensor, labels: Tensor) -> float:
    """Share of samples whose exact clean posterior argmax_y p(y | x) is their target label."""
    return float((mixture.class_log_posterior(x.double(), 1.0).argmax(1) == labels).double().mean())


def mode_coverage(mixture: GaussianMixture, x: Tensor, labels: Tensor, min_share: float = 0.1,
                  valid: Tensor | None = None) -> dict:
    """Per-mode coverage of class-conditional samples.

    Each sample is assigned to its most responsible mode (clean data). For class y with n_y samples, mode m ∈ y
    expects n_y·π_m/Σ_{m'∈y} π_{m'} of them; it is *covered* when it receives at least ``min_share`` of that.
    Returns ``coverage`` (mean over classes of the share of their modes covered), ``per_class`` and
    ``mode_share`` (observed share of each mode among its class's samples) next to ``true_share``.
    ``valid`` (bool [n], optional): samples marked False (e.g. diverged) count in n_y but in no mode.
    """
    assigned = mixture.nearest_mode(torch.nan_to_num(x.double()))
    if valid is not None:
        assigned = torch.where(valid, assigned, -1)
    per_class, observed, true = {}, torch.zeros(len(mixture.weights)), torch.zeros(len(mixture.weights))
    for k in labels.unique().tolist():
        own = mixture.modes_of(k)
        n_k = int((labels == k).sum())
        expect = mixture.weights[own] / mixture.weights[own].sum()
        counts = torch.stack([((assigned == m) & (labels == k)).sum() for m in own.tolist()]).double()
        observed[own] = (counts / n_k).float()
        true[own] = expect.float()
        per_class[k] = float((counts >= min_share * n_k * expect).double().mean())
    return {
        "coverage": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "mode_share": observed.tolist(),
        "true_share": true.tolist(),
    }


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: sqrt(E_θ W2²(θ·a, θ·b)) over random unit directions θ.

    1-D W2 is computed between empirical quantile functions on a common grid (exact when sizes are equal).
    """
    a, b = a.double().flatten(1), b.double().flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b: expected the same dimension, got {a.shape[1]} and {b.shape[1]}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("a and b: expected non-empty sample sets")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], num_projections, dtype=torch.float64, generator=g)
    theta /= theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    if len(a) != len(b):
        n = max(len(a), len(b))
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = _quantiles(pa, q), _quantiles(pb, q)
    return float(((pa - pb) ** 2).mean(0).mean().sqrt())


def _quantiles(sorted_values: Tensor, q: Tensor) -> Tensor:
    n = len(sorted_values)
    idx = (q * n - 0.5).clamp(0, n - 1)
    lo, hi = idx.floor().long(), idx.ceil().long()
    frac = (idx - lo)[:, None]
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def conditional_distance(mixture: GaussianMixture, x: Tensor, labels: Tensor | None, seed: int = 0) -> float:
    """Distance of samples to the exact (conditional) distribution: per class, the sliced Wasserstein distance to
    an exact sample of p(x | y) of the same size, averaged with weights n_y/n; unconditional if labels is None."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    if labels is None:
        ref, _ = mixture.sample(len(x), generator=g)
        return sliced_wasserstein(x, ref, seed=seed)
    total = 0.0
    for k in labels.unique().tolist():
        mine = x[labels == k]
        ref, _ = mixture.sample(len(mine), torch.full((len(mine),), k), generator=g)
        total += len(mine) / len(x) * sliced_wasserstein(mine, ref, seed=seed)
    return total


def exact_distance_spread(mixture: GaussianMixture, labels: Tensor | None, n: int | None = None, repeats: int = 5,
                          seed: int = 1000) -> tuple[float, float]:
    """Mean and standard deviation of :func:`conditional_distance` between two EXACT sample sets of the same sizes —
    the noise floor a perfect sampler reaches with this many samples."""
    values = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + r)
        if labels is None:
            x, _ = mixture.sample(n, generator=g)
        else:
            x, _ = mixture.sample(len(labels), labels, generator=g)
        values.append(conditional_distance(mixture, x, labels, seed=seed + 100 + r))
    return float(np.mean(values)), float(np.std(values))


# --- named mixtures ---

def demo_mixture() -> GaussianMixture:
    """2-D, three classes: class 0 has two modes, class 1 one, class 2 three (one of them small); classes overlap a little."""
    means = [[-2.0, 1.5], [-2.0, -1.5], [0.5, 0.0], [2.5, 2.0], [3.0, -1.0], [1.5, -2.6]]
    stds = [0.45, 0.45, 0.6, 0.4, 0.4, 0.35]
    weights = np.array([0.2, 0.1, 0.3, 0.2, 0.12, 0.08])
    classes = [0, 0, 1, 2, 2, 2]
    return GaussianMixture(torch.tensor(means), torch.tensor(stds), torch.tensor(weights / weights.sum()),
                           torch.tensor(classes))


def study_mixture(dim: int = 2) -> GaussianMixture:
    """The guidance study's mixture: four classes, two of them multi-modal with unequal mode weights, neighbouring
    classes overlapping; in ``dim`` dimensions (extra coordinates are zero-mean)."""
    base = torch.tensor([[-2.5, 2.0], [-2.5, -2.0], [-0.4, 0.0], [1.6, 2.2], [1.8, -1.8], [3.6, 0.2], [0.6, -3.2]])
    means = torch.zeros(len(base), dim, dtype=torch.float64)
    means[:, :2] = base
    stds = torch.tensor([0.5, 0.5, 0.7, 0.5, 0.5, 0.45, 0.4])
    weights = np.array([0.16, 0.08, 0.2, 0.18, 0.14, 0.14, 0.1])
    classes = torch.tensor([0, 0, 1, 2, 3, 3, 3])
    return GaussianMixture(means, stds, torch.tensor(weights / weights.sum()), classes)
