"""scripts/gpu_study_step.sh's detached worker (start / wait), with a stand-in `python` on PATH that records its
arguments, sleeps and exits with a chosen status: what the GPU machine's calls rely on, checked without a GPU."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_study_step.sh"
STUDY = "cifar10_guidance"


@pytest.fixture
def machine(tmp_path):
    """The environment of one GPU machine: results, cache, $OUT, and the stand-in python (STANDIN_SLEEP seconds,
    exit STANDIN_RC, its arguments written to args.txt, one finished unit's JSON written to the results folder)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        '#!/bin/bash\necho "$@" > "$ARGS_FILE"\n'
        'if [ -n "${STANDIN_TRAIN:-}" ]; then u="$CACHE/cifar10_guidance/train/$STANDIN_TRAIN"; mkdir -p "$u/model"\n'
        '  head -c 3000 /dev/urandom > "$u/model/model.safetensors"; echo ckpt > "$u/checkpoint.pt"\n'
        '  echo "{}" > "$u/done.json"; fi\n'
        'sleep "${STANDIN_SLEEP:-0}"\n'
        'echo "unit_a: 1 s"; echo "  ready   unit_b"\n'
        'echo "{}" > "$RESULTS/cifar10_guidance/unit_a.json"\nexit "${STANDIN_RC:-0}"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RESULTS": str(tmp_path / "results"),
           "CACHE": str(tmp_path / "cache"), "STAGE": str(tmp_path / "stage"), "OUT": str(tmp_path / "out"),
           "ARGS_FILE": str(tmp_path / "args.txt"), "POLL_S": "0.2", "END_MARGIN_S": "90",
           "EXPORT": str(tmp_path / "export")}
    (tmp_path / "out").mkdir()

    def step(*args, **extra):
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)

    return tmp_path, step


def test_start_then_wait_returns_the_results_and_the_exit_status(machine):
    tmp_path, step = machine
    started = step("start", STUDY, "200", "final__*", STANDIN_SLEEP="4")
    assert started.returncode == 0 and "started: pid" in started.stdout
    again = step("start", STUDY, "200")
    assert again.returncode == 1 and "is running" in again.stderr  # one worker per study
    done = step("wait", STUDY, "30")
    assert done.returncode == 0 and "worker: ended, exit 0" in done.stdout
    assert "unit_a: 1 s" in done.stdout and "ready   unit_b" not in done.stdout
    args = (tmp_path / "args.txt").read_text().split()
    budget, only, left = (args[args.index(flag) + 1] for flag in ("--budget-s", "--only", "--session-left-s"))
    assert (budget, only, left) == ("110", "final__*", "200")  # the session's 200 s less END_MARGIN_S
    with tarfile.open(tmp_path / "out" / f"results_{STUDY}.tgz") as tgz:
        names = tgz.getnames()
    assert f"{STUDY}/unit_a.json" in names
    committed = len(list((ROOT / "docs" / "results" / STUDY).glob("*.json")))
    assert sum(n.endswith(".json") for n in names) == committed + 1  # started from the committed JSONs


def test_wait_while_running_and_after_a_failure(machine):
    tmp_path, step = machine
    assert step("start", STUDY, "300", STANDIN_SLEEP="3", STANDIN_RC="5").returncode == 0
    running = step("wait", STUDY, "0")
    assert running.returncode == 0 and "worker: running" in running.stdout
    assert (tmp_path / "out" / f"results_{STUDY}.tgz").exists()  # what is finished comes back meanwhile
    ended = step("wait", STUDY, "30")
    assert ended.returncode == 5 and "exit 5" in ended.stdout


def test_a_killed_worker_and_bad_arguments_are_named(machine):
    tmp_path, step = machine
    assert step("wait", STUDY, "1").returncode == 2  # nothing started here
    assert step("start", STUDY, "90").returncode == 2  # nothing left after the end margin
    assert step("start", STUDY, "300", STANDIN_SLEEP="30").returncode == 0
    pid = int((tmp_path / "results" / f"{STUDY}.pid").read_text())
    os.killpg(pid, 9)  # what the machine would do to the call's processes, if it killed them
    time.sleep(0.5)
    gone = step("wait", STUDY, "5")
    assert gone.returncode == 3 and "gone without an exit status" in gone.stderr


