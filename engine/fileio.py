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
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_sibling(path: str | os.PathLike) -> Path:
    """An unused hidden name in `path`'s folder (created if missing), keeping `path`'s extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.tmp-{secrets.token_hex(6)}{path.suffix}")


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
