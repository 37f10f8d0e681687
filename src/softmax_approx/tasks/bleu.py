"""Corpus BLEU, named precisely: which text it is computed on and with which tokenizer.

Two numbers are reported for every evaluation, because papers mix them up:

* ``bleu`` — **sacreBLEU** (``corpus_bleu``, default 13a tokenizer, mixed case, exp smoothing)
  on *detokenized* hypotheses against *detokenized* references. This is the headline number
  and the only one comparable across tokenizations; its signature string is logged with it.
* ``bleu_tok`` — **tokenized BLEU as fairseq reports it** for IWSLT'14: both sides are
  Moses-tokenized (``sacremoses``, ``escape=False``, language ``en``) and lowercased, then
  scored by sacreBLEU with ``tokenize='none'`` (equivalent to ``multi-bleu.perl`` / fairseq's
  ``--scoring bleu`` on the tokenized, lowercased text of ``prepare-iwslt14.sh``). It is
  usually 1-2 points higher than ``bleu`` and must never be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from sacrebleu.metrics import BLEU

__all__ = ["BleuResult", "corpus_bleu", "moses_tokenize_lower"]


@dataclass(frozen=True)
class BleuResult:
    """Both BLEU flavours of one corpus, with sacreBLEU's signatures."""

    bleu: float  # sacreBLEU, detokenized, 13a
    bleu_tok: float  # tokenized (Moses, lowercased), tokenize='none'
    signature: str
    signature_tok: str
    n_sentences: int


@lru_cache(maxsize=4)
def _moses(lang: str):
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang=lang)


def moses_tokenize_lower(text: str, lang: str = "en") -> str:
    """Moses-tokenize (no XML escaping) and lowercase one detokenized sentence."""
    return _moses(lang).tokenize(text, escape=False, return_str=True).lower()


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], lang: str = "en") -> BleuResult:
    """Score detokenized ``hypotheses`` against one detokenized reference each."""
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_bleu: {len(hyps)} hypotheses but {len(refs)} references; pass one reference per hypothesis")
    if not hyps:
        raise ValueError("corpus_bleu: no sentences to score; evaluate on a non-empty split")
    detok = BLEU()
    score = detok.corpus_score(hyps, [refs])
    tok = BLEU(tokenize="none", force=True)  # force: it is tokenized on purpose (no warning)
    score_tok = tok.corpus_score(
        [moses_tokenize_lower(h, lang) for h in hyps], [[moses_tokenize_lower(r, lang) for r in refs]]
    )
    return BleuResult(
        bleu=float(score.score),
        bleu_tok=float(score_tok.score),
        signature=str(detok.get_signature()),
        signature_tok=str(tok.get_signature()) + "|moses-lc",
        n_sentences=len(hyps),
    )
