"""Fréchet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Bińkowski et al. 2018), float64."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["feature_statistics", "frechet_distance", "trace_sqrt_product", "fid_from_features", "polynomial_kernel",
           "mmd2_unbiased", "kernel_inception_distance"]


def _as_features(features, name: str) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected a float array [N, D] of features, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return array


def feature_statistics(features, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean μ = (1/N) Σ f_n and unbiased covariance Σ = (1/(N−1)) Σ (f_n − μ)(f_n − μ)ᵀ, in float64.

    N < 2: ValueError (no covariance). N ≤ D: a warning, Σ has rank ≤ N − 1 < D and the FID is computed from a
    rank-deficient covariance (biased, compare only like with like)."""
    f = _as_features(features, name).astype(np.float64)
    n, d = f.shape
    if n < 2:
        raise ValueError(f"{name}: {n} sample(s); a covariance needs at least 2 (FID is usually computed on 10k-50k)")
    if n <= d:
        warnings.warn(f"{name}: {n} samples for {d}-d features: the covariance is rank-deficient (rank ≤ {n - 1}); "
                      "FID from so few samples is strongly biased", RuntimeWarning, stacklevel=2)
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (n - 1)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, *, device=None) -> float:
    """tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(√Σ₁ Σ₂ √Σ₁) for positive semi-definite Σ₁, Σ₂.

    Σ₁Σ₂ = √Σ₁ · (√Σ₁ Σ₂) and (√Σ₁ Σ₂) · √Σ₁ have the same eigenvalues, and the second is symmetric PSD, so the
    principal square root's trace is the sum of the square roots of its eigenvalues: two symmetric eigendecompositions
    in float64 (torch, on ``device``, default the CPU) instead of a general ``sqrtm``. √Σ₁ = V diag(√max(w, 0)) Vᵀ.
    An eigenvalue of either matrix below −1e-10 of its largest (10⁻¹⁰ ≫ d·u ≈ 2·10⁻¹³, the rounding of a PSD
    matrix's eigenvalues for d = 2048) means it is not PSD: ValueError; smaller negative ones are rounding (zeros)."""
    s1, s2 = (torch.as_tensor(np.asarray(s, np.float64), device=device) for s in (sigma1, sigma2))
    w, v = torch.linalg.eigh(s1)
    _check_psd(w, "Σ₁")
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root @ s2 @ root)
    _check_psd(middle, "√Σ₁ Σ₂ √Σ₁ (Σ₂)")
    return float(middle.clamp(min=0).sqrt().sum())


def _check_psd(eigenvalues, name: str) -> None:
    lowest, largest = float(eigenvalues.min()), float(eigenvalues.abs().max())
    if lowest < -1e-10 * largest:
        raise ValueError(f"frechet_distance: {name} is not positive semi-definite (eigenvalue {lowest:.3g}, largest "
                         f"{largest:.3g}): not a covariance")


def frechet_distance(mu1, sigma1, mu2, sigma2, *, device=None) -> float:
    """FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}), the trace of the root by :func:`trace_sqrt_product`
    (float64 on ``device``)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: means must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * trace_sqrt_product(sigma1, sigma2, device=device))


def fid_from_features(features1, features2) -> float:
    """FID between two feature sets [N₁, D] and [N₂, D]."""
    return frechet_distance(*feature_statistics(features1, "features1"), *feature_statistics(features2, "features2"))


def polynomial_kernel(x, y):
    """k(x, y) = (xᵀy / d + 1)³, the KID kernel (d = feature dimension); NumPy arrays or torch tensors."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD² of equal-size sets (m each):
    (1/(m(m−1))) Σ_{i≠j} [k(xᵢ, xⱼ) + k(yᵢ, yⱼ)] − (2/m²) Σ_{i,j} k(xᵢ, yⱼ). NumPy arrays or torch tensors (the same
    operations: one code for the CPU reference and a GPU)."""
    m = x.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * polynomial_kernel(x, y).sum() / m**2)


def kernel_inception_distance(features1, features2, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, device=None) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD² (polynomial kernel) over ``num_subsets`` random subsets
    of m = min(N₁, N₂, subset_size) points of each set drawn without replacement (as the KID paper and clean-fid;
    seeded).

    ``device`` None: NumPy float64 on the CPU; else torch float64 on that device, on the same subsets (drawn by the
    same NumPy generator), so the value agrees to float64 rounding."""
    f1 = _as_features(features1, "features1").astype(np.float64)
    f2 = _as_features(features2, "features2").astype(np.float64)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kernel_inception_distance: feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"kernel_inception_distance: need num_subsets ≥ 1 and subset_size ≥ 2, got {num_subsets}, "
                         f"{subset_size}")
    m = min(len(f1), len(f2), subset_size)
    if m < 2:
        raise ValueError(f"kernel_inception_distance: need at least 2 features in each set, got {len(f1)} and "
                         f"{len(f2)}")
    rng = np.random.default_rng(seed)
    subsets = [(rng.choice(len(f1), m, replace=False), rng.choice(len(f2), m, replace=False))
               for _ in range(num_subsets)]
    if device is not None:
        f1, f2 = (torch.from_numpy(f).to(device) for f in (f1, f2))
        subsets = [(torch.from_numpy(i1).to(f1.device), torch.from_numpy(i2).to(f1.device)) for i1, i2 in subsets]
    values = [mmd2_unbiased(f1[i1], f2[i2]) for i1, i2 in subsets]
    return float(np.mean(values)), float(np.std(values))
