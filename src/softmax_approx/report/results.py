"""Load results.json files and group them into table cells (task x policy setting, over seeds).

Only `status == "completed"` runs feed numbers; failed ones are kept so a cell with no
completed seed can say `failed` instead of looking like it was never run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from softmax_approx.plan import Experiment, Setting, runs_of
from softmax_approx.utils.run_record import FILENAME, RunRecord, RunStatus, read_results

STATUS_ORDER = {RunStatus.COMPLETED: 0, RunStatus.FAILED: 1, RunStatus.RUNNING: 2}


@dataclass(frozen=True)
class Record:
    """One run's results.json, read by the one reader (``RunRecord``), and the file it came from."""

    run: RunRecord
    path: Path | None = None  # the results.json file (None for W&B runs)

    @property
    def key(self) -> str | None:
        """The run-directory name, which `reproduce` makes the run's identity."""
        return self.path.parent.name if self.path else None


def load_results(runs_dir: Path | str) -> list[Record]:
    """Every results.json below `runs_dir` (sorted by path). Unreadable files become failed."""
    runs_dir = Path(runs_dir)
    records = []
    for path in sorted(runs_dir.rglob(FILENAME)):
        try:
            run = read_results(path)  # the one reader (utils/run_record.py)
        except (OSError, ValueError) as exc:
            run = RunRecord(status=RunStatus.FAILED, error=f"unreadable {FILENAME}: {exc}")
        records.append(Record(run, path))
    return records


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (ddof=1; NaN for n=1) and count."""

    mean: float
    std: float
    n: int

    def fmt(self, digits: int = 2, scale: float = 1.0) -> str:
        if self.n == 0:
            return "n/a"
        m = f"{self.mean * scale:.{digits}f}"
        if self.n == 1 or math.isnan(self.std):
            return f"{m} (n=1)"
        return f"{m} ± {self.std * scale:.{digits}f} (n={self.n})"


def stats(values: Iterable[float]) -> Stats:
    vals = [float(v) for v in values if v is not None and not _isnan(v)]
    if not vals:
        return Stats(float("nan"), float("nan"), 0)
    std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return Stats(statistics.fmean(vals), std, len(vals))


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


@dataclass
class Cell:
    """The runs of one (task, policy setting): completed ones feed numbers."""

    task: str
    setting: Setting
    completed: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    expected: int = 0

    @property
    def status(self) -> str:
        """`completed`, `failed` (none completed, one failed), `not run`, or `not planned`
        (the definition's per_task leaves this setting out for this task)."""
        if self.completed:
            return "completed"
        if self.failed:
            return "failed"
        return "not run" if self.expected else "not planned"

    def values(self, fn: Callable[[Record], Any]) -> Stats:
        return stats(_num(fn(r)) for r in self.completed)

    def show(self, stat: Stats, digits: int = 2, scale: float = 1.0) -> str:
        """A table cell: the numbers, or why there are none; notes failed seeds."""
        if self.status != "completed":
            return self.status
        if stat.n == 0:
            return "not measured"
        text = stat.fmt(digits, scale)
        return text + (f" [{len(self.failed)} failed]" if self.failed else "")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _best(cands: list[Record]) -> Record:
    """Completed before failed before anything else; among equals the latest finished."""
    latest = sorted(cands, key=lambda r: str((r.run.provenance or {}).get("finished") or ""),
                    reverse=True)
    return min(latest, key=lambda r: STATUS_ORDER.get(r.run.status, 3))  # min is stable: first wins


def aggregate(
    records: list[Record], exp: Experiment, common_overrides: list[str] | None = None
) -> dict[tuple[str, Setting], Cell]:
    """Cells of `exp`: for each task x setting, the best record of each planned seed.

    With `common_overrides` (the profile's shared overrides, as `reproduce` used them) a
    record is matched to a planned run by its directory name, the run key. Otherwise, and for
    records without a known key (W&B, hand-made directories), by their fields: task, policy,
    the setting's parameters, seed and profile.
    """
    by_key: dict[str, list[Record]] = {}
    for r in records:
        if r.key:
            by_key.setdefault(r.key, []).append(r)
    keys: dict[tuple[str, Setting, int], str] = {}
    if common_overrides is not None:
        for spec in runs_of(exp, common_overrides):
            keys[(spec.task, spec.setting, spec.seed)] = spec.key
    planned = set(keys.values())
    loose = [r for r in records if r.key not in planned]
    cells: dict[tuple[str, Setting], Cell] = {}
    for task in exp.tasks:
        for setting in exp.settings:
            seeds = exp.seeds_for(task) if exp.planned(task, setting) else []
            cell = Cell(task, setting, expected=len(seeds))
            for seed in seeds:
                cands = list(by_key.get(keys.get((task, setting, seed), ""), []))
                if not cands:
                    cands = [
                        r
                        for r in loose
                        if r.run.task == task
                        and r.run.seed == seed
                        and setting.matches(r.run.policy or "", r.run.policy_params)
                        and (r.run.profile in (None, exp.profile))
                    ]
                if not cands:
                    continue
                best = _best(cands)
                if best.run.status == RunStatus.COMPLETED:
                    cell.completed.append(best)
                elif best.run.status == RunStatus.FAILED:
                    cell.failed.append(best)
            cells[(task, setting)] = cell
    return cells
