"""Readers of the datasets' own published formats, validating what they read.

Why: a silently mis-parsed row (a missing label, an unaligned sentence pair) corrupts every
number downstream, so each reader checks its input and raises a one-line ``DataError``
naming the file (and line) and the fix, instead of guessing.

Formats (what the maintainers publish; see docs and ``expected_files`` in ``files.py``):

* SST-2: GLUE TSV, header ``sentence<TAB>label``, labels 0/1 (``train.tsv``, ``dev.tsv``).
* IMDB: the ``aclImdb`` tree ``{train,test}/{pos,neg}/<id>_<rating>.txt`` either extracted
  or read straight (streaming) from ``aclImdb.tar.gz``; ``<br />`` tags become spaces.
* Multi30k and IWSLT'14: line-aligned parallel text, one sentence a line, optionally gzip'd.
"""

from __future__ import annotations

import gzip
import random
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from softmax_approx.utils.errors import DataError


@dataclass(frozen=True)
class TextExample:
    """One classification example: raw text and an integer label."""

    text: str
    label: int


_FIX_REDOWNLOAD = "re-download it with `python -m softmax_approx.data download {task} --data-dir DIR`"


# --------------------------------------------------------------------------- SST-2 (GLUE TSV)
def read_glue_sst2(path: str | Path) -> list[TextExample]:
    """Read a GLUE SST-2 TSV file (header ``sentence<TAB>label``; labels 0/1).

    GLUE's train/dev rows carry a trailing space before the tab; it is stripped.
    """
    return [TextExample(text, label) for _, text, label in glue_sst2_rows(path)]


