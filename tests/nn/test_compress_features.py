"""compress_activations meets PyTorch's other features: torch.compile (the whole compressed model
traces as one graph, and its outputs and gradients are the uncompiled compressed model's) and
CPU autocast (bfloat16 runs, its gradients stay close to the float32 compressed model's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softmax_approx.nn import compress_activations
from softmax_approx.nn.compress import CompressedLayerNorm

transformers = pytest.importorskip("transformers")
import softmax_approx.integrations.transformers  # noqa: E402,F401  (registers the attention switch)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _bert(linear: str, layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=64)
    model = transformers.BertModel(cfg, add_pooling_layer=False).train()  # dropout 0.1 everywhere
    compress_activations(model, linear=linear)
    return model


def _loss_and_grads(model, run, ids):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout seeds in both runs
    loss = run(input_ids=ids).last_hidden_state.float().pow(2).mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("linear", ["exact", pytest.param("int8", marks=pytest.mark.slow)])
def test_compiled_compressed_model_equals_the_uncompiled_one(linear):
    """fullgraph=True: no graph break anywhere (seeded dropout, fused GELU, compressed linears
    and LayerNorm, recompute attention). aot_eager runs the traced forward and backward graphs;
    the dropout masks and int8 copies are the same, so everything agrees up to rounding."""
    model = _bert(linear, layers=1)  # one layer: tracing time grows with the layers
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    want_loss, want = _loss_and_grads(model, model, ids)
    got_loss, got = _loss_and_grads(model, compiled, ids)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    torch._dynamo.reset()


def test_compiled_layernorm_with_a_zero_weight_raises_instead_of_a_wrong_gradient():
    ln = torch.nn.LayerNorm(8)
    ln.__class__ = CompressedLayerNorm
    with torch.no_grad():
        ln.weight[3] = 0.0
    x = torch.randn(4, 8, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(ln, fullgraph=True, backend="eager")
    with pytest.raises(RuntimeError, match="layernorm=None"):
        compiled(x)
    torch._dynamo.reset()
    torch.testing.assert_close(ln(x), F.layer_norm(x, (8,), ln.weight, ln.bias))  # eager: falls back


@pytest.mark.parametrize("linear", ["exact", "int8"])
def test_bfloat16_autocast_trains_the_compressed_model(linear):
    model = _bert(linear)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    _, fp32 = _loss_and_grads(model, model, ids)
    seen = []
    hook = model.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    def autocast_run(**kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**kw)

    _, bf16 = _loss_and_grads(model, autocast_run, ids)
    hook.remove()
    assert seen == [torch.bfloat16]  # autocast is in effect in the compressed linears
    assert torch.isfinite(bf16).all() and not torch.equal(bf16, fp32)
    cos = F.cosine_similarity(bf16.double(), fp32.double(), dim=0).item()
    assert cos > 0.999
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
