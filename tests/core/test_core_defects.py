"""Regression tests for the core's edge-path defects, one per defect: each failed before its
fix."""

import math

import pytest
import torch

from softmax_approx.core import POLICY_NAMES, approx_softmax, attention, make_policy, policy_class
from softmax_approx.core.policies import Paper

# from the registry: a new policy joins these suites by itself
FUSED = tuple(p for p in POLICY_NAMES if not policy_class(p).native)      # the fused function's
APPROX = tuple(p for p in FUSED if not policy_class(p).recomputes)        # approx_softmax's too
MINUS_INF_PARAMS = {"paper": {"S": 2}, "topk": {"keep_ratio": 0.25}}
# parameters that make an approximate rebuild exact here (the gradients follow exactly)
EXACT_REBUILD = {"topk": {"keep_ratio": 1.0}}


def _softmax_grad(x, grad, mask=None):
    """float64 exact softmax gradient (masked entries -inf)."""
    x = x.detach().double().clone().requires_grad_()
    logits = x if mask is None else x.masked_fill(~mask, float("-inf"))
    torch.softmax(logits, -1).backward(grad.double())
    return x.grad


# 1 ---------------------------------------------------------------- paper: top value rounds to 1
@pytest.mark.parametrize(
    "n,peak,dtype,S",
    [(8, 30.0, torch.float32, 1), (512, 50.0, torch.float64, 1), (8, 30.0, torch.bfloat16, 1)],
)
def test_paper_gradient_is_finite_when_the_top_probability_rounds_to_one(n, peak, dtype, S):
    x = torch.zeros(1, n, dtype=dtype)
    x[0, 0] = peak
    x.requires_grad_()
    grad = torch.randn(1, n, generator=torch.Generator().manual_seed(0), dtype=dtype)
    approx_softmax(x, policy="paper", S=S).backward(grad)
    assert torch.isfinite(x.grad).all()
    atol = {torch.float64: 1e-9, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(x.grad.double(), _softmax_grad(x, grad), atol=atol, rtol=0)


def test_paper_attention_with_a_score_gap_of_40_has_finite_gradients():
    q = torch.zeros(1, 1, 4, 8)
    k = torch.zeros(1, 1, 8, 8)
    q[..., 0] = 1.0
    k[..., 0, 0] = 40.0 * math.sqrt(8)                                # key 0 scores 40 above the rest
    k[..., 1:, 0] = torch.linspace(0, 1, 7)
    ins = [t.clone().requires_grad_() for t in (q, k, torch.randn(1, 1, 8, 8))]
    attention(*ins, policy="paper", S=1).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in ins)


# 2 ---------------------------------------------------------------- dropout, broadcast batch dims
def _check_broadcast_dropout(policy, q, k, v, mask):
    """v = identity, so out = the dropped probabilities: the gradients follow from it exactly."""
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    params = EXACT_REBUILD.get(policy, {})
    out = attention(*ins, mask=mask, dropout_p=0.5, policy=policy, **params)
    g = torch.randn_like(out)
    out.backward(g)
    dropped = out.detach()
    want_v = (dropped.transpose(-2, -1) @ g).sum_to_size(v.shape)
    torch.testing.assert_close(ins[2].grad, want_v)
    # q, k: the float64 reference with the keep-mask read off the output (probs > 0 everywhere valid)
    ref = [t.clone().double().requires_grad_() for t in (q, k)]
    scores = ref[0] @ ref[1].transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    keep = (dropped != 0).double() * 2.0
    (torch.softmax(scores, -1) * keep).backward(g.double())
    for got, want in zip(ins[:2], ref):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy", ("exact", "recompute"))
def test_dropout_with_broadcast_key_batch_gives_the_right_gradient(policy):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    _check_broadcast_dropout(policy, q, k, torch.eye(5).expand(3, 2, 5, 5), None)


