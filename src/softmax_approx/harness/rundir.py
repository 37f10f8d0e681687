"""A run directory's identity and what a run leaves beside results.json (docs/reliability.md,
fault table).

Why a separate small file: ``results.json`` is rewritten during a run, so a torn or deleted one
must not hide which config and data the directory belongs to. ``config_fingerprint`` holds the
sha256 of the recipe (the config, ``IGNORED_KEYS`` left out and file locations made relative:
``resume.location_free``), ``data_sha256`` (logical data file -> sha256 of its content, never
its path) and the tokenizer's sha256; the same fingerprint travels in every checkpoint
(:class:`FingerprintState`). Both are checked before a run resumes or a failed job writes
anything into the directory.

A ``failed`` results.json, including the full-disk fallback, is written by
``harness.recorder.RunRecorder.fail`` (``utils.run_record.write_failed``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import lightning as L

from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.run_record import now_iso, write_json_atomic

FINGERPRINT_FILE = "config_fingerprint"
JOB_ERROR_FILE = "job_error.json"
#: Where the fingerprint sits in a checkpoint's ``callbacks`` dict.
CKPT_KEY = "ConfigFingerprint"


def config_sha256(config: dict, ignored: frozenset[str]) -> str:
    """sha256 of the config as canonical JSON, top-level ``ignored`` keys left out."""
    kept = {k: v for k, v in config.items() if k not in ignored}
    text = json.dumps(kept, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_fingerprint(run_dir: str | Path) -> dict | None:
    """The directory's fingerprint, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_fingerprint(run_dir: str | Path, fingerprint: dict) -> None:
    write_json_atomic(Path(run_dir) / FINGERPRINT_FILE, fingerprint)


def check_writable(run_dir: str | Path) -> None:
    """One ConfigError line when the run directory cannot be created or written (read-only
    mount, permissions), before anything is trained."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write_probe.{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={str(run_dir)!r}: cannot write there ({e.strerror or e}); "
                          "choose a writable hydra.run.dir (or hydra.sweep.dir)") from None


def load_checkpoint(path: Any, key: str, *, missing: str, unreadable: str, mmap: bool = False) -> dict:
    """The Lightning checkpoint dict at ``path``, or one ConfigError line naming ``key`` with the
    fix: ``missing`` (no such file) or ``unreadable`` (torch.load failed; ``{error}`` = its type)."""
    import torch

    p = Path(str(path))
    if not p.is_file():
        raise ConfigError(f"{key}={str(path)!r}: no such checkpoint file; {missing}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=mmap)  # a checkpoint the user made
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch raise many types
        raise ConfigError(f"{key}={str(path)!r}: {unreadable.format(error=type(e).__name__)}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{key}={str(path)!r}: not a Lightning checkpoint (no state_dict); "
                          "give a .ckpt written by softmax-approx-train")
    return ckpt


class FingerprintState(L.Callback):
    """Puts the run's fingerprint into every checkpoint (Lightning saves a callback's
    ``state_dict`` under its ``state_key``); loading is a no-op, the check is done earlier."""

    def __init__(self, fingerprint: dict) -> None:
        self.fingerprint = dict(fingerprint)

    @property
    def state_key(self) -> str:
        return CKPT_KEY

    def state_dict(self) -> dict[str, Any]:
        return dict(self.fingerprint)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def clear_job_error(run_dir: str | Path) -> None:
    try:
        (Path(run_dir) / JOB_ERROR_FILE).unlink()
    except OSError:
        pass


def write_job_error(run_dir: str | Path, error: str) -> None:
    """The reason a sweep job was refused without touching the directory's results.json (it
    holds another config's result); the sweep summary reads it."""
    try:
        write_json_atomic(Path(run_dir) / JOB_ERROR_FILE, {"status": "refused", "error": error, "time": now_iso()})
    except OSError:
        pass


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the checkpoint temp files a failed write left (``checkpoints/.*.tmp``)."""
    removed = []
    for tmp in (Path(run_dir) / "checkpoints").glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed
