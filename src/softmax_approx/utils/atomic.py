"""Atomic file output: a reader sees either the old file or the complete new one.

Why: runs, sweeps and `make tables` may be killed at any moment, and results.json, tables,
tokenizer caches and downloads are read back by later runs; a half-written file must never be
taken for a complete one. We write a temporary file in the same directory, fsync it, and move it
into place with ``os.replace`` (atomic on POSIX and Windows). Standard library only, so every
layer (data, bench, report, utils) can use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """`with atomic_write(p) as f: f.write(...)`; on an exception nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
