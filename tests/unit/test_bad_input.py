"""Bad input over every command and the Python API (issue 9): each case is one clear error naming the argument, with a
non-zero exit and no traceback; the data-loss cases also leave every pre-existing file byte-identical.

To add a CLI case, add one line to CLI_CASES: (id, command line with {placeholders} from the `files` fixture, exit
code, text the message must contain). API cases go in API_CASES: (id, callable, exception type, text).
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffguide.checkpoints import save_network
from diffguide.cli import main
from diffguide.nets.cifar_resnet import CifarResNet
from diffguide.nets.small_unet import SmallUNet
from conftest import StandInInception

NO_GPU = not torch.cuda.is_available()
RNG = np.random.default_rng(0)


def _npz(path: Path, images, labels=None) -> Path:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels)}
    np.savez(path, **arrays)
    return path


def _class_folder(root: Path, classes, per_class: int = 2, size: int = 32) -> Path:
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Small real inputs, and broken ones, shared by the cases."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    tiny = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())
    model = save_network(SmallUNet(num_classes=4, **tiny), root / "model", schedule="linear")
    uncond = save_network(SmallUNet(num_classes=None, **tiny), root / "uncond", schedule="linear")
    for depth in (20, 32):
        torch.save({"state_dict": CifarResNet(depth).state_dict()}, root / f"resnet{depth}.th")
    inception = root / "inception.pt"
    torch.jit.script(StandInInception()).save(str(inception))
    images = RNG.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    _npz(root / "samples.npz", images, np.arange(12) % 4)
    _npz(root / "labels99.npz", images, np.full(12, 99))
    _npz(root / "labels_neg.npz", images, np.full(12, -1))
    _npz(root / "one.npz", images[:1])
    _npz(root / "grey.npz", np.full((6, 8, 8, 3), 128, np.uint8))
    (root / "empty.npz").write_bytes(b"")
    (root / "truncated.npz").write_bytes((root / "samples.npz").read_bytes()[:300])
    (root / "empty.th").write_bytes(b"")
    (root / "truncated.th").write_bytes((root / "resnet20.th").read_bytes()[:1000])
    (root / "text.safetensors").write_text("not a safetensors file")
    idx = struct.pack(">BBBBiii", 0, 0, 8, 3, 4, 8, 8) + images[:4, :, :, 0].tobytes()
    (root / "mnist").mkdir()
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx)[:-20])
    (root / "binary.json").write_bytes(bytes(range(256)))
    (root / "a_file").write_text("a file, not a folder")
    _class_folder(root / "cifar", ("airplane", "bird", "cat"))
    _class_folder(root / "zebras", ("cat", "zebra"))
    from diffguide.metrics import InceptionFeatures, compute_reference

    reference = compute_reference(images, InceptionFeatures(inception, device="cpu"), source="samples", num_features=12)
    reference.save(root / "ref.npz")
    return {"root": str(root), "model": str(model), "uncond": str(uncond), "r20": str(root / "resnet20.th"),
            "r32": str(root / "resnet32.th"), "inception": str(inception), "ref": str(root / "ref.npz"),
            **{name: str(root / name) for name in (
                "samples.npz", "labels99.npz", "labels_neg.npz", "one.npz", "grey.npz", "empty.npz", "truncated.npz",
                "empty.th", "truncated.th", "text.safetensors", "mnist", "binary.json", "a_file", "cifar", "zebras")}}


def run(command: str, files: dict, tmp: Path, cwd: Path | None = None):
    """Invoke the CLI in-process; the output folder placeholder {tmp} is a fresh folder."""
    args = shlex.split(command.format(tmp=tmp, **{k.replace(".", "_"): v for k, v in files.items()}))
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args)
    finally:
        os.chdir(old)


def assert_clear_error(result, code: int, needle: str) -> None:
    """Exit code, no traceback (only click's SystemExit), and the message names the argument."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert needle in result.output, result.output


SAMPLE = "sample --model {model} --out {tmp}/out --num-samples 2 --batch-size 2 --steps 2"
REF = "ref --inception {inception} --device cpu --out {tmp}/ref.npz"
CALIBRATE = ("calibrate --data {cifar} --out {tmp}/cal --steps 1 --batch-size 4 --eval-batch-size 6 --device cpu "
             "--no-progress")
EVAL_CLF = "eval-classifier --data {cifar} --out {tmp}/ev --batch-size 6 --device cpu --no-progress"
TRAIN = "train --data {samples_npz} --split none --out {tmp}/train --steps 1 --preset tiny --device cpu --no-progress"

CLI_CASES = [
    # silently wrong before
    ("sample-unconditional-with-label", SAMPLE.replace("{model}", "{uncond}") + " --labels 2", 1, "--labels"),
    ("sample-softplus-negative", SAMPLE + " --x0-classifier cifar-resnet:{r20} --softplus-beta -3", 2,
     "--softplus-beta"),
    ("sample-softplus-nan", SAMPLE + " --x0-classifier cifar-resnet:{r20} --softplus-beta nan", 2, "--softplus-beta"),
    pytest.param("sample-cuda-without-gpu", SAMPLE + " --device cuda", 2, "--device",
                 marks=pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")),
    pytest.param("train-cuda-without-gpu", TRAIN + " --device cuda", 2, "--device",
                 marks=pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")),
    pytest.param("ref-cuda-without-gpu", REF.replace("cpu", "cuda") + " {samples_npz}", 2, "--device",
                 marks=pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")),
    ("train-dropout-1", TRAIN + " --dropout 1", 2, "--dropout"),
    ("train-time-limit-nan", TRAIN + " --time-limit nan", 2, "--time-limit"),
    ("eval-labels-negative",
     "eval {labels_neg_npz} --ref {ref} --inception {inception} --device cpu --out {tmp}/m.json --classifier {r20}", 2,
     "--classifier"),
    ("eval-labels-out-of-range",
     "eval {labels99_npz} --ref {ref} --inception {inception} --device cpu --out {tmp}/m.json --classifier {r20}", 2,
     "--classifier"),
    ("calibrate-class-folder-unknown-to-classifier", CALIBRATE.replace("{cifar}", "{zebras}") + " --classifier {r20}",
     2, "zebra"),
    # tracebacks / vague errors before
    ("calibrate-empty-th", CALIBRATE + " --classifier {empty_th}", 2, "--classifier"),
    ("calibrate-truncated-th", CALIBRATE + " --classifier {truncated_th}", 2, "--classifier"),
    ("calibrate-text-safetensors", CALIBRATE + " --classifier {text_safetensors}", 2, "--classifier"),
    ("eval-classifier-foreign-safetensors", EVAL_CLF + " --classifier {model}/model.safetensors", 2, "--classifier"),
    ("eval-classifier-truncated-weights", EVAL_CLF + " --classifier {r20} --weights {truncated_th}", 2, "--weights"),
    ("sample-truncated-th-model", "sample --model {truncated_th} --preset imagenet64 --out {tmp}/o", 1,
     "truncated.th"),
    ("ref-truncated-gzip-idx", REF + " {mnist} --split train", 2, "truncated"),
    ("ref-empty-npz", REF + " {empty_npz}", 2, "empty.npz"),
    ("ref-truncated-npz", REF + " {truncated_npz}", 2, "truncated.npz"),
    ("ref-unwritable-out", "ref --inception {inception} --device cpu --out {a_file}/ref.npz {samples_npz}", 2,
     "is a file, not a folder"),
    ("ref-single-image", REF + " {one_npz}", 2, "at least 2"),
    ("ref-grey-set", REF + " {grey_npz}", 2, "identical"),
    ("demo-temperature-nan", "demo --out {tmp}/d --temperature nan", 2, "--temperature"),
    ("demo-scale-inf", "demo --out {tmp}/d --scale inf", 2, "--scale"),
    ("demo-cfg-w-nan", "demo --out {tmp}/d --cfg-w nan", 2, "--cfg-w"),
    ("train-channel-mult-0", TRAIN + " --channel-mult 0", 2, "--channel-mult"),
    ("train-timesteps-10", TRAIN + " --timesteps 10", 1, "--timesteps"),
    ("train-lr-nan", TRAIN + " --lr nan", 2, "--lr"),
    ("eval-classifier-labels-out-of-range", EVAL_CLF.replace("{cifar}", "{labels99_npz}") + " --split none "
     "--classifier {r20}", 2, "outside the classifier's classes"),
    ("sample-schedule-param-without-sine", SAMPLE + " --x0-classifier cifar-resnet:{r20} --schedule-param gamma=0.3",
     2, "--schedule-param"),
    ("sample-device-bogus", SAMPLE + " --device bogus", 2, "--device"),
    ("ref-device-bogus", REF.replace("cpu", "bogus") + " {samples_npz}", 2, "--device"),
    ("train-device-bogus", TRAIN + " --device bogus", 2, "--device"),
    ("calibrate-device-bogus", CALIBRATE.replace("cpu", "bogus") + " --classifier {r20}", 2, "--device"),
    ("train-config-binary", TRAIN + " --config {binary_json}", 2, "--config"),
    ("sample-x0-classifier-unknown-kind", SAMPLE + " --x0-classifier nosuchkind:foo", 2, "--x0-classifier"),
    ("sample-classifier-as-model-points-to-x0-classifier",
     "sample --model {r20} --preset cifar10-resnet32 --out {tmp}/o", 1, "--x0-classifier"),
    ("sample-resume-and-overwrite", SAMPLE + " --resume --overwrite", 2, "--overwrite"),
    ("sample-model-missing", "sample --model {tmp}/none --out {tmp}/o", 1, "--model"),
    ("sample-labels-unknown-mode", SAMPLE + " --labels sorted", 1, "--labels"),
    ("sample-variance-unknown", SAMPLE + " --variance huge", 2, "--variance"),
    ("sample-variance-learned-on-a-fixed-variance-model", SAMPLE + " --variance learned_range", 1, "--variance"),
    ("train-classifier-ece-weight-nan", "train-classifier --data {samples_npz} --split none --out {tmp}/tc --steps 1 "
     "--ece-weight nan", 2, "--ece-weight"),
    ("train-classifier-device-bogus", "train-classifier --data {samples_npz} --split none --out {tmp}/tc --steps 1 "
     "--device bogus", 2, "--device"),
    ("train-out-is-a-file", TRAIN.replace("{tmp}/train", "{a_file}"), 2, "--out"),
    ("eval-ref-missing", "eval {samples_npz} --ref {tmp}/none.npz --inception {inception} --device cpu", 2, "--ref"),
    ("eval-ref-not-a-reference", "eval {samples_npz} --ref {samples_npz} --inception {inception} --device cpu", 2,
     "--ref"),
    ("ref-inception-missing", "ref --inception {tmp}/none.pt --device cpu --out {tmp}/r.npz {samples_npz}", 2,
     "--inception"),
    ("ref-inception-not-torchscript", "ref --inception {r20} --device cpu --out {tmp}/r.npz {samples_npz}", 2,
     "--inception"),
    ("calibrate-lr-nan", CALIBRATE + " --classifier {r20} --lr nan", 2, "--lr"),
    ("calibrate-lr-negative", CALIBRATE + " --classifier {r20} --lr -1", 2, "--lr"),
    ("eval-classifier-image-size", EVAL_CLF.replace("{cifar}", "{samples_npz}") + " --split none --classifier {r20}",
     2, "--data"),
    ("eval-classifier-bins-0", EVAL_CLF + " --classifier {r20} --bins 0", 2, "--bins"),
]


@pytest.mark.parametrize("name, command, code, needle", CLI_CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CLI_CASES])
def test_cli_bad_input(files, tmp_path, name, command, code, needle):
    assert_clear_error(run(command, files, tmp_path), code, needle)


def test_torchvision_missing_says_how_to_install(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    result = run(SAMPLE + " --x0-classifier torchvision:resnet18", files, tmp_path)
    assert_clear_error(result, 1, "pip install")


def _api_settings(**changes):
    from diffguide.api import SampleSettings

    return lambda: SampleSettings(model="m", **changes)


def _class_labels(*args):
    from diffguide.sampling import class_labels

    return lambda: class_labels(*args)


def _train(**options):
    from diffguide.train import TrainConfig, train

    return lambda: train(TrainConfig(), "never-written", **options)


API_CASES = [
    ("num_samples-2.5", _api_settings(num_samples=2.5), ValueError, "num_samples"),
    ("num_samples-negative", _api_settings(num_samples=-1), ValueError, "num_samples"),
    ("seed-negative", _api_settings(seed=-1), ValueError, "seed"),
    ("batch_size-0", _api_settings(batch_size=0), ValueError, "batch_size"),
    ("variance-unknown", _api_settings(variance="huge"), ValueError, "variance"),
    ("num_classes-negative", _class_labels(4, -3), ValueError, "num_classes"),
    ("labels-class-on-unconditional", _class_labels(4, None, "5"), ValueError, "labels"),
    ("train-time_limit_s-nan", _train(time_limit_s=float("nan")), ValueError, "time_limit_s"),
]


@pytest.mark.parametrize("name, call, error, needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(name, call, error, needle):
    with pytest.raises(error, match=needle):
        call()


# ------------------------------------------------------------------------------------------------ data loss


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_overwrite_in_the_current_directory_deletes_nothing(files, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(tmp_path)
    result = run("sample --model {model} --out . --overwrite --num-samples 2 --steps 2", files, tmp_path, cwd=tmp_path)
    assert_clear_error(result, 1, "current directory")
    assert snapshot(tmp_path) == before


def test_sample_overwrite_of_a_training_run_holding_the_model_deletes_nothing(files, tmp_path):
    run_dir = tmp_path / "run"
    save_network(SmallUNet(num_classes=4, image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=()), run_dir / "model", schedule="linear")
    (run_dir / "checkpoint.pt").write_bytes(b"training state")
    (run_dir / "log.jsonl").write_text("{}\n")
    before = snapshot(tmp_path)
    result = run(f"sample --model {run_dir / 'model'} --out {run_dir} --overwrite --num-samples 2 --steps 2", files,
                 tmp_path)
    assert_clear_error(result, 1, "--overwrite")
    assert snapshot(tmp_path) == before


def test_sample_overwrite_refuses_a_folder_with_foreign_files_and_replaces_its_own_run(files, tmp_path):
    out = tmp_path / "out"
    assert run(SAMPLE, files, tmp_path).exit_code == 0
    (out / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    assert_clear_error(run(SAMPLE + " --overwrite", files, tmp_path), 1, "mine.txt")
    assert snapshot(tmp_path) == before
    (out / "mine.txt").unlink()
    result = run(SAMPLE + " --overwrite --seed 1", files, tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["seed"] == 1


@pytest.mark.parametrize("command, existing", [
    (REF + " {samples_npz}", ["ref.npz"]),
    (REF + " {samples_npz}", ["ref.json"]),  # the summary beside the reference
    ("eval {samples_npz} --ref {ref} --inception {inception} --device cpu --out {tmp}/m.json", ["m.json"]),
    (EVAL_CLF + " --classifier {r20}", ["ev/eval_classifier.json"]),
], ids=["ref-npz", "ref-summary", "eval-json", "eval-classifier-report"])
def test_reports_are_not_replaced_without_overwrite(files, tmp_path, command, existing):
    for name in existing:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"an earlier result")
    before = snapshot(tmp_path)
    assert_clear_error(run(command, files, tmp_path), 2, "--overwrite")
    assert snapshot(tmp_path) == before
    assert run(command + " --overwrite", files, tmp_path).exit_code == 0


def test_calibrate_refuses_a_finished_run_of_other_settings_and_foreign_folders(files, tmp_path):
    result = run(CALIBRATE + " --classifier {r20}", files, tmp_path)
    assert result.exit_code == 0, result.output
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "cal" / "classifier.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    before = snapshot(tmp_path)
    for extra, needle in ((" --classifier {r32}", "classifier differs"),
                          (" --classifier {r20} --batch-size 2", "batch_size differs"),
                          (" --classifier {r20} --train-limit 3", "train_limit differs"),
                          (" --classifier {r20} --data {zebras}", "data differs")):
        assert_clear_error(run(CALIBRATE.replace("--data {cifar} ", "") + (" --data {cifar}" if "--data" not in extra
                                                                            else "") + extra, files, tmp_path), 1,
                           needle)
        assert snapshot(tmp_path) == before
    assert run(CALIBRATE + " --classifier {r20}", files, tmp_path).exit_code == 0  # same settings: a finished resume
    foreign = tmp_path / "training"
    foreign.mkdir()
    (foreign / "checkpoint.pt").write_bytes(b"a training run's checkpoint")
    before = snapshot(foreign)
    assert_clear_error(run(CALIBRATE.replace("{tmp}/cal", str(foreign)) + " --classifier {r20}", files, tmp_path), 1,
                       "--out")
    assert snapshot(foreign) == before


def test_calibrate_corrupt_checkpoint_is_one_line(files, tmp_path):
    assert run(CALIBRATE + " --classifier {r20} --steps 2", files, tmp_path).exit_code == 0
    (tmp_path / "cal" / "checkpoint.pt").write_bytes(b"garbage")
    assert_clear_error(run(CALIBRATE + " --classifier {r20} --steps 3", files, tmp_path), 1, "checkpoint.pt")


# ------------------------------------------------------------------------------------- correct behaviour now


def test_limit_spreads_over_classes_everywhere(files):
    from diffguide.classifiers import labelled_images as load_split
    from diffguide.data import load_dataset

    data = load_dataset(files["cifar"], "test", limit=3)  # 6 images sorted by class: positions 0, 2, 4
    assert list(data.labels) == [0, 1, 2]
    _, labels = load_split(files["cifar"], "test", 3)
    assert list(labels) == [0, 1, 2]


def test_class_folders_map_onto_the_classifier_class_names(files):
    from diffguide.classifiers import load_cifar_resnet
    from diffguide.classifiers import labelled_images as load_split

    _, labels = load_split(files["cifar"], "test", None, load_cifar_resnet(files["r20"]))
    assert list(labels) == [0, 0, 2, 2, 3, 3]  # airplane, bird, cat in CIFAR-10's order, not 0, 1, 2


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from diffguide.io import clean_stale_temporaries

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".checkpoint.pt.tmp{finished.pid}"
    live = tmp_path / f".train_config.json.tmp{os.getppid()}"
    dead.write_bytes(b"half")
    live.write_bytes(b"being written")
    assert clean_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and not dead.exists()


def test_released_weights_are_byte_reproducible_and_0644(tmp_path):
    torch.manual_seed(0)
    net = CifarResNet(20)
    blobs = {save_network(net, tmp_path / str(k)).joinpath("model.safetensors").read_bytes() for k in range(6)}
    assert len(blobs) == 1  # safetensors alone writes metadata in hash order: several byte strings
    blob = blobs.pop()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "0" / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_help_does_not_import_torch():
    """``diffguide --help`` lists the commands without importing torch (1.5 s of the 1.6 s it took). A command's own
    --help may import it: ``sample`` and ``demo`` read their --sampler / --schedule choices from the registries."""
    code = ("import sys; from click.testing import CliRunner; from diffguide.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0 and 'sample' in r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src")))
    assert out.stdout.strip() == "False"


def test_warmup_default_scales_with_the_run_length():
    from diffguide.train.config import OptimConfig

    assert OptimConfig().warmup(50) == 5 and OptimConfig().warmup(100_000) == 500
    assert OptimConfig(warmup_steps=7).warmup(50) == 7


def test_grid_has_one_row_per_class_with_upscaled_tiles(tmp_path):
    from diffguide.sampling import save_grid

    images = RNG.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    save_grid(images, tmp_path / "grid.png", labels=np.array([0, 1, 2] * 3))
    with Image.open(tmp_path / "grid.png") as grid:
        # 3 rows of 64-px tiles (8 px x 8) with 2-px gaps; 3 columns plus the name column
        assert grid.height == 2 + 3 * (64 + 2)
        assert grid.width > 3 * (64 + 2)


def test_sample_checks_free_disk_space_before_sampling(files, tmp_path, monkeypatch):
    import collections

    import diffguide.sampling

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(diffguide.sampling.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    assert_clear_error(run(SAMPLE, files, tmp_path), 1, "MiB free")
    assert not (tmp_path / "out" / "shards").exists() or not any((tmp_path / "out" / "shards").iterdir())
