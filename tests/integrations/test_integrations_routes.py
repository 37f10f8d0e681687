"""The routes users take into Transformers, each as the docs show it: loading a checkpoint that
has never seen this library with ``softmax_approx={...}``, saving and plainly reloading after
every loading route, the registration hook, and ``torch.compile(fullgraph=True)`` of whole
models. Tiny random-initialised checkpoints written here."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")

import transformers  # noqa: E402
from transformers import AutoModel, AutoModelForSequenceClassification  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

import softmax_approx.integrations  # noqa: E402
from softmax_approx.integrations import transformers as sa_hf  # noqa: E402

VOCAB = 99


def _bert():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)


def _gpt2():
    return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _x():
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory):
    """A BERT classifier saved by plain Transformers: its config.json has no softmax_approx key."""
    d = tmp_path_factory.mktemp("bert-tiny")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(_bert(), attn_implementation="eager").save_pretrained(d)
    assert "softmax_approx" not in json.loads((d / "config.json").read_text())
    return d


def _hidden(model):
    with torch.no_grad():
        out = model(**_x())
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# ------------------------------------------------------------------ loading
def test_the_config_keyword_works_on_a_checkpoint_that_never_saw_the_library(fresh_checkpoint):
    model = AutoModelForSequenceClassification.from_pretrained(
        fresh_checkpoint, attn_implementation="softmax_approx", softmax_approx={"policy": "paper", "S": 5})
    assert model.config._attn_implementation == "softmax_approx"
    assert str(sa_hf.policy_of(model.config)) == "paper(S=5)"
    ref = AutoModelForSequenceClassification.from_pretrained(fresh_checkpoint, attn_implementation="eager")
    torch.testing.assert_close(_hidden(model), _hidden(ref), atol=1e-5, rtol=0)


ROUTES = {
    "keyword": lambda d: AutoModel.from_pretrained(d, attn_implementation="softmax_approx",
                                                   softmax_approx={"policy": "topk", "keep_ratio": 0.25}),
    "named_variant": lambda d: AutoModel.from_pretrained(d, attn_implementation="softmax_approx_recompute"),
    "apply": lambda d: _applied(AutoModel.from_pretrained(d), "quant", bits=4),
    "apply_native": lambda d: _applied(AutoModel.from_pretrained(d), "eager"),
}


def _applied(model, policy, **params):
    sa_hf.apply(model, policy, **params)
    return model


@pytest.mark.parametrize("route", list(ROUTES))
def test_save_and_plain_reload_keeps_the_implementation(route, fresh_checkpoint, tmp_path):
    """After save_pretrained, a plain from_pretrained(dir) runs what was saved, not sdpa."""
    model = ROUTES[route](fresh_checkpoint)
    impl = model.config._attn_implementation
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"] == impl
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation == impl
    assert getattr(loaded.config, "softmax_approx", None) == getattr(model.config, "softmax_approx", None)
    if impl.startswith("softmax_approx"):
        assert str(sa_hf.policy_of(loaded.config, impl)) == str(sa_hf.policy_of(model.config, impl))
    torch.testing.assert_close(_hidden(loaded), _hidden(model), atol=0, rtol=0)
    # an explicit choice at load time still wins
    assert AutoModel.from_pretrained(tmp_path, attn_implementation="sdpa").config._attn_implementation == "sdpa"


def test_loading_without_registration_fails_loudly(fresh_checkpoint, tmp_path):
    """In a process that never registered the names, a saved model does not silently run sdpa."""
    _applied(AutoModel.from_pretrained(fresh_checkpoint), "paper", S=2).save_pretrained(tmp_path)
    names = sa_hf.implementation_names()
    saved = {n: transformers.AttentionInterface._global_mapping.pop(n) for n in names}
    saved_masks = {n: AttentionMaskInterface._global_mapping.pop(n) for n in names}
    try:
        with pytest.raises(ValueError, match='attn_implementation="softmax_approx"'):
            AutoModel.from_pretrained(tmp_path)
        assert softmax_approx.integrations.register_transformers() == names   # the hook
        assert AutoModel.from_pretrained(tmp_path).config._attn_implementation == "softmax_approx"
    finally:
        transformers.AttentionInterface._global_mapping.update(saved)
        AttentionMaskInterface._global_mapping.update(saved_masks)


# ------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_compiled_model_has_no_graph_break(family):
    """The policy is resolved without a graph break: fullgraph=True (which raises at any break)
    compiles the whole model and gives eager mode's outputs and gradients."""
    torch.manual_seed(0)
    model = AutoModel.from_config(_bert() if family == "bert" else _gpt2(), attn_implementation="eager").train()
    sa_hf.apply(model, "paper", S=2)
    x = _x()
    ref = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    got, want = compiled(**x).last_hidden_state, ref(**x).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got.sum().backward()
    want.sum().backward()
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0, msg=n)