def glue_sst2_rows(path: str | Path) -> list[tuple[int, str, int]]:
    """``(line number, sentence, label)`` of each row of a GLUE SST-2 TSV file, validated."""
    path = Path(path)
    fix = _FIX_REDOWNLOAD.format(task="sst2")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {fix}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); {fix}") from None
    if not lines:
        raise DataError(f"{path}: file is empty; {fix}")
    header = lines[0].rstrip("\r").split("\t")
    if [h.strip() for h in header] != ["sentence", "label"]:
        raise DataError(
            f"{path}:1: expected GLUE SST-2 header 'sentence<TAB>label', got {lines[0][:60]!r}; {fix}"
        )
    out: list[tuple[int, str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(
                f"{path}:{lineno}: expected 2 tab-separated fields (sentence, label), "
                f"got {len(parts)}; {fix}"
            )
        text, label = parts[0].strip(), parts[1].strip()
        if label not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}; {fix}")
        if not text:
            raise DataError(f"{path}:{lineno}: empty sentence; {fix}")
        out.append((lineno, text, int(label)))
    if not out:
        raise DataError(f"{path}: no rows after the header; {fix}")
    return out


# --------------------------------------------------------------------------- IMDB (aclImdb)
_IMDB_NAME = re.compile(r"^aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _clean_imdb(text: str) -> str:
    return " ".join(_BR.sub(" ", text).split())


def _imdb_example(name: str, raw: bytes, source: str) -> tuple[str, TextExample] | None:
    """Parse one member named ``aclImdb/<split>/<pos|neg>/<id>_<rating>.txt``; None if not one."""
    m = _IMDB_NAME.match(name)
    if not m:
        return None
    split, polarity, _id, rating = m.group(1), m.group(2), m.group(3), int(m.group(4))
    fix = _FIX_REDOWNLOAD.format(task="imdb")
    # aclImdb README: negative reviews have rating <= 4, positive >= 7 (out of 10); 0 marks
    # "unknown" (our writer of HF's copy, which has no ratings, names files <id>_0.txt).
    plausible = 7 <= rating <= 10 if polarity == "pos" else 1 <= rating <= 4
    if rating != 0 and not plausible:
        raise DataError(f"{source}: {name}: rating {rating} is impossible for a '{polarity}' review; {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: {name}: not UTF-8 text ({e.reason}); {fix}") from None
    text = _clean_imdb(text)
    if not text:
        raise DataError(f"{source}: {name}: empty review; {fix}")
    return split, TextExample(text, 1 if polarity == "pos" else 0)


def read_imdb(root: str | Path) -> dict[str, list[TextExample]]:
    """Read IMDB into ``{"train": [...], "test": [...]}`` (labels pos=1, neg=0).

    ``root`` is the ``imdb`` folder holding either ``aclImdb/`` (extracted) or
    ``aclImdb.tar.gz`` (read member by member, streaming, never extracted). The extracted tree
    wins when both exist. Examples are sorted by (label, id) so the order never depends on the
    archive or the file system.
    """
    root = Path(root)
    fix = _FIX_REDOWNLOAD.format(task="imdb")
    items: list[tuple[str, str, TextExample]] = []  # (split, member name, example)
    tree = root / "aclImdb"
    tgz = root / "aclImdb.tar.gz"
    if tree.is_dir():
        source = str(tree)
        for split in ("train", "test"):
            for pol in ("pos", "neg"):
                for f in (tree / split / pol).glob("*.txt"):
                    name = f"aclImdb/{split}/{pol}/{f.name}"
                    parsed = _imdb_example(name, f.read_bytes(), source)
                    if parsed is None:
                        raise DataError(f"{f}: file name is not '<id>_<rating>.txt'; {fix}")
                    items.append((parsed[0], name, parsed[1]))
    elif tgz.is_file():
        source = str(tgz)
        try:
            with tarfile.open(tgz, mode="r|gz") as tar:  # "r|": stream, no random access
                for member in tar:
                    if not member.isfile():
                        continue
                    if not _IMDB_NAME.match(member.name):
                        continue
                    fh = tar.extractfile(member)
                    assert fh is not None
                    parsed = _imdb_example(member.name, fh.read(), source)
                    assert parsed is not None
                    items.append((parsed[0], member.name, parsed[1]))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{tgz}: truncated or corrupt archive ({type(e).__name__}: {e}); {fix}") from None
    else:
        raise DataError(f"{root}: neither {tree} nor {tgz} exists; {fix}")

    def key(item: tuple[str, str, TextExample]) -> tuple[int, int]:
        m = _IMDB_NAME.match(item[1])
        assert m
        return (item[2].label, int(m.group(3)))

    out: dict[str, list[TextExample]] = {}
    for split in ("train", "test"):
        rows = sorted((it for it in items if it[0] == split), key=key)
        if not rows:
            raise DataError(f"{source}: no reviews found under aclImdb/{split}/{{pos,neg}}/; {fix}")
        out[split] = [it[2] for it in rows]
    return out


# --------------------------------------------------------------------------- parallel text
def read_lines(path: str | Path, *, fix: str) -> list[str]:
    """Read a UTF-8 text file (gzip'd when it ends in ``.gz``) into stripped lines."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
                data = fh.read()
        else:
            data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {fix}") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); {fix}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); {fix}") from None
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln.rstrip("\r").strip() for ln in lines]
    if not lines:
        raise DataError(f"{path}: file is empty; {fix}")
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path, *, task: str) -> list[tuple[str, str]]:
    """Read two line-aligned files into (source, target) pairs; counts must match."""
    fix = _FIX_REDOWNLOAD.format(task=task)
    src = read_lines(src_path, fix=fix)
    tgt = read_lines(tgt_path, fix=fix)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: parallel files must be "
            f"line-aligned; {fix}"
        )
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s or not t:
            which = src_path if not s else tgt_path
            raise DataError(f"{which}:{i}: empty sentence in a parallel file; {fix}")
    return list(zip(src, tgt))


# --------------------------------------------------------------------------- seeded splits
def _holdout_count(size: int | float, n: int, *, what: str, unit: str = "rows", whole: str = "rows") -> int:
    """How many of ``n`` items ``val_size`` holds out: a count (int) or a fraction in (0, 1)."""
    if isinstance(size, float) and not isinstance(size, bool):
        if not 0.0 < size < 1.0:
            raise DataError(f"val_size={size}: a fraction must lie in (0, 1) for {what}")
        k = max(1, round(n * size))
    else:
        k = int(size)
    if not 1 <= k < n:
        raise DataError(f"val_size={size}: must be between 1 and {n - 1} {whole} for {what} ({n} {unit})")
    return k


def holdout_split(n: int, size: int | float, seed: int, *, what: str) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (kept, held_out) index lists, both in ascending order.

    ``size`` is a count (int >= 1) or a fraction in (0, 1). The permutation comes from
    ``random.Random(seed)``, so the split is the same on every machine and Python version.
    """
    k = _holdout_count(size, n, what=what)
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    held = sorted(perm[:k])
    kept = sorted(perm[k:])
    return kept, held


@dataclass(frozen=True)
class SentenceHoldout:
    """Row indices of a leak-free sentence hold-out (see :func:`sentence_holdout`)."""

    kept: list[int]
    held: list[int]
    dropped: list[int]
    n_sentences: int  # whole sentences among the rows


def _token_spans(text: str) -> list[str]:
    """Every contiguous token span of a space-joined text (the text itself included)."""
    starts = [0] + [k + 1 for k, c in enumerate(text) if c == " "]
    ends = [k - 1 for k in starts[1:]] + [len(text)]
    return [text[a:b] for a in starts for b in ends if b > a]


def normalize_phrase(text: str) -> str:
    """Lowercased, single-spaced: the form in which rows are compared for containment."""
    return " ".join(text.lower().split())


def sentence_holdout(texts: Sequence[str], size: int | float, seed: int, *, what: str) -> SentenceHoldout:
    """Hold out whole sentences and drop every training row that occurs inside one.

    Why: GLUE's SST-2 train file holds each treebank sentence *and* its labelled sub-phrases, so
    holding out random rows leaves most of a validation sentence's phrases in training and
    validation accuracy far above test. Rule (token-span containment of normalized rows):

    1. a *sentence* is a row whose text is no contiguous token span of a longer row;
    2. ``size`` sentences (count, or fraction of the sentences) are drawn with
       ``random.Random(seed)`` from the sorted sentence texts; one row of each is held out;
    3. every other row whose text is a token span of a held-out sentence (its phrases and any
       duplicate of it) is dropped; everything else is kept for training.

    Rows are visited longest first and only sentences' spans are enumerated (a phrase's spans
    are spans of its sentence), so the 67k-row SST-2 file takes about a second.
    """
    norm = [normalize_phrase(t) for t in texts]
    rowset = set(norm)
    inside: set[str] = set()  # rows that are spans of a longer row
    sentences: list[str] = []
    for text in sorted(rowset, key=lambda t: (-t.count(" "), t)):
        if text in inside:
            continue
        sentences.append(text)
        inside.update(rowset.intersection(_token_spans(text)))
        inside.discard(text)
    sentences.sort()
    n = len(sentences)
    k = _holdout_count(size, n, what=what, unit="sentences", whole="whole sentences")
    rng = random.Random(seed)
    held_texts = set(rng.sample(sentences, k))
    leaked = set().union(*(_token_spans(t) for t in held_texts))
    kept, held, dropped = [], [], []
    for i, t in enumerate(norm):
        if t in held_texts:
            held.append(i)
            held_texts.discard(t)  # later duplicates are dropped
        elif t in leaked:
            dropped.append(i)
        else:
            kept.append(i)
    return SentenceHoldout(kept, held, dropped, n)


def seeded_subset(items: Sequence, cap: int | None, seed: int) -> list:
    """At most ``cap`` items chosen with ``random.Random(seed)``, original order kept."""
    if cap is None or cap >= len(items):
        return list(items)
    if cap < 1:
        raise DataError(f"subset cap must be >= 1, got {cap}")
    idx = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in idx]


def iter_text(pairs: Iterable[tuple[str, str]]) -> Iterable[str]:
    """Both sides of each pair, for training a joint tokenizer."""
    for s, t in pairs:
        yield s
        yield t


__all__ = [
    "TextExample",
    "read_glue_sst2",
    "glue_sst2_rows",
    "read_imdb",
    "read_lines",
    "read_parallel",
    "holdout_split",
    "sentence_holdout",
    "SentenceHoldout",
    "normalize_phrase",
    "seeded_subset",
    "iter_text",
]
