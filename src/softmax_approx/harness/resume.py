"""What to do with a run directory that may already hold a run (docs/reliability.md).

Rerunning the same command with the same ``hydra.run.dir`` after a crash must continue the run,
not start it over, and must never train a finished run again:

==========================================  ==============================================
run dir holds                               decision
==========================================  ==============================================
results.json ``completed``                  ``skip``: print one line, return its metrics
``checkpoints/last.ckpt`` (not completed)   ``resume`` from it (or from ``ckpt_path=``)
nothing of the above                        ``fresh``
==========================================  ==============================================

A previous run with a different configuration in the same directory is refused (ConfigError
naming the differing keys): continuing it would silently mix two experiments. Keys that do not
change what is trained are ignored (``IGNORED_KEYS``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmax_approx.harness.callbacks import LAST_NAME
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.run_record import read_results

#: Top-level config keys that may differ between attempts of one run: where files live, how it
#: is logged, and the fault-injection debugging aid (a run failed on purpose is resumed without).
IGNORED_KEYS = frozenset({"paths", "ckpt_path", "logger", "callbacks", "tags", "experiment_name", "fault", "hydra"})
WANDB_ID_FILE = "wandb_run_id"


@dataclass(frozen=True)
class ResumeDecision:
    action: str  # "skip" | "resume" | "fresh"
    ckpt_path: str | None = None
    record: dict | None = None

    @property
    def metrics(self) -> dict:
        return dict((self.record or {}).get("metrics") or {})


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / LAST_NAME


def read_record(path: Path) -> dict | None:
    """The results.json at ``path``, or None when missing or unreadable (a torn write from
    before atomic writes, or a file from another tool: treated as not completed)."""
    try:
        return read_results(path).to_dict()
    except (OSError, ValueError):  # ResultsError is a ValueError
        return None


def config_differences(old: dict | None, new: dict) -> list[str]:
    """Dotted keys whose values differ (IGNORED_KEYS left out); [] when ``old`` has no config."""
    if not isinstance(old, dict):
        return []
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if not prefix and k in IGNORED_KEYS:
                    continue
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        elif a != b:
            out.append(prefix.rstrip("."))

    walk(old, json.loads(json.dumps(new, default=str)), "")
    return out


def decide(run_dir: str | Path, config: dict, explicit_ckpt: str | None = None) -> ResumeDecision:
    """Skip, resume or start fresh (table in the module docstring)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir / "results.json")
    last = last_checkpoint(run_dir)
    if record is not None and (record.get("status") == "completed" or last.exists()):
        diff = config_differences(record.get("config"), config)
        if diff:
            shown = ", ".join(diff[:5]) + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else "")
            raise ConfigError(
                f"{run_dir} holds a {record.get('status')} run with a different config ({shown}); "
                "use another hydra.run.dir, or delete that directory to start over"
            )
    if record is not None and record.get("status") == "completed":
        return ResumeDecision("skip", record=record)
    if explicit_ckpt:
        return ResumeDecision("resume", ckpt_path=str(explicit_ckpt), record=record)
    if last.exists():
        return ResumeDecision("resume", ckpt_path=str(last), record=record)
    return ResumeDecision("fresh", record=record)


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run dir, persisted in it, so a resumed run logs into the same W&B
    run (``resume='allow'``). Derived from the run dir's absolute path (which holds a random
    run id by default), so every DDP rank computes the same id without a race."""
    path = Path(run_dir) / WANDB_ID_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{WANDB_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value
