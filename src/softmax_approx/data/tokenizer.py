"""Subword tokenizers (HF ``tokenizers``) trained on a task's training split, cached as JSON.

Why: each task gets its own vocabulary learned from its training text only (no test leakage),
and a rerun must not retrain it. The cache file name hashes the settings and the **content** of
the input files (size + sha256, :func:`content_signature`), so touching a file reuses the cache
and editing it makes a new tokenizer; it is written atomically (temporary file + rename), so a
crashed run never leaves a half-written cache. :func:`tokenizer_sha256` names the exact
vocabulary a run used (the harness records it in ``results.json``).

**Deterministic training** (same texts -> byte-identical JSON, in any process): HF's BPE
trainer orders its initial alphabet by code point and breaks ties between equally frequent
merges by token id, so it is deterministic as long as every initial token comes from that
sorted alphabet. Its WordPiece trainer is not: it creates the ``##x`` continuation tokens in
hash-map order, so ties (and with them the vocabulary) change from run to run. We therefore
train WordPiece as a plain BPE over a private alphabet where every character, word-initial or
continuation, is its own code point assigned in sorted order (:class:`_Alphabet`), and map the
learned vocabulary back to WordPiece tokens ourselves.

* classification: lowercased WordPiece (BERT normalizer and pre-tokenizer);
  specials ``<pad>=0, <unk>=1, <cls>=2``.
* translation: one joint BPE over both languages; specials ``<pad>=0, <unk>=1, <bos>=2,
  <eos>=3``. Text is split on whitespace with a word-start marker (Metaspace) and
  punctuation is split off, so ``decode`` reconstructs the input spacing exactly: Multi30k's
  raw text comes back as plain text, IWSLT's Moses-tokenized text comes back tokenized (the
  DataModule then Moses-detokenizes it).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from softmax_approx.utils.atomic import write_text
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

CLS_SPECIALS = ["<pad>", "<unk>", "<cls>"]
MT_SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
TOKENIZER_FORMAT = 2  # bump when the recipe below changes, to invalidate old caches
WORDPIECE_PREFIX = "##"
_PRIVATE_BASE = 0xF0000  # Unicode supplementary private use planes 15-16: 131,068 code points

#: how many times a tokenizer was trained in this process (tests use it to prove cache reuse)
TRAIN_COUNT = 0


# --------------------------------------------------------------------------- recipes
def _classification_pipeline() -> Tokenizer:
    """The WordPiece tokenizer's text pipeline (the model is set after training)."""
    tok = Tokenizer(models.WordPiece({"<unk>": 0}, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    return tok


def _translation_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MT_SPECIALS, show_progress=False)
    return tok, trainer


class _Alphabet:
    """Word-initial and continuation characters as distinct private code points, in sorted order."""

    def __init__(self, words: Iterable[str]) -> None:
        first = sorted({w[0] for w in words})
        rest = sorted({c for w in words for c in w[1:]})
        symbols = [(c, False) for c in first] + [(c, True) for c in rest]
        if len(symbols) > 0x1FFFE - 4:
            raise ValueError(f"{len(symbols)} distinct characters: too many for the private alphabet")
        # planes 15 and 16 (skipping each plane's two non-characters)
        points = [_PRIVATE_BASE + i + 2 * (i >= 0xFFFE) for i in range(len(symbols))]
        self.to_private = {s: chr(p) for s, p in zip(symbols, points)}
        self.from_private = {chr(p): (c, cont) for (c, cont), p in zip(symbols, points)}

    def encode(self, word: str) -> str:
        m = self.to_private
        return m[(word[0], False)] + "".join(m[(c, True)] for c in word[1:])

    def decode(self, token: str) -> str:
        """A learned private token -> its WordPiece form (``##`` when it continues a word)."""
        chars = [self.from_private[ch] for ch in token]
        return (WORDPIECE_PREFIX if chars[0][1] else "") + "".join(c for c, _ in chars)


def _is_bert_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def word_counts(texts: Iterable[str], chunk: int = 200) -> Counter[str]:
    """Words of the classification pipeline (BERT normalizer + pre-tokenizer) and their counts.

    Same words as ``pre_tokenize_str(normalize_str(text))`` per text (tested), ~3x faster: the
    normalizer is character-wise, so it runs on chunks of texts joined by newlines, and
    BertPreTokenizer's rule (split on whitespace, every punctuation character alone) is one
    regular expression over the characters that occur.
    """
    tok = _classification_pipeline()
    assert tok.normalizer is not None
    counts: Counter[str] = Counter()
    batch: list[str] = []

    def flush() -> None:
        text = tok.normalizer.normalize_str("\n".join(batch))
        chars = sorted(set(text) | {" "})
        punct = "".join(re.escape(c) for c in chars if _is_bert_punct(c))
        space = "".join(re.escape(c) for c in chars if c.isspace())
        pattern = f"[{punct}]|[^{punct}{space}]+" if punct else f"[^{space}]+"
        counts.update(re.findall(pattern, text))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return counts


def _train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """WordPiece vocabulary learned by BPE merges, deterministic (see the module docstring)."""
    tok = _classification_pipeline()
    counts = word_counts(texts)
    for w in [w for w in counts if len(w) > 100]:  # longer words are <unk> anyway
        del counts[w]
    words = sorted(counts)
    alphabet = _Alphabet(words)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # BPE's vocab_size counts its alphabet; ours adds the specials in front
    trainer = trainers.BpeTrainer(vocab_size=max(1, vocab_size - len(CLS_SPECIALS)), show_progress=False)
    # each distinct word once per occurrence, in sorted order (the trainer only sees counts)
    bpe.train_from_iterator((alphabet.encode(w) for w in words for _ in range(counts[w])), trainer=trainer)
    learned = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(CLS_SPECIALS)}
    for token, _ in learned:
        vocab.setdefault(alphabet.decode(token), len(vocab))
    tok.model = models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100,
                                 continuing_subword_prefix=WORDPIECE_PREFIX)
    return tok


