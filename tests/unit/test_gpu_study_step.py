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
        '#!/bin/bash\necho "$@" > "$ARGS_FILE"\nsleep "${STANDIN_SLEEP:-0}"\n'
        'echo "unit_a: 1 s"; echo "  ready   unit_b"\n'
        'echo "{}" > "$RESULTS/cifar10_guidance/unit_a.json"\nexit "${STANDIN_RC:-0}"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RESULTS": str(tmp_path / "results"),
           "CACHE": str(tmp_path / "cache"), "STAGE": str(tmp_path / "stage"), "OUT": str(tmp_path / "out"),
           "ARGS_FILE": str(tmp_path / "args.txt"), "POLL_S": "0.2", "END_MARGIN_S": "90"}
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
