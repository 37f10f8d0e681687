"""The blocked CPU path of the ``recompute`` policy (core/blocked.py) against a float64
reference built from the same seeded mask, and against the unblocked path: the same dropout
mask bit for bit, the same values up to float rounding, on every shape the core accepts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmax_approx.core import attention, blocked
from softmax_approx.core import dropout as core_dropout

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    """The blocked path runs with one intra-op thread only (blocked.applies)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few scores, so every test shape splits into head groups or row blocks."""
    def use(n):
        monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", n)
    return use


def _unblocked(monkeypatch):
    monkeypatch.setattr(blocked, "applies", lambda *a: False)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 400), max_size=4), seed=st.integers(0, 2**31 - 1))
def test_uniform_stream_pieces_join_into_the_whole_draw(shape, cuts, seed):
    s = torch.tensor([seed, seed // 3])
    whole = core_dropout.keep_scale(s, torch.Size(shape), 0.3, torch.device("cpu")).flatten()
    n = whole.numel()
    edges = sorted({0, n, *(c % (n + 1) for c in cuts)})
    stream = core_dropout.UniformStream(s)
    pieces = [stream.keep_scale(torch.Size([b - a]), 0.3) for a, b in zip(edges, edges[1:])]
    assert torch.equal(torch.cat(pieces), whole)


def _reference(q, k, v, seed, p, scale, mask=None, causal=False, bias=None):
    """float64 autograd of softmax(q k^T scale + bias, masked) * keep(seed) @ v, empty rows 0."""
    heads = q.shape[-3]
    k = k.repeat_interleave(heads // k.shape[-3], -3)
    v = v.repeat_interleave(heads // v.shape[-3], -3)
    s = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        s = s + bias
    shape = s.shape
    valid = torch.ones(shape, dtype=torch.bool)
    if mask is not None:
        valid = valid & mask
    if causal:
        valid = valid & torch.ones(shape[-2:], dtype=torch.bool).tril()
    s = s.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(s, -1).nan_to_num(0.0)
    if p > 0:
        probs = probs * core_dropout.keep_scale(seed, shape, p, torch.device("cpu"), torch.float64)
    return probs @ v


CASES = {
    "row blocks": dict(hq=3, hkv=3, lq=40, lk=40, block=64),
    "head groups": dict(hq=3, hkv=3, lq=40, lk=40, block=40 * 40 * 2),
    "causal, grouped-query": dict(hq=4, hkv=2, lq=24, lk=24, block=100, causal=True),
    "padding mask, empty rows": dict(hq=3, hkv=3, lq=24, lk=30, block=100, mask=True),
    "bias without gradient": dict(hq=2, hkv=2, lq=20, lk=20, block=100, bias=True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_blocked_recompute_matches_the_float64_reference(case, p, small_blocks):
    c = CASES[case]
    small_blocks(c["block"])
    g = torch.Generator().manual_seed(1)
    dt = torch.float64
    q = torch.randn(2, c["hq"], c["lq"], 8, generator=g, dtype=dt, requires_grad=True)
    k = torch.randn(2, c["hkv"], c["lk"], 8, generator=g, dtype=dt, requires_grad=True)
    v = torch.randn(2, c["hkv"], c["lk"], 5, generator=g, dtype=dt, requires_grad=True)
    mask = bias = None
    if c.get("mask"):
        mask = torch.rand(2, 1, c["lq"], c["lk"], generator=g) > 0.4
        mask[0, 0, :3] = False  # three rows with no valid key
    if c.get("bias"):
        bias = torch.randn(1, c["hq"], c["lq"], c["lk"], generator=g, dtype=dt)
    kw = dict(mask=mask, causal=c.get("causal", False), bias=bias)
    torch.manual_seed(5)
    seed = core_dropout.draw_seed()
    torch.manual_seed(5)
    out = attention(q, k, v, dropout_p=p, policy="recompute", **kw)
    go = torch.randn(out.shape, generator=g, dtype=dt)
    got = torch.autograd.grad(out, (q, k, v), go)
    ref = _reference(q, k, v, seed, p, 8 ** -0.5, **kw)
    want = torch.autograd.grad(ref, (q, k, v), go)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_blocked_and_unblocked_drop_the_same_entries(small_blocks, monkeypatch):
    """v = identity: the output is the dropped probabilities, so its zeros are the mask."""
    small_blocks(50)  # row blocks of 2 rows
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 25, 8, generator=g) for _ in range(2))
    v = torch.eye(25).expand(2, 3, 25, 25)

    def run():
        torch.manual_seed(11)
        return attention(q.requires_grad_(), k, v, dropout_p=0.3, policy="recompute")

    got = run().detach()
    _unblocked(monkeypatch)
    want = run().detach()
    assert 0.2 < (want == 0).float().mean() < 0.4
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_gradients_equal_the_unblocked_path(dtype, small_blocks, monkeypatch):
    small_blocks(100)
    g = torch.Generator().manual_seed(2)
    ins = [torch.randn(2, 3, 30, 16, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    go = torch.randn(2, 3, 30, 16, generator=g).to(dtype)

    def grads():
        torch.manual_seed(4)
        out = attention(*ins, dropout_p=0.1, policy="recompute")
        return (out, *torch.autograd.grad(out, ins, go))

    got = grads()
    _unblocked(monkeypatch)
    want = grads()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b, **tol)


def test_no_grad_pass_equals_the_fused_forward_bit_for_bit(small_blocks):
    """The first pass of a reentrant checkpoint and its recomputation must agree exactly."""
    small_blocks(64)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 33, 8, generator=g, requires_grad=True) for _ in range(3))
    torch.manual_seed(9)
    with torch.no_grad():
        first = attention(q, k, v, dropout_p=0.2, policy="recompute")
    torch.manual_seed(9)
    again = attention(q, k, v, dropout_p=0.2, policy="recompute")
    assert torch.equal(first, again.detach())


def test_blocked_path_is_eager_cpu_one_thread_only(monkeypatch):
    q = torch.randn(1, 2, 4, 8)
    shape = torch.Size([1, 2, 4, 4])
    assert blocked.applies(q, q, shape)
    assert not blocked.applies(q.to("meta"), q.to("meta"), shape)
    assert not blocked.applies(q, torch.randn(3, 2, 4, 8), shape)  # v broadcasts beyond the scores
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not blocked.applies(q, q, shape)


def test_blocked_forward_is_what_runs(monkeypatch):
    """The fused recompute call takes the blocked path (so the tests above test it)."""
    calls = []
    real = blocked.forward
    monkeypatch.setattr(blocked, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    attention(q, q, q, dropout_p=0.1, policy="recompute").sum().backward()
    assert calls == [1]
