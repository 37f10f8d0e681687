"""Policies: the paper's rebuild against an independent re-derivation, topk, quant, index
dtypes, and approx_softmax."""

import math

import numpy as np
import pytest
import torch

from softmax_approx.core import POLICY_NAMES, approx_softmax, index_dtype, make_policy, masked_softmax, policy_class, valid_mask
from softmax_approx.core.policies import Paper


def paper_rebuild_reference(row: np.ndarray, valid: np.ndarray, S: int) -> np.ndarray:
    """METHOD.md, step by step, one row at a time, in float64 numpy."""
    out = np.zeros_like(row)
    idx = np.flatnonzero(valid)
    L = len(idx)
    if L == 0:
        return out
    if L <= 2 * S:
        out[idx] = row[idx]
        return out
    order = idx[np.argsort(-row[idx], kind="stable")]
    s = row[order]
    h, low, e, N = s[S - 1], s[L - S], s[S], L - 2 * S + 1
    r = (math.log(h / low) + 2 * (h - e)) / (N * (1 - h))
    j = np.arange(1, L - 2 * S + 1)
    u = h * np.exp(-r * j)
    missing = max(0.0, 1.0 - s[:S].sum() - s[L - S :].sum())
    u = u * missing / u.sum()
    rebuilt = np.concatenate([s[:S], u, s[L - S :]])
    out[order] = rebuilt
    return out


def random_rows(n, rows, mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, n, generator=g, dtype=torch.float64) * 2.0
    if mask_kind == "none":
        valid = None
    elif mask_kind == "padding":
        valid = torch.rand(rows, n, generator=g) > torch.rand(rows, 1, generator=g)
        valid[0] = False                                            # a fully masked row
        valid[1] = False
        valid[1, :3] = True                                         # a row with <= 2S entries
    else:                                                           # causal: row i sees 0..i
        valid = valid_mask(None, True, n, n, torch.device("cpu"))[:rows]
    probs, _ = masked_softmax(logits, valid)
    return probs.float(), valid


@pytest.mark.parametrize("n", [7, 40, 256, 300, 1000])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal"])
def test_paper_rebuild_matches_independent_derivation(n, mask_kind):
    S = 5
    rows = min(n, 48)
    probs, valid = random_rows(n, rows, mask_kind, seed=n)
    policy = make_policy("paper", S=S)
    state = policy.compress(probs, None if valid is None else valid)
    full_valid = torch.ones_like(probs, dtype=torch.bool) if valid is None else valid
    rebuilt = policy.restore(state, full_valid)
    assert state[0].dtype == torch.uint8                             # ranks: one byte (+ packed high bits)
    order = Paper.sort_order(state)
    assert sorted(order[-1].tolist()) == list(range(n))              # a permutation
    for i in range(rows):
        want = paper_rebuild_reference(probs[i].double().numpy(), full_valid[i].numpy(), S)
        np.testing.assert_allclose(rebuilt[i].double().numpy(), want, atol=2e-6, rtol=1e-4)
    sums = rebuilt.double().sum(-1)
    has_valid = full_valid.any(-1)
    torch.testing.assert_close(sums[has_valid], torch.ones_like(sums[has_valid]), atol=1e-5, rtol=0)
    assert torch.all(rebuilt[~full_valid] == 0)


def test_paper_keeps_short_rows_exactly():
    probs, valid = random_rows(12, 12, "causal", seed=3)              # rows with 1..12 valid
    policy = make_policy("paper", S=5)
    rebuilt = policy.restore(policy.compress(probs, valid), valid)
    torch.testing.assert_close(rebuilt[:10], probs[:10], atol=0, rtol=0)  # L <= 2S = 10
    assert not torch.allclose(rebuilt[11], probs[11])


def test_ranks_do_not_overflow_beyond_256():
    n = 300
    probs = torch.softmax(torch.linspace(0, 5, n), -1)[None]          # strictly increasing
    policy = make_policy("paper", S=5)
    order = Paper.sort_order(policy.compress(probs, None))  # sort permutation (the ranks' inverse)
    assert order[0].tolist() == list(range(n - 1, -1, -1))
    assert index_dtype(256) == torch.uint8 and index_dtype(257) == torch.int16
    assert index_dtype(40000) == torch.int32


def test_topk_with_keep_ratio_one_is_exact():
    probs, valid = random_rows(40, 40, "padding", seed=5)
    policy = make_policy("topk", keep_ratio=1.0)
    rebuilt = policy.restore(policy.compress(probs, valid), valid)
    torch.testing.assert_close(rebuilt, probs, atol=0, rtol=0)


