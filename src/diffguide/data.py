"""Image data sets: one loader for evaluation, training and calibration.

``load_dataset(source, split)`` reads any of
- MNIST / Fashion-MNIST IDX files (gzip or raw): the images file itself, or a folder holding the
  ``train-images[-.]idx3-ubyte[.gz]`` / ``t10k-images…`` files (and their ``…labels…idx1…`` partners);
- an image folder or a tarball (``.tar``, ``.tar.gz``, ``.tgz``) with one sub-folder per class (ImageFolder layout),
  optionally under split folders (``cifar10_jpg/train/airplane/0001.jpg``): ``split`` picks one;
- an ADM-format ``.npz`` (``arr_0`` uint8 NHWC images, ``arr_1`` integer labels, optional).

It returns an :class:`ImageDataset` with uint8 images [N, H, W, C] (C = 1 or 3). Files are taken in sorted path order,
so ``limit`` / ``subset`` pick the same images on every machine; only the selected images are decoded. ``limit``
keeps N images spread evenly over that order (:func:`diffguide.io.spread_indices`), so a class-sorted folder keeps
every class — the one meaning of ``--limit`` in every command.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .io import spread_indices

__all__ = [
    "ImageDataset", "labels_for_classes", "load_dataset", "to_model_range", "to_uint8", "IMAGE_EXTENSIONS", "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MNIST_CLASSES = [str(k) for k in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IDX_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class ImageDataset:
    """Images as uint8 [N, H, W, C] (C = 1 or 3), labels int64 [N] (or None), class names (or None), and where they
    came from (``source``, e.g. ``"/data/cifar10-jpeg-q75.tar.gz:train"``)."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    source: str

    def __post_init__(self):
        check_uint8_images(self.images, "ImageDataset.images")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (len(self.images),) or not np.issubdtype(self.labels.dtype, np.integer):
                raise ValueError(f"ImageDataset.labels: expected integers of shape ({len(self.images)},), got "
                                 f"{self.labels.dtype} {self.labels.shape}")
            self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        classes = "unlabelled" if self.labels is None else f"{len(np.unique(self.labels))} classes"
        return f"ImageDataset({n} images {h}x{w}x{c}, {classes}, source={self.source!r})"


def check_uint8_images(images, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a uint8 array [N, H, W, C] with C = 1 or 3."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name}: expected a numpy uint8 array [N, H, W, C], got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (values 0..255), got {images.dtype}; convert model outputs in "
                        "[-1, 1] with diffguide.data.to_uint8")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected shape [N, H, W, C] with C = 1 or 3 (channels last), got {images.shape}")


# --------------------------------------------------------------------------------------------------------- range


