"""Every checkpoint is written atomically: a temp file in the same folder, then ``os.replace``.

Why: Lightning's writer (``TorchCheckpointIO`` through fsspec) puts the bytes in a temp file in
the system temp folder and *moves* it into place at the end; across file systems that move is a
copy, and a disk that fills up mid-copy leaves a torn ``best-N.ckpt`` that a later ``eval`` or
``train=false ckpt_path=`` loads (or fails on with a traceback). Here the temp file lies beside the
target, so the final step is a rename: the old file or the new one, never half of one; a failed
write removes its temp file. Used for every checkpoint the Trainer writes (``best-*.ckpt``,
``last.ckpt``), through ``build_trainer``'s ``plugins``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``.<name>.tmp`` beside ``path``, flushed to disk, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with an atomic local write (remote URLs: Lightning's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
