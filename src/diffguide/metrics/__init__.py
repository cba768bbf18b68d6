"""Sample-quality metrics on Inception features: FID, KID, precision/recall, density/coverage.

A :class:`Reference` (``diffguide ref``) holds the float64 mean and covariance of a data set's features and a random
subset of the features themselves, together with the identity of the feature network that produced them;
:func:`evaluate_features` scores generated samples' features against it (``diffguide eval``); :func:`class_consistency` scores their labels
with a classifier (:mod:`.consistency`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_save_npz
from .consistency import class_consistency
from .fid import feature_statistics, fid_from_features, frechet_distance, kernel_inception_distance
from .inception import FEATURE_DIM, InceptionFeatures, NetworkIdentity, resolve_inception_path
from .prdc import PRDC, knn_radii, prdc

__all__ = [
    "Reference", "compute_reference", "evaluate_features", "feature_statistics", "frechet_distance",
    "fid_from_features", "kernel_inception_distance", "prdc", "PRDC", "InceptionFeatures", "NetworkIdentity",
    "resolve_inception_path", "FEATURE_DIM", "check_image_set", "REFERENCE_FORMAT", "INCEPTION_SCORE_UNAVAILABLE",
    "class_consistency",
]

REFERENCE_FORMAT = "diffguide-reference-v1"
INCEPTION_SCORE_UNAVAILABLE = (
    "Inception Score cannot be computed: the FID Inception network (pool3 features) has no 1008-way logits head. "
    "Use FID/KID/precision/recall here, or ADM's TensorFlow evaluator / torch-fidelity for IS."
)


@dataclass
class Reference:
    """Reference statistics of a data set: μ [D] and Σ [D, D] (float64) over all ``count`` images, a seeded random
    subset of their features [K, D] (for KID, precision/recall, density/coverage) with their positions ``indices``,
    the feature ``network`` identity, the ``source`` it came from and the image shape (H, W, C).

    What every scoring against it needs and no generated set changes — the feature subset as a float64 tensor on a
    device and its k-NN radii — is computed on first use and kept on the object (:meth:`features_on`,
    :meth:`real_radii`); treat the arrays as read-only once it is used."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    indices: np.ndarray
    count: int
    network: NetworkIdentity
    source: str
    image_shape: tuple[int, int, int]
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def features_on(self, device=None) -> torch.Tensor:
        """The feature subset [K, D] as float64 on ``device`` (default CPU), one copy per device, kept."""
        key = ("features", torch.device(device if device is not None else "cpu"))
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(np.asarray(self.features)).to(device=key[1], dtype=torch.float64)
        return self._on_device[key]

    def real_radii(self, k: int, device=None) -> torch.Tensor:
        """NND_k of every reference feature (:func:`.prdc.knn_radii` of :meth:`features_on`), computed once per
        (k, device) and kept: precision and density/coverage compare every generated set with the same real balls."""
        key = ("radii", k, torch.device(device if device is not None else "cpu"))
        if key not in self._on_device:
            self._on_device[key] = knn_radii(self.features_on(device), k)
        return self._on_device[key]

    def save(self, path) -> Path:
        """Write to ``path`` (.npz) atomically (temporary file, then rename)."""
        return atomic_save_npz(path, format=np.array(REFERENCE_FORMAT), mu=self.mu, sigma=self.sigma,
                               features=self.features, indices=self.indices, count=np.array(self.count),
                               network=np.array(str(self.network)), source=np.array(self.source),
                               image_shape=np.array(self.image_shape, dtype=np.int64))

    @classmethod
    def load(cls, path) -> "Reference":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference file {str(path)!r} does not exist (make one with `diffguide ref`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data.files or str(data["format"]) != REFERENCE_FORMAT:
                    raise ValueError(f"{path.name}: not a diffguide reference file (expected format "
                                     f"{REFERENCE_FORMAT!r}; make one with `diffguide ref`)")
                return cls(mu=data["mu"], sigma=data["sigma"], features=data["features"], indices=data["indices"],
                           count=int(data["count"]), network=NetworkIdentity.parse(str(data["network"])),
                           source=str(data["source"]), image_shape=tuple(int(v) for v in data["image_shape"]))
        except ValueError:
            raise
        except Exception as error:  # OSError, KeyError, zipfile.BadZipFile, EOFError: empty, truncated, foreign
            raise ValueError(f"{path.name}: cannot read as a diffguide reference file "
                             f"({type(error).__name__}: {error or 'empty or truncated'})") from None

    def check_network(self, identity: NetworkIdentity) -> None:
        """ValueError unless these reference features come from the network ``identity``."""
        if identity != self.network:
            raise ValueError(f"feature network mismatch: the reference was computed with {self.network}, the samples "
                             f"with {identity}; recompute the reference with the same Inception file")


def check_image_set(images: np.ndarray, name: str = "images") -> None:
    """Before any feature is extracted: a ValueError unless ``images`` holds at least 2 images that are not all the
    same (one image, or a set of identical — e.g. all-grey — images, has no feature covariance, and the k-NN radii
    of precision/recall are all zero)."""
    n = len(images)
    if n < 2:
        raise ValueError(f"{name}: {n} image(s); FID, KID and precision/recall need at least 2 (usually 10k-50k)")
    if not (images != images[:1]).any():
        raise ValueError(f"{name}: all {n} images are identical (e.g. a grey set): their features have no spread, "
                         "so FID/KID/precision/recall are undefined")


def compute_reference(images: np.ndarray, extractor: InceptionFeatures, *, source: str, num_features: int = 10_000,
                      seed: int = 0, progress: bool = False, resume_file=None) -> Reference:
    """Features of all ``images`` (uint8 [N, H, W, C]) -> μ, Σ over all of them and a random subset of
    ``num_features`` features (positions drawn without replacement by ``numpy.random.default_rng(seed)``, sorted)."""
    if num_features < 1:
        raise ValueError(f"compute_reference: num_features must be positive, got {num_features}")
    check_image_set(images, source)
    features = extractor(images, progress=progress, desc="reference features", resume_file=resume_file)
    mu, sigma = feature_statistics(features, "reference features")
    n = len(features)
    indices = np.arange(n) if num_features >= n else np.sort(np.random.default_rng(seed).choice(n, num_features,
                                                                                                 replace=False))
    return Reference(mu=mu, sigma=sigma, features=features[indices], indices=indices, count=n,
                     network=extractor.identity, source=source, image_shape=tuple(int(s) for s in images.shape[1:]))


def evaluate_features(features: np.ndarray, reference: Reference, *, k: int = 3, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, prdc_samples: int | None = None, seed: int = 0,
                      device=None) -> dict:
    """FID (all ``features`` vs the reference μ, Σ), KID and precision/recall/density/coverage (against the reference
    feature subset; at most ``prdc_samples`` generated features, default as many as the reference subset, drawn with
    ``seed``). The FID root, KID and precision/recall/density/coverage in float64 on ``device`` (default: the CPU;
    KID on the CPU in NumPy); the reference's k-NN radii are computed once per reference, k and device
    (:meth:`Reference.real_radii`). Returns a flat dict of numbers."""
    if features.ndim != 2 or features.shape[1] != reference.mu.shape[0]:
        raise ValueError(f"evaluate_features: expected features [N, {reference.mu.shape[0]}], got {features.shape}")
    mu, sigma = feature_statistics(features, "sample features")
    fid = frechet_distance(mu, sigma, reference.mu, reference.sigma, device=device)
    on_cpu = device is None or torch.device(device).type == "cpu"  # NumPy's float64 matmuls are the faster there
    kid_mean, kid_std = kernel_inception_distance(features, reference.features, num_subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=seed,
                                                  device=None if on_cpu else device)
    limit = len(reference.features) if prdc_samples is None else prdc_samples
    chosen = features
    if len(features) > limit:
        chosen = features[np.sort(np.random.default_rng(seed).choice(len(features), limit, replace=False))]
    manifold = prdc(reference.features_on(device), chosen, k=k, device=device,
                    real_radii=reference.real_radii(k, device))
    return {"fid": fid, "kid": kid_mean, "kid_std": kid_std, "precision": manifold.precision,
            "recall": manifold.recall, "density": manifold.density, "coverage": manifold.coverage,
            "num_samples": len(features), "num_reference": reference.count,
            "num_reference_features": len(reference.features), "prdc_samples": len(chosen), "k": k,
            "kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, len(features),
                                                                 len(reference.features))}


def warn_if_shapes_differ(sample_shape, reference: Reference) -> None:
    if tuple(sample_shape) != tuple(reference.image_shape):
        warnings.warn(f"samples are {tuple(sample_shape)} (H, W, C) but the reference images were "
                      f"{reference.image_shape}: the metrics also measure that difference", RuntimeWarning,
                      stacklevel=2)
