"""The progress callback: a line every N steps with step/total, loss and ETA; bad N rejected."""

import logging
from types import SimpleNamespace

import pytest
import torch

from softmax_approx.harness.progress import ProgressLog


def fake_trainer(step, total=400):
    return SimpleNamespace(global_step=step, estimated_stepping_batches=total, current_epoch=1,
                           is_global_zero=True, sanity_checking=False,
                           callback_metrics={"train/loss": torch.tensor(0.25), "val/acc": torch.tensor(0.8)})


def test_progress_logs_every_n_steps_with_eta(caplog):
    cb = ProgressLog(every_n_steps=100)
    logger = logging.getLogger("softmax_approx.progress")
    logger.disabled, logger.propagate = False, True    # in-process Hydra runs reconfigure logging
    caplog.set_level(logging.INFO, logger="softmax_approx.progress")
    cb.on_train_start(fake_trainer(0), None)
    for step in (50, 100, 150, 200):
        cb.on_train_batch_end(fake_trainer(step), None, None, None, step)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "training: 400 steps planned, starting at step 0"
    assert [ln.split()[1] for ln in lines[1:]] == ["100/400", "200/400"]
    assert "(25.0%) epoch 1 train/loss 0.2500" in lines[1] and "eta " in lines[1]
    cb.on_validation_end(fake_trainer(200), None)
    assert caplog.records[-1].getMessage() == "validation at step 200 (epoch 1): val/acc 0.8000"


def test_progress_rejects_bad_interval():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        ProgressLog(every_n_steps=0)
