"""diffguide.data: loaders on tiny files written here (IDX, image folders, tarballs, ADM npz), range conversions and
bad input."""

from __future__ import annotations

import gzip
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffguide.data import ImageDataset, load_dataset, read_idx, to_model_range, to_uint8

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ writers (tests)


def idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path, array, gz=True, **kwargs):
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_png_tree(root, images_by_class: dict[str, list[np.ndarray]]):
    for name, images in images_by_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(root / name / f"{k:04d}.png")


def random_images(n, h=5, w=4, c=3):
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------- IDX


@pytest.fixture
def idx_folder(tmp_path):
    """MNIST-style folder: train (dots in the names, gzip) and t10k (dashes, raw) files."""
    train, test = random_images(7, 6, 6, 1)[..., 0], random_images(3, 6, 6, 1)[..., 0]
    write_idx(tmp_path / "train-images.idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels.idx1-ubyte.gz", np.arange(7) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 8, 7]), gz=False)
    return tmp_path, train, test


def test_idx_folder_splits_gzip_and_raw(idx_folder):
    folder, train, test = idx_folder
    data = load_dataset(folder, "train")
    assert data.images.shape == (7, 6, 6, 1) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images[..., 0], train)
    np.testing.assert_array_equal(data.labels, np.arange(7))
    assert data.labels.dtype == np.int64 and data.source == f"{folder}:train"
    data = load_dataset(folder, "test")
    np.testing.assert_array_equal(data.images[..., 0], test)
    np.testing.assert_array_equal(data.labels, [9, 8, 7])


def test_idx_single_file_finds_its_labels_and_limits(idx_folder):
    folder, train, _ = idx_folder
    data = load_dataset(folder / "train-images.idx3-ubyte.gz", limit=4)  # spread evenly: k·7 // 4 = 0, 1, 3, 5
    np.testing.assert_array_equal(data.images[..., 0], train[[0, 1, 3, 5]])
    np.testing.assert_array_equal(data.labels, [0, 1, 3, 5])
    data = load_dataset(folder / "train-images.idx3-ubyte.gz", subset=[6, 0])
    np.testing.assert_array_equal(data.images[..., 0], train[[6, 0]])
    np.testing.assert_array_equal(data.labels, [6, 0])


def test_idx_without_labels_file(tmp_path):
    images = random_images(2, 3, 3, 1)[..., 0]
    data = load_dataset(write_idx(tmp_path / "x-images-idx3-ubyte.gz", images))
    assert data.labels is None
    np.testing.assert_array_equal(data.images[..., 0], images)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x08\x00" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "data type 0x0d"),
    (lambda b: b[:3] + b"\x02" + b[4:], "2 dimensions, expected 3"),
    (lambda b: b[:-1], "header says"),
])
def test_idx_bad_magic_type_ndim_and_size(tmp_path, mutate, message):
    data = idx_bytes(random_images(2, 3, 3, 1)[..., 0])
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mutate(data))
    with pytest.raises(ValueError, match=message):
        load_dataset(path)


def test_idx_bad_split_and_label_count(idx_folder):
    folder, _, _ = idx_folder
    with pytest.raises(ValueError, match="split='train' or split='test'"):
        load_dataset(folder)
    write_idx(folder / "train-labels.idx1-ubyte.gz", np.arange(5))
    with pytest.raises(ValueError, match="5 labels for 7 images"):
        load_dataset(folder, "train")


def test_read_idx_labels(tmp_path):
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l-idx1-ubyte.gz", np.array([3, 1, 2])), 1), [3, 1, 2])


# --------------------------------------------------------------------------------------------- folders, tarballs


@pytest.fixture
def class_tree(tmp_path):
    """root/split/{train,test}/<class>/NNNN.png with known pixels (PNG is lossless)."""
    content = {split: {"dog": random_images(3), "cat": random_images(2), "ant": random_images(1)}
               for split in ("train", "test")}
    for split, classes in content.items():
        write_png_tree(tmp_path / "root" / "data" / split, {c: list(v) for c, v in classes.items()})
    return tmp_path / "root", content


def expected_order(classes: dict[str, np.ndarray]):
    names = sorted(classes)
    images = np.concatenate([classes[c] for c in names])
    labels = np.concatenate([np.full(len(classes[c]), k) for k, c in enumerate(names)])
    return images, labels, names


def test_image_folder_with_split_sorted_labels(class_tree):
    root, content = class_tree
    for split in ("train", "test"):
        data = load_dataset(root, split)
        images, labels, names = expected_order(content[split])
        assert data.class_names == names == ["ant", "cat", "dog"]
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.source == f"{root}:{split}"


