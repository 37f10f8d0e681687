"""Multi-process (DDP) glue: who writes results.json, how memory figures combine across ranks,
and how Lightning re-launches a Hydra job on the other local ranks.

Why this module: with ``trainer=ddp`` every rank runs ``train(cfg)`` in full. Only global rank 0
may write results.json (the others would race on the same file), every rank measured the
activation memory of *its own* batch, and Lightning's default way of starting ranks 1..N-1
re-runs the original command line — under ``-m`` that is the whole sweep again, in every child.

Memory across ranks (``reduce_memory``): every rank keeps a full model replica and its own
batches, so the per-device figure is what decides whether a run fits; the top-level memory
fields are the **maximum over ranks** (comparable to a single-device run with the same
per-device batch), ``batch_shape``/``measured_at_step`` are those of the rank with the largest
measured batch, and ``memory.ranks`` adds ``world_size``, the **sum over ranks** of every
figure (the whole job's activation memory) and each rank's own record.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

#: Environment variables Lightning's launcher sets in the *main* process for its children.
#: Left in place they make the next job of a multirun believe its ranks were started externally.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
#: Fields that say where a figure was measured rather than how big it is.
_WHERE = ("batch_shape", "measured_at_step")


def is_global_zero() -> bool:
    """Whether this process is global rank 0, from the environment (works before a Trainer
    exists): ``RANK`` (torchrun), ``SLURM_PROCID`` (srun/submitit), else Lightning's launcher
    (``NODE_RANK``/``GROUP_RANK`` and ``LOCAL_RANK``); a plain process is rank 0."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
    return node == 0 and int(env.get("LOCAL_RANK", 0)) == 0


def _numel(shape: list[int] | None) -> int:
    out = 1
    for n in shape or [0]:
        out *= int(n)
    return out


def _combine(values: list[Any], op) -> Any:
    """Recursively combine per-rank values: ints with ``op``, dicts key by key, else the first."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _combine([v.get(k) for v in present], op) for k in keys}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return op(present)
    return present[0]


def reduce_memory(per_rank: list[dict | None]) -> dict | None:
    """Combine the memory records of all ranks (index = global rank); see the module docstring.

    A single record is returned unchanged (no ``ranks`` block), so one-process runs keep the
    plain schema.
    """
    if len(per_rank) == 1:
        return per_rank[0]
    clean = [None if m is None else {k: v for k, v in m.items() if k != "ranks"} for m in per_rank]
    measured = [(r, m) for r, m in enumerate(clean) if m is not None]
    if not measured:
        return None
    # the largest measured batch (B x L), lowest rank on ties: as a single process keeps its largest
    _, where = max(measured, key=lambda rm: (_numel(rm[1].get("batch_shape")), -rm[0]))
    figures = [{k: v for k, v in m.items() if k not in _WHERE} for _, m in measured]
    out = dict(_combine(figures, max))
    out.update({k: where.get(k) for k in _WHERE})
    out["ranks"] = {
        "world_size": len(per_rank),
        "reduced": "max over ranks (per device); sum = whole job",
        "sum": _combine(figures, sum),
        "per_rank": clean,
    }
    return out


def gather_memory(memory: dict | None) -> dict | None:
    """All ranks' memory records combined with :func:`reduce_memory` (a collective: every rank
    must call it); the record unchanged when ``torch.distributed`` is not running."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return memory
    world = torch.distributed.get_world_size()
    if world == 1:
        return memory
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, memory)
    return reduce_memory(parts)


# ------------------------------------------------------------------------------ launching
_SKIP_HYDRA_OVERRIDES = (
    "hydra.mode", "hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.sweep",
    "hydra.run", "hydra.job.name", "hydra.output_subdir",
)


def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for local rank ``local_rank`` of the current Hydra job.

    Lightning's own version re-runs ``sys.argv``: under ``-m`` every child would start the whole
    sweep again, and under joblib ``sys.argv`` is the worker's. Here a child runs exactly this
    job: its resolved overrides (sweep values expanded), in this job's output directory, without
    writing a second ``.hydra/`` folder.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    task = list(hc.overrides.task)
    extra = [o for o in hc.overrides.hydra if not o.lstrip("~+").startswith(_SKIP_HYDRA_OVERRIDES)]
    command = [sys.executable, "-m", "softmax_approx.train", *task, *extra,
               f'hydra.run.dir="{hc.runtime.output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
               "hydra.output_subdir=null"]
    return command, get_original_cwd()


class DistributedJob:
    """Start/end bookkeeping of one ``train(cfg)`` call for multi-process runs.

    ``start()`` snapshots the launcher's environment variables and points Lightning's child
    command at :func:`hydra_child_command`; ``end(trainer)`` waits for the children this job
    started, destroys the process group and restores the environment, so the next job of a
    multirun in the same process starts clean (new port, new ranks).
    """

    def __init__(self) -> None:
        self.env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
        self.is_global_zero = is_global_zero()

    @classmethod
    def start(cls) -> "DistributedJob":
        from lightning.pytorch.strategies.launchers import subprocess_script

        subprocess_script._hydra_subprocess_cmd = hydra_child_command
        return cls()

    def end(self, trainer: Any = None, timeout_s: float = 120.0) -> None:
        for proc in getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None) or []:
            try:
                proc.wait(timeout=timeout_s)
            except Exception:  # a hung child must not hang the sweep
                proc.kill()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in self.env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
