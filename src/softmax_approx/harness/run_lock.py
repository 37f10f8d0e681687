"""One process per run directory: an exclusive ``fcntl.flock`` on ``<run dir>/.lock``.

Two identical commands on the same ``hydra.run.dir`` would otherwise both train, write
``best-*.ckpt`` and ``best-*-v1.ckpt`` side by side and overwrite each other's results.json.
The lock is the kernel's: it is released when the holder exits in any way (SIGKILL and OOM
killer included), so a lock file left by a dead process is never "stale" — the next command
takes it. The holder's pid is written into the file only to name it in the refusal.
DDP: only the launching process (global rank 0) locks; the ranks it starts share its run dir.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from softmax_approx.utils.errors import UserError

LOCK_NAME = ".lock"


class RunDirLocked(UserError):
    """Another live process holds this run directory (one line, exit 2)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` — or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | Path, user: str = "another training on the same hydra.run.dir",
                 fix: str = "wait for it to finish, or use another hydra.run.dir") -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.user, self.fix = user, fix
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirLocked(_refusal(self.path.parent, holder, self.user, self.fix)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would let a waiter lock an unlinked inode)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    except (OSError, ValueError):
        return None


def _refusal(run_dir: Path, pid: int | None, user: str, fix: str) -> str:
    if pid is None:
        who = "another process"
    elif _pid_alive(pid):
        who = f"pid {pid}"
    else:  # the writer died but a process it started (e.g. a forked worker) still holds the lock
        who = f"a child of pid {pid} (not running any more)"
    return f"{run_dir} is in use by {who} ({user}); {fix}"


def is_launching_rank(env: dict | None = None) -> bool:
    """False in processes started by a DDP launcher for ranks > 0 (they share rank 0's run dir)."""
    env = os.environ if env is None else env
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if env.get(key) not in (None, "", "0"):
            return False
    return True
