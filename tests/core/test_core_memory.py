"""The activation meter: hand-counted bytes, storage dedup, parameter exclusion, categories."""

import math

import pytest
import torch

from softmax_approx.core import ActivationMeter, attention, index_dtype
from softmax_approx.core.ranks import high_width
from softmax_approx.nn import MultiHeadAttention


def test_meter_matches_hand_count_and_dedups_storage():
    a = torch.randn(3, 5, requires_grad=True)
    m = torch.randn(3, 4)
    lin = torch.nn.Linear(5, 2)
    with ActivationMeter(lin) as meter:
        b = a.exp()                 # saves its output b: 15 floats
        c = b * b                   # saves b twice: same storage, counted once
        d = b.t() @ m               # saves m (needed for b's grad): 12 floats; b.t() is b's storage
        e = lin(b)                  # saves b (again) and lin.weight (a parameter: excluded)
        loss = c.sum() + d.sum() + e.sum()
    report = meter.report()
    assert report.total_bytes == (15 + 12) * 4
    assert report.attention_bytes == 0 and report.softmax_state_bytes == 0
    loss.backward()                 # the graph still works: the meter returns tensors unchanged
    assert a.grad is not None


def _qkv(b=2, h=2, n=16, d=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, n, d, generator=g, requires_grad=True) for _ in range(3)]


def test_eager_state_is_probs_mask_and_dropped_probs_on_cpu():
    q, k, v = _qkv()
    scores = 2 * 2 * 16 * 16
    with ActivationMeter() as meter:
        attention(q, k, v, dropout_p=0.1, policy="eager")
    r = meter.report()
    assert r.softmax_state_bytes == scores * 12          # softmax out 4 + float mask 4 + dropped 4
    assert r.total_bytes == r.softmax_state_bytes + 3 * q.numel() * 4
    with ActivationMeter() as meter:
        attention(q, k, v, dropout_p=0.0, policy="eager")
    assert meter.report().softmax_state_bytes == scores * 4  # out saved by softmax and matmul: once


@pytest.mark.parametrize("n", [16, 300])
def test_fused_policies_keep_exactly_their_state(n):
    q, k, v = _qkv(n=n)
    rows = 2 * 2 * n
    S = 5
    expected = {
        "exact": rows * n * 4,
        "recompute": rows * 4,                                          # one fp32 lse per row
        # ranks: one byte per entry, plus the high bits packed at 1, 2, 4 or 8 bits above n = 256
        "paper": rows * (n + (0 if n <= 256 else math.ceil(n * high_width(n) / 8)) + 2 * S * 4 + 4
                         + index_dtype(n + 1).itemsize),
        "quant": rows * (n + 4),                                        # 8-bit codes + fp32 scale
    }
    for policy, want in expected.items():
        with ActivationMeter() as meter:
            attention(q, k, v, dropout_p=0.1, policy=policy)
        r = meter.report()
        seed = 16                                                        # the dropout seed: 2 int64
        assert r.softmax_state_bytes == want, policy                     # the seed is an input
        assert r.total_bytes == want + seed + 3 * q.numel() * 4, policy  # + q, k, v; no mask


def test_module_categories_and_parameter_exclusion():
    mha = MultiHeadAttention(32, 4, dropout=0.1, policy="paper", policy_params={"S": 2})
    ffn = torch.nn.Linear(32, 32)
    x = torch.randn(2, 10, 32, requires_grad=True)
    model = torch.nn.ModuleDict({"mha": mha, "ffn": ffn})
    with ActivationMeter(model) as meter:
        y = ffn(torch.relu(mha(x)))
    r = meter.report()
    assert 0 < r.softmax_state_bytes < r.attention_bytes < r.total_bytes
    # the ffn's input (relu output) is saved outside attention: 2*10*32 floats, plus relu's output
    assert r.other_bytes == 2 * 10 * 32 * 4
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
