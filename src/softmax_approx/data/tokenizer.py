"""Subword tokenizers (HF ``tokenizers``) trained on a task's training split, cached as JSON.

Why: each task gets its own vocabulary learned from its training text only (no test leakage),
and a rerun must not retrain it. The cache file name hashes the settings and the input files'
sizes and mtimes, so changing either makes a new tokenizer; it is written atomically
(temporary file + rename), so a crashed run never leaves a half-written cache.

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
from pathlib import Path
from typing import Callable, Iterable

from softmax_approx.utils.atomic import write_text
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

CLS_SPECIALS = ["<pad>", "<unk>", "<cls>"]
MT_SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
TOKENIZER_FORMAT = 1  # bump when the recipe below changes, to invalidate old caches

#: how many times a tokenizer was trained in this process (tests use it to prove cache reuse)
TRAIN_COUNT = 0


def _classification_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.WordPiece(unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=CLS_SPECIALS, show_progress=False)
    return tok, trainer


def _translation_tokenizer(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MT_SPECIALS, show_progress=False)
    return tok, trainer


_BUILDERS = {"classification": _classification_tokenizer, "translation": _translation_tokenizer}


def cache_path(cache_dir: str | Path, task: str, settings: dict) -> Path:
    """``<cache_dir>/<task>-<hash>.json``; ``settings`` must be JSON-serialisable."""
    blob = json.dumps({"format": TOKENIZER_FORMAT, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{task}-{digest}.json"


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a fresh tokenizer of ``kind`` ('classification' | 'translation')."""
    global TRAIN_COUNT
    tok, trainer = _BUILDERS[kind](vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
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