def test_topk_keeps_largest_and_refills_uniformly():
    probs, valid = random_rows(64, 32, "padding", seed=6)
    policy = make_policy("topk", keep_ratio=0.25)
    values, indices, _ = state = policy.compress(probs, valid)
    assert indices.dtype == torch.uint8
    rebuilt = policy.restore(state, valid)
    for i in range(2, 32):
        L = int(valid[i].sum())
        k = math.ceil(0.25 * L)
        top = probs[i].topk(k).indices
        torch.testing.assert_close(rebuilt[i, top], probs[i, top])
        evicted = valid[i].clone()
        evicted[top] = False
        if evicted.any():
            fill = rebuilt[i, evicted]
            assert torch.allclose(fill, fill[0].expand_as(fill))
            assert abs(rebuilt[i].sum().item() - 1.0) < 1e-5
        assert torch.all(rebuilt[i, ~valid[i]] == 0)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quant_is_within_quantization_error(bits):
    probs, valid = random_rows(37, 16, "padding", seed=7)            # odd n exercises packing
    policy = make_policy("quant", bits=bits)
    state = policy.compress(probs, valid)
    assert state[0].dtype == torch.uint8
    assert state[0].shape[-1] == math.ceil(37 * bits / 8)
    rebuilt = policy.restore(state, valid)
    step = probs.amax(-1, keepdim=True) / (2**bits - 1)
    assert torch.all((rebuilt - probs).abs() <= step / 2 + 1e-7)
    assert torch.all(rebuilt[~valid] == 0)


@pytest.mark.parametrize("policy,params", [(p, {"paper": {"S": 3}, "topk": {"keep_ratio": 0.5}}.get(p, {}))
                                           for p in POLICY_NAMES if not policy_class(p).recomputes])
def test_approx_softmax_forward_is_exact_and_gradient_close(policy, params):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 6, 50, generator=g) * 3).requires_grad_()
    mask = torch.rand(4, 1, 50, generator=g) > 0.2
    out = approx_softmax(x, dim=-1, mask=mask, policy=policy, **params)
    want = torch.softmax(x.detach().masked_fill(~mask, float("-inf")), -1)
    torch.testing.assert_close(out.detach(), want)
    grad = torch.randn(4, 6, 50, generator=g)
    (gx,) = torch.autograd.grad(out, x, grad)
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(torch.softmax(xr.masked_fill(~mask, float("-inf")), -1), xr, grad)
    cos = torch.nn.functional.cosine_similarity(gx.flatten(), gr.flatten(), 0).item()
    assert cos > (0.999999 if policy_class(policy).exact else 0.9)


def test_approx_softmax_other_dim_and_rejects_attention_only_policies():
    x = torch.randn(5, 7, 3, requires_grad=True)
    out = approx_softmax(x, dim=1, policy="exact")
    torch.testing.assert_close(out, torch.softmax(x, 1))
    with pytest.raises(ValueError, match="use softmax_approx.core.attention"):
        approx_softmax(x, policy="recompute")


def test_topk_without_mask_keeps_the_largest_and_sums_to_one():
    probs, _ = random_rows(64, 16, "none", seed=8)              # unmasked rows: unsorted top-k path
    policy = make_policy("topk", keep_ratio=0.25)
    full = torch.ones_like(probs, dtype=torch.bool)
    rebuilt = policy.restore(policy.compress(probs, None), full)
    top = probs.topk(16, dim=-1).indices
    torch.testing.assert_close(rebuilt.gather(-1, top), probs.gather(-1, top))
    torch.testing.assert_close(rebuilt.sum(-1), torch.ones(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [257, 512, 1024, 2048])
def test_packed_ranks_rebuild_bit_identically_to_unpacked_ranks(n):
    probs, valid = random_rows(n, 12, "padding", seed=n)
    policy = make_policy("paper", S=5)
    state = policy.compress(probs, valid)
    low, high = state[:2]
    width = {257: 1, 512: 1, 1024: 2, 2048: 4}[n]
    assert low.dtype == high.dtype == torch.uint8
    assert low.shape[-1] == n and high.shape[-1] == math.ceil(n * width / 8)   # ~ceil(log2 n) bits
    order = Paper.sort_order(state)
    unpacked = (order.to(torch.int16), None, *state[2:])
    packed_rebuild = policy.restore(state, valid)
    torch.testing.assert_close(packed_rebuild, policy.restore(unpacked, valid), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [7, 256, 300])
def test_descending_order_is_fully_determined(dtype, n, monkeypatch):
    """One permutation for every sort backend: descending, ties by index, invalid entries last."""
    from softmax_approx.core import ranks

    g = torch.Generator().manual_seed(n)
    # few distinct values, so that most entries tie; zeros among the valid ones
    probs = torch.randint(0, 4, (6, n), generator=g).to(dtype) / 8
    valid = torch.rand(6, n, generator=g) > 0.3
    valid[0] = False                                            # an empty row
    probs = probs.masked_fill(~valid, 0.0)
    order = ranks.descending_order(probs, valid)
    # reference: python's sort on (invalid, -value, index)
    for row in range(6):
        ref = sorted(range(n), key=lambda j: (not valid[row, j].item(), -probs[row, j].item(), j))
        assert order[row].tolist() == ref
    # compiled code gets the same permutation (the sort is one opaque custom op) ...
    compiled = torch.compile(ranks.descending_order, backend="eager", fullgraph=True)(probs, valid)
    assert torch.equal(compiled, order)
    # ... and so does torch.sort (the CUDA branch), since every key is unique: any sort agrees
    monkeypatch.setattr(ranks, "argsort_rows", lambda key: key.sort(dim=-1).indices)
    assert torch.equal(ranks.descending_order(probs, valid), order)
    assert torch.equal(ranks.descending_order(probs, None)[1:], ranks.descending_order(probs[1:], None))
