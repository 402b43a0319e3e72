"""Atomic file writing, the one helper every writer uses: a result appears whole or not at all.

    with atomic_file("out/metrics.json") as tmp:      # tmp: a hidden unused name beside the target
        tmp.write_text(...)                            # renamed onto the target when the block succeeds
    with atomic_folder("out/frames") as tmp:          # a folder, swapped in for the target at the end
        ...

The temporary sibling lives in the target's folder (created if missing), so the final rename
stays on one file system; it is removed when the block raises. Files and folders get the
permissions the user's umask gives (0o666 / 0o777 masked), as plain `open` and `mkdir` do,
not the 0600 / 0700 of `tempfile.mkstemp` / `mkdtemp`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

#: the file a run keeps in its temporary output folder while it works: which process, on which machine
RUN_MARKER = ".run-in-progress.json"


def temp_sibling(path: str | os.PathLike) -> Path:
    """An unused hidden name in `path`'s folder (created if missing), keeping `path`'s extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{_temp_prefix(path)}{secrets.token_hex(6)}{path.suffix}")


def _temp_prefix(path: Path) -> str:
    return f".{path.stem}.tmp-"


def mark_in_progress(folder: Path) -> Path:
    """Write RUN_MARKER into `folder` (this process's id and host); returns its path."""
    marker = Path(folder) / RUN_MARKER
    marker.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return marker


def remove_stale_runs(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders beside `path` that a killed run left: our name pattern
    (`temp_sibling(path)`), holding our RUN_MARKER, written by a process of this machine that is
    gone. Folders of a live run, of another machine, or without the marker are left alone.
    Returns the folders removed (each logged)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for folder in sorted(path.parent.glob(f"{_temp_prefix(path)}*{path.suffix}")):
        if folder.is_dir() and not folder.is_symlink() and _left_by_dead_run(folder / RUN_MARKER):
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s, the temporary output of an earlier run that was killed", folder)
            removed.append(folder)
    return removed


def _left_by_dead_run(marker: Path) -> bool:
    try:
        record = json.loads(marker.read_text())
        pid, host = int(record["pid"]), record["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:                     # alive under another user
        return False
    return False


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path`; renamed onto `path` on success, deleted on failure."""
    path = Path(path)
    tmp = temp_sibling(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))   # mode 0o666 & ~umask
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temporary folder beside `path`; it is deleted at the end, whatever happens
    (move what should stay out of it inside the block)."""
    tmp = temp_sibling(path)
    tmp.mkdir()                                                            # mode 0o777 & ~umask
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside `folder`; swapped in for `folder` on success (an existing
    `folder` is moved aside, then deleted), deleted on failure."""
    folder = Path(folder)
    with staging_folder(folder) as tmp:
        yield tmp
        if folder.exists():       # a folder cannot be renamed over a non-empty one: move the old one aside
            old = temp_sibling(folder)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` all at once or not at all (flushed to disk before the rename)."""
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` all at once or not at all."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON with a final newline to `path` all at once or not at all."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
