"""softmax_approx.integrations.transformers against Transformers' own ``eager`` attention.

Tiny random-initialised configs (2 layers, hidden 32, 4 heads, sequences of 8-12), built here:
no download. ``exact``: outputs within 1e-5 and every parameter gradient within 1e-4 of the
same model under ``eager`` (fp32), with padding, causal masks (left and right padding), cross
attention, T5's learned relative position bias and a GQA (Llama-style) decoder. Approximate
policies: the forward is still exact, gradients are finite and point the same way.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")

import transformers  # noqa: E402
from transformers import AutoModel  # noqa: E402

from softmax_approx.core import POLICY_NAMES, ActivationMeter  # noqa: E402
from softmax_approx.integrations import transformers as sa_hf  # noqa: E402

B, L, VOCAB = 2, 10, 99
DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _pad_right() -> torch.Tensor:
    m = torch.ones(B, L, dtype=torch.long)
    m[0, -3:] = 0
    return m


def _pad_left() -> torch.Tensor:
    m = torch.ones(B, L, dtype=torch.long)
    m[1, :4] = 0
    return m


def _ids(seed: int = 0, n: int = L) -> torch.Tensor:
    return torch.randint(3, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


# Each case: config, inputs, output masks (True = a real position whose output is compared),
# and the number of attention layers `apply` must report.
def _bert(dropout=NO_DROPOUT):
    return transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **DIMS, **dropout)


def case_bert():
    m = _pad_right()
    return _bert(), {"input_ids": _ids(), "attention_mask": m}, {"last_hidden_state": m}, 2


def case_roberta():
    cfg = transformers.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=1, **DIMS, **NO_DROPOUT)
    m = _pad_right()
    return cfg, {"input_ids": _ids(), "attention_mask": m}, {"last_hidden_state": m}, 2


def _gpt2():
    return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def case_gpt2_right():
    m = _pad_right()
    return _gpt2(), {"input_ids": _ids(), "attention_mask": m}, {"last_hidden_state": m}, 2


def case_gpt2_left():
    m = _pad_left()
    pos = (m.cumsum(-1) - 1).clamp_min(0)
    return _gpt2(), {"input_ids": _ids(), "attention_mask": m, "position_ids": pos}, {"last_hidden_state": m}, 2


def case_gpt2_no_padding():  # the mask builder returns None: causal comes from is_causal
    return _gpt2(), {"input_ids": _ids()}, {"last_hidden_state": torch.ones(B, L)}, 2


def case_bart():
    cfg = transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                  decoder_ffn_dim=37, max_position_embeddings=64, dropout=0.0,
                                  attention_dropout=0.0, activation_dropout=0.0)
    src, tgt = _pad_right(), _pad_right()
    inputs = {"input_ids": _ids(), "attention_mask": src, "decoder_input_ids": _ids(1, 8),
              "decoder_attention_mask": tgt[:, :8]}
    return cfg, inputs, {"last_hidden_state": tgt[:, :8], "encoder_last_hidden_state": src}, 6


def case_t5():
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                                num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
    src = _pad_right()
    inputs = {"input_ids": _ids(), "attention_mask": src, "decoder_input_ids": _ids(1, 8)}
    return cfg, inputs, {"last_hidden_state": torch.ones(B, 8), "encoder_last_hidden_state": src}, 6


def case_vit():
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, **DIMS, **NO_DROPOUT)
    pixels = torch.randn(B, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return cfg, {"pixel_values": pixels}, {"last_hidden_state": torch.ones(B, 17)}, 2


def case_llama_gqa():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attention_dropout=0.0)
    m = _pad_right()
    return cfg, {"input_ids": _ids(), "attention_mask": m}, {"last_hidden_state": m}, 2


CASES = {f.__name__[5:]: f for f in (case_bert, case_roberta, case_gpt2_right, case_gpt2_left, case_gpt2_no_padding,
                                      case_bart, case_t5, case_vit, case_llama_gqa)}
# every policy Transformers does not run itself, other than `exact` (compared with eager above)
APPROX_PARAMS = {"paper": {"S": 2}, "topk": {"keep_ratio": 0.25}, "quant": {"bits": 8}}
APPROX = [(p, APPROX_PARAMS.get(p, {})) for p in sa_hf.VARIANTS if p != "exact"]


def _build(cfg, implementation="eager"):
    torch.manual_seed(0)
    return AutoModel.from_config(cfg, attn_implementation=implementation).train()


def _forward_backward(model, inputs, keep):
    """Outputs at real positions and every parameter gradient of a fixed weighted sum of them."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss, kept = 0.0, {}
    for name, mask in keep.items():
        h = out[name]
        w = torch.linspace(-1, 1, h.shape[-1])
        loss = loss + ((h * w) * mask[..., None].to(h.dtype)).sum()
        kept[name] = h.detach()[mask.bool()]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return kept, grads