def _train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok, trainer = _translation_tokenizer(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


_TRAINERS: dict[str, Callable[[Iterable[str], int], Tokenizer]] = {
    "classification": _train_wordpiece,
    "translation": _train_bpe,
}
KINDS = tuple(_TRAINERS)


# --------------------------------------------------------------------------- identity and cache
def tokenizer_sha256(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's serialized JSON: names the exact vocabulary and pipeline."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_signature(paths: Iterable[str | Path]) -> list[tuple[str, int, str]]:
    """(name, size, sha256) of each input file; a folder is one entry over its sorted tree.

    Content, not mtimes: ``touch`` or a copy into another folder keeps the key, an edit changes it.
    """
    sig = []
    for p in map(Path, paths):
        if p.is_dir():
            h, size = hashlib.sha256(), 0
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                rel = f.relative_to(p).as_posix()
                h.update(f"{rel}\0{_file_sha256(f)}\0".encode())
                size += f.stat().st_size
            sig.append((p.name, size, h.hexdigest()))
        else:
            sig.append((p.name, p.stat().st_size, _file_sha256(p)))
    return sig


def cache_path(cache_dir: str | Path, task: str, settings: dict) -> Path:
    """``<cache_dir>/<task>-<hash>.json``; ``settings`` must be JSON-serialisable."""
    blob = json.dumps({"format": TOKENIZER_FORMAT, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{task}-{digest}.json"


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a fresh tokenizer of ``kind`` (one of :data:`KINDS`); deterministic in ``texts``."""
    global TRAIN_COUNT
    if kind not in _TRAINERS:
        raise ValueError(f"tokenizer kind {kind!r}: allowed {', '.join(KINDS)}")
    tok = _TRAINERS[kind](texts, vocab_size)
    TRAIN_COUNT += 1
    return tok


def load_or_train(
    kind: str,
    path: Path,
    texts: Callable[[], Iterable[str]],
    vocab_size: int,
) -> Tokenizer:
    """Load the tokenizer cached at ``path``; otherwise train it on ``texts()`` and cache it."""
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a corrupt cache is rebuilt, never trusted
            pass
    tok = train_tokenizer(kind, texts(), vocab_size)
    try:
        write_text(path, tok.to_str())
    except OSError:
        pass  # an unwritable cache only costs a retrain next time
    return tok
