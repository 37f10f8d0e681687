"""The training epoch's metric state travels in mid-epoch checkpoints.

Why: an epoch-aggregated training metric (``train/acc``, ``train/loss`` logged ``on_epoch``) is
the state of a torchmetrics object (``train_acc``) and of Lightning's result collection (the
running weighted sum of ``train/loss``). Neither is in a checkpoint, so a run resumed mid-epoch
reported the metric of the batches after the resume only. :class:`EpochMetricState` saves both
with every checkpoint taken mid-epoch (like the data loader's position) and puts them back:

* torchmetrics states before the first resumed batch (``on_train_start``);
* Lightning's running sums after the first resumed batch logged (``on_train_batch_end``; the
  key exists only once logged): ``S + x`` equals the uninterrupted ``S + x`` bit for bit,
  since the first logged value is ``0 + x``, and addition of two floats is commutative.

Under DDP every rank's state is kept (``all_gather_object``) and each rank restores its own; a
checkpoint of another number of processes is not restored (the loader refuses it anyway).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric

log = logging.getLogger(__name__)


def _train_results(trainer: L.Trainer) -> Any:
    return trainer.fit_loop.epoch_loop._results


def _mid_epoch(trainer: L.Trainer) -> bool:
    loop = trainer.fit_loop.epoch_loop
    done = int(loop.batch_progress.current.completed)
    return 0 < done < trainer.num_training_batches and not loop.done


def capture(trainer: L.Trainer, module: L.LightningModule) -> dict:
    """This rank's epoch state: the logged running values and the train metrics' states."""
    sums, metrics = {}, {}
    names = {id(m): n for n, m in module.named_modules() if isinstance(m, Metric)}
    for key, rm in _train_results(trainer).items():
        if not rm.meta.on_epoch or rm.has_reset:
            continue
        if rm.is_tensor:
            sums[key] = {"value": rm.value.detach().cpu().clone(),
                         "count": rm.cumulated_batch_size.detach().cpu().clone() if rm.meta.is_mean_reduction else None}
        elif id(rm.value) in names:
            m = rm.value
            metrics[names[id(rm.value)]] = {
                "state": {k: (v.detach().cpu().clone() if torch.is_tensor(v) else [t.detach().cpu().clone() for t in v])
                          for k, v in m.metric_state.items()},
                "update_count": int(m._update_count),
            }
    return {"sums": sums, "metrics": metrics}


def _merge_sum(rm: Any, saved: dict) -> None:
    value = saved["value"].to(rm.value.device, rm.value.dtype)
    meta = rm.meta
    if meta.is_max_reduction or meta.is_min_reduction:
        rm.value = meta.reduce_fx(rm.value, value)
    else:  # mean (weighted sum + count) or sum
        rm.value = rm.value + value
        if meta.is_mean_reduction and saved.get("count") is not None:
            rm.cumulated_batch_size = rm.cumulated_batch_size + saved["count"].to(rm.cumulated_batch_size.device)
    rm._computed = None


class EpochMetricState(L.Callback):
    """Save the interrupted epoch's training-metric state with each mid-epoch checkpoint; restore it."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._module: L.LightningModule | None = None
        self._loaded: dict | None = None
        self._pending_sums: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def state_dict(self) -> dict[str, Any]:
        trainer, module = self._trainer, self._module
        if trainer is None or module is None or trainer.state.fn != "fit" or not _mid_epoch(trainer):
            return {}
        mine = capture(trainer, module)
        ranks = [mine]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        return {"epoch": int(trainer.current_epoch), "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) if state_dict else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaded, self._loaded = self._loaded, None
        if not loaded or int(loaded.get("epoch", -1)) != int(trainer.current_epoch):
            return
        ranks = loaded.get("ranks") or []
        if len(ranks) != trainer.world_size:
            log.warning("epoch metric state of %d processes not restored on %d", len(ranks), trainer.world_size)
            return
        mine = ranks[trainer.global_rank]
        modules = dict(pl_module.named_modules())
        for name, saved in mine["metrics"].items():
            metric = modules.get(name)
            if not isinstance(metric, Metric):
                continue
            for k, v in saved["state"].items():
                setattr(metric, k, v.to(pl_module.device) if torch.is_tensor(v) else [t.to(pl_module.device) for t in v])
            metric._update_count = saved["update_count"]
            metric._computed = None
        self._pending_sums = dict(mine["sums"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._pending_sums:
            return
        results = _train_results(trainer)
        for key, saved in self._pending_sums.items():
            if key in results:
                _merge_sum(results[key], saved)
        self._pending_sums = {}
