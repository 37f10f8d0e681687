"""Where ``make reproduce`` runs its planned trainings: ``local`` (subprocesses, the default),
``slurm`` (one submitit job per run on a SLURM cluster) or ``submitit_local`` (the same
submitit path as local processes: what the tests use, no cluster needed).

Only *where* a run executes changes: ``reproduce.execute`` still plans, skips completed runs,
prints the same progress lines and settles each run from its results.json. A submitted job
runs the very command the local launcher would (``softmax-approx-train ... hydra.run.dir=...``)
and returns its exit code, so resume, skip and preemption behave the same everywhere. On SLURM a
preempted training (SIGTERM, or SIGUSR1/SIGUSR2 before the time limit) checkpoints, requeues its
own job (``scontrol requeue``, harness/preemption.py) and, requeued, resumes from that checkpoint;
the poller sees the job pending again and waits for it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmax_approx.utils.errors import ConfigError

LAUNCHERS = ("local", "slurm", "submitit_local")

#: SLURM resources per profile (overridable with ``--slurm KEY=VALUE``): one GPU for the paper
#: scale, CPUs only for smoke/cpu. ``time`` in minutes, ``mem`` as sbatch takes it.
PROFILE_RESOURCES: dict[str, dict[str, Any]] = {
    "smoke": {"gpus": 0, "cpus": 2, "time": 30, "mem": "8G", "partition": None},
    "cpu": {"gpus": 0, "cpus": 8, "time": 12 * 60, "mem": "16G", "partition": None},
    "paper": {"gpus": 1, "cpus": 8, "time": 24 * 60, "mem": "32G", "partition": None},
}
RESOURCE_KEYS = ("partition", "gpus", "cpus", "time", "mem")
#: submitit asks SLURM for SIGUSR2 90 s before the time limit; the training checkpoints on it too.
SLURM_OVERRIDES = ("callbacks.last_checkpoint.preempt_signals=[SIGTERM,SIGUSR1,SIGUSR2]",)


def resources(profile: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The profile's resources with ``KEY=VALUE`` overrides; an unknown key is one ConfigError."""
    out = dict(PROFILE_RESOURCES.get(profile, PROFILE_RESOURCES["smoke"]))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in RESOURCE_KEYS:
            raise ConfigError(f"--slurm {item!r}: use KEY=VALUE with KEY one of {', '.join(RESOURCE_KEYS)}")
        out[key] = int(value) if key in ("gpus", "cpus", "time") else value
    return out


def run_command(cmd: list[str], env: dict[str, str], log_path: str) -> int:
    """What a submitted job runs: the training command, its output appended to the run's log."""
    from softmax_approx.harness.preemption import EXIT_PREEMPTED

    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# submitit job {os.environ.get('SLURM_JOB_ID', os.getpid())}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if rc == EXIT_PREEMPTED and os.environ.get("SLURM_JOB_ID"):
        # the training requeued this job: wait for SLURM to stop it, so no result is written and
        # the poller keeps waiting for the requeued attempt
        time.sleep(600)
    return rc


@dataclass
class SubmittedRun:
    """``subprocess.Popen``'s ``poll``/``wait``/``cancel`` over a submitit job, for ``execute``."""

    job: Any
    poll_s: float = 0.0
    _last: float = 0.0

    def poll(self) -> int | None:
        now = time.monotonic()
        if now - self._last < self.poll_s:  # SLURM's accounting is queried at most every poll_s
            return None
        self._last = now
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception:  # noqa: BLE001 - the job died (node failure, cancelled): a failed run
            return 1

    def wait(self) -> int:
        while (rc := self.poll()) is None:
            time.sleep(1)
        return rc

    def cancel(self) -> None:
        self.job.cancel(check=False)


class SubmititLauncher:
    """Submit each run with submitit (``slurm`` or ``submitit_local``); logs under ``folder``."""

    def __init__(self, kind: str, folder: Path, res: dict[str, Any]) -> None:
        import submitit

        self.kind = kind
        if kind == "slurm":
            self.executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=20)
            self.executor.update_parameters(**slurm_parameters(res))
            self.poll_s = 30.0
        elif kind == "submitit_local":
            self.executor = submitit.LocalExecutor(folder=str(folder))
            self.executor.update_parameters(timeout_min=int(res["time"]))
            self.poll_s = 0.0
        else:
            raise ConfigError(f"launcher={kind!r}: use one of {', '.join(LAUNCHERS)}")

    def command(self, cmd: list[str]) -> list[str]:
        return launch_command(self.kind, cmd)

    def submit(self, cmd: list[str], env: dict[str, str], log_path: Path) -> SubmittedRun:
        job = self.executor.submit(run_command, self.command(cmd), env, str(log_path))
        return SubmittedRun(job, poll_s=self.poll_s)


def launch_command(kind: str, cmd: list[str]) -> list[str]:
    """The training command a job of launcher ``kind`` runs (SLURM: checkpoint on SIGUSR2 too)."""
    return [*cmd, *SLURM_OVERRIDES] if kind == "slurm" else list(cmd)


def slurm_parameters(res: dict[str, Any]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one training (one task on one node)."""
    params: dict[str, Any] = {"job_name": "softmax-approx", "nodes": 1, "ntasks_per_node": 1,
                              "cpus_per_task": int(res["cpus"]), "time": int(res["time"]), "mem": res["mem"]}
    if int(res["gpus"]):
        params["gpus_per_node"] = int(res["gpus"])
    if res.get("partition"):
        params["partition"] = res["partition"]
    return params


def sbatch_text(res: dict[str, Any], folder: Path) -> str:
    """The sbatch script submitit would submit for one run (no cluster needed): for checking."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="python -u -m submitit.core._submit '%s'" % folder, folder=folder,
                               **slurm_parameters(res))


def check_available(kind: str) -> None:
    """``slurm`` needs SLURM's ``sbatch`` on this machine: say so in one line before any run starts."""
    import shutil

    if kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("LAUNCHER=slurm (--launcher slurm): no SLURM here (sbatch is not on PATH); run it on a "
                          "SLURM login node, or use LAUNCHER=local or LAUNCHER=submitit_local")


def make_launcher(kind: str, out: Path, profile: str, overrides: list[str] | None = None) -> SubmititLauncher | None:
    """None for ``local`` (reproduce's own subprocess pool), else a submitit launcher."""
    if kind not in LAUNCHERS:
        raise ConfigError(f"launcher={kind!r}: use one of {', '.join(LAUNCHERS)}")
    res = resources(profile, overrides)
    if kind == "local":
        return None
    check_available(kind)
    return SubmititLauncher(kind, Path(out) / "submitit", res)
