"""The commands of docs/guidance.md and docs/reproduce.md run as written, on tiny inputs (issue 17).

One module-scoped pipeline on an 8x8, 4-class ADM-format npz:
  diffguide train (2 steps) → diffguide train-classifier (2 steps) → diffguide sample --classifier <its model/>
  → the scale sweep (sample + eval per scale) → diffguide ref on an npz in the layout of ADM's reference batches.
The networks are untrained, so the tests check that each command exits 0 and writes what the docs say it writes, and
the numbers that do not depend on training: shapes, labels, the reference statistics.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffguide.cli import main
from conftest import StandInInception

NUM_CLASSES = 10  # CIFAR-10's, so that a CIFAR ResNet can guide the tiny model


def invoke(command: str):
    result = CliRunner().invoke(main, shlex.split(command))
    assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(0)
    data = root / "data.npz"
    np.savez(data, arr_0=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), arr_1=np.arange(20) % NUM_CLASSES)
    inception = root / "inception.pt"
    torch.jit.script(StandInInception()).save(str(inception))
    tiny = "--split none --preset tiny --steps 2 --batch-size 8 --no-progress --device cpu"
    invoke(f"train --data {data} --out {root}/runs/diffusion {tiny} --sample-steps 2 --samples-per-class 1")
    invoke(f"train-classifier --data {data} --out {root}/runs/clf {tiny} --eval-split none")
    from diffguide.nets.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    torch.save({"state_dict": CifarResNet(20).state_dict()}, root / "resnet20.th")  # akamaster's layout, random weights
    return {"root": root, "data": data, "inception": inception, "resnet": root / "resnet20.th"}


def test_sample_with_a_train_classifier_output(pipeline):
    root = pipeline["root"]
    out = root / "samples" / "adm-g"
    invoke(f"sample --model {root}/runs/diffusion/model --classifier {root}/runs/clf/model -s 1 --num-samples 6 "
           f"--batch-size 4 --steps 3 --device cpu --out {out}")
    for name in ("run.json", "samples.npz", "grid.png", "summary.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_000000.npz", "shard_000001.npz"]  # ⌈6/4⌉
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].shape == (6,) and set(npz["arr_1"].tolist()) <= set(range(NUM_CLASSES))
    assert json.loads((out / "summary.json").read_text()) == {"num_samples": 6, "nonfinite_zeroed": 0}


def test_cfg_on_a_model_with_a_null_label(pipeline):
    root = pipeline["root"]
    invoke(f"sample --model {root}/runs/diffusion/model --cfg-w 1 --sampler ddim --steps 3 --num-samples 2 "
           f"--device cpu --out {root}/samples/cfg")
    assert (root / "samples" / "cfg" / "samples.npz").is_file()


def test_adm_reference_batch_layout_then_the_scale_sweep(pipeline):
    """`diffguide ref` reads an npz in the layout of ADM's reference batches (arr_0 uint8 NHWC, arr_1 labels, and ADM's
    own precomputed mu / sigma / mu_s / sigma_s, which it ignores: they come from another Inception implementation)
    and recomputes the statistics from arr_0; then the sweep loop of docs/guidance.md scores each scale against it."""
    from diffguide.metrics import InceptionFeatures, Reference

    root, inception = pipeline["root"], pipeline["inception"]
    images = np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    adm_ref = root / "VIRTUAL_tiny_labeled.npz"
    np.savez(adm_ref, arr_0=images, arr_1=np.arange(10) % NUM_CLASSES, mu=np.zeros(2048), sigma=np.eye(2048),
             mu_s=np.zeros(2048), sigma_s=np.eye(2048))
    result = invoke(f"ref {adm_ref} --out {root}/ref.npz --inception {inception} --device cpu --num-features 10")
    assert "mu, sigma, mu_s, sigma_s" in result.output and "ignored" in result.output
    summary = json.loads((root / "ref.json").read_text())
    assert summary["ignored_stored_statistics"] == ["mu", "sigma", "mu_s", "sigma_s"] and summary["count"] == 10
    reference = Reference.load(root / "ref.npz")
    features = InceptionFeatures(inception, device="cpu")(images).astype(np.float64)
    assert reference.count == 10
    # Same network, same images, the same float32 features: the float64 mean agrees to float64 rounding of a
    # 10-term sum (≤ 1e-15 relative); 1e-9 leaves room for summation order and still rejects ADM's zeros.
    np.testing.assert_allclose(reference.mu, features.mean(0), rtol=1e-9, atol=1e-12)
    assert np.abs(reference.mu).max() > 1e-3  # not ADM's zeros

    for s in ("0.5", "2"):  # the sweep of docs/guidance.md, two scales
        out = root / "sweep" / f"s{s}"
        invoke(f"sample --model {root}/runs/diffusion/model --classifier {root}/runs/clf/model -s {s} "
               f"--num-samples 4 --steps 3 --seed 0 --device cpu --out {out}")
        invoke(f"eval {out}/samples.npz --ref {root}/ref.npz --out {out}/metrics.json --inception {inception} "
               f"--device cpu --kid-subset-size 2 --kid-subsets 2 --prdc-samples 4")
        result = json.loads((out / "metrics.json").read_text())
        assert result["metrics"]["num_samples"] == 4 and np.isfinite(result["metrics"]["fid"]), result


# The ImageNet-128 commands of docs/reproduce.md, with the tiny model for ADM's checkpoint and a random CIFAR ResNet for
# torchvision's ResNet-101 (the flags are the same; 4 DDPM steps instead of 250).
REPRODUCE = {
    "adm-g": "--classifier {clf} -s 0.5 --guidance-rule mean",
    "elucd": ("--x0-classifier cifar-resnet:{resnet} --x0-preprocess raw --softplus-beta 3 --objective baseline "
              "--objective-param tau1=1 --objective-param discount=0.5 -s 1 --guidance-rule elucd "
              "--rule-param gamma=0.3 --rule-param max_variance=elucd"),
    "js": ("--x0-classifier cifar-resnet:{resnet} --x0-preprocess raw --softplus-beta 3 --objective js "
           "--objective-param alpha=0.5 --objective-param epsilon=0.9 -s 1 --guidance-rule elucd "
           "--rule-param gamma=0.3 --rule-param max_variance=elucd"),
}


@pytest.mark.parametrize("name", sorted(REPRODUCE))
def test_reproduce_commands_on_a_tiny_model(pipeline, name):
    root = pipeline["root"]
    out = root / "reproduce" / name
    guidance = REPRODUCE[name].format(clf=f"{root}/runs/clf/model", resnet=pipeline["resnet"])
    invoke(f"sample --model {root}/runs/diffusion/model {guidance} --sampler ddpm --steps 4 --num-samples 3 "
           f"--batch-size 2 --device cpu --out {out}")
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (3, 8, 8, 3)
    config = json.loads((out / "run.json").read_text())
    expected = {"adm-g": ("mean", None, 0.5), "elucd": ("elucd", "baseline", 1.0), "js": ("elucd", "js", 1.0)}
    assert (config["guidance_rule"], config["objective"], config["classifier_scale"]) == expected[name]
    if name != "adm-g":  # run.json records what determines the samples (docs/guidance.md)
        assert config["rule_params"] == {"gamma": 0.3, "max_variance": "elucd"} and config["x0_preprocess"] == "raw"