def _cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[k].flatten() for k in sorted(b)]).double()
    y = torch.cat([b[k].flatten() for k in sorted(b)]).double()
    return torch.nn.functional.cosine_similarity(x, y, dim=0).item()


@pytest.mark.parametrize("name", list(CASES))
def test_exact_equals_eager(name):
    cfg, inputs, keep, n_layers = CASES[name]()
    ref = _build(cfg)
    ours = copy.deepcopy(ref)
    assert sa_hf.apply(ours, "exact") == n_layers
    out_ref, g_ref = _forward_backward(ref, inputs, keep)
    out, g = _forward_backward(ours, inputs, keep)
    for k in out_ref:
        torch.testing.assert_close(out[k], out_ref[k], atol=1e-5, rtol=0, msg=k)
    assert g.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], atol=1e-4, rtol=0, msg=k)
    if name == "t5":  # the learned relative position bias gets its gradient through core.attention
        bias_grads = [k for k in g if "relative_attention_bias" in k]
        assert bias_grads and all(g[k].abs().sum() > 0 for k in bias_grads)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("policy,params", APPROX, ids=[p for p, _ in APPROX])
def test_approximate_policies(name, policy, params):
    cfg, inputs, keep, _ = CASES[name]()
    ref = _build(cfg)
    ours = copy.deepcopy(ref)
    sa_hf.apply(ours, policy, **params)
    out_ref, g_ref = _forward_backward(ref, inputs, keep)
    out, g = _forward_backward(ours, inputs, keep)
    for k in out_ref:  # the forward is exact under every policy
        torch.testing.assert_close(out[k], out_ref[k], atol=1e-5, rtol=0, msg=k)
    assert all(torch.isfinite(t).all() for t in g.values())
    assert _cosine(g, g_ref) > 0.5


def test_from_config_by_name_and_config_dict(tmp_path):
    """attn_implementation= carries the policy: named variant, or config.softmax_approx."""
    cfg = _bert()
    ref = _build(cfg)
    inputs, keep = {"input_ids": _ids(), "attention_mask": _pad_right()}, {"last_hidden_state": _pad_right()}
    out_ref, _ = _forward_backward(ref, inputs, keep)
    for impl in ("softmax_approx_exact", "softmax_approx"):
        cfg2 = copy.deepcopy(cfg)
        cfg2.softmax_approx = {"policy": "exact"}
        model = _build(cfg2, impl)
        assert model.config._attn_implementation == impl
        assert sa_hf.policy_of(model.config, impl).name == "exact"
        out, _ = _forward_backward(model, inputs, keep)
        torch.testing.assert_close(out["last_hidden_state"], out_ref["last_hidden_state"], atol=1e-5, rtol=0)
    # from_pretrained: the choice travels in config.json; a keyword overrides it
    sa_hf.apply(model, "topk", keep_ratio=0.25)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["softmax_approx"] == {"policy": "topk", "keep_ratio": 0.25}
    loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="softmax_approx")
    assert str(sa_hf.policy_of(loaded.config)) == "topk(keep_ratio=0.25)"
    loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="softmax_approx", softmax_approx={"policy": "paper", "S": 3})
    assert str(sa_hf.policy_of(loaded.config)) == "paper(S=3)"
    # no config entry: the project default (paper, S=5)
    assert sa_hf.policy_of(_bert()).name == "paper"


