"""What several table builders share: number formats, the baseline cell, and the definitions
their notes quote (one wording for a number, whichever table shows it)."""

from __future__ import annotations

import math
from typing import Any

from softmax_approx.plan import Experiment, Setting
from softmax_approx.report.results import Cell, Stats

Cells = dict[tuple[str, Setting], Cell]

MEMORY_KEYS = ("attention_bytes", "softmax_state_bytes", "total_activation_bytes")

MEMORY_DEFINITION = (
    "attention activation = bytes of the tensors saved for backward inside the attention "
    "modules during one training step (ActivationMeter: storages deduplicated, parameters "
    "excluded); softmax state = the n x n part of it (the policy's kept state plus a dropout "
    "mask if one is kept); total activation = the same over the whole model; reduction vs X = "
    "1 - bytes(policy) / bytes(X), with the ratio bytes(X) / bytes(policy) in brackets."
)

PAIRED_DEFINITION = (
    "paired Δ = mean over seeds of (policy - {base}) for runs of the same seed (same initial "
    "weights, same data order); [low, high] = 95% t-interval over seeds, mean ± "
    "t(0.975, n-1) · sd / sqrt(n); n = seeds where both runs completed; n=1 has no interval."
)


def fmt_bytes(n: float) -> str:
    if n is None or math.isnan(n):
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_reduction(policy_bytes: float, base_bytes: float) -> str:
    if any(math.isnan(x) for x in (policy_bytes, base_bytes)) or base_bytes <= 0:
        return "n/a"
    red = 100.0 * (1.0 - policy_bytes / base_bytes)
    ratio = base_bytes / policy_bytes if policy_bytes > 0 else math.inf
    return f"{red:.1f}% ({ratio:.2f}×)"


def reduction_pct(policy_bytes: float, base_bytes: float) -> float:
    if math.isnan(policy_bytes) or math.isnan(base_bytes) or base_bytes <= 0:
        return float("nan")
    return 100.0 * (1.0 - policy_bytes / base_bytes)


def base_row(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """The CSV columns every per-cell row starts with."""
    return {
        "experiment": exp.name,
        "profile": exp.profile,
        "task": cell.task,
        "policy": cell.setting.policy,
        "params": cell.setting.params_dict,
        "setting": cell.setting.label,
        "status": cell.status,
        "n": len(cell.completed),
        "n_failed": len(cell.failed),
    }


def mem_stats(cell: Cell, key: str) -> Stats:
    return cell.values(lambda r: (r.run.memory or {}).get(key))


def baseline_cell(cells: Cells, task: str, policy: str) -> Cell | None:
    """The cell of `policy` on `task`: its parameter-free, default-activations setting if there
    is one, else its first setting."""
    for (t, s), c in cells.items():
        if t == task and s.policy == policy and not s.params and not s.activations:
            return c
    for (t, s), c in cells.items():
        if t == task and s.policy == policy:
            return c
    return None


def show_seeds(cell: Cell, stat: Stats, digits: int = 2, scale: float = 1.0) -> str:
    """`Cell.show` plus how many planned seeds have no result yet (a partial reproduction)."""
    text = cell.show(stat, digits, scale)
    missing = cell.expected - len(cell.completed) - len(cell.failed)
    return text + (f" [{missing} not run]" if cell.status == "completed" and missing > 0 else "")
