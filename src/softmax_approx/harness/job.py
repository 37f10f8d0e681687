"""Pieces of a job that ``train`` and ``eval`` share: where it runs, the metrics a phase logged,
the test phase, closing W&B.

Why here: both entry points test a checkpoint the same way and record it in the same fields
(``test_weights``, ``metrics``, a task's ``results_fields``), so a change to testing is made once.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from softmax_approx.harness.callbacks import LastCheckpoint
from softmax_approx.harness.rundir import load_checkpoint
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.run_record import RunRecord, RunStatus, float_metrics


def is_multirun() -> bool:
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def run_info(cfg: DictConfig) -> tuple[Path, str | None, str | None]:
    """(run dir, job id, multirun sweep name) from Hydra's runtime, when there is one."""
    run_dir = Path(cfg.paths.output_dir)
    job_id, sweep = run_dir.name, None
    if is_multirun():
        hc = HydraConfig.get()
        sweep = Path(hc.sweep.dir).name
        job_id = f"{sweep}/{hc.job.num}"
    return run_dir, job_id, sweep


def logged_metrics(trainer: L.Trainer, after_fit: bool = False) -> dict[str, float]:
    """The one place a phase's metrics are read: what the trainer logged, as floats (the one
    converter, ``utils.run_record.float_metrics``). ``after_fit``: over the last epoch's metrics
    that last.ckpt restored, for a resume that finds training finished (a crash during testing)
    and so logs nothing new."""
    restored: dict[str, float] = {}
    if after_fit:
        for cb in trainer.callbacks:
            if isinstance(cb, LastCheckpoint):
                restored.update(cb.restored_metrics)
    return {**restored, **float_metrics(trainer.callback_metrics)}


def check_checkpoint(path: Any, key: str = "ckpt_path") -> Path:
    """``path`` as a Lightning checkpoint file, or one ConfigError line saying what it is not."""
    if path is None or str(path) == "":
        raise ConfigError(f"{key} is required: give {key}=PATH/TO/<run dir>/checkpoints/<name>.ckpt")
    load_checkpoint(path, key,
                    missing="give an existing .ckpt (a run's checkpoints/ folder holds best-*.ckpt and last.ckpt)",
                    unreadable="not a PyTorch checkpoint ({error}); give a .ckpt written by softmax-approx-train")
    return Path(str(path))


def check_fits(module: Any, path: Any, key: str = "ckpt_path") -> None:
    """One ConfigError line when the checkpoint's weights do not fit ``module`` (another model
    size or task), before Lightning's multi-line ``load_state_dict`` error."""
    state = load_checkpoint(path, key, mmap=True, missing="give an existing .ckpt",
                            unreadable="not a PyTorch checkpoint ({error}); give a .ckpt written by "
                                       "softmax-approx-train")["state_dict"]
    mine = module.state_dict()
    wrong = [f"{k}: checkpoint {list(state[k].shape)}, model {list(v.shape)}" for k, v in mine.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    wrong += [f"{k} missing in the checkpoint" for k in mine if k not in state]
    wrong += [f"{k} not in the model" for k in state if k not in mine]
    if wrong:
        raise ConfigError(
            f"{key}={str(path)!r} does not fit the composed model ({len(wrong)} tensors differ, e.g. {wrong[0]}); "
            "give the overrides of the run that wrote it (its .hydra/overrides.yaml: task=, model=, profile=, ...)")


def run_test(trainer: L.Trainer, module: Any, datamodule: Any, ckpt_path: str | None, record: RunRecord) -> dict:
    """``trainer.test`` with ``ckpt_path`` (None: the current weights); returns the metrics and
    records the weights tested plus what a task adds that numeric logging cannot carry
    (translation's sacreBLEU signatures, the test split's name, sample translations).

    The split measured is recorded (``split``) and named in the metrics: with
    ``task.datamodule.test_split=val`` the test loop's ``test/acc`` is reported as ``val/acc``
    (:func:`name_split`), so no table can take a validation number for a test one."""
    record.test_weights = ckpt_path or "current"
    split = str(getattr(datamodule, "test_split", "test") or "test")
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = logged_metrics(trainer)
    if callable(getattr(module, "results_fields", None)):
        extra = dict(module.results_fields())
        metrics.update(extra.pop("metrics", {}))
        record.update(**extra)
    record.update(split=split)
    return name_split(metrics, split)


def name_split(metrics: dict, split: str) -> dict:
    """``test/<name>`` -> ``<split>/<name>``: a metric says which split it was measured on."""
    if split == "test":
        return dict(metrics)
    return {(f"{split}/{k[len('test/'):]}" if k.startswith("test/") else k): v for k, v in metrics.items()}


def finish_wandb(status: str) -> None:
    """Close the W&B run of this job, whatever happened (multirun jobs never share a run)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if status == RunStatus.COMPLETED else 1)


def precheck_overrides(argv: list[str], config_module: str, config_name: str) -> None:
    """Compose once with the command-line overrides so that an unknown key or group option is
    one line and exit code 2 (Hydra itself prints a multi-line report and exits 1). Skipped for
    flags (``-m``, ``--cfg`` ...) and sweeps, which Hydra handles itself."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module, version_base="1.3"):
            compose(config_name, overrides=argv)
    except (HydraException, OmegaConfBaseException) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        head, rest = lines[:2], lines[2:]
        if head and head[-1].startswith("Available options") and rest:  # every option, not the first
            options = list(itertools.takewhile(lambda ln: not ln.endswith(":"), rest))  # until "Config search path:"
            message = " | ".join(head) + " " + ", ".join(options)
        else:
            message = " | ".join(lines[:3])
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()
