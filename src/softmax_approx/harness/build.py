"""Build a run's objects from a composed config: DataModule, task module, callbacks, loggers,
Trainer. Shared by ``train`` and ``eval`` so both build the same things the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import get_class
from omegaconf import DictConfig

from softmax_approx.harness.callbacks import FaultInjection
from softmax_approx.harness.checkpoint_io import AtomicCheckpointIO
from softmax_approx.harness.instantiate import instantiate_callbacks, instantiate_loggers, instantiate_model
from softmax_approx.harness.measure import measurement_callbacks


def build_datamodule(cfg: DictConfig, stage: str) -> L.LightningDataModule:
    """The task's DataModule, prepared and set up for ``stage`` (``fit`` or ``test``)."""
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.task.datamodule, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """The task module around a fresh model. Task-specific constructor arguments live in
    ``task.module`` (e.g. n_classes); the optimizer and scheduler are the same for every
    BaseTask; the attention policy is the model's (``model.policy``)."""
    module_cls = get_class(cfg.task.module._target_)
    net = instantiate_model(cfg.model, **module_cls.net_kwargs(datamodule))
    apply_activations(net, cfg.get("activations"))
    return hydra.utils.instantiate(
        cfg.task.module,
        _convert_="all",
        net=net,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )


def apply_activations(net: Any, act: DictConfig | None) -> dict | None:
    """The ``activations`` group: ``compress_activations`` on the built model when ``mode`` is
    set (the attention is left to the ``attention`` group); what it switched, or None."""
    if not act or not act.get("mode"):
        return None
    from softmax_approx.nn import compress_activations

    return compress_activations(net, attention=None, linear=act.mode, dropout=act.get("dropout"),
                                gelu=act.get("gelu"), layernorm=act.get("layernorm"))


def build_trainer(cfg: DictConfig, run_dir: Path, group: str | None = None,
                  training: bool = True) -> tuple[L.Trainer, list[Any], list[Any]]:
    """(trainer, callbacks, loggers). With ``training``, the measurement callbacks come first
    (their order matters: ``harness.measure``), then the configured ones, then the fault aid."""
    loggers = instantiate_loggers(cfg.get("logger"), default_group=cfg.get("experiment_name") or group, run_dir=run_dir)
    callbacks = measurement_callbacks(cfg) if training else []
    callbacks += instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    fault = cfg.get("fault") or {}
    keys = ("fail_at_step", "nan_at_step", "nan_grad_at_step", "signal_at_step")
    phase = fault.get("signal_phase") or "train"
    if training and (any(fault.get(k) is not None for k in keys) or phase in ("validation", "test")):
        callbacks.append(FaultInjection(**{k: fault.get(k) for k in keys}, signal_name=fault.get("signal_name") or "SIGTERM",
                                        signal_phase=phase))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 plugins=[AtomicCheckpointIO()])  # no torn best-N.ckpt
    return trainer, callbacks, loggers
