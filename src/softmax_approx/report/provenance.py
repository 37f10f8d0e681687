"""Where, when and with which code the runs behind a report ran: the provenance and runs tables.

A table of numbers is only evidence together with the machine, the code version and the wall
time that produced it. Every run's results.json records them (``provenance``: git commit and
whether the tree was dirty, packages, hardware, start and finish times); this table collects
them per task, so a report that mixes code versions or machines says so. The runs table lists
every results.json found, failed ones included: the audit trail of the report.
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict

from softmax_approx.plan import Setting
from softmax_approx.report.results import Record
from softmax_approx.report.table import Table
from softmax_approx.utils.run_record import RunStatus


def _time(value) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def run_wall_seconds(record: Record) -> float | None:
    """finished - started of one run (evaluation and any waiting included), None if unknown."""
    prov = record.run.provenance or {}
    start, end = _time(prov.get("started")), _time(prov.get("finished"))
    return (end - start).total_seconds() if start and end else None


def _machine(prov: dict) -> str:
    hw = prov.get("hardware") or {}
    torch_version = (prov.get("packages") or {}).get("torch", "?")
    gpus = hw.get("gpus") or []
    where = f"{len(gpus)}x {gpus[0]}" if gpus else f"CPU {hw.get('machine', '?')}, {hw.get('cpu_count', '?')} cores"
    return f"{where}, {hw.get('torch_threads', '?')} thread(s), torch {torch_version}"


def _commit(prov: dict) -> str:
    sha = str(prov.get("git_commit") or "unknown")[:7]
    return sha + ("+dirty" if prov.get("git_dirty") else "")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def provenance_table(records: list[Record], profile: str) -> Table:
    """One row per task over its completed runs: count, wall time per run and in all, code
    versions, machines and the first start / last finish."""
    by_task: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.run.status == RunStatus.COMPLETED:
            by_task[str(r.run.task)].append(r)
    header = ["task", "runs", "wall per run (min)", "wall in all (h)", "code (commit: runs)",
              "machine", "first start", "last finish"]
    rows, csv_rows = [], []
    for task in sorted(by_task):
        runs = by_task[task]
        walls = [w for w in map(run_wall_seconds, runs) if w is not None]
        provs = [r.run.provenance or {} for r in runs]
        commits = defaultdict(int)
        for p in provs:
            commits[_commit(p)] += 1
        machines = sorted({_machine(p) for p in provs})
        starts = sorted(s for s in (_time(p.get("started")) for p in provs) if s)
        ends = sorted(e for e in (_time(p.get("finished")) for p in provs) if e)
        per_run = f"{_minutes(min(walls))}-{_minutes(max(walls))}" if walls else "unknown"
        total = f"{sum(walls) / 3600:.2f}" if walls else "unknown"
        code = ", ".join(f"{c}: {n}" for c, n in sorted(commits.items()))
        first = starts[0].isoformat(timespec="minutes") if starts else "unknown"
        last = ends[-1].isoformat(timespec="minutes") if ends else "unknown"
        rows.append([task, str(len(runs)), per_run, total, code, "; ".join(machines), first, last])
        csv_rows.append({"task": task, "runs": len(runs), "wall_seconds": walls,
                         "commits": dict(commits), "machines": machines, "first_start": first,
                         "last_finish": last})
    notes = ["Completed runs only. Wall = the run's finished - started time from its results.json "
             "(training, validation and testing; runs that shared the machine ran slower).",
             "A `+dirty` commit means the working tree had uncommitted changes when the run started; "
             "several commits mean the runs span code versions (see the repository history)."]
    return Table("provenance", "Provenance: machine, code and wall time", profile, header, rows,
                 notes, csv_rows)


def runs_table(records: list[Record], profile: str) -> Table:
    """Every results.json found, whatever its status: the audit trail of the report."""
    header = ["run", "status", "task", "policy", "seed", "profile", "main metric", "error"]
    rows, csv_rows = [], []
    for rec in records:
        r = rec.run
        metric = next((f"{k}={v:.4g}" for k in ("test/acc", "test/bleu")
                       if isinstance(v := r.metrics.get(k), (int, float))), "")
        label = Setting(r.policy or "?", tuple(sorted(r.policy_params.items()))).label
        err = (r.error or "")[:120]
        rows.append([rec.key or str(r.job_id), r.status, str(r.task), label,
                     str(r.seed), str(r.profile), metric, err])
        csv_rows.append({"run": rec.key or r.job_id, "path": str(rec.path or ""),
                         "status": r.status, "task": r.task, "policy": r.policy,
                         "params": r.policy_params, "seed": r.seed, "profile": r.profile,
                         "metrics": r.metrics, "memory": r.memory or {}, "error": r.error})
    notes = ["Every results.json found; only `completed` runs feed the other tables."]
    return Table("runs", "All runs", profile, header, rows, notes, csv_rows)
