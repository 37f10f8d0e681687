"""The results.json schema: one dataclass, its statuses, one writer, one reader, one builder
of a ``failed`` record and one metric converter.

Why one place: train, eval, a sweep's failed job, ``reproduce`` (a run that died without a
record) and the report all write or read the same file; with one dataclass a field added or
renamed here is added or renamed everywhere, and ``schema_version`` lets a reader refuse a file
from a newer writer in one line instead of misreading it. Field meanings: docs/architecture.md.

Why atomic: a sweep may be killed at any moment and the report aggregates whatever is on disk; a
half-written file must never be read as a result (``utils.atomic``: temp file + ``os.replace``).

Why a fallback writer (:func:`write_failed`): on a full disk the atomic writer cannot create its
temp file, so a ``failed`` record is written smaller, then into the old file's own blocks (not
atomic: a torn file reads as "not completed", the safe side), or one line says it could not.

Plain Python and JSON only (no torch, Lightning or Hydra), so every layer may import it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from softmax_approx.utils.atomic import write_text
from softmax_approx.utils.errors import DataError

#: Bump when a field changes meaning or is removed; adding an optional field needs no bump.
SCHEMA_VERSION = 1
FILENAME = "results.json"

log = logging.getLogger(__name__)


class RunStatus:
    """The statuses a results.json holds. Plain strings (not an Enum), so a record read from disk
    compares equal to them and writes them unchanged."""

    RUNNING = "running"          # started, not finished (or killed without a word)
    COMPLETED = "completed"      # trained and tested: the only status the report aggregates
    FAILED = "failed"            # stopped by an error; ``error`` says which, in one line
    PREEMPTED = "preempted"      # SIGTERM/SIGUSR1 (exit 75): checkpointed, the same command resumes
    INTERRUPTED = "interrupted"  # Ctrl-C (exit 130): checkpointed, the same command resumes

    ALL = (RUNNING, COMPLETED, FAILED, PREEMPTED, INTERRUPTED)
    #: Stopped by a signal at a safe point: resumable as it is, not a failure.
    STOPPED = (PREEMPTED, INTERRUPTED)


class ResultsError(DataError):
    """A results.json that cannot be read: not JSON, not an object, or from a newer schema."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def jsonable(x: Any) -> Any:
    """Tensors -> numbers, NaN/inf -> None (JSON has neither), containers recursively."""
    if hasattr(x, "item") and callable(x.item) and getattr(x, "numel", lambda: 1)() == 1:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats: numbers and one-element tensors; NaN kept
    (the writer turns it into null). Anything else (a string, a list, None, a bool, a
    multi-element tensor) is not a metric and is skipped with a debug line, never raised on: this
    runs while a checkpoint is saved and while results.json is finished, and Lightning's ``log``
    already refuses non-numbers, so a skip here drops no logged metric."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if hasattr(value, "numel") and callable(value.numel) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = float(value)
        else:
            log.debug("metric %s skipped: %s is not a number", key, type(value).__name__)
    return out


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Any JSON document (a record, a sweep summary), strict JSON (no NaN), atomically."""
    return write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


@dataclass
class RunRecord:
    """One run's results.json. ``extra`` holds the fields a task or tool adds beyond these
    (``resumed_from``, translation's ``test_split``/signatures/samples, ``reproduce``'s
    ``returncode``/``stderr_tail``, eval's ``evaluated``); they are written at the top level."""

    status: str = RunStatus.RUNNING    # one of RunStatus.ALL
    error: str | None = None           # one line when failed
    task: str | None = None
    task_kind: str | None = None
    policy: str | None = None
    policy_params: dict = field(default_factory=dict)
    seed: int | None = None
    profile: str | None = None
    experiment: str | None = None
    tags: list = field(default_factory=list)
    run_dir: str | None = None
    job_id: str | None = None
    metrics: dict = field(default_factory=dict)
    memory: dict | None = None
    timing: dict | None = None
    params: dict | None = None
    fidelity: dict | None = None
    test_weights: str | None = None    # the checkpoint tested, or "current"
    config: dict | None = None         # resolved config without Hydra's own node
    provenance: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ fields
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "schema_version"))

    def update(self, **values: Any) -> "RunRecord":
        """Set fields by name; a name that is not a field goes to ``extra``."""
        known = set(self.field_names())
        for key, value in values.items():
            if key in known:
                setattr(self, key, value)
            elif key in ("schema", "schema_version"):
                continue  # written from SCHEMA_VERSION, never copied
            else:
                self.extra[key] = value
        return self

    def finish(self, status: str, error: str | None = None) -> "RunRecord":
        """Final status (a ``RunStatus``; a one-line error unless completed) and the end time."""
        self.status, self.error = status, error
        self.provenance = dict(self.provenance or {})
        self.provenance["finished"] = now_iso()
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``schema`` (kept for readers of the first files) and
        ``schema_version`` first, then the fields, then ``extra``."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION, "schema_version": SCHEMA_VERSION}
        out.update({name: getattr(self, name) for name in self.field_names()})
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = FILENAME) -> "RunRecord":
        """A record from a parsed JSON object; missing fields take their defaults (a record
        written by ``reproduce`` for a run that died early has few). A newer schema is refused."""
        if not isinstance(data, dict):
            raise ResultsError(f"{source}: not a JSON object (got {type(data).__name__})")
        version = data.get("schema_version", data.get("schema", 1))
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            raise ResultsError(
                f"{source}: results schema {version!r}, this softmax-approx reads up to {SCHEMA_VERSION}; "
                "upgrade softmax-approx to read it"
            )
        rec = cls()
        rec.update(**{k: v for k, v in data.items() if not (k in ("policy_params", "tags", "metrics", "provenance") and v is None)})
        return rec