@pytest.mark.parametrize("policy", FUSED)
def test_dropout_with_a_mask_of_larger_batch_than_q(policy):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 5, 4, generator=g), torch.randn(1, 2, 5, 4, generator=g)
    mask = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    if policy_class(policy).exact or policy in EXACT_REBUILD:
        _check_broadcast_dropout(policy, q, k, torch.eye(5).expand(1, 2, 5, 5), mask)
    else:  # approximate backward: it runs and is finite
        ins = [t.clone().requires_grad_() for t in (q, k, torch.eye(5).expand(1, 2, 5, 5))]
        attention(*ins, mask=mask, dropout_p=0.5, policy=policy).sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in ins)


# 3, 4 ------------------------------------------------------------ recompute / paper precision
def _grad_rel_err(policy, dtype, q, k, v, **params):
    ins = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(3))
    attention(*ins, policy=policy, **params).backward(g.to(dtype))
    ref = [t.detach().double().clone().requires_grad_() for t in (q, k, v)]
    attention(*ref, policy="eager").backward(g.double())
    got = torch.cat([t.grad.double().flatten() for t in ins])
    want = torch.cat([t.grad.flatten() for t in ref])
    return ((got - want).norm() / want.norm()).item()


def test_recompute_in_bf16_with_large_logits_is_as_accurate_as_exact():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 32, 16, generator=gen) * 8
    k = torch.randn(1, 2, 32, 16, generator=gen) * 8
    q, k = q.bfloat16().double(), k.bfloat16().double()               # logits up to ~240
    v = torch.randn(1, 2, 32, 16, generator=gen).bfloat16().double()
    assert (q @ k.transpose(-2, -1)).abs().max() / 4 > 150
    err_exact = _grad_rel_err("exact", torch.bfloat16, q, k, v)
    err_recompute = _grad_rel_err("recompute", torch.bfloat16, q, k, v)
    assert err_recompute <= 1.5 * err_exact + 0.02, (err_recompute, err_exact)


def test_recompute_is_exact_in_float64():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 24, 8, generator=gen, dtype=torch.float64) * 3 for _ in range(3))
    assert _grad_rel_err("recompute", torch.float64, q, k, v) < 1e-12


def test_paper_state_follows_float64_and_rebuilds_peaked_rows_to_float64_precision():
    x = torch.zeros(4, 64, dtype=torch.float64)
    x[:, 0] = torch.tensor([12.0, 20.0, 28.0, 33.0])                   # peaked rows
    x[:, 1:] = torch.linspace(0, -3, 63, dtype=torch.float64)
    probs = torch.softmax(x, -1)
    policy = make_policy("paper", S=5)
    state = policy.compress(probs, None)
    assert state[-2].dtype == torch.float64                           # the rate
    rebuilt = policy.restore(state, torch.ones_like(probs, dtype=torch.bool))
    # the same rebuild done by hand in float64 (sorted rows: middle = decay rescaled to the missing mass)
    for i in range(4):
        s = probs[i]
        h, low, e, N = s[4], s[59], s[5], 64 - 10 + 1
        r = (math.log(h / low) + 2 * (h - e)) / (N * (1 - h))
        u = h * torch.exp(-r * torch.arange(1, 55, dtype=torch.float64))
        u = u * (1 - s[:5].sum() - s[59:].sum()) / u.sum()
        torch.testing.assert_close(rebuilt[i, 5:59], u, atol=1e-15, rtol=1e-9)


# 5 --------------------------------------------------------------- topk: one rounding rule
def test_topk_restored_rows_sum_to_one_when_ratio_times_length_is_an_integer():
    probs = torch.softmax(torch.randn(16, 100, generator=torch.Generator().manual_seed(5), dtype=torch.float64), -1)
    policy = make_policy("topk", keep_ratio=0.07)
    state = policy.compress(probs, None)
    assert state[0].shape[-1] == 7
    rebuilt = policy.restore(state, torch.ones_like(probs, dtype=torch.bool))
    torch.testing.assert_close(rebuilt.sum(-1), torch.ones(16, dtype=torch.float64), atol=1e-12, rtol=0)


