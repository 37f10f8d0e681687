"""The measurement callbacks (harness/measure.py): each stays out of the others' figures, the
meter never leaves its hooks on, and the figures are the ones the module used to compute."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg
from softmax_approx.core import memory as core_memory
from softmax_approx.core import ActivationMeter
from softmax_approx.harness.measure import GradientProbe, MemoryMeter, StepTimer, run_stats
from softmax_approx.train import train
from softmax_approx.utils.errors import NonFiniteLossError


def _cb(objects, kind):
    return next(cb for cb in objects["callbacks"] if isinstance(cb, kind))


def test_probe_passes_are_not_counted_as_training_memory(tmp_path, data_dir):
    _, off = train(compose_cfg(["attention=topk", "attention.params.keep_ratio=0.25"], tmp_path / "off", data_dir))
    _, on = train(compose_cfg(["attention=topk", "attention.params.keep_ratio=0.25", "probe.every_n_steps=1"],
                              tmp_path / "on", data_dir))
    assert on["record"]["memory"] == off["record"]["memory"]
    assert on["record"]["fidelity"]["layers"] and off["record"]["fidelity"] is None
    assert _cb(on, GradientProbe).fidelity == on["record"]["fidelity"]


def test_meter_equals_a_meter_around_the_step_on_the_kept_batch(tmp_path, data_dir):
    """The callback's bytes are those of ActivationMeter around ``module.step`` on the same batch."""
    _, objects = train(compose_cfg([], tmp_path, data_dir))
    module, meter = objects["model"], _cb(objects, MemoryMeter)
    mem = meter.memory
    assert 1 <= mem["measured_at_step"] <= 2 and mem["attention_bytes"] > 0
    dm = objects["datamodule"]
    batch = next(b for b in dm.train_dataloader() if module.batch_shape(b) == mem["batch_shape"])
    module.train()
    with ActivationMeter(module.net) as ref:
        module.step(batch)
    assert mem["attention_bytes"] == ref.report().attention_bytes
    assert mem["softmax_state_bytes"] == ref.report().softmax_state_bytes
    stats = run_stats(objects["callbacks"])
    assert stats.memory is mem and stats.timing == _cb(objects, StepTimer).timing()
    assert stats.timing["timed_steps"] >= 1 and objects["record"]["params"] == module.param_counts()
    assert objects["record"]["memory"] == mem and objects["record"]["timing"]["timed_steps"] == stats.timing["timed_steps"]


def test_a_failed_step_leaves_no_saved_tensor_hooks(tmp_path, data_dir):
    with pytest.raises(NonFiniteLossError):
        train(compose_cfg(["fault.nan_at_step=1"], tmp_path, data_dir))  # a measured step
    assert core_memory._stack() == []
    x = torch.ones(3, requires_grad=True)
    (x * x).sum().backward()  # autograd works with nothing left intercepting it
    assert torch.equal(x.grad, 2 * torch.ones(3))
