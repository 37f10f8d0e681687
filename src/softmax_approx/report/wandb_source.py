"""Read runs back from Weights & Biases (`--from-wandb ENTITY/PROJECT`) as report Records.

Why a second source: runs synced from several machines meet in one W&B project, not one
directory. The mapping: the run's config holds the resolved Hydra config (under `cfg`, as
train.py logs it: task.name, attention.name/params, seed, profile_name); its summary holds the
metrics (`test/acc`, `test/bleu`, ...), the last probe values `probe/<layer>/<cosine|rel_err>`
and, if logged, `memory/<key>`. Activation memory is only in results.json unless the harness
logs `memory/*` (or the whole record under the summary key `results`, used as is when
present); without it the memory cells of W&B-sourced tables read "not measured".
W&B state `finished` -> completed; `failed`/`crashed` -> failed; anything else -> running.
"""

from __future__ import annotations

from typing import Any

from softmax_approx.report.results import Record
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.run_record import RunRecord

STATES = {"finished": "completed", "failed": "failed", "crashed": "failed", "killed": "failed"}


def _name(v: Any) -> Any:
    return v.get("name") if isinstance(v, dict) else v


def record_from_run(run: Any) -> Record:
    summary = dict(getattr(run, "summary", {}) or {})
    config = dict(getattr(run, "config", {}) or {})
    if isinstance(summary.get("results"), dict):
        return Record(RunRecord.from_dict(dict(summary["results"]), "W&B summary"))
    if isinstance(config.get("cfg"), dict):  # train.py logs the resolved config under "cfg"
        config = dict(config["cfg"])
    attention = config.get("attention") or {}
    metrics, memory, layers = {}, {}, {}
    for k, v in summary.items():
        if k.startswith("memory/"):
            memory[k.split("/", 1)[1]] = v
        elif k.startswith(("fidelity/", "probe/")):
            parts = k.split("/")
            if len(parts) == 3:
                layers.setdefault(parts[1], {})[parts[2]] = v
        elif "/" in k and not k.startswith("_"):
            metrics[k] = v
    task = config.get("task")
    return Record(RunRecord(
        status=STATES.get(str(getattr(run, "state", "")), "running"),
        task=_name(task),
        task_kind=(task or {}).get("kind") if isinstance(task, dict) else None,
        policy=_name(attention),
        policy_params=dict((attention or {}).get("params") or {}) if isinstance(attention, dict) else {},
        seed=config.get("seed"),
        profile=config.get("profile_name") or _name(config.get("profile")),
        job_id=getattr(run, "id", None),
        tags=list(getattr(run, "tags", []) or []),
        metrics=metrics,
        memory=memory,
        fidelity={"layers": layers} if layers else None,
        config=config,
    ))


def load_wandb(path: str, api: Any = None) -> list[Record]:
    """Every run of `ENTITY/PROJECT` as a Record (needs network and a W&B login)."""
    if path.count("/") != 1:
        raise ConfigError(f"--from-wandb {path!r}: expected ENTITY/PROJECT, e.g. my-team/softmax-approx")
    if api is None:
        import wandb

        api = wandb.Api()
    return [record_from_run(run) for run in api.runs(path)]