def to_model_range(images, device=None) -> Tensor:
    """uint8 images [N, H, W, C] (numpy or torch) -> float32 tensor [N, C, H, W] in [-1, 1]: x = u / 127.5 − 1."""
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"to_model_range: expected uint8 images, got {images.dtype}")
        tensor = images
    else:
        check_uint8_images(np.asarray(images), "to_model_range(images)")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.ndim != 4 or tensor.shape[-1] not in (1, 3):
        raise ValueError(f"to_model_range: expected [N, H, W, C] with C = 1 or 3, got {tuple(tensor.shape)}")
    return (tensor.to(device=device).permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def to_uint8(x: Tensor, *, truncate: bool = False, range_tolerance: float = 0.5) -> np.ndarray:
    """Float tensor [N, C, H, W] in [-1, 1] -> uint8 numpy [N, H, W, C]: u = clamp(round((x + 1) · 127.5), 0, 255).

    Rounding makes ``to_uint8(to_model_range(u)) == u``. ``truncate=True`` reproduces guided-diffusion's
    ``image_sample.py`` exactly (``((x + 1) * 127.5).clamp(0, 255).to(uint8)``, which truncates). Values further than
    ``range_tolerance`` outside [-1, 1] raise: such input is almost surely in another range (e.g. [0, 255])."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"to_uint8: expected a floating-point torch tensor in [-1, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_uint8: expected [N, C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    if x.numel():
        low, high = float(x.min()), float(x.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("to_uint8: input contains NaN or inf")
        if low < -1 - range_tolerance or high > 1 + range_tolerance:
            raise ValueError(f"to_uint8: expected values in [-1, 1], got [{low:.3g}, {high:.3g}]")
    scaled = (x.detach().float() + 1) * 127.5
    if not truncate:
        scaled = scaled.round()
    return scaled.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def labels_for_classes(dataset: ImageDataset, class_names: Sequence[str] | None, num_classes: int | None,
                       what: str = "data") -> np.ndarray:
    """``dataset.labels`` as indices of a classifier's classes: class folders mapped by name onto ``class_names``
    (a folder holding only cat/dog/truck gets 3, 5, 9 for CIFAR-10, not 0, 1, 2); labels without names (IDX, npz)
    kept, checked to lie in [0, num_classes). A ValueError naming ``what`` for a folder the classifier has no class
    of, or folder names the classifier cannot be matched to."""
    if dataset.labels is None:
        raise ValueError(f"{what}: {dataset.source} has no labels")
    if dataset.class_names is not None:
        if class_names is not None:
            index = {name: k for k, name in enumerate(class_names)}
            unknown = [c for c in dataset.class_names if c not in index]
            if unknown:
                raise ValueError(f"{what}: class folders {unknown} of {dataset.source} are not classes of the "
                                 f"classifier (its classes: {list(class_names)})")
            return np.array([index[dataset.class_names[k]] for k in dataset.labels], dtype=np.int64)
        if num_classes is not None and len(dataset.class_names) != num_classes:
            raise ValueError(f"{what}: {dataset.source} has {len(dataset.class_names)} class folders but the "
                             f"classifier has {num_classes} classes and no class names to match them by")
    labels = dataset.labels
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels of {dataset.source} lie in [{labels.min()}, {labels.max()}], outside the "
                         f"classifier's classes [0, {num_classes - 1}]")
    return labels


# --------------------------------------------------------------------------------------------------------- entry


def load_dataset(source, split: str | None = None, *, limit: int | None = None,
                 subset: Sequence[int] | None = None) -> ImageDataset:
    """Load ``source`` (IDX file or folder, image folder, tarball, ADM npz) as an :class:`ImageDataset`.

    ``split``: ``'train'`` / ``'test'`` for IDX folders; for image folders and tarballs, the name of the split folder
    to read (required when the images sit under split folders). ``limit``: keep N images spread evenly over the
    sorted order (k·total // N for k < N: every class of a class-sorted folder represented);
    ``subset``: keep these positions of the sorted order (and in this order). Give at most one of the two.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"load_dataset: source {str(path)!r} does not exist")
    selection = _Selection(limit, subset)
    name = path.name.lower()
    if path.is_dir():
        if _idx_files_in(path):
            return _load_idx_folder(path, split, selection)
        return _load_image_files(_FolderFiles(path), split, selection, str(path))
    if name.endswith(".npz"):
        if split is not None:
            raise ValueError(f"load_dataset: split={split!r} given but {path.name} is an npz file with no splits")
        return _load_npz(path, selection)
    if name.endswith(TAR_SUFFIXES):
        return _load_image_files(_TarFiles(path, split), split, selection, str(path))
    if re.search(r"idx\d-ubyte", name):
        if split is not None:
            raise ValueError(f"load_dataset: split={split!r} given but {path.name} is a single IDX file; pass the "
                             "folder to choose a split")
        return _load_idx_images(path, _labels_file_for(path), selection)
    raise ValueError(f"load_dataset: unknown format of {str(path)!r}: expected an IDX file (…idx3-ubyte[.gz]) or a "
                     "folder of them, an image folder, a tarball (.tar, .tar.gz, .tgz) or an ADM .npz")


class _Selection:
    """``limit`` (first N) or ``subset`` (positions) of a sorted list, validated once."""

    def __init__(self, limit, subset):
        if limit is not None and subset is not None:
            raise ValueError("load_dataset: give at most one of limit and subset")
        if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
            raise ValueError(f"load_dataset: limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self.subset = None if subset is None else np.asarray(subset)
        if self.subset is not None and (self.subset.ndim != 1 or not np.issubdtype(self.subset.dtype, np.integer)):
            raise ValueError("load_dataset: subset must be a 1-D sequence of integer positions")

    def indices(self, total: int) -> np.ndarray:
        if self.subset is not None:
            if len(self.subset) and (self.subset.min() < 0 or self.subset.max() >= total):
                raise ValueError(f"load_dataset: subset positions must lie in [0, {total}), got "
                                 f"[{self.subset.min()}, {self.subset.max()}]")
            return self.subset
        return spread_indices(total, self.limit)


# --------------------------------------------------------------------------------------------------------- IDX


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile) as error:  # truncated or corrupt gzip stream
        raise ValueError(f"{path.name}: truncated or corrupt gzip file ({error}); download it again") from None


def read_idx(path, expected_ndim: int) -> np.ndarray:
    """An IDX array (LeCun's MNIST format: magic 0x00 0x00 0x08 ndim, big-endian int32 dims, uint8 data)."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path.name}: not an IDX file (magic bytes {data[:4].hex()}, expected "
                         f"0000 08 0{expected_ndim})")
    if data[2] != 0x08:
        raise ValueError(f"{path.name}: IDX data type 0x{data[2]:02x} is not supported (only 0x08, unsigned byte)")
    if data[3] != expected_ndim:
        raise ValueError(f"{path.name}: IDX file has {data[3]} dimensions, expected {expected_ndim} "
                         f"({'images' if expected_ndim == 3 else 'labels'})")
    header = 4 + 4 * expected_ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">i4"))
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path.name}: IDX header says {dims} = {int(np.prod(dims))} bytes but the file holds "
                         f"{len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and re.search(r"idx[13]-ubyte", p.name))


def _labels_file_for(images_file: Path) -> Path | None:
    name = images_file.name.replace("images", "labels").replace("idx3", "idx1")
    candidates = [images_file.with_name(name)]
    candidates += [images_file.with_name(name[:-3])] if name.endswith(".gz") else [images_file.with_name(name + ".gz")]
    return next((c for c in candidates if c.exists()), None)


def _load_idx_folder(folder: Path, split: str | None, selection: _Selection) -> ImageDataset:
    if split not in IDX_SPLIT_PREFIX:
        raise ValueError(f"load_dataset: {folder} holds IDX files; pass split='train' or split='test', got {split!r}")
    prefix = IDX_SPLIT_PREFIX[split]
    matches = [p for p in _idx_files_in(folder) if re.fullmatch(rf"{prefix}-images[-.]idx3-ubyte(\.gz)?", p.name)]
    if not matches:
        raise FileNotFoundError(f"load_dataset: no {prefix}-images-idx3-ubyte[.gz] file in {folder}")
    return _load_idx_images(matches[0], _labels_file_for(matches[0]), selection, source=f"{folder}:{split}")


def _load_idx_images(images_file: Path, labels_file: Path | None, selection: _Selection,
                     source: str | None = None) -> ImageDataset:
    images = read_idx(images_file, 3)
    labels = None if labels_file is None else read_idx(labels_file, 1)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{labels_file.name} has {len(labels)} labels for {len(images)} images in {images_file.name}")
    keep = selection.indices(len(images))
    return ImageDataset(images=images[keep][..., None].copy(), labels=None if labels is None else labels[keep],
                        class_names=None, source=source or str(images_file))


# --------------------------------------------------------------------------------------------------------- npz


def _load_npz(path: Path, selection: _Selection) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{path.name}: not an ADM sample file: expected key 'arr_0' (uint8 NHWC images), "
                                 f"found {data.files}")
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data.files else None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # empty, truncated or not a zip at all
        raise ValueError(f"{path.name}: empty, truncated or corrupt .npz file "
                         f"({type(error).__name__}: {error or 'no data'})") from None
    except ValueError as error:
        if str(error).startswith(path.name):
            raise
        raise ValueError(f"{path.name}: cannot read as an .npz file ({error})") from None
    if images.ndim == 3:
        images = images[..., None]
    check_uint8_images(images, f"{path.name}: arr_0")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path.name}: arr_1 (labels) has shape {labels.shape}, expected ({len(images)},)")
    keep = selection.indices(len(images))
    return ImageDataset(images=np.ascontiguousarray(images[keep]),
                        labels=None if labels is None else labels[keep], class_names=None, source=str(path))


# ------------------------------------------------------------------------------------------- folders and tarballs


class _FolderFiles:
    """Image files under a folder: relative POSIX paths, and their bytes."""

    def __init__(self, root: Path):
        self.root = root

    def names(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            found += [(rel / f).as_posix() for f in filenames if _is_image_name(f)]
        return found

    def read(self, names: Sequence[str]) -> list[bytes]:
        return [(self.root / n).read_bytes() for n in names]


class _TarFiles:
    """Image members of a tarball, read in one streaming pass; the bytes of members under ``<split>/`` (all members
    without a split) are kept from that pass, so a .tar.gz is decompressed once."""

    def __init__(self, path: Path, split: str | None):
        self.path = path
        self.marker = None if split is None else f"/{split}/"
        self._bytes: dict[str, bytes] = {}

    def names(self) -> list[str]:
        found = []
        try:
            with tarfile.open(self.path, "r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and _is_image_name(name):
                        found.append(name)
                        if self.marker is None or self.marker in "/" + name:
                            self._bytes[name] = tar.extractfile(member).read()
        except tarfile.TarError as error:
            raise ValueError(f"{self.path.name}: cannot read as a tarball ({error})") from error
        return found

    def read(self, names: Sequence[str]) -> list[bytes]:
        return [self._bytes[n] for n in names]


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _split_and_classify(names: list[str], split: str | None, where: str) -> tuple[list[str], list[str] | None]:
    """Sorted image paths of ``split`` and their class folder names (None when the images sit in one folder).

    Paths are taken relative to the ``<split>/`` folder (with ``split``), then to their deepest common folder; below
    it there must be either only files (unlabelled) or ``<class>/<file>``."""
    names = sorted(names)
    relative = names
    if split is not None:
        marker = f"/{split}/"
        names = [n for n in names if marker in "/" + n]
        relative = [n[("/" + n).index(marker) + len(marker) - 1:] for n in names]
        if not names:
            raise ValueError(f"load_dataset: no images under a folder named {split!r} in {where}")
    if not names:
        raise ValueError(f"load_dataset: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {where}")
    parts = [n.split("/") for n in relative]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    parts = [p[common:] for p in parts]
    depths = {len(p) for p in parts}
    if depths == {1}:
        return names, None
    if depths == {2}:
        return names, [p[0] for p in parts]
    tops = sorted({p[0] for p in parts if len(p) > 2})
    hint = f"pass split= one of {tops}" if split is None else "expected <class>/<image> below the split folder"
    raise ValueError(f"load_dataset: images in {where} are nested deeper than <class>/<image> (folders {tops}); {hint}")


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "RGB"):
                if image.mode.startswith(("I", "F")):
                    raise ValueError(f"{name}: image mode {image.mode} is not 8-bit; convert to 8-bit L or RGB")
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{name}: cannot decode image ({error})") from error
    return array[..., None] if array.ndim == 2 else array


def _load_image_files(files, split: str | None, selection: _Selection, where: str) -> ImageDataset:
    names, classes = _split_and_classify(files.names(), split, where)
    keep = selection.indices(len(names))
    chosen = [names[i] for i in keep]
    arrays = [_decode(data, name) for data, name in zip(files.read(chosen), chosen)]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        first = arrays[0].shape[:2]
        odd = next(n for n, a in zip(chosen, arrays) if a.shape[:2] != first)
        raise ValueError(f"load_dataset: mixed image sizes in {where}: {chosen[0]} is {first[0]}x{first[1]}, "
                         f"{odd} is {sizes - {first}}; resize them to one size first")
    if len({a.shape[2] for a in arrays}) > 1:  # some grey, some colour: promote grey to RGB
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    images = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
    class_names = labels = None
    if classes is not None:
        class_names = sorted(set(classes))
        index = {c: k for k, c in enumerate(class_names)}
        labels = np.array([index[classes[i]] for i in keep], dtype=np.int64)
    source = where if split is None else f"{where}:{split}"
    return ImageDataset(images=images, labels=labels, class_names=class_names, source=source)
