"""Shared LightningModule machinery for every task kind: the optimizer wiring, the training
step's loss check, and the ``*_best`` metrics a resumed run needs back.

A subclass says how to compute the loss of a batch (:meth:`BaseTask.step`), how many tokens a
batch holds and its padded shape (read by the measurement callbacks,
:mod:`softmax_approx.harness.measure`), and which metrics it logs. What a run measures (memory,
step time, gradient fidelity) are callbacks beside the loop, not part of the module; the
learning-rate schedules are in :mod:`softmax_approx.tasks.schedules`.

Reliability (docs/reliability.md): a non-finite training loss stops the run before backward
(:class:`~softmax_approx.utils.errors.NonFiniteLossError`, naming the step and batch index), and
the ``*_best`` metrics, which torchmetrics does not put in ``state_dict``, travel in checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import lightning as L
import torch

from softmax_approx.utils.errors import NonFiniteLossError


class BaseTask(L.LightningModule):
    """Optimizer/scheduler from ``_partial_`` configs, the training step, best-metric resume."""

    #: The task kind this module serves; the model config must declare the same ``kind``.
    kind: ClassVar[str] = ""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._restored_best: dict[str, float] = {}

    # ---------------------------------------------------------------- to override
    @classmethod
    def net_kwargs(cls, datamodule: L.LightningDataModule) -> dict:
        """Constructor arguments of the model that come from the data (vocab sizes, pad id)."""
        raise NotImplementedError

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss of a batch and whatever the metrics need (e.g. predictions)."""
        raise NotImplementedError

    def count_tokens(self, batch: dict) -> int:
        """Real (unpadded) tokens in a batch, for tokens/second."""
        raise NotImplementedError

    def batch_shape(self, batch: dict) -> list[int]:
        """The padded shape recorded beside the memory figures."""
        raise NotImplementedError

    def memory_details(self, batch: dict) -> dict:
        """Extra fields for the memory record of the batch the meter keeps (default none)."""
        return {}

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_counts(self) -> dict:
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }

    # ---------------------------------------------------------------- training step
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, out = self.step(batch)
        self.check_finite(loss, batch_idx)
        self.log_train(loss, out, batch)
        return loss

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop before backward on a NaN/inf loss: no NaN gradient reaches the weights, and no
        later checkpoint is written, so ``last.ckpt`` stays the last good state."""
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.detach().float().mean().item()}) at global step "
                f"{int(self.global_step)} (epoch {int(self.current_epoch)}, batch index {batch_idx}); "
                + self._last_good_note()
            )

    def _last_good_note(self) -> str:
        """What a rerun can resume from: promise a checkpoint only when one was written."""
        trainer = getattr(self, "_trainer", None)
        paths = [getattr(cb, "path", None) for cb in (getattr(trainer, "callbacks", None) or [])]
        kept = [p for p in paths if p is not None and str(p).endswith(".ckpt") and Path(str(p)).is_file()]
        if kept:
            return (f"the last good checkpoint {kept[0]} is kept; lower optimizer.lr or gradient clipping, "
                    "or rerun the same command to resume from it")
        return ("no checkpoint was written before it (the first is written at the end of epoch 0): "
                "lower optimizer.lr or set trainer.gradient_clip_val, then rerun")

    def log_train(self, loss: torch.Tensor, out: dict, batch: dict) -> None:
        """Log the training loss/metrics (subclasses add theirs)."""
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=self.batch_shape(batch)[0])

    # ---------------------------------------------------------------- resume
    def _best_metrics(self) -> dict[str, Any]:
        from torchmetrics import MaxMetric, MinMetric

        return {n: m for n, m in self.named_children() if isinstance(m, (MaxMetric, MinMetric))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Running bests, so a resumed run reports what an uninterrupted one would (the
        measurements travel as the measurement callbacks' state)."""
        checkpoint["softmax_approx"] = {
            "best_metrics": {n: float(m.compute()) for n, m in self._best_metrics().items() if m.update_count},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("softmax_approx")
        if state:
            self._restored_best = dict(state["best_metrics"])

    def on_train_start(self) -> None:
        """Start the ``*_best`` metrics from scratch (Lightning's sanity check may have updated
        them), then put a resumed run's values back. Here, not in ``on_train_epoch_start``:
        Lightning does not call that hook when it resumes mid-epoch."""
        for metric in self._best_metrics().values():
            metric.reset()
        for name, value in self._restored_best.items():
            metric = self._best_metrics().get(name)
            if metric is not None:
                metric.update(torch.tensor(value, device=self.device))
        self._restored_best = {}
