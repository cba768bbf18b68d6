"""Which trained weights each result came from.

A trained unit (a diffusion arm, a noise-aware classifier) lives in a machine's cache that does not outlive the
session, and a later session that needs it trains it again from the same seed: GPU training need not be
deterministic, so the two trainings may differ. So every sampling record names the weights it sampled with by
:func:`weights_digest`, and every finished training leaves a record in the results folder's ``trainings/`` (its
digest, steps, time, final loss), kept in the repo when its weights are not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

from ...io import atomic_write_text
from .plan import TRAINING_KINDS

TRAININGS = "trainings"
DIGEST_CHARS = 16
FINAL_LOSS_RECORDS = 10
"""The final loss of a training: the mean of its last this-many logged losses (each one a 500-step log interval's
batch loss is noisy on its own)."""


def weights_digest(model_dir) -> str:
    """The first :data:`DIGEST_CHARS` hex digits of the SHA-256 of ``model_dir``'s ``model.safetensors`` (a release
    is byte-reproducible from its tensors, :func:`diffguide.checkpoints.save_network`)."""
    path = Path(model_dir) / "model.safetensors"
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()[:DIGEST_CHARS]


def used_weights(study, unit, cache: Path) -> dict[str, str]:
    """{training unit id: :func:`weights_digest`} of the trained units ``unit`` needs (its arm, its guide)."""
    trained = [n for n in unit.needs if study.unit(n).kind in TRAINING_KINDS]
    return {n: weights_digest(cache / "train" / n / "model") for n in trained}


def training_record(unit, cache: Path, environment: dict) -> dict:
    """What a finished training leaves in the repo: its digest, plan parameters, logged steps and training seconds
    (resumes included), steps/s of its last log interval, and its final loss (:data:`FINAL_LOSS_RECORDS`)."""
    out = cache / "train" / unit.id
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "log.jsonl").is_file() else []
    losses = [r["loss"] for r in log if "loss" in r][-FINAL_LOSS_RECORDS:]
    last = log[-1] if log else {}
    return {"unit": unit.id, "kind": unit.kind, "digest": weights_digest(out / "model"), "params": unit.params,
            "steps": last.get("step"), "train_seconds": last.get("train_seconds"),
            "steps_per_s": last.get("steps_per_s"),
            "final_loss": sum(losses) / len(losses) if losses else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **environment}


def write_training_record(unit, cache: Path, results_dir: Path, environment: dict) -> Path:
    """:func:`training_record` as ``results_dir/trainings/<unit>__<digest>.json`` (one file per distinct weights:
    a second training of the same unit adds a file, never replaces one)."""
    record = training_record(unit, cache, environment)
    path = Path(results_dir) / TRAININGS / f"{unit.id}__{record['digest']}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def load_trainings(results_dir) -> list[dict]:
    """Every training record in ``results_dir/trainings``, by unit, then by when it finished."""
    folder = Path(results_dir) / TRAININGS
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(records, key=lambda r: (r["unit"], r["finished"]))
