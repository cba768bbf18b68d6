"""`diffguide eval`: FID, KID, precision/recall, density/coverage (and class consistency) of samples vs a reference."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import click

from ..io import atomic_write_text
from ._common import overwrite_option, refuse_existing, writable_or_fail
from .ref import (batch_size_option, data_options, device_option, inception_option, load_images, make_extractor,
                  print_table)


def load_consistency_classifier(classifier_path, labels, device):
    """:func:`diffguide.metrics.consistency.consistency_classifier`, its errors as one ``--classifier`` error."""
    from ..metrics.consistency import consistency_classifier

    try:
        return consistency_classifier(classifier_path, labels, device)
    except (ValueError, FileNotFoundError) as error:
        raise click.BadParameter(str(error), param_hint="--classifier") from None


@click.command("eval")
@click.argument("samples", type=click.Path(exists=True, path_type=Path))
@click.option("--ref", "reference_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Reference file made by `diffguide ref` (same Inception network required).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file for the metrics (default: <samples>.metrics.json beside the samples).")
@data_options
@click.option("--k", "k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Nearest neighbour defining the k-NN balls of precision/recall/density/coverage.")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of random subsets KID is averaged over.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Size of each KID subset (capped at the smaller set).")
@click.option("--prdc-samples", type=click.IntRange(min=2), default=None,
              help="Samples used for precision/recall/density/coverage (random, seeded). Default: as many as the "
                   "reference feature subset, so both manifolds are estimated from equally many points.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the KID subsets and the precision/recall sample subset.")
@click.option("--classifier", "classifier_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="CIFAR-10 ResNet checkpoint: also report class consistency, the classifier's "
                                 "accuracy on the samples against their labels (needs labels, arr_1 / class folders).")
@click.option("--inception-score", is_flag=True,
              help="Not available: the FID Inception network has no logits head (asking for it is an error).")
@inception_option
@device_option
@batch_size_option
@overwrite_option
def command(samples, reference_path, out, split, limit, k, kid_subsets, kid_subset_size, prdc_samples, seed,
            classifier_path, inception_score, inception_path, device, batch_size, overwrite):
    """Score the samples SAMPLES (ADM .npz with arr_0 uint8 NHWC [and arr_1 labels], or an image folder) against a
    reference: FID, KID, precision, recall (Kynkäänniemi, k-NN), density, coverage (Naeem). Writes JSON and prints a
    table. Feature extraction resumes from <out>.partial.npz if interrupted."""
    from ..metrics import INCEPTION_SCORE_UNAVAILABLE, Reference, evaluate_features, warn_if_shapes_differ

    if inception_score:
        raise click.UsageError(INCEPTION_SCORE_UNAVAILABLE)
    out = out or samples.with_name(samples.name + ".metrics.json")
    refuse_existing([out], overwrite)
    writable_or_fail(out, is_dir=False)
    start = time.perf_counter()
    try:
        reference = Reference.load(reference_path)
    except (ValueError, FileNotFoundError) as error:
        raise click.BadParameter(str(error), param_hint="--ref") from error
    extractor = make_extractor(inception_path, device, batch_size)
    try:
        reference.check_network(extractor.identity)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    dataset = load_images(samples, split, limit, param_hint="SAMPLES")
    classifier = None
    if classifier_path is not None:
        if dataset.labels is None:
            raise click.BadParameter(f"needs the labels the samples were generated for; {samples} has none",
                                     param_hint="--classifier")
        classifier = load_consistency_classifier(classifier_path, dataset.labels, extractor.device)
        if dataset.class_names is not None:  # class folders: map their names onto the classifier's classes
            from ..data import labels_for_classes

            try:
                dataset.labels = labels_for_classes(dataset, getattr(classifier, "class_names", None),
                                                    getattr(classifier, "num_classes", None), what="SAMPLES")
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--classifier") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_shapes_differ(dataset.images.shape[1:], reference)
        features = extractor(dataset.images, progress=True, desc="sample features",
                             resume_file=out.with_name(out.name + ".partial.npz"))
        extracted = time.perf_counter()
        metrics = evaluate_features(features, reference, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                    prdc_samples=prdc_samples, seed=seed, device=extractor.device)
    if classifier_path is not None:
        from ..metrics import class_consistency

        metrics["class_consistency"] = class_consistency(dataset.images, dataset.labels, classifier,
                                                         device=extractor.device, batch_size=batch_size)
    result = {
        "metrics": metrics, "samples": dataset.source, "reference": str(reference_path),
        "reference_source": reference.source, "network": str(extractor.identity),
        "classifier": None if classifier_path is None else str(classifier_path), "seed": seed,
        "device": str(extractor.device), "feature_seconds": extracted - start,
        "seconds": time.perf_counter() - start, "warnings": [str(w.message) for w in caught],
    }
    atomic_write_text(out, json.dumps(result, indent=1))
    for message in result["warnings"]:
        click.echo(f"warning: {message}", err=True)
    rows = [("samples", f"{metrics['num_samples']} from {dataset.source}"),
            ("reference", f"{reference.count} images from {reference.source}"),
            ("FID", f"{metrics['fid']:.4f}"),
            ("KID", f"{metrics['kid']:.6f} ± {metrics['kid_std']:.6f} ({kid_subsets} subsets of "
                    f"{metrics['kid_subset_size']})"),
            (f"precision / recall (k={k})", f"{metrics['precision']:.4f} / {metrics['recall']:.4f}"),
            ("density / coverage", f"{metrics['density']:.4f} / {metrics['coverage']:.4f}")]
    if "class_consistency" in metrics:
        rows.append(("class consistency", f"{metrics['class_consistency']:.4f}"))
    rows.append(("wrote", str(out)))
    print_table(rows)
