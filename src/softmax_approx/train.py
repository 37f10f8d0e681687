"""Training entry point: compose config -> validate -> train(cfg) -> results.json.

    python -m softmax_approx.train task=sst2 attention=paper profile=smoke paths.data_dir=DIR
    softmax-approx-train -m task=sst2,imdb attention=eager,paper seed=0,1,2

``train(cfg)`` is a plain function (tests call it with a composed config); ``main()`` wraps it
with ``@hydra.main`` and returns the optimised metric for sweepers. A bad config or missing data
fails before any data is read: one line on stderr, exit code 2.

Reliability (docs/reliability.md): rerunning a command with the same ``hydra.run.dir`` resumes
from ``checkpoints/last.ckpt`` (or returns a completed run's metrics without training); in a
multirun a failing job is recorded as ``failed`` and the others still run, then the command
exits 1. SIGTERM/SIGUSR1 (SIGINT) at any phase stop the run at the next safe point (a
checkpoint in training), record ``preempted`` (``interrupted``), requeue under SLURM and exit 75
(130) (harness/preemption.py); a second command on a run dir in use exits 2
(harness/run_lock.py).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

import hydra
import lightning as L
from omegaconf import DictConfig

from softmax_approx.conf import CONFIG_MODULE, CONFIG_NAME, CONFIG_PATH
from softmax_approx.harness import sweep as sweep_summary
from softmax_approx.harness.build import build_datamodule, build_module, build_trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from softmax_approx.harness.callbacks import NonFiniteGradientError, fault_signal
from softmax_approx.harness import preemption
from softmax_approx.harness.preemption import EXIT_PREEMPTED, Preempted, requeue_slurm
from softmax_approx.harness.run_lock import RunLock, is_launching_rank
from softmax_approx.harness.distributed import DistributedJob
from softmax_approx.harness.job import (
    check_checkpoint,
    check_fits,
    finish_wandb,
    is_multirun,
    logged_metrics,
    precheck_overrides,
    run_info,
    run_test,
)
from softmax_approx.harness.measure import run_stats
from softmax_approx.harness.recorder import RunRecorder
from softmax_approx.harness.results import resolved_config, results_path
from softmax_approx.harness.resume import (
    ResumeDecision,
    belongs_to,
    check_data,
    check_tokenizer,
    decide,
    last_checkpoint,
    read_record,
)
from softmax_approx.harness import rundir
from softmax_approx.harness.validation import validate_config
from softmax_approx.utils.errors import NonFiniteLossError, UserError, one_line
from softmax_approx.utils.run_record import RunRecord, RunStatus, float_metrics, jsonable

log = logging.getLogger(__name__)


class NoBestCheckpoint(RuntimeError):
    """Testing asked for the best checkpoint but none was saved."""


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """:func:`_train` holding the run directory's lock (harness/run_lock.py): a second command
    on a run dir in use stops at once (``RunDirLocked``, one line, exit 2)."""
    run_dir, _, _ = run_info(cfg)
    if is_launching_rank():
        rundir.check_writable(run_dir)  # a read-only run dir is one line, not the lock's OSError
    lock = RunLock(run_dir).acquire() if is_launching_rank() else None
    try:
        # signals at any phase stop at the next safe point (harness/preemption.py)
        with preemption.guard(_watched_signals(cfg)):
            return _train(cfg)
    finally:
        if lock is not None:
            lock.release()


def _watched_signals(cfg: DictConfig) -> list[str]:
    """The preemption signals of ``callbacks.last_checkpoint`` (default SIGTERM, SIGUSR1, SIGINT)."""
    last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    names = last.get("preempt_signals")
    return list(preemption.DEFAULT_SIGNALS if names is None else names)


def _train(cfg: DictConfig) -> tuple[dict, dict]:
    """Validate, build, fit, test from the best checkpoint; results.json through one
    :class:`RunRecorder` (``running`` at the start, the final status once at the end).

    Returns ``(metrics, objects)``. Raises ConfigError/DataError before reading any data.
    """
    validate_config(cfg)
    run_dir, job_id, sweep = run_info(cfg)
    # Same command, same run dir: skip a completed run, resume an interrupted one (harness/resume.py).
    decision = decide(run_dir, jsonable(resolved_config(cfg)), cfg.get("ckpt_path"))
    if decision.action == "skip":
        rundir.clear_job_error(run_dir)
        print(f"{results_path(run_dir)}: run already completed; not training again (returning its recorded metrics; "
              "delete the directory or use another hydra.run.dir to retrain)")
        return decision.metrics, {"cfg": cfg, "record": decision.record, "skipped": True}
    if decision.action == "resume":
        log.info("resuming %s from %s", run_dir, decision.ckpt_path)
    L.seed_everything(int(cfg.seed), workers=True)
    # DDP: every rank runs this function; only global rank 0 writes results.json (docs/scaleout.md)
    ddp = DistributedJob.start()
    recorder = RunRecorder.for_config(cfg, run_dir, job_id, writes=ddp.is_global_zero,
                                      resumed_from=decision.ckpt_path)
    fingerprint = dict(decision.fingerprint or {})
    if ddp.is_global_zero:
        rundir.clear_job_error(run_dir)
        rundir.write_fingerprint(run_dir, {**fingerprint, "data_sha256": decision.previous_data,
                                           "tokenizer_sha256": decision.previous_tokenizer})
    recorder.start()
    objects: dict[str, Any] = {"cfg": cfg}
    signals = preemption.active() or preemption.SignalFlag(())
    try:
        fault_signal(cfg, "setup")
        datamodule = build_datamodule(cfg, "fit")
        signals.check("data setup")
        _check_same_data(run_dir, decision, datamodule, fingerprint, recorder.record, writes=ddp.is_global_zero)
        module, trainer, callbacks, loggers = _build(cfg, datamodule, run_dir, sweep, fingerprint)
        objects.update(datamodule=datamodule, model=module, trainer=trainer, callbacks=callbacks, loggers=loggers)
        recorder.record.params = params = module.param_counts()
        for lg in loggers:
            lg.log_hyperparams({"params/total": params["total"], "params/trainable": params["trainable"],
                                "cfg": recorder.record.config})

        metrics: dict[str, Any] = {}
        if cfg.get("train"):
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=decision.ckpt_path)
            recorder.trained(run_stats(callbacks), seconds=time.perf_counter() - t0)
            metrics.update(logged_metrics(trainer, after_fit=True))
        fault_signal(cfg, "between")
        signals.check("after training", ckpt=_existing(last_checkpoint(run_dir)))

        if cfg.get("test"):
            metrics.update(run_test(trainer, module, datamodule, _test_weights(cfg, trainer), recorder.record))
        signals.check("testing", ckpt=_existing(last_checkpoint(run_dir)))

        _log_run_figures(loggers, recorder.record, step=trainer.global_step)
        objects["record"] = recorder.finish(metrics).to_dict()
        return metrics, objects
    except (Preempted, SIGTERMException) as e:
        # Preemption (harness/preemption.py): last.ckpt holds the step it stopped at; not a failure.
        recorder.stop(e)
        if ddp.is_global_zero:
            requeue_slurm()
        raise
    except BaseException as e:
        if ddp.is_global_zero:
            rundir.remove_temp_files(run_dir)
        recorder.fail(e)
        raise
    finally:
        finish_wandb(recorder.record.status)
        ddp.end(objects.get("trainer"))


def _check_same_data(run_dir: Path, decision: ResumeDecision, datamodule: Any, fingerprint: dict,
                     record: RunRecord, writes: bool) -> None:
    """The data's content and the tokenizer are part of the run's identity: checked against an
    interrupted run's before resuming it (one line naming the file otherwise), then kept in
    ``fingerprint`` (the directory's file and every checkpoint) and the record."""
    fingerprint["data_sha256"] = datamodule.data_sha256()
    check_data(run_dir, decision, datamodule.data_files(), fingerprint["data_sha256"])
    fingerprint["tokenizer_sha256"] = getattr(datamodule, "tokenizer_sha256", None)
    record.update(tokenizer_sha256=fingerprint["tokenizer_sha256"])
    check_tokenizer(run_dir, decision, fingerprint["tokenizer_sha256"])
    if writes:
        rundir.write_fingerprint(run_dir, fingerprint)


def _build(cfg: DictConfig, datamodule: Any, run_dir: Path, group: str | None,
           fingerprint: dict) -> tuple[Any, L.Trainer, list, list]:
    """Model, trainer, its callbacks and loggers; the fingerprint travels in every checkpoint."""
    module = build_module(cfg, datamodule)
    if cfg.get("ckpt_path"):  # another model size or task: one line, not load_state_dict's report
        check_fits(module, cfg.ckpt_path)
    trainer, callbacks, loggers = build_trainer(cfg, run_dir, group=group)
    preemption.keep_lightning_out(trainer)
    trainer.callbacks.append(rundir.FingerprintState(fingerprint))
    return module, trainer, callbacks, loggers


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _test_weights(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """The checkpoint to test: the one given with ``train=false ckpt_path=...``; else the best
    on ``task.metric`` (never silently the last weights); else, with ``test_weights=current``
    (debug=fdr), the weights in memory (None)."""
    if not cfg.get("train") and cfg.get("ckpt_path"):
        return str(check_checkpoint(cfg.ckpt_path))
    if cfg.test_weights != "best":
        return None
    ckpt_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not ckpt_path:
        raise NoBestCheckpoint(
            f"no best checkpoint on {cfg.task.metric} was saved (was validation run? "
            "check trainer.limit_val_batches / val_check_interval); refusing to test the last weights "
            "(to test a saved checkpoint: train=false ckpt_path=... or python -m softmax_approx.eval ckpt_path=...)"
        )
    return ckpt_path


def _log_run_figures(loggers: list, record: RunRecord, step: int) -> None:
    """Send the per-run memory and timing figures to every logger (W&B, CSV), so tables read
    back from W&B (``report --from-wandb``) have them too: ``memory/<name>``, ``timing/<name>``."""
    figures = float_metrics({f"{group}/{key}": value for group in ("memory", "timing")
                             for key, value in (getattr(record, group) or {}).items()})
    if not figures:
        return
    for lg in loggers:
        lg.log_metrics(figures, step=step)
        lg.save()


def _optimized_metric(cfg: DictConfig, metrics: dict) -> float | None:
    name = cfg.task.metric
    if cfg.get("optimized_metric"):
        name = cfg.optimized_metric
    if name == cfg.task.metric and f"{name}_best" in metrics:
        name = f"{name}_best"
    return metrics.get(name)


def run_job(cfg: DictConfig) -> float | None:
    """One job: train, and turn errors into the documented behaviour.

    Single run: a UserError prints one line and exits 2; anything else propagates (traceback,
    exit 1). Multirun: any Exception is recorded (results.json ``failed``; train() already wrote
    it unless the config/data check failed first), one line is printed, memory is released and
    None is returned, so the sweep goes on; ``main()`` exits 1 after the sweep. KeyboardInterrupt
    still stops everything.
    """
    multirun = is_multirun()
    try:
        metrics, _ = train(cfg)
        return _optimized_metric(cfg, metrics)
    except (Preempted, SIGTERMException) as e:
        # Stops a sweep too: the scheduler (or the user, Ctrl-C) is taking the machine back.
        print(f"{getattr(e, 'status', 'preempted')}: {one_line(e)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", EXIT_PREEMPTED))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        _record_failure(cfg, e)
    except (NonFiniteLossError, NonFiniteGradientError) as e:
        # a diverged run: recorded `failed` by train(); its message names the step and the fix
        print(f"error: {one_line(e)}", file=sys.stderr)
        if not multirun:
            sys.exit(1)
        _record_failure(cfg, e)
    except Exception as e:
        if not multirun:
            raise
        _record_failure(cfg, e)
        log.exception("job failed")
    _release_memory()
    return None


def _record_failure(cfg: DictConfig, e: BaseException) -> None:
    """A multirun job's failure, for the sweep summary and in its results.json (through the one
    recorder), unless train() already recorded it or the directory holds another run."""
    error = one_line(e)
    print(f"error: job failed, the sweep goes on: {error}", file=sys.stderr)
    run_dir, job_id, _ = run_info(cfg)
    sweep_summary.note_failure(run_dir, error)
    rec = read_record(results_path(run_dir))
    if rec is not None and rec.get("status") == RunStatus.FAILED and rec.get("error") == error:
        return  # train() recorded it
    try:
        config = jsonable(resolved_config(cfg))
    except Exception:  # noqa: BLE001 - the config itself may be what is broken
        config = None
    if not belongs_to(run_dir, config):
        # the directory holds a completed or another config's run: keep it, say why elsewhere
        rundir.write_job_error(run_dir, error)
        return
    RunRecorder.for_config(cfg, run_dir, job_id, fallback=True).fail(error)


def _release_memory() -> None:
    """A failed job's model and optimizer die with its frames: collect them (and the CUDA cache)
    before the next job of an in-process sweep allocates."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def _precheck_overrides(argv: list[str]) -> None:
    precheck_overrides(argv, CONFIG_MODULE, CONFIG_NAME)
    _precheck_run_dir(argv)


def _precheck_run_dir(argv: list[str]) -> None:
    """An unwritable ``hydra.run.dir`` (or parent) is one line and exit 2, before Hydra creates
    it (Hydra's own failure there is a traceback). Single runs only; a sweep's jobs are checked
    in ``train``."""
    if any(a.startswith("-") for a in argv):
        return
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            try:
                rundir.check_writable(arg.split("=", 1)[1].strip("'\""))
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)


def main() -> float | None:
    """Console script ``softmax-approx-train``. After a multirun in which any job failed, exit 1
    (every job has run by then; sweep_summary.json in the sweep dir lists them)."""
    _precheck_overrides(sys.argv[1:])
    sweep_summary.LAST = None
    ret = _hydra_main()
    summary = sweep_summary.LAST
    if summary is not None and summary.failed:
        sys.exit(1)
    return ret


if __name__ == "__main__":
    main()
