"""Files: atomic writes (a kill at any moment leaves either the previous file or the complete new one, never half of
one), clean-up of the temporaries of killed writers, checks that an output can be written before work starts, and the
one settings comparison every resumable command uses."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "atomic_save_npz", "check_writable", "clean_stale_temporaries",
           "settings_differences", "check_same_settings", "spread_indices"]

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def _file_mode() -> int:
    """0666 masked by the process umask (0644 under the usual 022): what an ordinary ``open(..., 'w')`` creates."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Create ``path``'s folder, call ``write(temporary_path)`` (same folder), give it the ordinary file mode (some
    writers create 0600 files), then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_npz(path, **arrays) -> Path:
    """``np.savez`` to exactly ``path`` (through a file handle, so no '.npz' is appended to the temporary name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder) -> list[Path]:
    """Delete the ``.<name>.tmp<pid>`` files :func:`atomic_write` left in ``folder`` (and its sub-folders) when the
    writer ``pid`` was killed; temporaries of live processes stay. Returns the deleted paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp*"):
        match = _TMP.match(path.name)
        if match and path.is_file() and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])):
            path.unlink()
            removed.append(path)
    return removed


def check_writable(path, *, what: str = "out", is_dir: bool | None = None) -> None:
    """A ValueError naming ``what`` unless a file can be created in ``path`` (a folder, created if missing) or beside
    ``path`` (a file); checked before minutes of work, not after. Writes and removes one empty temporary file."""
    path = Path(path)
    folder = path if (is_dir if is_dir is not None else path.is_dir()) else path.parent
    blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{what}: {str(blocker)!r} is a file, not a folder, so {str(path)!r} cannot be written")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".diffguide-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{what}: cannot write to {str(folder)!r} ({err.strerror or err})") from None


def settings_differences(saved: Mapping, current: Mapping, ignore: Iterable[str] = ()) -> dict[str, tuple]:
    """{key: (saved, current)} for every key whose JSON value differs, except the keys in ``ignore``."""
    saved, current = json.loads(json.dumps(dict(saved))), json.loads(json.dumps(dict(current)))
    ignore = set(ignore)
    return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
            if k not in ignore and saved.get(k) != current.get(k)}


def check_same_settings(saved: Mapping, current: Mapping, *, where, ignore: Iterable[str] = (),
                        hint: str = "use the same arguments, or another output folder") -> None:
    """A ValueError listing what differs when a run in ``where`` is resumed (or re-entered) with other settings."""
    changed = settings_differences(saved, current, ignore)
    if changed:
        shown = "; ".join(f"{k} differs: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
        raise ValueError(f"resume: {where} was written with different settings ({shown}); {hint}")


def spread_indices(total: int, limit: int | None) -> np.ndarray:
    """Positions of ``limit`` items spread evenly over ``total`` (all of them when ``limit`` is None or ≥ total):
    k·total // limit for k < limit. Over a class-sorted list (image folders) every class is represented in
    proportion; this is the one meaning of ``--limit`` in every command."""
    if limit is None or limit >= total:
        return np.arange(total)
    return (np.arange(limit) * total) // limit
