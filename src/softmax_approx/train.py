"""Training entry point: compose config -> validate -> train(cfg) -> results.json.

    python -m softmax_approx.train task=sst2 attention=paper profile=smoke paths.data_dir=DIR
    softmax-approx-train -m task=sst2,imdb attention=eager,paper seed=0,1,2

``train(cfg)`` is a plain function (tests call it with a composed config); ``main()`` wraps it
with ``@hydra.main`` and returns the optimised metric for sweepers. A bad config or missing data
fails before any data is read: one line on stderr, exit code 2.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from softmax_approx.utils.distributed import DistributedJob
from softmax_approx.utils.errors import UserError
from softmax_approx.utils.instantiate import instantiate_callbacks, instantiate_loggers, instantiate_model
from softmax_approx.utils.results import finish_record, new_record, results_path, write_json_atomic
from softmax_approx.utils.validation import CONF_DIR, validate_config

log = logging.getLogger(__name__)


class NoBestCheckpoint(RuntimeError):
    """Testing asked for the best checkpoint but none was saved."""


def _run_info(cfg: DictConfig) -> tuple[Path, str | None, str | None]:
    """(run dir, job id, multirun sweep name) from Hydra's runtime, when there is one."""
    run_dir = Path(cfg.paths.output_dir)
    job_id, sweep = run_dir.name, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            sweep = Path(hc.sweep.dir).name
            job_id = f"{sweep}/{hc.job.num}"
    return run_dir, job_id, sweep


def _floats(metrics: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else float(v)) for k, v in metrics.items()}


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Validate, build, fit, test from the best checkpoint; write results.json.

    Returns ``(metrics, objects)``. Raises ConfigError/DataError before reading any data.
    """
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    # DDP: every rank runs this function; only global rank 0 writes results.json (docs/scaleout.md)
    ddp = DistributedJob.start()
    run_dir, job_id, sweep = _run_info(cfg)
    record = new_record(cfg, run_dir, job_id)
    out_path = results_path(run_dir)
    if ddp.is_global_zero:
        write_json_atomic(out_path, record)
    objects: dict[str, Any] = {"cfg": cfg}
    try:
        datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.task.datamodule, _convert_="all")
        datamodule.prepare_data()
        datamodule.setup("fit")
        module_cls = get_class(cfg.task.module._target_)
        net = instantiate_model(cfg.model, **module_cls.net_kwargs(datamodule))
        # Task-specific constructor arguments live in task.module (e.g. n_classes); the shared
        # ones (optimizer, policy, measurement knobs) are the same for every BaseTask.
        module = hydra.utils.instantiate(
            cfg.task.module,
            _convert_="all",
            net=net,
            optimizer=hydra.utils.instantiate(cfg.optimizer),
            scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            policy=cfg.attention.name,
            policy_params=OmegaConf.to_container(cfg.attention.params, resolve=True),
            memory_warmup_steps=cfg.memory.warmup_steps,
            memory_measure_steps=cfg.memory.measure_steps,
            timing_skip_steps=cfg.timing.skip_steps,
            probe_every_n_steps=cfg.probe.every_n_steps,
        )
        loggers = instantiate_loggers(cfg.get("logger"), default_group=cfg.get("experiment_name") or sweep)
        callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        objects.update(datamodule=datamodule, model=module, trainer=trainer, callbacks=callbacks, loggers=loggers)
        record["params"] = module.param_counts()
        for lg in loggers:
            lg.log_hyperparams({"params/total": record["params"]["total"], "params/trainable": record["params"]["trainable"],
                                "cfg": record["config"]})

        metrics: dict[str, float] = {}
        if cfg.get("train"):
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            train_seconds = time.perf_counter() - t0
            metrics.update(_floats(trainer.callback_metrics))
            stats = module.run_stats()
            record.update(memory=stats["memory"], fidelity=stats["fidelity"], params=stats["params"])
            record["timing"] = {"train_seconds": train_seconds, **stats["timing"]}
        if cfg.get("test"):
            ckpt_path = None
            if cfg.test_weights == "best":
                ckpt_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
                if not ckpt_path:
                    raise NoBestCheckpoint(
                        f"no best checkpoint on {cfg.task.metric} was saved (was validation run? "
                        "check trainer.limit_val_batches / val_check_interval); refusing to test the last weights"
                    )
            record["test_weights"] = ckpt_path or "current"
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
            metrics.update(_floats(trainer.callback_metrics))
            # Fields Lightning's numeric logging cannot carry (e.g. translation's sacreBLEU
            # signature strings, test split name, sample translations).
            if callable(getattr(module, "results_fields", None)):
                extra = dict(module.results_fields())
                metrics.update(extra.pop("metrics", {}))
                record.update(extra)
        record["metrics"] = dict(sorted(metrics.items()))
        finish_record(record, "completed")
        if ddp.is_global_zero:
            write_json_atomic(out_path, record)
        objects["record"] = record
        return metrics, objects
    except BaseException as e:
        finish_record(record, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if ddp.is_global_zero:
            write_json_atomic(out_path, record)
        raise
    finally:
        _finish_wandb(record["status"])
        ddp.end(objects.get("trainer"))


def _finish_wandb(status: str) -> None:
    """Close the W&B run of this job, whatever happened (multirun jobs never share a run)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if status == "completed" else 1)


def _optimized_metric(cfg: DictConfig, metrics: dict) -> float | None:
    name = cfg.task.metric
    if cfg.get("optimized_metric"):
        name = cfg.optimized_metric
    if name == cfg.task.metric and f"{name}_best" in metrics:
        name = f"{name}_best"
    return metrics.get(name)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return _optimized_metric(cfg, metrics)


def _precheck_overrides(argv: list[str]) -> None:
    """Compose once with the command-line overrides so that an unknown key or group option is
    one line and exit code 2 (Hydra itself prints a multi-line report and exits 1). Skipped for
    flags (``-m``, ``--cfg`` ...) and sweeps, which Hydra handles itself."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose("train", overrides=argv)
    except (HydraException, OmegaConfBaseException) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        print(f"error: {' | '.join(lines[:3])}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def main() -> float | None:
    """Console script ``softmax-approx-train``."""
    _precheck_overrides(sys.argv[1:])
    return _hydra_main()


if __name__ == "__main__":
    main()
