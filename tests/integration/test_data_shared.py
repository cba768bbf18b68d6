"""The loaders on the real data sets in shared/assets: counts, shapes, label balance, class names."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import shared_path

from diffguide.data import load_dataset

# Per-digit counts of the official MNIST files (LeCun et al.), train and test.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@functools.lru_cache(maxsize=None)
def cifar10(split: str):
    return load_dataset(shared_path("assets/cifar10/cifar10-jpeg-q75.tar.gz"), split)


@pytest.mark.parametrize("folder, split, counts", [
    ("mnist", "train", MNIST_TRAIN_COUNTS), ("mnist", "test", MNIST_TEST_COUNTS),
    ("fashion-mnist", "train", [6000] * 10), ("fashion-mnist", "test", [1000] * 10),
])
def test_idx_data_sets(folder, split, counts):
    data = load_dataset(shared_path(f"assets/{folder}"), split)
    assert data.images.shape == (sum(counts), 28, 28, 1) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(data.labels), counts)
    assert 0 < data.images.mean() < 255 and data.images.max() == 255


def test_idx_single_file_matches_folder():
    folder = shared_path("assets/mnist")
    from_file = load_dataset(folder / "t10k-images.idx3-ubyte.gz", limit=100)
    from_folder = load_dataset(folder, "test", limit=100)
    np.testing.assert_array_equal(from_file.images, from_folder.images)
    first = load_dataset(folder / "t10k-images.idx3-ubyte.gz", subset=range(10))
    np.testing.assert_array_equal(first.labels, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])  # the famous first test digits
    full = load_dataset(folder / "t10k-images.idx3-ubyte.gz")
    np.testing.assert_array_equal(from_file.images, full.images[::100])  # --limit 100 of 10000: every 100th image


@pytest.mark.parametrize("split, per_class", [("train", 5000), ("test", 1000)])
def test_cifar10_jpeg_tarball(split, per_class):
    data = cifar10(split)
    assert data.images.shape == (10 * per_class, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names == CIFAR_CLASSES  # alphabetical = CIFAR-10's own label order
    np.testing.assert_array_equal(np.bincount(data.labels), [per_class] * 10)
    assert np.all(np.diff(data.labels) >= 0)  # sorted paths: class folders in order
    assert 100 < data.images.mean() < 140  # CIFAR-10 mean pixel is about 120


def test_cifar10_subset_is_the_same_images_as_the_full_split():
    full = cifar10("test")
    picked = load_dataset(shared_path("assets/cifar10/cifar10-jpeg-q75.tar.gz"), "test", subset=[9999, 0, 4321])
    np.testing.assert_array_equal(picked.images, full.images[[9999, 0, 4321]])
    np.testing.assert_array_equal(picked.labels, [9, 0, 4])
