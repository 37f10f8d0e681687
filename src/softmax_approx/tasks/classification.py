"""Sequence classification (SST-2, IMDB, your own labelled text): cross-entropy, accuracy per
split, best val acc. The number of classes comes from the data (the DataModule's
``num_classes``): it sizes the model's head (``net_kwargs``) and the accuracy metrics.

Metric names: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``,
``test/loss``, ``test/acc`` (one torchmetrics object per split, as in lightning-hydra-template).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from softmax_approx.tasks.base import BaseTask
from softmax_approx.utils.errors import ConfigError


class ClassificationTask(BaseTask):
    kind = "classification"

    def __init__(self, net: torch.nn.Module, n_classes: int | None = None, **kwargs) -> None:
        super().__init__(net, **kwargs)
        n_classes = _class_count(net, n_classes)
        self.train_acc = MulticlassAccuracy(n_classes, average="micro")
        self.val_acc = MulticlassAccuracy(n_classes, average="micro")
        self.test_acc = MulticlassAccuracy(n_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    @classmethod
    def net_kwargs(cls, datamodule: L.LightningDataModule) -> dict:
        return {"vocab_size": datamodule.vocab_size, "pad_id": datamodule.pad_id, "n_classes": datamodule.num_classes}

    def results_fields(self) -> dict:
        """For results.json: what the test split is and the data (files with their sha256,
        classes, split sizes)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            return {}
        return {"test_split": getattr(dm, "test_split_name", None), "data": dm.data_info()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_ids, attention_mask)

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = self.net(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        return loss, {"preds": logits.argmax(-1)}

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def batch_shape(self, batch: dict) -> list[int]:
        return list(batch["input_ids"].shape)

    def log_train(self, loss: torch.Tensor, out: dict, batch: dict) -> None:
        super().log_train(loss, out, batch)
        self.train_acc(out["preds"], batch["labels"])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self.step(batch)
        n = batch["labels"].numel()
        self.val_loss.update(loss, weight=n)
        self.val_acc(out["preds"], batch["labels"])
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self.step(batch)
        n = batch["labels"].numel()
        self.test_loss.update(loss, weight=n)
        self.test_acc(out["preds"], batch["labels"])
        self.log("test/loss", self.test_loss, on_epoch=True, batch_size=n)
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=n)


def _class_count(net: torch.nn.Module, configured: int | None) -> int:
    """The model's class count (the data's, through ``net_kwargs``); ``task.n_classes``, when
    set, must agree with it."""
    from_net = getattr(net, "n_classes", None)
    if configured is not None and from_net is not None and int(configured) != int(from_net):
        raise ConfigError(f"task.n_classes={configured}: the training data has {from_net} classes; "
                          "set task.n_classes=null to take the data's")
    count = from_net if from_net is not None else configured
    if count is None:
        raise ConfigError("task.n_classes=null and the model does not say how many classes it predicts; set task.n_classes")
    return int(count)
