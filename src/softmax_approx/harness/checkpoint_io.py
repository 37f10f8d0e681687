"""Checkpoint files: every one written atomically; a run directory that moved still resumes.

Atomic: a temp file in the same folder, then ``os.replace``.

Why: Lightning's writer (``TorchCheckpointIO`` through fsspec) puts the bytes in a temp file in
the system temp folder and *moves* it into place at the end; across file systems that move is a
copy, and a disk that fills up mid-copy leaves a torn ``best-N.ckpt`` that a later ``eval`` or
``train=false ckpt_path=`` loads (or fails on with a traceback). Here the temp file lies beside the
target, so the final step is a rename: the old file or the new one, never half of one; a failed
write removes its temp file. Used for every checkpoint the Trainer writes (``best-*.ckpt``,
``last.ckpt``), through ``build_trainer``'s ``plugins``.

Moved: Lightning's ``ModelCheckpoint`` restores its best score and top-k only when the
checkpoint folder is the one it was saved in, and keeps the old ``best_model_path`` either way;
after the run dir moved, the best score was lost (a worse checkpoint could become "best") and
testing looked for the best weights where they no longer are. :class:`BestCheckpoint` maps the
saved paths into the current folder first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
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


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saved state follows the run directory when it moves."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and str(old) != str(self.dirpath):
            state_dict = _relocated(state_dict, str(old), str(self.dirpath))
        super().load_state_dict(state_dict)


def _relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``state`` with every path in ``old`` (the saved folder) moved to ``new``."""

    def move(p: Any) -> Any:
        s = str(p)
        if s == old or s.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + s[len(old.rstrip("/")):]
        return p

    out = {k: move(v) if isinstance(v, str) else v for k, v in state.items()}
    if isinstance(state.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    out["dirpath"] = new
    return out