def test_image_folder_needs_split_when_nested(class_tree):
    root, _ = class_tree
    with pytest.raises(ValueError, match=r"pass split= one of \['test', 'train'\]"):
        load_dataset(root)
    with pytest.raises(ValueError, match="no images under a folder named 'val'"):
        load_dataset(root, "val")


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tarball_equals_folder(class_tree, tmp_path, suffix, mode):
    root, _ = class_tree
    archive = tmp_path / f"data{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(root / "data", arcname="data")
    for split in ("train", "test"):
        from_tar, from_folder = load_dataset(archive, split), load_dataset(root, split)
        np.testing.assert_array_equal(from_tar.images, from_folder.images)
        np.testing.assert_array_equal(from_tar.labels, from_folder.labels)
        assert from_tar.class_names == from_folder.class_names
    limited = load_dataset(archive, "train", limit=2)  # spread evenly: positions 0 and n // 2
    full = load_dataset(root, "train")
    np.testing.assert_array_equal(limited.images, full.images[[0, len(full) // 2]])
    picked = load_dataset(archive, "train", subset=[5, 1])
    np.testing.assert_array_equal(picked.images, load_dataset(root, "train").images[[5, 1]])
    np.testing.assert_array_equal(picked.labels, [2, 1])  # dog (class 2), then the first cat (class 1)


def test_flat_folder_is_unlabelled_and_grey_stays_one_channel(tmp_path):
    grey = random_images(3, 4, 4, 1)
    for k, image in enumerate(grey):
        Image.fromarray(image[..., 0]).save(tmp_path / f"{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.labels is None and data.class_names is None
    np.testing.assert_array_equal(data.images, grey)


def test_mixed_grey_and_rgb_become_rgb(tmp_path):
    Image.fromarray(np.full((2, 2), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((2, 2, 3), 9, np.uint8)).save(tmp_path / "b.png")
    data = load_dataset(tmp_path)
    assert data.images.shape == (2, 2, 2, 3)
    assert (data.images[0] == 7).all() and (data.images[1] == 9).all()


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_dataset(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(random_images(1, 4, 4)[0]).save(mixed / "a.png")
    Image.fromarray(random_images(1, 5, 4)[0]).save(mixed / "b.png")
    with pytest.raises(ValueError, match="mixed image sizes"):
        load_dataset(mixed)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode"):
        load_dataset(broken)


# ---------------------------------------------------------------------------------------------------------- npz


def test_adm_npz_with_and_without_labels(tmp_path):
    images = random_images(5, 4, 4)
    np.savez(tmp_path / "s.npz", images, np.array([4, 3, 2, 1, 0]))
    data = load_dataset(tmp_path / "s.npz", limit=3)  # spread evenly: k·5 // 3 = 0, 1, 3
    np.testing.assert_array_equal(data.images, images[[0, 1, 3]])
    np.testing.assert_array_equal(data.labels, [4, 3, 1])
    np.savez(tmp_path / "u.npz", arr_0=images[..., :1])
    assert load_dataset(tmp_path / "u.npz").labels is None
    np.savez(tmp_path / "g.npz", arr_0=images[..., 0])  # NHW: grey
    assert load_dataset(tmp_path / "g.npz").images.shape == (5, 4, 4, 1)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        load_dataset(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="arr_0"):
        load_dataset(tmp_path / "k.npz")
    np.savez(tmp_path / "c.npz", arr_0=np.zeros((2, 4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        load_dataset(tmp_path / "c.npz")
    np.savez(tmp_path / "l.npz", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="labels"):
        load_dataset(tmp_path / "l.npz")


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(tmp_path / "x.csv")
    np.savez(tmp_path / "s.npz", random_images(2))
    with pytest.raises(ValueError, match="at most one of limit and subset"):
        load_dataset(tmp_path / "s.npz", limit=1, subset=[0])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        load_dataset(tmp_path / "s.npz", subset=[2])
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_dataset(tmp_path / "s.npz", limit=0)
    with pytest.raises(ValueError, match="no splits"):
        load_dataset(tmp_path / "s.npz", "train")


def test_image_dataset_validates():
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(np.zeros((1, 2, 2, 3), np.float32), None, None, "x")
    with pytest.raises(ValueError, match="channels last"):
        ImageDataset(np.zeros((1, 3, 2, 2), np.uint8), None, None, "x")


# -------------------------------------------------------------------------------------------------------- ranges


def test_model_range_round_trip_is_exact_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = to_model_range(values)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert float(x[0, 0, 8, 0]) == pytest.approx(128 / 127.5 - 1, abs=1e-7)
    np.testing.assert_array_equal(to_uint8(x), values)
    rgb = random_images(2)
    np.testing.assert_array_equal(to_uint8(to_model_range(torch.from_numpy(rgb))), rgb)


def test_to_uint8_rounds_clamps_and_truncates_like_adm():
    # (x + 1) * 127.5 = 10.6 -> 11 rounded, 10 truncated (guided-diffusion's image_sample.py)
    x = torch.tensor([10.6 / 127.5 - 1, 1.2, -1.3, 0.0]).reshape(1, 1, 1, 4)
    np.testing.assert_array_equal(to_uint8(x)[0, 0, :, 0], [11, 255, 0, 128])
    np.testing.assert_array_equal(to_uint8(x, truncate=True)[0, 0, :, 0], [10, 255, 0, 127])


def test_range_errors():
    with pytest.raises(ValueError, match=r"expected values in \[-1, 1\]"):
        to_uint8(torch.full((1, 3, 2, 2), 200.0))
    with pytest.raises(TypeError, match="floating-point"):
        to_uint8(torch.zeros((1, 3, 2, 2), dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        to_uint8(torch.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(torch.zeros((1, 2, 2, 3)))
