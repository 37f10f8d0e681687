"""Core attention: exact forward for every policy, exact gradients where the policy is exact,
masks (padding anywhere, causal, per head, empty rows), dropout regeneration, invalid input."""

import math

import pytest
import torch

from softmax_approx.core import POLICY_NAMES, attention, make_policy, policy_class, valid_mask
from softmax_approx.core import dropout as core_dropout

# from the registry: a new policy joins these suites by itself
EXACT_POLICIES = tuple(p for p in POLICY_NAMES if policy_class(p).exact)
FUSED_POLICIES = tuple(p for p in POLICY_NAMES if not policy_class(p).native)
# parameters that make an approximate rebuild exact here (dV checked against the reference)
EXACT_REBUILD = {"topk": {"keep_ratio": 1.0}}


def reference_attention(q, k, v, mask=None, causal=False, keep=None, p=0.0):
    """Straightforward float64 attention; `keep` is an explicit dropout keep-mask."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    valid = valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(torch.isnan(probs), torch.zeros_like(probs), probs)  # empty rows -> 0
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


def make_inputs(b=2, h=3, lq=24, lk=24, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype) for n in (lq, lk, lk))
    return q, k, v


def masks(b=2, h=3, lq=24, lk=24):
    g = torch.Generator().manual_seed(1)
    padding = torch.rand(b, 1, 1, lk, generator=g) > 0.3            # padding anywhere
    padding[1, ..., :] = False                                      # a batch with no valid key
    per_head = torch.rand(b, h, lq, lk, generator=g) > 0.5          # per head, per query
    return {"none": None, "padding": padding, "per_head": per_head}


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("mask_kind", ["none", "padding", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_is_exact_for_every_policy(policy, mask_kind, causal):
    q, k, v = make_inputs()
    mask = masks()[mask_kind]
    want = reference_attention(q, k, v, mask, causal)
    got = attention(q.float(), k.float(), v.float(), mask=mask, causal=causal, policy=policy)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("policy", EXACT_POLICIES)
@pytest.mark.parametrize("mask_kind", ["none", "padding", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_policies_match_float64_gradients(policy, mask_kind, causal):
    q, k, v = make_inputs(lq=20, lk=24) if not causal else make_inputs()
    mask = masks(lq=q.shape[-2])[mask_kind]
    grad_out = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(reference_attention(*ref_in, mask, causal), ref_in, grad_out)
    got_in = [t.float().requires_grad_() for t in (q, k, v)]
    out = attention(*got_in, mask=mask, causal=causal, policy=policy)
    got = torch.autograd.grad(out, got_in, grad_out.float())
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("policy", FUSED_POLICIES)
def test_dropout_is_regenerated_bit_identically(policy):
    """Forward and gradients equal a float reference that used the very same keep-mask."""
    q, k, v = make_inputs(dtype=torch.float32)
    mask = masks()["padding"]
    p = 0.3
    torch.manual_seed(123)
    seed = core_dropout.draw_seed(torch.device("cpu"))
    keep = core_dropout.keep_mask(seed, (2, 3, 24, 24), p, torch.device("cpu"))
    grad_out = torch.randn_like(q)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = reference_attention(*ref_in, mask, False, keep=keep, p=p)
    want = torch.autograd.grad(ref_out, ref_in, grad_out)

    torch.manual_seed(123)                                           # same seed drawn inside
    got_in = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*got_in, mask=mask, dropout_p=p, policy=policy, **EXACT_REBUILD.get(policy, {}))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if not (policy_class(policy).exact or policy in EXACT_REBUILD):  # approximate backward
        return
    got = torch.autograd.grad(out, got_in, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_dropout_masks_differ_between_calls_and_respect_rate():
    q, k, v = make_inputs(dtype=torch.float32, lq=64, lk=64)
    torch.manual_seed(0)
    a = attention(q, k, v, dropout_p=0.5, policy="exact")
    b = attention(q, k, v, dropout_p=0.5, policy="exact")
    assert not torch.allclose(a, b)
    keep = core_dropout.keep_mask(torch.tensor([0, 7]), (200, 200), 0.25, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.75) < 0.01


def test_eval_mode_disables_dropout():
    q, k, v = make_inputs(dtype=torch.float32)
    want = attention(q, k, v, policy="exact")
    got = attention(q, k, v, dropout_p=0.5, training=False, policy="paper")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_rows_without_valid_keys_give_zero_output_and_zero_grad(policy):
    q, k, v = make_inputs(dtype=torch.float32)
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    mask[0, 0, 5] = False                                            # query 5 of batch 0 sees nothing
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*ins, mask=mask, policy=policy)
    assert torch.all(out[0, :, 5] == 0)
    out.sum().backward()
    for t in ins:
        assert torch.isfinite(t.grad).all()
    assert torch.all(ins[0].grad[0, :, 5] == 0)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_non_finite_logits_give_nan_rows_only_there(policy):
    """Documented behaviour: a NaN in a query makes that row NaN, other rows stay exact."""
    q, k, v = make_inputs(dtype=torch.float32)
    q[0, 0, 3, 0] = float("nan")
    out = attention(q, k, v, policy=policy)
    assert torch.isnan(out[0, 0, 3]).all()
    finite = torch.ones(out.shape[:-1], dtype=torch.bool)
    finite[0, 0, 3] = False
    assert torch.isfinite(out[finite]).all()


def test_causal_mask_blocks_the_future():
    q, k, v = make_inputs(dtype=torch.float32)
    out = attention(q, k, v, causal=True, policy="paper")
    k2, v2 = k.clone(), v.clone()
    k2[..., 10:, :] += 5.0
    v2[..., 10:, :] -= 3.0
    out2 = attention(q, k2, v2, causal=True, policy="paper")
    torch.testing.assert_close(out[..., :10, :], out2[..., :10, :])
    assert not torch.allclose(out[..., 10:, :], out2[..., 10:, :])


@pytest.mark.parametrize(
    "policy,params,fragment",
    [
        ("paper", {"S": 0}, "S must be an integer >= 1"),
        ("paper", {"S": 2.5}, "S must be an integer >= 1"),
        ("topk", {"keep_ratio": 0.0}, "keep_ratio must be in (0, 1]"),
        ("topk", {"keep_ratio": 1.5}, "keep_ratio must be in (0, 1]"),
        ("quant", {"bits": 3}, "bits must be one of 2, 4, 8"),
        ("nope", {}, "unknown policy 'nope'; choose one of eager, exact, paper"),
        ("paper", {"alpha": 3}, "unknown parameter(s) alpha; allowed: S"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(policy, params, fragment):
    with pytest.raises(ValueError) as err:
        make_policy(policy, **params)
    assert fragment in str(err.value)
    q, k, v = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError):
        attention(q, k, v, policy=policy, **params)


def test_bad_dropout_and_mask_dtype_are_rejected():
    q, k, v = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.0)
    with pytest.raises(TypeError, match="bool"):
        attention(q, k, v, mask=torch.ones(24, 24, dtype=torch.long))


def test_policy_params_are_exactly_the_declared_parameters():
    assert make_policy("paper").params == {"S": 5}
    assert make_policy("topk", keep_ratio=0.5).params == {"keep_ratio": 0.5}
    assert make_policy("eager").params == {}
    with pytest.raises(ValueError, match="unknown parameter.*foo; allowed: none"):
        make_policy("eager", foo=1)
