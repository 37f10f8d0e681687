"""Evaluation entry point: test a saved checkpoint, write results.json in a run dir of its own.

    python -m softmax_approx.eval ckpt_path=RUN/checkpoints/best-42.ckpt task=sst2 profile=smoke
    python -m softmax_approx.eval ckpt_path=... task=multi30k model=transformer_multi30k task.datamodule.test_split=val

As lightning-hydra-template's ``eval.py`` (or fairseq's ``generate``): the config is the
training tree (``conf/eval.yaml`` includes ``train.yaml``), so give the training run's
overrides and the model fits the checkpoint. ``task.datamodule.test_split`` picks the split
(``test``, ``val`` or ``train``). A missing file or one that is not a checkpoint is one line and
exit code 2, as is any other config or data problem.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

import hydra
from omegaconf import DictConfig

from softmax_approx.conf import CONFIG_MODULE, CONFIG_PATH
from softmax_approx.harness.build import build_datamodule, build_module, build_trainer
from softmax_approx.harness.job import check_checkpoint, finish_wandb, precheck_overrides, run_info, run_test
from softmax_approx.harness.recorder import RunRecorder
from softmax_approx.harness.results import results_path
from softmax_approx.harness.validation import validate_config
from softmax_approx.utils.errors import ConfigError, UserError

CONFIG_NAME = "eval"


def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Check the checkpoint and config, test, write results.json; returns ``(metrics, objects)``."""
    # Lightning asks for the training callbacks whose state is in the checkpoint; testing needs none.
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
    ckpt = check_checkpoint(cfg.get("ckpt_path"))
    validate_config(cfg)
    run_dir, job_id, group = run_info(cfg)
    recorder = RunRecorder.for_config(cfg, run_dir, job_id, evaluated=str(ckpt))
    recorder.start()
    objects: dict[str, Any] = {"cfg": cfg}
    try:
        datamodule = build_datamodule(cfg, "test")
        module = build_module(cfg, datamodule)
        trainer, callbacks, loggers = build_trainer(cfg, run_dir, group=group, training=False)
        objects.update(datamodule=datamodule, model=module, trainer=trainer, loggers=loggers)
        recorder.record.params = module.param_counts()
        try:
            metrics = run_test(trainer, module, datamodule, str(ckpt), recorder.record)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise ConfigError(
                f"ckpt_path={str(ckpt)!r} does not fit the composed model ({str(e).splitlines()[0]}); give the "
                "training run's overrides (its .hydra/overrides.yaml: task=, model=, profile=, ...)"
            ) from None
        objects["record"] = recorder.finish(metrics).to_dict()
        return metrics, objects
    except BaseException as e:
        recorder.fail(e)
        raise
    finally:
        finish_wandb(recorder.record.status)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    try:
        metrics, objects = evaluate(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float))
    print(f"{results_path(objects['record']['run_dir'])}: {shown}")


def main() -> None:
    """``python -m softmax_approx.eval``: a bad override or checkpoint is one line, exit 2."""
    precheck_overrides(sys.argv[1:], CONFIG_MODULE, CONFIG_NAME)
    _hydra_main()


if __name__ == "__main__":
    main()
