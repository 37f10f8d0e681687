"""Tokenizers: byte-identical training (in one process and across hash seeds), WordPiece
semantics of the deterministic trainer, content-keyed caches and the tokenizer hash."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from softmax_approx.data import tokenizer as tokmod
from softmax_approx.data.tokenizer import content_signature, tokenizer_sha256, train_tokenizer

_WORDS = ("the film movie plot acting was is a and it of good great bad awful dull charming superb "
          "naïve café über straße déjà-vu don't won't 1990s 3d sci-fi half-hearted x-rays").split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Many equally frequent pairs: a trainer that breaks ties by hash order shows it here."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 15))) + rng.choice([" .", " !", "", " ?"])
            for _ in range(n)]


_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_tokenizer import corpus
from softmax_approx.data.tokenizer import train_tokenizer, tokenizer_sha256
print(tokenizer_sha256(train_tokenizer({kind!r}, corpus(), {vocab})))
"""


def _sha_in_subprocess(kind: str, vocab: int, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    code = _SCRIPT.format(tests=str(Path(__file__).parent), kind=kind, vocab=vocab)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("kind,vocab", [("classification", 150), ("translation", 150)])
def test_training_is_byte_identical_in_one_process_and_across_processes(kind, vocab):
    texts = corpus()
    first = train_tokenizer(kind, texts, vocab).to_str()
    for _ in range(2):  # HF's WordPiece trainer permuted the vocabulary on every call
        assert train_tokenizer(kind, texts, vocab).to_str() == first
    digest = hashlib.sha256(first.encode()).hexdigest()
    assert {_sha_in_subprocess(kind, vocab, s) for s in ("1", "2")} == {digest}


def test_wordpiece_vocabulary_is_wordpiece():
    tok = train_tokenizer("classification", corpus(), 120)
    vocab = tok.get_vocab()
    assert [vocab[s] for s in tokmod.CLS_SPECIALS] == [0, 1, 2]
    assert len(vocab) == 120 and sorted(vocab.values()) == list(range(120))
    assert all(not (0xF0000 <= ord(c)) for t in vocab for c in t)  # no private code point leaks out
    assert any(t.startswith("##") for t in vocab) and "the" in vocab
    # every continuation character exists as ##c, every word-initial one as c: nothing is <unk>
    text = "The film was charming. naïve and half-hearted !"
    enc = tok.encode(text)
    assert tokmod.CLS_SPECIALS.index("<unk>") not in enc.ids
    assert tok.decode(enc.ids) == "the film was charming. naive and half - hearted!"
    assert tok.encode("Ωmega").ids[0] == vocab["<unk>"]  # unseen first character


def test_word_counts_match_the_bert_pre_tokenizer():
    texts = corpus(50) + ["«Ça» — c'est… ¿qué? x-ray,ok!!  tab\there", "CAFÉ 3.5/10 (meh) [sic] #1 $5 @home", "",
                          "中文字符 and ＡＢＣ full-width！", "a\u00a0b\u2003c\u200bd"]
    pipe = tokmod._classification_pipeline()
    expected: dict[str, int] = {}
    for t in texts:
        for w, _ in pipe.pre_tokenizer.pre_tokenize_str(pipe.normalizer.normalize_str(t)):
            expected[w] = expected.get(w, 0) + 1
    for chunk in (1, 7, 200):
        assert dict(tokmod.word_counts(texts, chunk=chunk)) == expected


def test_wordpiece_prefers_frequent_merges():
    texts = ["charming"] * 50 + ["c h a r m i n g"]
    tok = train_tokenizer("classification", texts, 40)
    assert tok.encode("charming").tokens == ["charming"]


def test_different_texts_give_a_different_hash():
    a = train_tokenizer("classification", corpus(seed=0), 150)
    b = train_tokenizer("classification", corpus(seed=1), 150)
    assert tokenizer_sha256(a) == hashlib.sha256(a.to_str().encode()).hexdigest()
    assert tokenizer_sha256(a) != tokenizer_sha256(b)


def test_unknown_kind():
    with pytest.raises(ValueError, match="allowed classification, translation"):
        train_tokenizer("nosuch", [], 100)


def test_content_signature_ignores_mtime_and_follows_content(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("sentence\tlabel\nok \t1\n")
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.txt").write_text("a")
    before = content_signature([f, d])
    os.utime(f, ns=(1, 1))
    os.utime(d / "sub" / "a.txt", ns=(1, 1))
    assert content_signature([f, d]) == before
    f.write_text("sentence\tlabel\nok \t0\n")  # same size, other content
    (d / "sub" / "a.txt").write_text("b")
    after = content_signature([f, d])
    assert after[0][:2] == before[0][:2] and after[0][2] != before[0][2]
    assert after[1][2] != before[1][2]
