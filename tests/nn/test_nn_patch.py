"""softmax_approx.nn.patch: torch.nn.MultiheadAttention (and nn.Transformer*) run a core policy.

Every equivalence test compares the patched module with an unpatched deep copy of itself
(PyTorch's own implementation, same weights) in fp32: forward within 1e-5, gradients within 1e-4.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from softmax_approx.core import ActivationMeter
from softmax_approx.nn import PolicyMultiheadAttention, patch, unpatch

E, H, L, S, N = 16, 4, 6, 7, 3


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _run(module, args, kwargs):
    module.zero_grad()
    ins = [a.detach().clone().requires_grad_() for a in args]
    out = module(*ins, **kwargs)
    out = out[0] if isinstance(out, tuple) else out  # MHA returns (output, weights)
    w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * w).sum().backward()
    return out.detach(), _grads(module), [i.grad for i in ins]


def _compare(ref: nn.Module, args, kwargs, policy="exact", atol_out=1e-5, atol_grad=1e-4):
    torch.manual_seed(0)
    ours = copy.deepcopy(ref)
    assert patch(ours, policy) == [""]
    assert isinstance(ours, PolicyMultiheadAttention)
    out_ref, g_ref, gi_ref = _run(ref, args, kwargs)
    out, g, gi = _run(ours, args, kwargs)
    torch.testing.assert_close(out, out_ref, atol=atol_out, rtol=0)
    assert g.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=atol_grad, rtol=0, msg=k)
    for a, b in zip(gi, gi_ref):
        torch.testing.assert_close(a, b, atol=atol_grad, rtol=0)


def _inputs(batch_first: bool, kdim=E, vdim=E, self_attn=False):
    g = torch.Generator().manual_seed(1)
    shape = (lambda n, d: (N, n, d)) if batch_first else (lambda n, d: (n, N, d))
    q = torch.randn(*shape(L, E), generator=g)
    if self_attn:
        return q, q, q
    return q, torch.randn(*shape(S, kdim), generator=g), torch.randn(*shape(S, vdim), generator=g)


def _padding(src_len: int) -> torch.Tensor:
    kpm = torch.zeros(N, src_len, dtype=torch.bool)   # True = ignore (PyTorch's convention)
    kpm[0, -2:] = True
    kpm[2, -1] = True
    return kpm


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", ["plain", "key_padding", "bool_mask", "float_mask", "float_padding", "per_head_mask", "all"])
def test_forward_and_gradients_equal_pytorch(batch_first, case):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first)
    args = _inputs(batch_first)
    kw: dict = {"need_weights": False}
    g = torch.Generator().manual_seed(2)
    if case in ("key_padding", "all"):
        kw["key_padding_mask"] = _padding(S)
    if case == "float_padding":
        kw["key_padding_mask"] = torch.where(_padding(S), float("-inf"), 0.0)
    if case in ("bool_mask", "all"):
        m = torch.rand(L, S, generator=g) < 0.3
        m[:, 0] = False  # every query keeps at least one key
        kw["attn_mask"] = m
    if case == "float_mask":
        kw["attn_mask"] = torch.randn(L, S, generator=g)
    if case == "per_head_mask":
        kw["attn_mask"] = torch.randn(N * H, L, S, generator=g)
    _compare(ref, args, kw)


@pytest.mark.parametrize("batch_first", [True, False])
def test_is_causal_self_attention(batch_first):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first)
    causal = nn.Transformer.generate_square_subsequent_mask(L)   # float, -inf above the diagonal
    args = _inputs(batch_first, self_attn=True)
    _compare(ref, args, {"need_weights": False, "attn_mask": causal, "is_causal": True})
    bool_causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    _compare(ref, args, {"need_weights": False, "attn_mask": bool_causal, "is_causal": True,
                         "key_padding_mask": _padding(L)})


@pytest.mark.parametrize("options", [
    {"kdim": 5, "vdim": 3},
    {"bias": False},
    {"add_bias_kv": True},
    {"add_zero_attn": True},
    {"add_bias_kv": True, "add_zero_attn": True},
])
def test_module_options(options):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, **options)
    args = _inputs(True, kdim=options.get("kdim", E), vdim=options.get("vdim", E))
    _compare(ref, args, {"need_weights": False, "key_padding_mask": _padding(S)})


def test_unbatched_inputs():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H)
    q, k, v = (t[:, 0] for t in _inputs(False))  # (L, E), (S, E)
    _compare(ref, (q, k, v), {"need_weights": False, "key_padding_mask": _padding(S)[0]})


def test_need_weights_is_a_clear_error():
    m = nn.MultiheadAttention(E, H, batch_first=True)
    patch(m, "paper", S=2)
    with pytest.raises(ValueError, match="need_weights=False"):
        m(*_inputs(True))


def test_bad_parameters_fail_before_patching():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 2)
    with pytest.raises(ValueError, match="keep_ratio"):
        patch(model, "topk", keep_ratio=2.0)
    assert not any(isinstance(m, PolicyMultiheadAttention) for m in model.modules())


def test_dropout_only_in_training():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True).eval()
    ours = copy.deepcopy(ref)
    patch(ours, "paper", S=2)
    args = _inputs(True)
    with torch.no_grad():
        torch.testing.assert_close(ours(*args, need_weights=False)[0], ref(*args, need_weights=False)[0], atol=1e-5, rtol=0)
        ours.train()
        a, b = ours(*args, need_weights=False)[0], ours(*args, need_weights=False)[0]
    assert not torch.allclose(a, b)  # two dropout draws


def _encoder(dropout=0.0):
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def test_transformer_encoder_patched_and_equal():
    torch.manual_seed(0)
    ref = _encoder()
    ours = copy.deepcopy(ref)
    names = patch(ours, "exact")
    assert names == ["layers.0.self_attn", "layers.1.self_attn"]
    x = torch.randn(N, L, E)
    kpm = _padding(L)
    for train in (True, False):  # eval with autograd on: PyTorch's fast path is off, ours runs
        ref.train(train), ours.train(train)
        out_ref, g_ref, _ = _run(ref, (x,), {"src_key_padding_mask": kpm})
        out, g, _ = _run(ours, (x,), {"src_key_padding_mask": kpm})
        keep = ~kpm[..., None].expand_as(out)
        torch.testing.assert_close(out[keep], out_ref[keep], atol=1e-5, rtol=0)
        for k in g_ref:
            torch.testing.assert_close(g[k], g_ref[k], atol=1e-4, rtol=0, msg=k)
    # causal encoder (a GPT-style stack)
    mask = nn.Transformer.generate_square_subsequent_mask(L)
    ref.train(), ours.train()
    out_ref, _, _ = _run(ref, (x,), {"mask": mask, "is_causal": True})
    out, _, _ = _run(ours, (x,), {"mask": mask, "is_causal": True})
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)


def test_transformer_encoder_decoder_patched_and_equal():
    torch.manual_seed(0)
    ref = nn.Transformer(E, H, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32, dropout=0.0)
    ours = copy.deepcopy(ref)
    names = patch(ours, "exact")
    assert len(names) == 1 + 2 * 2 and "decoder.layers.1.multihead_attn" in names
    src, tgt = torch.randn(S, N, E), torch.randn(L, N, E)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(L)
    kw = {"tgt_mask": tgt_mask, "tgt_is_causal": True, "src_key_padding_mask": _padding(S),
          "memory_key_padding_mask": _padding(S)}
    out_ref, g_ref, gi_ref = _run(ref, (src, tgt), kw)
    out, g, gi = _run(ours, (src, tgt), kw)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=1e-4, rtol=0, msg=k)


def test_state_dict_before_patching_loads_after():
    torch.manual_seed(0)
    model = nn.Transformer(E, H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    keys = list(model.state_dict())
    fresh = nn.Transformer(E, H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    patch(fresh, "paper", S=3)
    assert list(fresh.state_dict()) == keys
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf), strict=True)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    # and back: unpatch gives PyTorch's own module with the same weights
    assert len(unpatch(fresh)) == 3
    assert all(type(m) is nn.MultiheadAttention for m in fresh.modules() if isinstance(m, nn.MultiheadAttention))


def test_policy_decides_what_is_saved():
    """The patched forward is what runs in training: the meter sees the policy's state."""
    torch.manual_seed(0)
    model = _encoder(dropout=0.1).train()
    x = torch.randn(2, 64, E)
    state = {}
    for policy, params in (("exact", {}), ("topk", {"keep_ratio": 0.125})):
        patch(model, policy, **params)
        with ActivationMeter(model) as meter:
            model(x).sum()
        state[policy] = meter.report().softmax_state_bytes
    assert 0 < state["topk"] < state["exact"]


@pytest.mark.parametrize("policy,params", [("paper", {"S": 2}), ("topk", {"keep_ratio": 0.5}),
                                           ("quant", {"bits": 8}), ("recompute", {})])
def test_approximate_policies_finite(policy, params):
    torch.manual_seed(0)
    ref = _encoder().train()
    ours = copy.deepcopy(ref)
    patch(ours, policy, **params)
    x = torch.randn(N, L, E)
    out_ref, g_ref, _ = _run(ref, (x,), {"src_key_padding_mask": _padding(L)})
    out, g, _ = _run(ours, (x,), {"src_key_padding_mask": _padding(L)})
    keep = ~_padding(L)[..., None].expand_as(out)
    torch.testing.assert_close(out[keep], out_ref[keep], atol=1e-5, rtol=0)  # forward is exact
    flat = torch.cat([g[k].flatten() for k in g_ref])
    flat_ref = torch.cat([g_ref[k].flatten() for k in g_ref])
    assert torch.isfinite(flat).all()
    assert torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0) > 0.5
