"""The encoder-decoder Transformer: masking, decoding on it, tying, memory by attention kind."""

import pytest
import torch

from softmax_approx.models.decoding import beam_search, greedy_decode
from softmax_approx.models.translator import Translator, activation_memory_by_kind

PAD, BOS, EOS, V = 0, 1, 2, 17


def tiny(policy="eager", **kw):
    torch.manual_seed(0)
    args = dict(vocab_size=V, pad_id=PAD, d_model=16, n_heads=2, d_ff=32, n_layers=2,
                dropout=0.0, policy=policy, policy_params={"S": 2} if policy == "paper" else None)
    args.update(kw)
    return Translator(**args)


def batch(seed=0, B=3, Ls=9, Lt=8):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, Ls), generator=g)
    src[1, 6:] = PAD
    src[2, 3:] = PAD
    tgt = torch.randint(3, V, (B, Lt), generator=g)
    tgt[:, 0] = BOS
    tgt[2, 5:] = PAD
    return src, src != PAD, tgt, tgt != PAD


@pytest.mark.parametrize("policy", ["eager", "paper"])
def test_causal_mask_blocks_the_future(policy):
    model = tiny(policy).eval()
    src, sm, tgt, tm = batch()
    t = 4
    changed = tgt.clone()
    changed[:, t + 1 :] = torch.randint(3, V, changed[:, t + 1 :].shape)
    changed[changed == PAD] = 3
    a = model(src, sm, tgt, tm)
    b = model(src, sm, changed, changed != PAD)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)  # the future does matter


@pytest.mark.parametrize("policy", ["eager", "paper"])
def test_causal_mask_blocks_the_future_in_gradients(policy):
    """Training path: the loss at position <= t gets no gradient from later target tokens."""
    model = tiny(policy).train()
    src, sm, tgt, tm = batch()
    emb = model.tgt_embed(tgt).detach().requires_grad_(True)
    model.tgt_embed.forward = lambda ids: emb  # feed the leaf in, to read its gradient
    try:
        logits = model(src, sm, tgt, tm)
        logits[:, :4].sum().backward()
    finally:
        del model.tgt_embed.forward
    assert emb.grad[:, 4:].abs().max() == 0
    assert emb.grad[:, :4].abs().max() > 0


def test_source_padding_is_ignored():
    model = tiny().eval()
    src, sm, tgt, tm = batch()
    other = src.clone()
    other[~sm] = 5  # different ids in padded positions, same mask
    assert torch.allclose(model(src, sm, tgt, tm), model(other, sm, tgt, tm), atol=1e-5)


def test_padded_batch_equals_single_sentence():
    model = tiny().eval()
    src, sm, tgt, tm = batch()
    n_src, n_tgt = int(sm[2].sum()), int(tm[2].sum())
    alone = model(src[2:3, :n_src], sm[2:3, :n_src], tgt[2:3, :n_tgt], tm[2:3, :n_tgt])
    together = model(src, sm, tgt, tm)[2:3, :n_tgt]
    assert torch.allclose(alone, together, atol=1e-5)


def test_tied_and_shared_embeddings():
    tied = tiny(tie_decoder_embeddings=True, share_encoder_embeddings=True)
    assert tied.output.weight is tied.tgt_embed.weight and tied.src_embed is tied.tgt_embed
    untied = tiny(tie_decoder_embeddings=False, share_encoder_embeddings=False)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(untied) - n(tied) == 2 * V * 16


def test_decoding_stops_at_the_position_table():
    model = tiny(max_len=6).eval()
    with torch.no_grad():
        model.output.weight[EOS] = 0.0  # keep eos unlikely enough that the cap decides
    src, sm, _, _ = batch(seed=2, Ls=5)
    kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len_a=2.0, max_len_b=10)
    assert max(len(t) for t in greedy_decode(model, src, sm, **kw).tokens) <= 5
    assert max(len(t) for t in beam_search(model, src, sm, beam=2, **kw).tokens) <= 5


@pytest.mark.parametrize("policy", ["eager", "paper"])
def test_beam_one_equals_greedy_on_the_translator(policy):
    model = tiny(policy).eval()
    src, sm, _, _ = batch(seed=1)
    kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len_a=1.0, max_len_b=3)
    assert greedy_decode(model, src, sm, **kw).tokens == beam_search(model, src, sm, beam=1, alpha=0.0, **kw).tokens


def test_memory_by_kind_reports_three_kinds_and_policy_shrinks_state():
    model = tiny(n_layers=1, dropout=0.1, attn_dropout=0.1)
    src, sm, tgt, tm = batch(Ls=40, Lt=40)
    eager = activation_memory_by_kind(model, src, sm, tgt, tm, policy="eager")
    paper = activation_memory_by_kind(model, src, sm, tgt, tm, policy="paper", policy_params={"S": 2})
    assert set(eager) == {"encoder_self", "decoder_self", "cross"}
    for kind in eager:
        assert eager[kind]["softmax_state_bytes"] > 0
        assert paper[kind]["softmax_state_bytes"] < eager[kind]["softmax_state_bytes"]
        assert eager[kind]["bytes"] >= eager[kind]["softmax_state_bytes"]
    # B * H * Lq * Lk probabilities of 4 bytes each, at least, for every kind under eager
    assert eager["encoder_self"]["softmax_state_bytes"] >= 3 * 2 * 40 * 40 * 4
    # the module's own policy and forward are back afterwards
    assert model.encoder.layers[0].self_attn.policy.name == "eager"
    assert "forward" not in vars(model.encoder.layers[0].self_attn)
