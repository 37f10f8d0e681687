"""The shipped task files (``conf/task/*.yaml``) read as plain YAML, for code that runs outside Hydra.

Why: a task's yaml is the one place that says what the task is: its ``task.kind`` and, under
``task.data``, its dataset (files, reader, splits, download). The download/check command line,
``reproduce``'s data check and the report's table layout need those facts without composing a
Hydra config, so they read the files here. A task file that extends another (``defaults: [base,
_self_]``, e.g. ``iwslt14_mini`` over ``iwslt14``) is merged over its base like Hydra does;
interpolations such as ``${paths.data_dir}`` are left as written (``data.datasets`` resolves them).

Plain Python and PyYAML only, so every layer (the report too) may import it.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TASK_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "task"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    path = TASK_CONF_DIR / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    merged: dict = {}
    for entry in raw.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_":  # another task file of the same group
            merged = _merge(merged, _load(entry))
    return _merge(merged, raw)


def task_names() -> list[str]:
    """Every shipped task, by file name."""
    return sorted(p.stem for p in TASK_CONF_DIR.glob("*.yaml"))


def task_conf(name: str) -> dict[str, Any]:
    """The ``task`` node of ``conf/task/<name>.yaml`` (bases merged in), as plain data."""
    if not (TASK_CONF_DIR / f"{name}.yaml").is_file():
        raise KeyError(name)
    return copy.deepcopy(dict(_load(name).get("task") or {}))


def task_kinds() -> dict[str, str]:
    """``{task name: kind}`` for every shipped task (what the report lays tables out by)."""
    return {name: str(task_conf(name).get("kind")) for name in task_names()}
