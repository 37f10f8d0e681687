"""compress_activations: each part against a float64 reference, whole models against the
unmodified model, bytes counted with saved_tensors_hooks against a count made by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from softmax_approx.core import ActivationMeter
from softmax_approx.core.dropout import apply_dropout
from softmax_approx.nn import compress_activations
from softmax_approx.nn.compress import CompressedLayerNorm, CompressedLinear, FusedGELU, SeededDropout
from softmax_approx.nn.compress.kept import dequantize_rows, quantize_rows

try:  # registers the Transformers attention switch that compress_activations uses
    import softmax_approx.integrations.transformers  # noqa: F401
except ImportError:  # pragma: no cover - Transformers is optional; its tests skip
    pass


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ----------------------------------------------------------------------------- parts, float64
def test_seeded_dropout_matches_the_seeded_mask_and_keeps_only_the_seed():
    x = torch.randn(3, 5, 17, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, 17, dtype=torch.float64)
    drop = nn.Dropout(0.3)
    drop.__class__ = SeededDropout
    torch.manual_seed(7)
    with ActivationMeter() as meter:
        out = drop(x)
    (out * g).sum().backward()
    torch.manual_seed(7)
    seed = torch.randint(0, 2**31, (2,), dtype=torch.long)  # what draw_seed draws
    ref_x = x.detach().clone().requires_grad_()
    ref = apply_dropout(ref_x, seed, 0.3)
    (ref * g).sum().backward()
    assert torch.equal(out, ref) and torch.equal(x.grad, ref_x.grad)
    assert meter.report().total_bytes == 16  # one int64 (2,) seed, no mask


def test_seeded_dropout_replays_under_reentrant_checkpointing():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.5), nn.Linear(32, 8), nn.Dropout(0.2))
    compress_activations(block, attention=None, linear="exact")
    x = torch.randn(4, 6, 8)

    def grads(run):
        block.zero_grad()
        torch.manual_seed(123)
        xi = x.clone().requires_grad_()
        run(xi).square().sum().backward()
        return torch.cat([xi.grad.flatten()] + [p.grad.flatten() for p in block.parameters()])

    plain = grads(block)
    for reentrant in (True, False):
        again = grads(lambda t: checkpoint(block, t, use_reentrant=reentrant))
        assert torch.equal(plain, again), reentrant
    assert plain.abs().sum() > 0


def test_fused_gelu_and_linear_match_float64_autograd():
    torch.manual_seed(1)
    fc1, fc2 = nn.Linear(6, 24).double(), nn.Linear(24, 6).double()
    ref = copy.deepcopy((fc1, fc2))
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    fc2.__class__ = CompressedLinear
    act = FusedGELU("tanh", "exact")
    out = fc2(act(fc1(x.requires_grad_())))
    out.square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    ref[1](F.gelu(ref[0](xr), approximate="tanh")).square().sum().backward()
    for p, q in zip(list(fc1.parameters()) + list(fc2.parameters()), list(ref[0].parameters()) + list(ref[1].parameters())):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)


def test_int8_linear_input_grad_exact_weight_grad_from_dequantized_input():
    torch.manual_seed(2)
    lin = nn.Linear(16, 8).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, 8, dtype=torch.float64)
    lin.__class__, lin.compress_mode = CompressedLinear, "int8"
    (lin(x) * g).sum().backward()
    q, scale = quantize_rows(x.detach())
    xq = dequantize_rows(q, scale, torch.float64)
    torch.testing.assert_close(x.grad, g @ lin.weight.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.weight.grad, g.reshape(-1, 8).t() @ xq.reshape(-1, 16), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.bias.grad, g.reshape(-1, 8).sum(0))
    assert (xq - x.detach()).abs().max() <= scale.max() / 2 + 1e-12
    assert _cos(lin.weight.grad, g.reshape(-1, 8).t() @ x.detach().reshape(-1, 16)) > 0.9999


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_keeping_its_output_matches_float64_layer_norm(bias):
    torch.manual_seed(3)
    ln = nn.LayerNorm(12, bias=bias).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        if bias:
            ln.bias.normal_()
    ref = copy.deepcopy(ln)
    ln.__class__ = CompressedLayerNorm
    x = torch.randn(4, 3, 12, dtype=torch.float64) * 3 + 1
    g = torch.randn(4, 3, 12, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ln(xa) * g).sum().backward()
    (ref(xb) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    for p, q in zip(ln.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- bytes by hand
def _ffn(d=8, f=32, p=0.1):
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(d, f), nn.GELU(), nn.Dropout(p), nn.Linear(f, d)).train()


def _saved_bytes(model, x, run=None):
    with ActivationMeter(model) as meter:
        out = (run or model)(x)
    out.sum().backward()
    return meter.report().total_bytes


@pytest.mark.parametrize("mode", ["eager", "exact", "int8"])
def test_ffn_bytes_equal_the_count_by_hand(mode):
    b, n, d, f = 2, 5, 8, 32
    model = _ffn(d, f)
    if mode != "eager":
        compress_activations(model, attention=None, linear=mode)
    x = torch.randn(b, n, d, requires_grad=True)
    rows = b * n
    by_hand = {
        # fc1 input, GELU input, dropout mask (on the CPU a float32 noise tensor; CUDA's fused
        # kernel keeps a bool mask), fc2 input
        "eager": 4 * rows * d + 4 * rows * f + 4 * rows * f + 4 * rows * f,
        # fc1 input (PyTorch's own linear), GELU input shared with fc2's recipe, one seed
        "exact": 4 * rows * d + 4 * rows * f + 16,
        # int8 + one float32 scale per row, for fc1's input and the GELU input; one seed
        "int8": (rows * d + 4 * rows) + (rows * f + 4 * rows) + 16,
    }[mode]
    assert _saved_bytes(model, x) == by_hand


def test_q_k_v_share_one_int8_copy():
    torch.manual_seed(5)
    q, k, v = (nn.Linear(16, 16) for _ in range(3))
    for m in (q, k, v):
        m.__class__, m.compress_mode = CompressedLinear, "int8"
    x = torch.randn(3, 4, 16, requires_grad=True)
    with ActivationMeter() as meter:
        out = q(x) + k(x) * v(x)
    assert meter.report().total_bytes == 3 * 4 * 16 + 4 * 3 * 4 + 2 * 4 * 3 * 4 * 16  # int8 x + scales + k, v outputs
    out.sum().backward()


# ----------------------------------------------------------------------------- whole models
def _bert(dropout=0.0, layers=2, attention_dropout=None):
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                     vocab_size=97, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout if attention_dropout is None else attention_dropout)
    torch.manual_seed(0)
    return BertModel(cfg, add_pooling_layer=False).train()


def _gpt2(dropout=0.0):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return GPT2Model(cfg).train()


class _TorchEncoder(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(97, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=dropout, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, input_ids):
        return self.enc(self.emb(input_ids))


def _classifier(dropout=0.0):
    from softmax_approx.models.classifier import TransformerClassifier

    torch.manual_seed(0)
    return TransformerClassifier(vocab_size=97, n_classes=3, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                                 max_len=64, dropout=dropout, attn_dropout=dropout).train()


def _output(model, ids):
    out = model(input_ids=ids)
    return getattr(out, "last_hidden_state", out)


def _grads(model, ids, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    _output(model, ids).float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


MODELS = {"bert": _bert, "gpt2": _gpt2, "torch_encoder": _TorchEncoder, "classifier": _classifier}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_mode_gives_the_unmodified_models_gradients(name):
    model = MODELS[name]()
    ids = torch.randint(1, 97, (2, 24))
    ref = _grads(model, ids)
    ref_bytes = _saved_bytes(model, ids, lambda i: _output(model, i))
    compress_activations(model, attention="recompute")
    got = _grads(model, ids)
    assert _rel(got, ref) < 1e-5
    assert _saved_bytes(model, ids, lambda i: _output(model, i)) < ref_bytes


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_int8_mode_gradient_cosine(name):
    model = MODELS[name]()
    ids = torch.randint(1, 97, (2, 24))
    ref = _grads(model, ids)
    compress_activations(model, linear="int8")
    got = _grads(model, ids)
    assert _cos(got, ref) >= 0.9999
    assert not torch.equal(got, ref)  # int8 really is in use


def test_dropout_stream_is_the_same_checkpointed_or_not():
    # attention dropout 0: the attention's own no-grad path (core.attention) draws its mask
    # differently from its grad path, which reentrant checkpointing would expose there
    model = _bert(dropout=0.1, attention_dropout=0.0)
    compress_activations(model, linear="exact")
    ids = torch.randint(1, 97, (2, 24))
    plain = _grads(model, ids, seed=3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    again = _grads(model, ids, seed=3)
    assert _rel(again, plain) < 1e-6
    assert _rel(_grads(model, ids, seed=4), plain) > 1e-3  # another seed: other masks


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_keys_and_values_unchanged(name):
    model = MODELS[name]()
    before = model.state_dict()
    compress_activations(model, linear="int8")
    after = model.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.load_state_dict(MODELS[name]().state_dict())  # strict: a checkpoint of the plain model loads


@pytest.mark.parametrize("name", ["bert", "gpt2", "torch_encoder"])
def test_tiny_models_train_with_the_full_set(name):
    model = MODELS[name](dropout=0.1)
    counts = compress_activations(model, attention="recompute", linear="int8")
    assert counts["linear"] > 0 and counts["dropout"] > 0 and counts["gelu"] > 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.randint(1, 97, (4, 16))
    target = torch.randn(4, 16, 32)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = (_output(model, ids) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_eval_and_no_grad_outputs_equal_the_unmodified_model():
    model = _bert(dropout=0.1).eval()
    ids = torch.randint(1, 97, (2, 24))
    with torch.no_grad():
        ref = _output(model, ids)
        compress_activations(model, linear="int8", attention="exact")
        torch.testing.assert_close(_output(model, ids), ref)


def test_bad_choice_names_the_parameter():
    with pytest.raises(ValueError, match="linear='int4'"):
        compress_activations(nn.Linear(2, 2), linear="int4")


def test_int8_linear_reuses_a_finer_layernorm_copy_and_int16_layernorm_is_close():
    torch.manual_seed(6)
    ln, lin = nn.LayerNorm(32), nn.Linear(32, 8)
    ref = copy.deepcopy((ln, lin))
    ln.__class__, ln.compress_mode = CompressedLayerNorm, "int16"
    lin.__class__, lin.compress_mode = CompressedLinear, "int8"
    x = torch.randn(3, 5, 32, requires_grad=True)
    with ActivationMeter() as meter:
        out = lin(ln(x))
    rows = 3 * 5
    # one int16 copy of the LayerNorm output + its scales (shared by the int8 linear) + 1/std
    assert meter.report().total_bytes == 2 * rows * 32 + 4 * rows + 4 * rows
    out.square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    ref[1](ref[0](xr)).square().sum().backward()
    assert _rel(x.grad, xr.grad) < 1e-3 and _rel(ln.weight.grad, ref[0].weight.grad) < 1e-3
