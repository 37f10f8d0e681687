"""Preemption: SIGTERM / SIGUSR1 -> checkpoint at the current step, ``preempted``, requeue, exit 75.

Clusters stop jobs with SIGTERM (preemption, ``scancel``) or, when asked to (``--signal=USR1@90``),
with SIGUSR1 shortly before the time limit. Lightning's own handler only makes ``fit`` raise
``SIGTERMException`` (a ``SystemExit`` with code 0: the scheduler sees success, and the epoch in
progress is lost). Here a signal sets a flag (:class:`SignalFlag`; handlers must not do work);
``LastCheckpoint`` sees it at the end of the current training batch, writes ``last.ckpt``
atomically at that step and raises :class:`Preempted`; ``train`` records ``status: preempted``,
under SLURM requeues the job (:func:`requeue_slurm`, the call Lightning's ``SLURMEnvironment``
makes) and the process exits with :data:`EXIT_PREEMPTED`. Rerunning the same command (or the
requeued job) resumes at the next unseen batch (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: Exit code of a preempted run: ``EX_TEMPFAIL`` from sysexits.h ("temporary failure, retry"),
#: distinct from 0 (completed), 1 (crash / failed sweep) and 2 (usage error).
EXIT_PREEMPTED = 75
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):
    """A preemption signal stopped training; ``last.ckpt`` holds the step it stopped at."""

    def __init__(self, signame: str, step: int, ckpt: str | None) -> None:
        self.signame, self.step, self.ckpt = signame, step, ckpt
        where = f"checkpoint {ckpt}" if ckpt else "no checkpoint"
        super().__init__(f"{signame} received: stopped at global step {step} ({where}); "
                         "rerun the same command to resume from it")


def signal_numbers(names: Iterable[str]) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` -> signal numbers; an unknown name is a ValueError naming it."""
    out = []
    for name in names:
        n = str(name).upper()
        n = n if n.startswith("SIG") else f"SIG{n}"
        if not hasattr(signal, n):
            raise ValueError(f"unknown signal {name!r} (use e.g. SIGTERM, SIGUSR1)")
        out.append(getattr(signal, n))
    return out


class SignalFlag:
    """Install handlers that only record the signal; ``restore`` puts the previous ones back.

    Installed from the main thread only (Python's rule); elsewhere it is a no-op.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_SIGNALS) -> None:
        self.signals = signal_numbers(names)
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("%s received: checkpointing at the end of the current training step",
                        self.received.name)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def slurm_job_id(env: dict | None = None) -> str | None:
    """``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``; None outside SLURM."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def requeue_slurm(env: dict | None = None) -> bool:
    """``scontrol requeue <job id>`` when running under SLURM (what Lightning's SLURM signal
    handler runs); False outside SLURM or when the call fails (logged, never raised: the
    checkpoint is written and a manual rerun still resumes)."""
    job = slurm_job_id(env)
    if job is None:
        return False
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("not requeueing: unexpected SLURM job id %r", job)
        return False
    try:
        rc = subprocess.call(["scontrol", "requeue", job])
    except OSError as e:
        log.warning("requeue of SLURM job %s failed: %s", job, e)
        return False
    if rc != 0:
        log.warning("scontrol requeue %s exited %d", job, rc)
        return False
    log.warning("requeued SLURM job %s", job)
    return True