def test_a_training_finished_on_the_machine_comes_back_piece_by_piece_as_soon_as_it_exists(machine):
    """The worker trains (the stand-in writes a finished unit at once, then keeps running 20 s): the first wait
    returns early with SHIP_PIECES pieces, the next with the rest and 'complete'; the joined pieces are the unit
    but its resume checkpoint, checked by `receive`; an imported unit is never shipped again."""
    tmp_path, step = machine
    out = tmp_path / "out"
    small = {"PIECE_SIZE": "4k", "SHIP_PIECES": "2"}  # tar pads to 10,240 bytes: 3 pieces of 4 KiB
    assert step("start", STUDY, "300", STANDIN_SLEEP="20", STANDIN_TRAIN="clf").returncode == 0
    began = time.monotonic()
    first = step("wait", STUDY, "30", **small)
    assert first.returncode == 0 and "worker: running" in first.stdout and time.monotonic() - began < 15
    assert sorted(p.name for p in out.glob("*.part*")) == [f"{STUDY}.clf.tar.part00", f"{STUDY}.clf.tar.part01"]
    assert "complete" not in first.stdout
    back = tmp_path / "back"
    back.mkdir()
    for piece in out.iterdir():
        (back / piece.name).write_bytes(piece.read_bytes())
        piece.unlink()
    second = step("wait", STUDY, "0", **small)
    assert "shipped: clf complete" in second.stdout
    assert [p.name for p in out.glob("*.part*")] == [f"{STUDY}.clf.tar.part02"]
    (back / f"{STUDY}.clf.tar.part02").write_bytes((out / f"{STUDY}.clf.tar.part02").read_bytes())
    (out / f"{STUDY}.clf.tar.part02").unlink()
    third = step("wait", STUDY, "0", **small)
    assert "shipped" not in third.stdout and not list(out.glob("*.part*"))
    local = tmp_path / "local"
    received = step("receive", STUDY, "clf", str(local), str(back / f"{STUDY}.clf.tar.sha256"),
                    *sorted(str(p) for p in back.glob("*.part*")))
    assert received.returncode == 0, received.stderr
    unit = local / STUDY / "train" / "clf"
    made = tmp_path / "cache" / STUDY / "train" / "clf"
    assert (unit / "model" / "model.safetensors").read_bytes() == (made / "model" / "model.safetensors").read_bytes()
    assert not (unit / "checkpoint.pt").exists()
    assert step("import", STUDY, "imported", str(unit)).returncode == 0
    fourth = step("wait", STUDY, "0", **small)
    assert "shipped" not in fourth.stdout


def test_results_unpacks_new_jsons_and_training_records_and_keeps_what_is_there(tmp_path):
    """`results` (here, in a checkout's root) copies the tarball's unit JSONs, unit PNGs and trainings/ records into
    docs/results/STUDY, skips the report's figures, and never replaces a file the checkout already has."""
    packed = tmp_path / "packed" / STUDY
    (packed / "trainings").mkdir(parents=True)
    for name, text in (("a.json", "new"), ("old.json", "new"), ("figure_fid.png", "figure"), ("grid.png", "grid"),
                       ("trainings/arm__0123.json", "record")):
        (packed / name).write_text(text)
    with tarfile.open(tmp_path / "r.tgz", "w:gz") as tgz:
        tgz.add(packed, arcname=STUDY)
    checkout = tmp_path / "checkout"
    (checkout / "docs" / "results" / STUDY).mkdir(parents=True)
    (checkout / "docs" / "results" / STUDY / "old.json").write_text("committed")
    done = subprocess.run(["bash", str(SCRIPT), "results", STUDY, str(tmp_path / "r.tgz")], cwd=checkout,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = {str(p.relative_to(checkout / "docs" / "results" / STUDY)): p.read_text()
           for p in (checkout / "docs" / "results" / STUDY).rglob("*") if p.is_file()}
    assert got == {"a.json": "new", "old.json": "committed", "grid.png": "grid", "trainings/arm__0123.json": "record"}
