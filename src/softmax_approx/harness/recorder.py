"""One run's results.json from start to end: :class:`RunRecorder`.

Why one object: ``train`` and ``eval`` fill one record as the run goes and write it at two
moments only: ``running`` when the run starts (a crash or a kill leaves a record that says it did
not finish) and its final status once at the end: ``completed`` (:meth:`RunRecorder.finish`),
``preempted``/``interrupted`` (:meth:`RunRecorder.stop`) or ``failed`` (:meth:`RunRecorder.fail`,
the record built by ``utils.run_record.failed_record`` and written however a full disk allows).
A sweep job that failed before ``train`` wrote anything is recorded through the same ``fail``
(:meth:`RunRecorder.for_config` with ``fallback=True``). Under DDP only global rank 0 writes
(``writes=False`` elsewhere); every rank keeps the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from softmax_approx.harness.results import new_record, results_path
from softmax_approx.utils.errors import one_line
from softmax_approx.utils.run_record import (
    RunRecord,
    RunStatus,
    failed_record,
    now_iso,
    write_failed,
    write_results,
)

if TYPE_CHECKING:
    from softmax_approx.harness.measure import RunStats


class RunRecorder:
    """Owns a run's :class:`RunRecord` and the results.json it is written to."""

    def __init__(self, record: RunRecord, run_dir: str | Path, writes: bool = True) -> None:
        self.record = record
        self.path = results_path(run_dir)
        self.writes = writes

    @classmethod
    def for_config(cls, cfg: DictConfig, run_dir: str | Path, job_id: str | None, *, writes: bool = True,
                   fallback: bool = False, **fields: Any) -> "RunRecorder":
        """A recorder of the record the config describes (``harness.results.new_record``) plus
        ``fields``. ``fallback``: when the config itself is what is broken (a sweep job refused by
        the config check), the fields known without it instead of raising."""
        try:
            record = new_record(cfg, run_dir, job_id)
        except Exception:  # noqa: BLE001 - only with fallback: the config may be what failed
            if not fallback:
                raise
            record = RunRecord(run_dir=str(run_dir), job_id=job_id, provenance={"started": now_iso()})
        return cls(record.update(**fields), run_dir, writes)

    def start(self) -> None:
        """Write the ``running`` record: from here on a dead run leaves a record saying so."""
        self._write()

    def trained(self, stats: "RunStats", seconds: float) -> None:
        """Take what the measurement callbacks recorded (``harness.measure.run_stats``) and the
        wall time of ``trainer.fit``; nothing is written until the run ends."""
        self.record.memory = stats.memory
        self.record.fidelity = stats.fidelity
        self.record.timing = {"train_seconds": seconds, **stats.timing}
        if stats.nonfinite_grad_steps is not None:
            self.record.update(nonfinite_grad_steps=stats.nonfinite_grad_steps)

    def finish(self, metrics: dict[str, Any]) -> RunRecord:
        """Record ``metrics`` (sorted by name) and write the ``completed`` record."""
        self.record.metrics = dict(sorted(metrics.items()))
        self.record.finish(RunStatus.COMPLETED)
        self._write()
        return self.record

    def stop(self, signal: BaseException) -> RunRecord:
        """A signal stopped the run at a safe point: write ``preempted`` (or the exception's
        ``status``, ``interrupted`` for Ctrl-C) with its one-line reason. Not a failure: the
        same command resumes from last.ckpt."""
        self.record.finish(getattr(signal, "status", RunStatus.PREEMPTED), one_line(signal))
        self._write()
        return self.record

    def fail(self, error: BaseException | str) -> RunRecord:
        """Write the ``failed`` record (``failed_record``) with the error's one line, falling
        back to a small record on a full disk (``write_failed``: never raises on a full or
        read-only disk, one stderr line instead)."""
        self.record = failed_record(error if isinstance(error, str) else one_line(error), self.record)
        if self.writes:
            write_failed(self.path, self.record)
        return self.record

    def _write(self) -> None:
        if self.writes:
            write_results(self.path, self.record)