#: What a ``failed`` record keeps when the full one cannot be written (a full disk).
SMALL_FIELDS = ("task", "policy", "seed", "run_dir", "job_id")


def failed_record(error: str, *known: RunRecord | None, small: bool = False, **values: Any) -> RunRecord:
    """The one builder of a ``failed`` record, for every writer of one (train, eval, a sweep job
    stopped before train, ``reproduce`` for a run that died without a record, the full-disk
    fallback), so they all say the same things the same way: the fields of the ``known`` records
    (None skipped; a later record is taken whole, its defaults too), then ``values``, then status
    ``failed``, the one-line ``error`` and the end time. ``small``: only ``SMALL_FIELDS`` and the
    start time, with a note (what fits where the full record did not)."""
    rec = RunRecord()
    for other in known:
        if other is not None:
            rec.update(**other.to_dict())
    rec.update(**values)
    if small:
        started = (rec.provenance or {}).get("started")
        rec = RunRecord(**{name: getattr(rec, name) for name in SMALL_FIELDS}, provenance={"started": started})
        rec.update(note="small record: the full one could not be written")
    return rec.finish(RunStatus.FAILED, error)


def write_results(path: str | Path, record: RunRecord) -> Path:
    """The one writer: ``record`` as strict JSON at ``path``, atomically."""
    return write_json_atomic(path, record.to_dict())


def write_failed(path: str | Path, record: RunRecord) -> bool:
    """Write a ``failed`` record however the disk allows; False (and one stderr line) if not.

    1. the full record, atomically; 2. the small record (:func:`failed_record`), atomically;
    3. the small record into the existing file's blocks (works on a full disk when it is no
    longer than the old file)."""
    path = Path(path)
    try:
        write_results(path, record)
        return True
    except OSError:
        pass
    small = failed_record(record.error or "", record, small=True)
    try:
        write_results(path, small)
        return True
    except OSError:
        pass
    text = json.dumps(small.to_dict(), separators=(",", ":"), allow_nan=False) + "\n"
    try:
        with open(path, "r+b") as f:
            f.write(text.encode())
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        print(f"error: could not record the failure in {path} ({why}); its status there is stale "
              f"(run failed: {record.error})", file=sys.stderr)
        return False


def read_results(path: str | Path) -> RunRecord:
    """The one reader. Raises ``FileNotFoundError`` when missing, :class:`ResultsError` (one
    line naming the file) when unreadable or from a newer schema."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); a torn write from an old version? delete it and rerun") from None
    return RunRecord.from_dict(data, str(path))
