"""Lightning callbacks that make a run resumable and its faults testable (docs/reliability.md).

* :class:`LastCheckpoint` — ``<run dir>/checkpoints/last.ckpt`` at every training-epoch end,
  written atomically and only when the weights are finite. Epoch ends only: Lightning resumes a
  mid-epoch checkpoint by replaying the epoch's data loader from the start, which with our
  length-bucketed batch sampler would see batches twice; at an epoch boundary the sampler's
  order is a function of ``(seed, epoch)`` alone, so the resumed run sees exactly the batches an
  uninterrupted one would.
* :class:`StepSeed` — re-seeds torch's RNG (dropout) from ``(seed, epoch, batch index)`` before
  every training batch. Persisting generator states is not enough: Lightning draws from the
  global RNG whenever it creates a data-loader iterator, and a restarted run creates them at
  different moments, so the state at a given step would differ.
* :class:`FaultInjection` — a debugging/test aid (config ``fault.*``): raise a simulated CUDA
  out-of-memory error, or make the network's output NaN, at a given global step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"


def _finite_weights(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class LastCheckpoint(Checkpoint):
    """Save ``dirpath/last.ckpt`` at the end of every ``every_n_epochs``-th training epoch.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass on purpose: Lightning calls
    checkpoint callbacks last (in their configured order) at epoch end, so when this one runs the
    best-checkpoint ``ModelCheckpoint`` has already saved and updated its state, and that state
    travels in ``last.ckpt``. ``state_dict`` also carries the metrics of the last epoch, for a
    resume that finds training already finished (e.g. a crash during testing).
    """

    def __init__(self, dirpath: str, filename: str = LAST_NAME, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.restored_metrics: dict[str, float] = {}
        self.skipped_nonfinite = 0
        self._trainer: L.Trainer | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    @property
    def state_key(self) -> str:
        return f"LastCheckpoint[{self.filename}]"

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        return {"callback_metrics": _float_metrics(trainer.callback_metrics) if trainer is not None else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored_metrics = dict(state_dict.get("callback_metrics") or {})

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not _finite_weights(pl_module):
            self.skipped_nonfinite += 1
            log.warning("weights are not finite at epoch %d: %s not overwritten", trainer.current_epoch, self.path)
            return
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write to a temp file in the same folder, then ``os.replace``: a kill mid-write leaves
        the previous ``last.ckpt`` intact."""
        tmp = self.dirpath / f".{self.filename}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")
        return self.path


def _float_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[str(k)] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            continue
    return out


class StepSeed(L.Callback):
    """Seed torch's RNG from ``(seed, epoch, batch index)`` before each training batch, so the
    dropout masks of a step do not depend on how the run got there (fresh or resumed)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.current_epoch, batch_idx))


def step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 100_003 + int(batch_idx)) % (2**63 - 1)


class SimulatedOutOfMemory(torch.OutOfMemoryError):
    """What ``fault.fail_at_step`` raises: the error type a real CUDA OOM has."""


class FaultInjection(L.Callback):
    """Debugging/test aid (``fault.fail_at_step``, ``fault.nan_at_step``; off by default).

    ``fail_at_step=N``: raise a simulated CUDA out-of-memory error before training step N.
    ``nan_at_step=N``: the network's floating-point outputs are multiplied by NaN on step N, so
    the loss is NaN the way a real divergence makes it.
    """

    def __init__(self, fail_at_step: int | None = None, nan_at_step: int | None = None) -> None:
        self.fail_at_step = fail_at_step
        self.nan_at_step = nan_at_step
        self._handle = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.fail_at_step is not None and step == int(self.fail_at_step):
            raise SimulatedOutOfMemory(
                f"CUDA out of memory (simulated by fault.fail_at_step={self.fail_at_step}, batch index {batch_idx})"
            )
        if self.nan_at_step is not None and step == int(self.nan_at_step):
            net = getattr(pl_module, "net", pl_module)
            self._handle = net.register_forward_hook(lambda mod, args, out: _times_nan(out))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._remove()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _times_nan(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out * float("nan") if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_times_nan(o) for o in out)
    if isinstance(out, dict):
        return {k: _times_nan(v) for k, v in out.items()}
    return out
