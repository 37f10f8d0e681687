"""Fault-isolated Hydra sweeps (docs/reliability.md).

Hydra's launcher runs every job, but its sweeper then re-raises the first failure, and a
``sys.exit`` inside a job (our exit code 2 for a bad config) stops the sweep at once; the
lightning-hydra-template's wrapper re-raises too. So in a multirun ``train.main`` catches a
job's error, records it in that job's results.json (status ``failed``) and moves on; once all
jobs have run, :class:`SweepSummary` (a Hydra callback, in the launching process, for any
launcher) reads every job's results.json, writes ``<sweep dir>/sweep_summary.json`` and prints
one line per failed job, and ``train.main`` exits with code 1 if any job failed.

A job refused because its directory holds another config's run (a rerun of the sweep with its
values in another order, or with a bad value) never touches that run's results.json: its reason
goes to ``<job dir>/job_error.json`` (harness/rundir.py), and the summary lists it as
``refused``. A job that could write nothing (read-only directory) is listed with the reason
this process noted (:func:`note_failure`). Only this multirun's jobs are summarised: a job
directory an earlier sweep into the same sweep dir left (Hydra rewrites ``.hydra/`` at every
job start) is not one of them, and neither is its ``job_error.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softmax_approx.utils.run_record import FILENAME, RunStatus, write_json_atomic
from softmax_approx.harness.resume import read_record
from softmax_approx.harness.rundir import JOB_ERROR_FILE

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary.json"


@dataclass
class SweepResult:
    sweep_dir: str
    jobs: dict[str, dict] = field(default_factory=dict)  # job subdir -> {status, error}

    @property
    def failed(self) -> dict[str, dict]:
        return {k: v for k, v in self.jobs.items() if v["status"] != RunStatus.COMPLETED}

    def lines(self) -> list[str]:
        head = f"sweep {self.sweep_dir}: {len(self.jobs) - len(self.failed)}/{len(self.jobs)} jobs completed"
        return [head] + [f"  job {k}: {v['status']}: {v['error']}" for k, v in sorted(self.failed.items(), key=_num)]


def _num(item: tuple[str, Any]) -> tuple[int, str]:
    name = item[0]
    return (int(name), name) if name.isdigit() else (1 << 30, name)


#: The summary of the last multirun of this process (read by ``train.main`` for its exit code).
LAST: SweepResult | None = None
#: job dir (resolved) -> the one-line reason a job of this process failed (see note_failure).
NOTED: dict[str, str] = {}


def note_failure(run_dir: str | Path, error: str) -> None:
    """Remember why a job failed, for a summary even when its directory could not be written."""
    NOTED[str(Path(run_dir).resolve())] = error


def _job_error(job: Path) -> str | None:
    try:
        data = json.loads((job / JOB_ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(data.get("error")) if isinstance(data, dict) else None


def _started_at(job: Path) -> float:
    """When Hydra last started this job (it writes ``.hydra/*.yaml`` at every job start); 0 if never."""
    try:
        return max(p.stat().st_mtime for p in (job / ".hydra").iterdir())
    except (OSError, ValueError):
        return 0.0


def summarize(sweep_dir: str | Path, since: float | None = None) -> SweepResult:
    """Status of every job directory (one with ``.hydra/`` or a results.json) of a sweep; a job
    without a readable results.json counts as failed (killed before it could write one).
    ``since``: only the jobs started from then on (this multirun's), and those this process noted."""
    sweep_dir = Path(sweep_dir)
    out = SweepResult(str(sweep_dir))
    if not sweep_dir.is_dir():
        return out
    noted = {Path(k).name: v for k, v in NOTED.items() if Path(k).parent == sweep_dir.resolve()}
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if not ((job / ".hydra").is_dir() or (job / FILENAME).exists() or job.name in noted):
            continue
        if since is not None and job.name not in noted and _started_at(job) < since:
            continue  # left by an earlier sweep into this sweep dir
        rec = read_record(job / FILENAME)
        refused = _job_error(job)
        if refused is not None:
            out.jobs[job.name] = {"status": "refused", "error": refused}
        elif rec is None and job.name in noted:
            out.jobs[job.name] = {"status": RunStatus.FAILED, "error": noted[job.name]}
        elif rec is None:
            out.jobs[job.name] = {"status": "missing", "error": f"no readable {FILENAME} (the job died without writing one)"}
        else:
            status = str(rec.get("status"))
            error = rec.get("error") or (None if status == RunStatus.COMPLETED
                                         else "job ended without finishing (status running)")
            out.jobs[job.name] = {"status": status, "error": error}
    return out


class SweepSummary(Callback):
    """Hydra callback: after a multirun, summarise its jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time() - 1.0  # file times may be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST
        result = summarize(str(config.hydra.sweep.dir), since=self._started)
        LAST = result
        write_json_atomic(Path(result.sweep_dir) / SUMMARY_NAME,
                          {"sweep_dir": result.sweep_dir, "n_jobs": len(result.jobs),
                           "n_failed": len(result.failed), "jobs": result.jobs})
        for line in result.lines():
            print(line, file=sys.stderr if result.failed else sys.stdout)