# 6 --------------------------------------------------------------- approx_softmax: one behaviour
def test_approx_softmax_eager_broadcast_mask_on_another_dim():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6))
    # key column 1 is masked for every query (dim 1): that column's softmax is empty -> 0
    mask = torch.tensor([[True, False, True, True], [True, False, False, True], [False, False, True, True]])
    want = torch.softmax(x.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
    for policy in ("eager",) + APPROX:
        torch.testing.assert_close(approx_softmax(x, dim=1, mask=mask, policy=policy), want, msg=policy)


@pytest.mark.parametrize("policy", ("eager",) + APPROX)
def test_approx_softmax_all_minus_inf_row_is_zero_with_zero_gradient(policy):
    x = torch.randn(3, 6)
    x[1] = float("-inf")
    x.requires_grad_()
    out = approx_softmax(x, policy=policy)
    assert torch.all(out[1] == 0)
    out.backward(torch.randn(3, 6))
    assert torch.all(x.grad[1] == 0) and torch.isfinite(x.grad).all()


# 7 --------------------------------------------------------------- quant: integer bits only
def test_quant_rejects_float_bits_with_a_clear_error():
    with pytest.raises(ValueError, match="bits must be one of 2, 4, 8"):
        make_policy("quant", bits=8.0)


# 8 --------------------------------------------------------------- double backward
@pytest.mark.parametrize("policy", FUSED)
@pytest.mark.parametrize("loss", ["square", "linear"])
def test_double_backward_raises_instead_of_being_silently_wrong(policy, loss):
    """create_graph=True is refused at the first backward: with a linear loss the upstream
    gradient carries no graph, and a gradient without grad_fn made second-order terms 0."""
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, policy=policy)
    with pytest.raises(RuntimeError, match="second-order gradients .* policy='eager'"):
        torch.autograd.grad(out.pow(2).sum() if loss == "square" else out.sum(), q, create_graph=True)


def test_double_backward_of_eager_is_right():
    q, k, v = (torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradgradcheck(lambda q, k, v: attention(q, k, v, policy="eager"), (q, k, v))


def test_approx_softmax_double_backward_raises():
    x = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(approx_softmax(x, policy="paper", S=2).sum(), x, create_graph=True)


# 9 --------------------------------------------------------------- -inf logits act as a mask
@pytest.mark.parametrize("policy,params", [(p, MINUS_INF_PARAMS.get(p, {})) for p in APPROX])
def test_minus_inf_logits_act_exactly_like_a_mask(policy, params):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 40, generator=gen, dtype=torch.float64) * 2
    mask = torch.rand(4, 40, generator=gen) > 0.4
    grad = torch.randn(4, 40, generator=gen, dtype=torch.float64)
    a = x.masked_fill(~mask, float("-inf")).requires_grad_()
    approx_softmax(a, policy=policy, **params).backward(grad)
    b = x.clone().requires_grad_()
    approx_softmax(b, mask=mask, policy=policy, **params).backward(grad)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=0)
    assert torch.all(a.grad[~mask] == 0)


@pytest.mark.parametrize("policy", FUSED)
def test_minus_inf_bias_acts_exactly_like_a_bool_mask_in_attention(policy):
    gen = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(2, 2, 12, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 1, 12, 12, generator=gen) > 0.3
    bias = torch.zeros(2, 1, 12, 12, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    g = torch.randn(2, 2, 12, 8, generator=gen, dtype=torch.float64)
    grads = []
    for kw in ({"mask": mask}, {"bias": bias}):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        attention(*ins, policy=policy, **kw).backward(g)
        grads.append([t.grad for t in ins])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_packed_sort_order_is_a_permutation_at_every_packed_width():
    for n in (257, 512, 1000, 1024, 2049, 4096):
        probs = torch.softmax(torch.randn(3, n, generator=torch.Generator().manual_seed(n)), -1)
        state = make_policy("paper").compress(probs, None)
        order = Paper.sort_order(state)
        assert torch.equal(order.sort(-1).values, torch.arange(n).expand(3, n))
        assert torch.all(probs.gather(-1, order).diff(dim=-1) <= 0)    # sorted descending
