"""Build a run's results.json record from its config (the schema, writer and reader are
:mod:`softmax_approx.utils.run_record`; field meanings in docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from softmax_approx.harness.provenance import provenance
from softmax_approx.utils.run_record import FILENAME, RunRecord, RunStatus, now_iso, read_results


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config, interpolations resolved, without Hydra's own ``hydra`` node."""
    out = {}
    for key in cfg:
        if key == "hydra":
            continue
        value = cfg[key]
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def new_record(cfg: DictConfig, run_dir: str | Path, job_id: str | None) -> RunRecord:
    """The fields known before training, with status ``running``."""
    return RunRecord(
        status=RunStatus.RUNNING,
        task=cfg.task.name,
        task_kind=cfg.task.kind,
        policy=cfg.attention.name,
        policy_params=OmegaConf.to_container(cfg.attention.params, resolve=True),
        seed=int(cfg.seed),
        profile=cfg.get("profile_name"),
        experiment=cfg.get("experiment_name"),
        tags=list(cfg.get("tags") or []),
        run_dir=str(run_dir),
        job_id=job_id,
        config=resolved_config(cfg),
        provenance=provenance(now_iso()),
    )


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILENAME


def load_results(path: str | Path) -> dict:
    """A results.json as a plain dict, through the one reader (``read_results``)."""
    return read_results(path).to_dict()
