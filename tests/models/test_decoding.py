"""Greedy and beam search: invariants that hold for any model, checked on tiny random ones."""

import itertools
import math

import pytest
import torch
from torch import nn

from softmax_approx.models.decoding import beam_search, greedy_decode, length_penalty

PAD, BOS, EOS = 0, 1, 2


class ToyModel(nn.Module):
    """A small random encoder-decoder with the decoding interface (prefix-dependent logits)."""

    def __init__(self, vocab=6, d=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.rnn = nn.GRU(d, d, batch_first=True)
        self.out = nn.Linear(d, vocab)

    def encode(self, src_ids, src_mask):
        return self.emb(src_ids) * src_mask[..., None]

    def decode(self, tgt_in, memory, src_mask):
        ctx = memory.sum(1, keepdim=True) / src_mask.sum(1)[:, None, None]
        h, _ = self.rnn(self.emb(tgt_in) + ctx)
        return 3.0 * self.out(h)  # sharpen a little so hypotheses differ clearly


@torch.no_grad()
def _score(model, src, mask, tokens, alpha):
    """Teacher-forced length-normalised log-probability of ``tokens + [eos]``."""
    tgt = torch.tensor([[BOS] + tokens])
    out = torch.tensor(tokens + [EOS])
    lp = torch.log_softmax(model.decode(tgt, model.encode(src, mask), mask)[0].float(), -1)
    return float(lp[torch.arange(len(out)), out].sum()) / length_penalty(len(out), alpha)


def _batch():
    src = torch.tensor([[3, 4, 5, 3], [5, 4, PAD, PAD], [4, PAD, PAD, PAD]])
    return src, src != PAD


KW = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def test_beam_one_equals_greedy():
    model = ToyModel().eval()
    src, mask = _batch()
    g = greedy_decode(model, src, mask, max_len_a=1.0, max_len_b=4, **KW)
    b = beam_search(model, src, mask, beam=1, alpha=0.0, max_len_a=1.0, max_len_b=4, **KW)
    assert g.tokens == b.tokens
    assert torch.allclose(g.scores, b.scores.float(), atol=1e-5)
    assert all(len(t) > 0 for t in g.tokens)  # min_len=1 blocks empty outputs


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_is_exact_search(alpha):
    """With a beam wider than every prefix set, beam search must find the best hypothesis."""
    model = ToyModel(seed=1).eval()
    src, mask = _batch()
    max_len = 4  # tokens incl. eos -> bodies of 1..3 tokens from {3,4,5}: 39 hypotheses
    res = beam_search(model, src, mask, beam=40, alpha=alpha, max_len_a=0.0, max_len_b=max_len, **KW)
    for i in range(src.size(0)):
        s, m = src[i : i + 1], mask[i : i + 1]
        best = max(
            (_score(model, s, m, list(body), alpha), list(body))
            for n in range(1, max_len)
            for body in itertools.product([3, 4, 5], repeat=n)
        )
        assert res.tokens[i] == best[1]
        assert float(res.scores[i]) == pytest.approx(best[0], abs=1e-5)


def test_wider_beam_never_scores_below_greedy_on_this_model():
    model = ToyModel(seed=2).eval()
    src, mask = _batch()
    s1 = beam_search(model, src, mask, beam=1, alpha=0.0, max_len_a=1.0, max_len_b=3, **KW).scores
    s5 = beam_search(model, src, mask, beam=5, alpha=0.0, max_len_a=1.0, max_len_b=3, **KW).scores
    assert torch.all(s5 >= s1 - 1e-6)


def test_beam_scores_are_the_model_scores_of_the_returned_tokens():
    model = ToyModel(seed=3).eval()
    src, mask = _batch()
    res = beam_search(model, src, mask, beam=3, alpha=1.0, max_len_a=1.5, max_len_b=2, **KW)
    for i, toks in enumerate(res.tokens):
        assert 0 < len(toks) < int(1.5 * int(mask[i].sum()) + 2)
        assert EOS not in toks and PAD not in toks and BOS not in toks
        got = _score(model, src[i : i + 1], mask[i : i + 1], toks, 1.0)
        assert float(res.scores[i]) == pytest.approx(got, abs=1e-5)


def test_max_length_is_respected_and_eos_forced():
    model = ToyModel(seed=4).eval()
    with torch.no_grad():  # make eos very unlikely so the length limit is what stops decoding
        model.out.bias[EOS] = -50.0
    src, mask = _batch()
    g = greedy_decode(model, src, mask, max_len_a=0.0, max_len_b=3, **KW)
    b = beam_search(model, src, mask, beam=2, max_len_a=0.0, max_len_b=3, **KW)
    assert [len(t) for t in g.tokens] == [2, 2, 2]
    assert [len(t) for t in b.tokens] == [2, 2, 2]
    assert all(math.isfinite(float(x)) for x in b.scores)


def test_bad_beam_size_raises():
    model = ToyModel()
    src, mask = _batch()
    with pytest.raises(ValueError, match="beam=0"):
        beam_search(model, src, mask, beam=0, **KW)
