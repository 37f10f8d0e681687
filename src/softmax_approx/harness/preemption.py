"""Preemption: SIGTERM / SIGUSR1 / SIGINT -> checkpoint, ``preempted``/``interrupted``, exit 75/130.

Clusters stop jobs with SIGTERM (preemption, ``scancel``) or, when asked to (``--signal=USR1@90``),
with SIGUSR1 shortly before the time limit. Lightning's own handler only makes ``fit`` raise
``SIGTERMException`` (a ``SystemExit`` with code 0: the scheduler sees success, and the epoch in
progress is lost). Here a signal sets a flag (:class:`SignalFlag`; handlers must not do work);
``LastCheckpoint`` sees it at the end of the current training batch, writes ``last.ckpt``
atomically at that step and raises :class:`Preempted`; ``train`` records ``status: preempted``,
under SLURM requeues the job (:func:`requeue_slurm`, the call Lightning's ``SLURMEnvironment``
makes) and the process exits with :data:`EXIT_PREEMPTED`. Rerunning the same command (or the
requeued job) resumes at the next unseen batch (docs/reliability.md).

One flag covers the whole run (:func:`guard`, installed by ``train`` before anything is
written): a signal during data/tokenizer setup, validation, between fit and test or during
testing is seen at the next safe point and stops the run the same way, never half-recorded.
Lightning's own SIGTERM handler is kept out (:func:`keep_lightning_out`): it would end ``fit``
at the end of the batch in flight, before a pending validation or in mid gradient-accumulation.
SIGINT (Ctrl-C) is a preemption by the user: status ``interrupted``, exit 130; a second Ctrl-C
stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
from typing import Any, Iterable, Iterator

from softmax_approx.utils.run_record import RunStatus

log = logging.getLogger(__name__)

#: Exit code of a preempted run: ``EX_TEMPFAIL`` from sysexits.h ("temporary failure, retry"),
#: distinct from 0 (completed), 1 (crash / failed sweep) and 2 (usage error).
EXIT_PREEMPTED = 75
#: Exit code of a run stopped by Ctrl-C: the shell's 128 + SIGINT.
EXIT_INTERRUPTED = 130
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Preempted(Exception):
    """A signal stopped the run at a safe point; ``last.ckpt`` (if any) holds where it stopped.

    ``phase`` says where: ``training`` (a checkpoint at the step it stopped at) or a phase
    without training progress to keep (``data setup``, ``testing``, ``after training``).
    """

    def __init__(self, signame: str, step: int | None = None, ckpt: str | None = None,
                 phase: str = "training") -> None:
        self.signame, self.step, self.ckpt, self.phase = signame, step, ckpt, phase
        where = f"checkpoint {ckpt}" if ckpt else "no checkpoint"
        at = {"training": f"at global step {step}", "after training": "after training, before testing"}.get(
            phase, f"during {phase}")
        super().__init__(f"{signame} received: stopped {at} ({where}); "
                         "rerun the same command to resume from it")

    @property
    def interrupted(self) -> bool:
        return self.signame == "SIGINT"

    @property
    def status(self) -> str:
        """results.json status: ``interrupted`` (Ctrl-C) or ``preempted`` (a scheduler)."""
        return RunStatus.INTERRUPTED if self.interrupted else RunStatus.PREEMPTED

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.interrupted else EXIT_PREEMPTED


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
            log.warning("%s received: stopping at the next safe point (the end of the training step, "
                        "validation or gradient accumulation in flight); Ctrl-C again stops at once",
                        self.received.name)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists

    def check(self, phase: str, ckpt: str | None = None) -> None:
        """Raise :class:`Preempted` for ``phase`` if a signal arrived (a safe point outside fit)."""
        if self.received is not None:
            raise Preempted(self.received.name, ckpt=ckpt, phase=phase)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


_ACTIVE: SignalFlag | None = None


def active() -> SignalFlag | None:
    """The flag of the run in progress (:func:`guard`), for the callbacks that act on it."""
    return _ACTIVE


@contextlib.contextmanager
def guard(names: Iterable[str] = DEFAULT_SIGNALS) -> Iterator[SignalFlag]:
    """``with guard() as flag:`` the whole run records signals in one :class:`SignalFlag`."""
    global _ACTIVE
    flag, outer = SignalFlag(names), _ACTIVE
    _ACTIVE = flag
    flag.install()
    try:
        yield flag
    finally:
        flag.restore()
        _ACTIVE = outer


def keep_lightning_out(trainer: Any) -> None:
    """Stop ``trainer`` from installing Lightning's SIGTERM handler (``_SignalConnector``).

    Its handler makes ``fit`` raise ``SIGTERMException`` at the end of the batch in flight (a
    ``SystemExit(0)``), which would cut a pending validation or a gradient accumulation short
    and lose a signal during testing; :func:`guard` and ``LastCheckpoint`` handle signals here.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None:
        connector.register_signal_handlers = lambda: None


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
