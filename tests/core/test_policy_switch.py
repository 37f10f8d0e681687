"""nn.use_policy: the one temporary policy switch (probe, per-kind memory meter)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from softmax_approx.nn import MultiHeadAttention, patch, policy_modules, use_policy


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.ours = MultiHeadAttention(8, 2, policy="paper", policy_params={"S": 3})
        self.torch_mha = nn.MultiheadAttention(8, 2, batch_first=True)
        patch(self.torch_mha, "topk", keep_ratio=0.5)

    def forward(self, x):
        return self.ours(x) + self.torch_mha(x, x, x, need_weights=False)[0]


def _names(model):
    return {n: m.policy for n, m in policy_modules(model)}


def test_switches_every_policy_module_and_restores_the_same_objects():
    model = Two()
    before = _names(model)
    assert set(before) == {"ours", "torch_mha"}
    with use_policy(model, "exact") as names:
        assert sorted(names) == ["ours", "torch_mha"]
        assert {p.name for p in _names(model).values()} == {"exact"}
    after = _names(model)
    assert all(after[n] is before[n] for n in before)  # the very objects, parameters included


def test_restores_after_an_exception_and_validates_before_changing_anything():
    model = Two()
    before = _names(model)
    with pytest.raises(RuntimeError, match="boom"):
        with use_policy(model, "eager"):
            raise RuntimeError("boom")
    assert all(_names(model)[n] is before[n] for n in before)
    with pytest.raises(ValueError):
        with use_policy(model, "topk", keep_ratio=7.0):
            pass
    assert all(_names(model)[n] is before[n] for n in before)


def _input_grad(model, x):
    x = x.clone().requires_grad_(True)
    (model(x) ** 2).sum().backward()
    return x.grad


def test_none_changes_nothing_and_the_gradient_follows_the_policy():
    """The policies change what backward keeps (the forward is exact), so compare gradients."""
    torch.manual_seed(0)
    model = MultiHeadAttention(8, 2, policy="paper", policy_params={"S": 2})
    x = torch.randn(2, 16, 8)
    own = _input_grad(model, x)
    with use_policy(model, None):
        assert torch.equal(_input_grad(model, x), own)
    with use_policy(model, "exact"):
        exact = _input_grad(model, x)
    with use_policy(model, "eager"):
        eager = _input_grad(model, x)
    torch.testing.assert_close(exact, eager, rtol=1e-5, atol=1e-6)  # both keep the exact softmax
    assert not torch.allclose(own, exact, rtol=1e-3, atol=1e-5)  # the model's own (S=2) does not
    assert torch.equal(_input_grad(model, x), own)  # and it is back after the blocks
