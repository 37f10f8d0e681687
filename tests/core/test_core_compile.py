"""torch.compile(fullgraph=True): every policy traces without a graph break, forward and
backward equal eager mode's, and dropout is regenerated bit-identically in the compiled
backward (the seed is a saved tensor; no `.item()`)."""

import pytest
import torch

from softmax_approx.core import POLICY_NAMES, attention, policy_class

PARAMS = {"paper": {"S": 3}, "topk": {"keep_ratio": 0.25}, "quant": {"bits": 8}}
# rebuilds that are exact for these shapes, so dV can be checked against the dropped output
EXACT_REBUILD = {"paper": {"S": 8}, "topk": {"keep_ratio": 1.0}}


def _inputs():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, 16, 8, generator=g, requires_grad=True) for _ in range(2))
    mask = torch.rand(2, 1, 1, 16, generator=g) > 0.2
    return q, k, mask


def _compiled(fn, backend):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_compiled_forward_and_backward_equal_eager_mode(policy):
    q, k, mask = _inputs()
    v = torch.randn(2, 2, 16, 8, requires_grad=True)
    bias = torch.randn(1, 2, 16, 16, requires_grad=True)

    def fn(q, k, v, bias):
        return attention(q, k, v, mask=mask, bias=bias, policy=policy, **PARAMS.get(policy, {}))

    compiled = _compiled(fn, "aot_eager")
    g = torch.randn(2, 2, 16, 8)
    ins = (q, k, v, bias)
    got_out = compiled(*ins)
    got = torch.autograd.grad(got_out, ins, g)
    want_out = fn(*ins)
    want = torch.autograd.grad(want_out, ins, g)
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy", [p for p in POLICY_NAMES if not policy_class(p).native
                                    and (policy_class(p).exact or p in EXACT_REBUILD)])
def test_compiled_dropout_is_regenerated_bit_identically_in_backward(policy):
    """v = identity, so the output is the dropped probabilities and dV = out^T @ grad exactly."""
    q, k, mask = _inputs()
    v = torch.eye(16).expand(2, 2, 16, 16).clone().requires_grad_()

    def fn(q, k, v):
        return attention(q, k, v, mask=mask, dropout_p=0.3, policy=policy, **EXACT_REBUILD.get(policy, {}))

    out = _compiled(fn, "aot_eager")(q, k, v)
    g = torch.randn_like(out)
    (gv,) = torch.autograd.grad(out, (v,), g)
    assert 0.2 < (out.detach()[mask.expand_as(out)] == 0).float().mean() < 0.4  # dropout happened
    torch.testing.assert_close(gv, out.detach().transpose(-2, -1) @ g, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["paper", "recompute"])
def test_inductor_compiles_every_fused_path(policy):
    q, k, mask = _inputs()
    v = torch.randn(2, 2, 16, 8, requires_grad=True)

    def fn(q, k, v):
        return attention(q, k, v, mask=mask, dropout_p=0.1, policy=policy, **PARAMS.get(policy, {}))

    out = _compiled(fn, "inductor")(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in grads)
