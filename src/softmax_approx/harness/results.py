"""results.json: one record per run, written atomically (schema in docs/architecture.md).

Why atomic: a sweep may be killed at any moment and the report aggregates whatever is on
disk; a half-written file must never be read as a result. We write a temp file in the same
directory and ``os.replace`` it (atomic on POSIX).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from softmax_approx.utils.atomic import write_text
from softmax_approx.harness.provenance import now_iso, provenance

SCHEMA = 1
FILENAME = "results.json"


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


def write_json_atomic(path: str | Path, data: dict) -> Path:
    return write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config, interpolations resolved, without Hydra's own ``hydra`` node."""
    out = {}
    for key in cfg:
        if key == "hydra":
            continue
        value = cfg[key]
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def new_record(cfg: DictConfig, run_dir: str | Path, job_id: str | None) -> dict:
    """The fields known before training, with status ``running``."""
    return {
        "schema": SCHEMA,
        "status": "running",
        "error": None,
        "task": cfg.task.name,
        "task_kind": cfg.task.kind,
        "policy": cfg.attention.name,
        "policy_params": OmegaConf.to_container(cfg.attention.params, resolve=True),
        "seed": int(cfg.seed),
        "profile": cfg.get("profile_name"),
        "experiment": cfg.get("experiment_name"),
        "tags": list(cfg.get("tags") or []),
        "run_dir": str(run_dir),
        "job_id": job_id,
        "metrics": {},
        "memory": None,
        "timing": None,
        "params": None,
        "fidelity": None,
        "test_weights": None,
        "config": resolved_config(cfg),
        "provenance": provenance(now_iso()),
    }


def finish_record(record: dict, status: str, error: str | None = None) -> dict:
    record["status"] = status
    record["error"] = error
    record["provenance"]["finished"] = now_iso()
    return record


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILENAME


def load_results(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)