def test_bad_parameters_fail_early():
    model = _build(_bert())
    with pytest.raises(ValueError, match="keep_ratio"):
        sa_hf.apply(model, "topk", keep_ratio=1.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        sa_hf.apply(model, "paper", T=3)
    with pytest.raises(ValueError, match="unknown policy"):
        sa_hf.apply(model, "fast")
    assert model.config._attn_implementation == "eager"  # nothing switched
    cfg = _bert()
    cfg.softmax_approx = {"policy": "paper"}
    with pytest.raises(ValueError, match="config.softmax_approx"):
        sa_hf.policy_of(cfg, "softmax_approx_topk")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        sa_hf.apply(torch.nn.Linear(2, 2), "exact")


def test_native_baselines_and_switching_back():
    model = _build(_bert())
    assert sa_hf.apply(model, "sdpa") == 2 and model.config._attn_implementation == "sdpa"
    sa_hf.apply(model, "paper", S=4)
    assert model.config._attn_implementation == "softmax_approx" and model.config.softmax_approx == {"policy": "paper", "S": 4}
    sa_hf.apply(model, "eager")
    assert model.config._attn_implementation == "eager"


def test_output_attentions_is_a_clear_error():
    model = _build(_bert())
    sa_hf.apply(model, "paper")
    with pytest.raises(ValueError, match="output_attentions"):
        model(input_ids=_ids(), output_attentions=True)


def test_dropout_only_in_training():
    cfg = _bert(dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5))
    ref = _build(cfg).eval()
    ours = copy.deepcopy(ref)
    sa_hf.apply(ours, "paper", S=2)
    x = {"input_ids": _ids(), "attention_mask": _pad_right()}
    with torch.no_grad():
        torch.testing.assert_close(ours(**x).last_hidden_state, ref(**x).last_hidden_state, atol=1e-5, rtol=0)
        ours.train()
        a, b = ours(**x).last_hidden_state, ours(**x).last_hidden_state
    assert not torch.allclose(a, b)


def test_meter_scopes_transformers_attention_modules():
    """Attention bytes are counted for Transformers' own implementations too, and a fused
    policy keeps less there than eager."""
    cfg = _bert(dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1))
    x = {"input_ids": torch.randint(3, VOCAB, (2, 48)), "attention_mask": torch.ones(2, 48, dtype=torch.long)}
    reports = {}
    for policy, params in (("eager", {}), ("exact", {}), ("topk", {"keep_ratio": 0.125})):
        model = _build(cfg)
        sa_hf.apply(model, policy, **params)
        with ActivationMeter(model) as meter:
            model(**x).last_hidden_state.sum()
        reports[policy] = meter.report()
    assert all(r.attention_bytes > 0 for r in reports.values())
    assert reports["topk"].attention_bytes < reports["exact"].attention_bytes < reports["eager"].attention_bytes
    # outside attention nothing changes
    assert len({r.total_bytes - r.attention_bytes for r in reports.values()}) == 1


def test_bench_hf_command_small_shape(tmp_path):
    """`python -m softmax_approx.bench hf` at a tiny shape: every implementation measured on the
    same model and batch, reductions against Transformers' eager."""
    from softmax_approx.bench import main

    js, md = tmp_path / "hf.json", tmp_path / "hf.md"
    assert main(["hf", "--model", "tiny", "--seq-len", "64", "--batch", "2", "--json", str(js), "--markdown", str(md)]) == 0
    recs = {r["implementation"]: r for r in json.loads(js.read_text())}
    assert list(recs)[0] == "eager" and set(recs) == set(POLICY_NAMES)
    assert all(r["attention_layers"] == 2 for r in recs.values())
    assert recs["eager"]["softmax_state_bytes"] == 0 < recs["paper"]["softmax_state_bytes"]
    for name in sa_hf.VARIANTS:
        r = recs[name]
        assert 0 < r["attention_reduction_vs_eager"] < 1 and 0 < r["total_reduction_vs_eager"] < r["attention_reduction_vs_eager"]
        # only the attention modules' bytes change
        assert r["total_bytes"] - r["attention_bytes"] == recs["eager"]["total_bytes"] - recs["eager"]["attention_bytes"]
    assert recs["topk"]["attention_bytes"] < recs["exact"]["attention_bytes"]
    assert len(md.read_text().strip().splitlines()) == 2 + len(recs)


def test_bench_hf_usage_errors(capsys):
    from softmax_approx.bench import main

    with pytest.raises(SystemExit) as exc:
        main(["hf", "--model", "tiny", "--implementation", "topk:keep_ratio=7"])
    assert exc.value.code == 2 and "keep_ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["hf", "--model", "tiny", "--seq-len", "100000"])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", ["gpt2_left", "llama_gqa"])
def test_generation_with_cache_matches_eager(name):
    """Decoding with a key/value cache (one query against the cached keys) picks the same tokens."""
    cfg, inputs, _, _ = CASES[name]()
    lm_cls = transformers.GPT2LMHeadModel if name.startswith("gpt2") else transformers.LlamaForCausalLM
    torch.manual_seed(0)
    ref = lm_cls._from_config(cfg, attn_implementation="eager").eval()
    ours = copy.deepcopy(ref)
    sa_hf.apply(ours, "paper", S=2)
    kw = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(ours.generate(**kw, **gen), ref.generate(**kw, **gen), atol=0, rtol=0)
