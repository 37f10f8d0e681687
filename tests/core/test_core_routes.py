"""Routes around `core.attention` that used to give a wrong answer without an error: activation
checkpointing with dropout, float masks, empty axes, integer inputs, NaN rows under `sdpa`.
(Second-order gradients: tests/core/test_core_defects.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.checkpoint import checkpoint

from softmax_approx.core import POLICY_NAMES, attention, policy_class

PARAMS = {"paper": {"S": 2}, "topk": {"keep_ratio": 0.25}, "quant": {"bits": 8}}


def _qkv(lq=12, lk=12, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 2, n, 8, generator=g, **kw) for n in (lq, lk, lk))


# ------------------------------------------------------------------ checkpointing with dropout
def _step(policy, checkpointing, compiled=False, p=0.3):
    """Output and gradients of a two-block function with attention dropout, optionally
    activation-checkpointed; the same global seed each time."""
    q, k, v = _qkv()
    w = torch.eye(8).add(0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(1))).requires_grad_()
    x = q.clone().requires_grad_()

    def block(h):
        return attention(h @ w, k, v, dropout_p=p, policy=policy, **PARAMS.get(policy, {}))

    def f(h):
        for _ in range(2):
            h = block(h) if checkpointing == "none" else checkpoint(block, h, use_reentrant=checkpointing == "reentrant")
        return h

    if compiled:
        torch._dynamo.reset()
        f = torch.compile(f, fullgraph=True, backend="eager")
    torch.manual_seed(7)
    out = f(x)
    out.pow(2).sum().backward()
    return out.detach(), x.grad, w.grad


@pytest.mark.parametrize("checkpointing", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_checkpointed_dropout_reproduces_the_forward(policy, checkpointing):
    """The recomputation drops the entries the forward dropped: same loss, same gradients
    (the reentrant first pass runs under no_grad and once took another dropout)."""
    ref = _step(policy, "none")
    got = _step(policy, checkpointing)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref[0], _step(policy, "none", p=0.0)[0])  # dropout happened


@pytest.mark.parametrize("policy", ["paper"])
def test_compiled_dropout_draws_the_eager_mask(policy):
    """One function of the seed in eager mode and inside a compiled graph, so a recomputation
    that runs outside the graph cannot draw another mask."""
    for a, b in zip(_step(policy, "none", compiled=True), _step(policy, "none")):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("policy", [p for p in POLICY_NAMES if not policy_class(p).native])
def test_checkpointed_dropout_inside_a_compiled_function(policy, checkpointing):
    """torch.utils.checkpoint inside torch.compile(fullgraph=True): the fused policies'
    recomputation still drops what the plain forward dropped (PyTorch's own dropout does not
    under backend="eager", which is why the Transformers matrix reports those routes n/a)."""
    for a, b in zip(_step(policy, checkpointing, compiled=True), _step(policy, "none")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_grad_forward_equals_the_grad_forward_with_dropout():
    q, k, v = _qkv()
    torch.manual_seed(3)
    with torch.no_grad():
        a = attention(q, k, v, dropout_p=0.5, policy="paper")
    torch.manual_seed(3)
    b = attention(q.requires_grad_(), k, v, dropout_p=0.5, policy="paper")
    assert torch.equal(a, b.detach())


# ------------------------------------------------------------------ masks are bool
def test_a_float_mask_is_refused_with_a_pointer_to_bias():
    q, k, v = _qkv()
    keep = (torch.rand(2, 1, 1, 12) > 0.3).float()       # HF style: 1 = keep, 0 = drop
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .*bias=.*mask=m\.bool\(\)"):
        attention(q, k, v, mask=keep, policy="paper")
    ok = attention(q, k, v, mask=keep.bool(), policy="paper")
    assert torch.isfinite(ok).all()


# ------------------------------------------------------------------ edge inputs
@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("lq,lk", [(5, 0), (0, 5), (0, 0)])
def test_empty_axes_give_zero_rows_and_zero_gradients(policy, lq, lk):
    q, k, v = _qkv(lq, lk, requires_grad=True)
    mask = torch.ones(2, 1, lq, lk, dtype=torch.bool)
    for kw in ({}, {"mask": mask}, {"causal": True}):
        out = attention(q, k, v, dropout_p=0.1, policy=policy, **PARAMS.get(policy, {}), **kw)
        assert out.shape == (2, 2, lq, 8) and torch.equal(out, torch.zeros_like(out))
        gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True, materialize_grads=True)
        assert not any(g.abs().sum() for g in (gq, gk, gv))


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_inputs_are_refused(dtype):
    q = torch.ones(1, 2, 4, 8, dtype=dtype)
    for args in ((q, q, q), (q.float(), q, q.float()), (q.float(), q.float(), q)):
        with pytest.raises(TypeError, match="must be a floating-point tensor"):
            attention(*args, policy="exact")


@pytest.mark.parametrize("where", ["query", "key"])
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_nan_logits_give_nan_rows_under_every_policy(policy, where):
    q, k, v = _qkv()
    (q if where == "query" else k)[0, 1, 3, 2] = float("nan")
    out = attention(q, k, v, policy=policy, **PARAMS.get(policy, {}))
    if where == "query":  # that row only
        assert out[0, 1, 3].isnan().all()
        bad = torch.zeros_like(out, dtype=torch.bool)
        bad[0, 1, 3] = True
        assert not out[~bad].isnan().any()
    else:                 # every row of that head sees the key
        assert out[0, 1].isnan().all() and not out[0, 0].isnan().any() and not out[1].isnan().any()


# ------------------------------------------------------------------ one dropout on every path
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from([p for p in POLICY_NAMES if not policy_class(p).native]),
    lq=st.integers(0, 7), lk=st.integers(0, 7), heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]),
    masked=st.booleans(), causal=st.booleans(), p=st.sampled_from([0.0, 0.2, 0.6]), seed=st.integers(0, 2**16),
)
def test_gradient_free_and_gradient_forwards_agree_on_every_shape(policy, lq, lk, heads, masked, causal, p, seed):
    """Same global seed -> same output with and without gradients (so a checkpoint's no-grad
    first pass and its recomputation agree), empty axes and GQA included."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads[0], lq, 4, generator=g)
    k, v = (torch.randn(2, heads[1], lk, 4, generator=g) for _ in range(2))
    mask = torch.rand(2, 1, lq, lk, generator=g) > 0.3 if masked else None
    kw = dict(mask=mask, causal=causal, dropout_p=p, policy=policy, **PARAMS.get(policy, {}))
    torch.manual_seed(seed)
    with torch.no_grad():
        a = attention(q, k, v, **kw)
    torch.manual_seed(seed)
    b = attention(q.requires_grad_(), k, v, **kw)
    torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=1e-6)
    after = torch.rand(())                      # the global stream advanced by exactly one seed draw
    torch.manual_seed(seed)
    if p > 0 and lq and lk:
        torch.randint(0, 2**31, (2,))
    assert torch.equal(after, torch.rand(()))
