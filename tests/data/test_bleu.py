"""BLEU: the two flavours we report, checked against hand computations."""

import math
from collections import Counter

import pytest

from softmax_approx.tasks.bleu import corpus_bleu, moses_tokenize_lower


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _reference_bleu(hyps, refs):
    """Papineni et al. (2002) corpus BLEU-4, written out independently of sacreBLEU."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def test_perfect_hypothesis_scores_100():
    refs = ["A man is riding a bike.", "Two dogs play in the snow, happily!"]
    res = corpus_bleu(refs, refs)
    assert res.bleu == pytest.approx(100.0)
    assert res.bleu_tok == pytest.approx(100.0)
    assert "tok:13a" in res.signature and "tok:none" in res.signature_tok
    assert res.n_sentences == 2


def test_known_small_case_matches_hand_computation():
    # Lowercase, already space-separated words without punctuation: both tokenizers leave the
    # text unchanged, so both flavours must equal the textbook formula.
    refs = ["the cat is on the mat today", "there is a cat on the mat"]
    hyps = ["the cat sat on the mat today", "a cat is on the mat"]
    expected = _reference_bleu(hyps, refs)
    assert 0 < expected < 100
    res = corpus_bleu(hyps, refs)
    assert res.bleu == pytest.approx(expected, abs=1e-6)
    assert res.bleu_tok == pytest.approx(expected, abs=1e-6)


def test_tokenized_bleu_is_case_insensitive_but_sacrebleu_is_not():
    refs = ["The cat is on the mat, today."]
    hyps = ["the cat is on the mat, today."]
    res = corpus_bleu(hyps, refs)
    assert res.bleu_tok == pytest.approx(100.0)
    assert res.bleu < 100.0


def test_moses_tokenization_splits_punctuation_and_lowercases():
    assert moses_tokenize_lower("It's a Test, isn't it?") == "it 's a test , isn 't it ?"


def test_mismatched_lengths_raise_one_line_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])
