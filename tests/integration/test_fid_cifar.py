"""The real FID Inception network on real CIFAR-10 JPEG images, on CPU.

500 train vs 500 test images: every 100th train image and every 20th test image in sorted path order (50 per class in
both; sorted paths are class-major, so "the first 500" would be airplanes only). The network costs about 0.16 s per
image on 2 unloaded cores, so the ~1000 images' features are computed once per module and shared by the tests.

STORED values were computed once with this code (CPU, torch 2.13, batch size 250). How the tolerances were derived
(measured on these same images; docs/evaluation.md):
- numerical noise: features from another batch size differ by < 1e-4 (tested below); adding uniform ±1e-4 noise to
  every feature moved the FID by < 1e-4, KID by < 2e-8 and density by one ball membership (1/1500);
- wrong pre-processing of the 500 test images alone: PyTorch's half-pixel bilinear resize instead of TF-1's moved the
  FID by −0.52, KID by +3.7e-5, recall by −0.014, density by +0.044; pytorch-fid's scaling (x − 127.5)/127.5 instead
  of (x − 128)/128 moved the FID by +0.0046 and KID by +5e-6 (on both sides: +0.014 and +1.8e-6); [0, 1] input
  without normalisation moved the FID by +9.5;
so FID_TOLERANCE = 2e-3 (20x the noise, under half the smallest shift), KID_TOLERANCE = 1e-6, and precision / recall /
density / coverage (multiples of 1/500, density of 1/1500) may differ by two borderline points, 0.004.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from diffguide.data import load_dataset
from diffguide.metrics import InceptionFeatures
from diffguide.metrics.fid import fid_from_features, kernel_inception_distance
from diffguide.metrics.prdc import prdc

TRAIN_SUBSET = range(0, 50_000, 100)
TEST_SUBSET = range(0, 10_000, 20)
BATCH = 250

STORED = {"fid": 76.98144720312246, "kid": -0.00015789260155818496, "precision": 0.682, "recall": 0.75,
          "density": 0.8726666666666667, "coverage": 0.83}
FID_TOLERANCE = 2e-3
KID_TOLERANCE = 1e-6
PRDC_TOLERANCE = 0.004 + 1e-9


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(shared_path("assets/inception/inception-2015-12-05-fid-features.pt"), device="cpu",
                             batch_size=BATCH)


@pytest.fixture(scope="module")
def cifar_subsets():
    tarball = shared_path("assets/cifar10/cifar10-jpeg-q75.tar.gz")
    return load_dataset(tarball, "train", subset=TRAIN_SUBSET), load_dataset(tarball, "test", subset=TEST_SUBSET)


@pytest.fixture(scope="module")
def features(extractor, cifar_subsets):
    train, test = cifar_subsets
    return extractor(train.images), extractor(test.images)


def test_subsets_are_class_balanced(cifar_subsets):
    for data in cifar_subsets:
        np.testing.assert_array_equal(np.bincount(data.labels), [50] * 10)


def test_network_identity(extractor):
    assert extractor.identity.sha256 == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def test_features_do_not_depend_on_batch_size(extractor, cifar_subsets, features):
    _, test = cifar_subsets
    single = InceptionFeatures(extractor.path, device="cpu", batch_size=1)(test.images[:4])
    np.testing.assert_allclose(single, features[1][:4], atol=1e-4, rtol=0)  # batch 1 vs rows of a batch of 250
    assert features[1].shape == (500, 2048) and features[1].min() >= 0  # pool3 after ReLU


def test_fid_500_vs_500_matches_stored_value(features):
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        fid = fid_from_features(*features)
    assert fid == pytest.approx(STORED["fid"], abs=FID_TOLERANCE)


def test_kid_and_prdc_500_vs_500_match_stored_values(features):
    train, test = features
    kid, _ = kernel_inception_distance(test, train, num_subsets=1, subset_size=500)  # all 500: the full MMD²_u
    assert kid == pytest.approx(STORED["kid"], abs=KID_TOLERANCE)
    result = prdc(train, test, k=3)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(result, name) == pytest.approx(STORED[name], abs=PRDC_TOLERANCE), name


def test_class_consistency_of_real_images_is_the_classifier_accuracy(cifar_subsets):
    """`diffguide eval --classifier` on real test images with their true labels = ResNet-20's accuracy on them: 400 of
    these 500 (80.0%; the README of shared/assets gives 81-83% on the whole JPEG test set). Images passed in the wrong
    range or layout would give ~10%; ± 2 images allows for argmax flips from numerical noise."""
    from diffguide.metrics import class_consistency

    _, test = cifar_subsets
    resnet20 = shared_path("assets/classifiers/cifar10-resnet20-12fca82f.th")
    accuracy = class_consistency(test.images, test.labels, resnet20, device="cpu", batch_size=BATCH)
    assert accuracy == pytest.approx(400 / 500, abs=2 / 500 + 1e-9)
