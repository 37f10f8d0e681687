"""Atomic report output: a table or figure is either the old file or the complete new one.

Why: `make tables` may be interrupted (or a renderer may raise half way); a reader must never
see a truncated CSV or PDF. The mechanism is :mod:`softmax_approx.utils.atomic`; this module adds
the JSON and matplotlib writers the report needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softmax_approx.utils.atomic import atomic_write, write_text

__all__ = ["atomic_write", "write_text", "write_json", "save_figure"]


def write_json(path: Path | str, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(fig: Any, path: Path | str) -> Path:
    """Save a matplotlib figure atomically; the format comes from the suffix (.png, .pdf)."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip("."), bbox_inches="tight", dpi=150)
    return path
