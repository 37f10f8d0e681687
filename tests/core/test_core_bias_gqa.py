"""What real models pass to attention: additive bias (with its gradient), float masks,
grouped-/multi-query heads, a given scale; every policy against a float64 reference."""

import math

import pytest
import torch

from softmax_approx.core import POLICY_NAMES, ActivationMeter, attention

# parameters that make the approximate policies' rebuild exact on these sizes (Lk <= 2S, all
# kept), so every policy's gradients are checked tightly; quant keeps its 8-bit error
EXACTISH = {"paper": {"S": 8}, "topk": {"keep_ratio": 1.0}}


def reference(q, k, v, mask=None, bias=None, causal=False, scale=None):
    """float64, K/V repeated explicitly, empty rows zero."""
    hq = q.shape[-3]
    k = k.repeat_interleave(hq // k.shape[-3], dim=-3)
    v = v.repeat_interleave(hq // v.shape[-3], dim=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def _inputs(hq=4, hkv=2, lq=10, lk=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, hkv, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, hkv, lk, d + 2, generator=g, dtype=torch.float64)
    return q, k, v, g


def _compare(policy, q, k, v, g, dtype=torch.float32, **kw):
    params = EXACTISH.get(policy, {})
    leaves = {name: t for name, t in (("q", q), ("k", k), ("v", v), ("bias", kw.get("bias"))) if t is not None}
    ref = {n: t.clone().requires_grad_() for n, t in leaves.items()}
    got = {n: t.to(dtype).clone().requires_grad_() for n, t in leaves.items()}
    other = {key: val for key, val in kw.items() if key != "bias"}
    want = reference(ref["q"], ref["k"], ref["v"], bias=ref.get("bias"), **other)
    out = attention(got["q"], got["k"], got["v"], bias=got.get("bias"), policy=policy, **params, **other)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-4)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    out.backward(grad.to(dtype))
    for n in leaves:
        assert got[n].grad is not None and got[n].grad.shape == leaves[n].shape, n
        if policy == "quant":  # 8-bit probabilities: a relative error of a few percent
            err = (got[n].grad.double() - ref[n].grad).norm() / ref[n].grad.norm()
            assert err < 0.05, (n, err.item())
        else:
            torch.testing.assert_close(got[n].grad.double(), ref[n].grad, atol=1e-5, rtol=1e-4, msg=f"{policy}: grad {n}")


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_bias_gradient_broadcast_over_batch_like_t5_position_bias(policy):
    q, k, v, g = _inputs(hkv=4)
    bias = torch.randn(1, 4, 10, 12, generator=g, dtype=torch.float64)   # one bias per head, shared by the batch
    _compare(policy, q, k, v, g, bias=bias)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_hf_style_additive_mask_with_minus_inf_and_finfo_min(policy):
    q, k, v, g = _inputs(hkv=4)
    bias = torch.zeros(2, 1, 1, 12, dtype=torch.float64)
    bias[0, ..., 9:] = float("-inf")                                     # padding as -inf
    bias[1, ..., 10:] = torch.finfo(torch.float64).min                   # padding as HF's finfo.min
    _compare(policy, q, k, v, g, mask=None, bias=bias)


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("hkv", [1, 2])
def test_grouped_and_multi_query_heads_with_bool_mask_and_scale(policy, hkv):
    q, k, v, g = _inputs(hq=4, hkv=hkv)
    mask = torch.rand(2, 1, 10, 12, generator=g) > 0.3
    mask[0, 0, 3] = False                                                # an empty row
    _compare(policy, q, k, v, g, mask=mask, scale=0.3)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_alibi_slopes_with_causal_mask_in_bf16_are_close(policy):
    q, k, v, g = _inputs(hq=4, hkv=4, lq=12, lk=12)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)[:, None, None]
    pos = torch.arange(12, dtype=torch.float64)
    bias = (-(pos[:, None] - pos[None, :]).abs() * slopes)[None]         # ALiBi, (1, H, L, L)
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, bias=bias.to(torch.bfloat16), causal=True, policy=policy, **EXACTISH.get(policy, {}))
    want = reference(q, k, v, bias=bias, causal=True)
    torch.testing.assert_close(out.double(), want, atol=3e-2, rtol=3e-2)


def test_fused_policies_do_not_save_repeated_keys_and_values():
    q, k, v, _ = _inputs(hq=8, hkv=2, lq=16, lk=16)
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    with ActivationMeter() as meter:
        attention(q, k, v, policy="recompute")
    r = meter.report()
    assert r.attention_bytes == 4 * (q.numel() + k.numel() + v.numel()) + r.softmax_state_bytes
    assert r.softmax_state_bytes == 4 * 2 * 8 * 16                       # one fp32 lse per row


def test_additive_float_mask_goes_to_bias_and_bool_mask_means_may_attend():
    q, k, v, g = _inputs(hkv=4)
    keep = torch.rand(2, 1, 10, 12, generator=g) > 0.4
    additive = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    a = attention(q, k, v, mask=keep, policy="paper")
    b = attention(q, k, v, bias=additive, policy="paper")
    torch.testing.assert_close(a, b)


def test_head_counts_that_do_not_divide_raise_one_clear_error():
    q = torch.randn(1, 6, 4, 8)
    k = v = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="q has 6 heads but k has 4; grouped-query attention"):
        attention(q, k, v)
    with pytest.raises(TypeError, match="bias must be a float tensor"):
        attention(q, q, q, bias=torch.zeros(4, 4, dtype=torch.long))
