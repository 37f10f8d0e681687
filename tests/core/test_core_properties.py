"""Property-based: for drawn shapes, masks, dtypes and policy parameters, every policy's
forward and gradients against a float64 reference.

Stated tolerances (relative error of the whole tensor, ||got - want|| / ||want||):
* forward, every policy: 1e-12 (fp64), 1e-5 (fp32), 2e-2 (bf16);
* gradients of policies whose rebuild is exact for the draw (eager, exact, recompute, sdpa;
  paper when every row has <= 2S entries; topk with keep_ratio = 1): the same bounds, except
  bf16 (5e-2);
* quant, 8 bits: 5e-2; other approximate draws: finite gradients;
* always: zero output and zero gradient on rows with no valid key.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softmax_approx.core import POLICY_NAMES, attention, policy_class

hypothesis_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
FWD_TOL = {"fp64": 1e-12, "fp32": 1e-5, "bf16": 2e-2}
GRAD_TOL = {"fp64": 1e-10, "fp32": 1e-4, "bf16": 5e-2}


def _draw_paper(draw, lk):
    S = draw(st.integers(1, 8))
    return {"S": S}, 2 * S >= lk


def _draw_topk(draw, lk):
    r = draw(st.sampled_from([0.07, 0.125, 0.5, 1.0]))
    return {"keep_ratio": r}, r == 1.0


def _draw_quant(draw, lk):
    return {"bits": draw(st.sampled_from([2, 4, 8]))}, False


#: (parameters, whether the rebuild is exact for them) of the parameterised policies; every
#: other registered policy runs at its defaults, exact as its class declares
PARAM_DRAWS = {"paper": _draw_paper, "topk": _draw_topk, "quant": _draw_quant}


def _policy(draw, lk):
    name = draw(st.sampled_from(POLICY_NAMES))
    if name in PARAM_DRAWS:
        return name, *PARAM_DRAWS[name](draw, lk)
    return name, {}, policy_class(name).exact


@st.composite
def cases(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    lq, lk, d = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["none", "padding", "causal", "per_head", "empty_rows"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    mask, causal = None, False
    if kind == "padding":
        mask = torch.rand(b, 1, 1, lk, generator=g) > 0.3
    elif kind == "causal":
        causal = True
    elif kind == "per_head":
        mask = torch.rand(b, h, lq, lk, generator=g) > 0.4
    elif kind == "empty_rows":
        mask = torch.ones(b, h, lq, lk, dtype=torch.bool)
        mask[..., : max(1, lq // 2), :] = False
    name, params, exact = _policy(draw, lk)
    dtype = draw(st.sampled_from(list(DTYPES)))
    logit_scale = draw(st.sampled_from([0.5, 2.0, 6.0]))
    return b, h, lq, lk, d, mask, causal, name, params, exact, dtype, logit_scale, g


def _reference(q, k, v, mask, causal):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def _rel(got, want):
    denom = want.norm()
    return ((got.double() - want).norm() / denom).item() if denom > 1e-12 else (got.double() - want).norm().item()


@hypothesis_settings
@given(cases())
def test_every_policy_matches_a_float64_reference(case):
    b, h, lq, lk, d, mask, causal, name, params, exact, dtype, logit_scale, g = case
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))
    q = q * logit_scale
    if dtype == "bf16":  # the reference sees the same rounded inputs
        q, k, v = (t.bfloat16().double() for t in (q, k, v))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    got = [t.to(DTYPES[dtype]).requires_grad_() for t in (q, k, v)]
    want = _reference(*ref, mask, causal)
    out = attention(*got, mask=mask, causal=causal, policy=name, **params)
    assert out.dtype == DTYPES[dtype]
    assert _rel(out, want.detach()) <= FWD_TOL[dtype], (name, dtype)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    out.backward(grad.to(DTYPES[dtype]))
    empty = torch.ones(b, h, lq, lk, dtype=torch.bool)
    if mask is not None:
        empty = empty & mask
    if causal:
        empty = empty & torch.ones(lq, lk, dtype=torch.bool).tril()
    empty = ~empty.any(-1)                                              # (b, h, lq)
    assert torch.all(out[empty] == 0) and torch.all(got[0].grad[empty] == 0)
    for t, r in zip(got, ref):
        assert torch.isfinite(t.grad).all(), name
        if exact:
            assert _rel(t.grad, r.grad) <= GRAD_TOL[dtype], (name, params, dtype)
        elif name == "quant" and params["bits"] == 8 and dtype != "bf16":
            assert _rel(t.grad, r.grad) <= 5e-2, (name, dtype)


@hypothesis_settings
@given(st.integers(1, 40), st.integers(1, 6), st.sampled_from(list(DTYPES)), st.integers(0, 999))
def test_approx_softmax_with_minus_inf_equals_the_masked_softmax(n, S, dtype, seed):
    from softmax_approx.core import approx_softmax

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(3, n, generator=g) > 0.3
    x = x.masked_fill(~mask, float("-inf")).to(DTYPES[dtype])
    want = torch.softmax(x.double(), -1).nan_to_num(0.0)
    for policy in (p for p in POLICY_NAMES if not policy_class(p).recomputes):
        params = {"S": S} if policy == "paper" else {}
        out = approx_softmax(x, policy=policy, **params)
        assert _rel(out, want) <= FWD_TOL[dtype], policy
