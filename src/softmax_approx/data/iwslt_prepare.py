"""Build fairseq's prepared IWSLT'14 de-en layout from the original ``de-en.tgz``.

Why: the TED data is not redistributable, so a user supplies the archive and this module
applies the same cleaning as fairseq's ``examples/translation/prepare-iwslt14.sh`` (up to,
not including, its BPE step), in Python with sacremoses instead of the Moses perl scripts:

train (``train.tags.de-en.{de,en}``)
  1. drop lines containing ``<url>``, ``<talkid>`` or ``<keywords>`` (only those: fairseq
     keeps the other tag lines), delete the ``<title>``/``</title>``/``<description>``/
     ``</description>`` tags (their text stays);
  2. Moses-tokenize (``tokenizer.perl -l <lang>``: escaping on, no aggressive dash split);
  3. ``clean-corpus-n.perl -ratio 1.5 ... 1 175``: squeeze whitespace, drop pairs with an
     empty side, more than 175 or fewer than 1 words, a length ratio above 1.5 either way,
     or a word longer than 1000 characters;
  4. lowercase; every 23rd line (1-based line numbers divisible by 23) goes to ``valid``,
     the rest to ``train``.

dev/test (``IWSLT14.TED*.{de,en}.xml``)
  keep ``<seg id=...>`` lines, strip the ``<seg>`` tags, map ``’`` to ``'``, tokenize and
  lowercase; ``test`` = TED dev2010 + TEDX dev2012 + TED tst2010 + tst2011 + tst2012, in
  that order (fairseq's). Output: ``<out_dir>/{train,valid,test}.{de,en}``; files are written
  to temporary names and renamed at the end, so a failure leaves no partial split.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from softmax_approx.utils.errors import DataError

LANGS = ("de", "en")
TEST_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
_DROP = ("<url>", "<talkid>", "<keywords>")
_STRIP = ("<title>", "</title>", "<description>", "</description>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")
RATIO, MIN_LEN, MAX_LEN, MAX_WORD = 1.5, 1, 175, 1000
FIX = "supply the original IWSLT'14 de-en.tgz (2014-01 release, texts/de/en/de-en.tgz)"


def _read_members(tgz: Path) -> dict[str, str]:
    """Basename -> text of every regular file in the archive."""
    out: dict[str, str] = {}
    try:
        with tarfile.open(tgz, "r:*") as tar:
            for m in tar:
                if m.isfile():
                    fh = tar.extractfile(m)
                    assert fh is not None
                    out[PurePosixPath(m.name).name] = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{tgz}: file not found; {FIX}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{tgz}: truncated or corrupt archive ({type(e).__name__}: {e}); {FIX}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{tgz}: a member is not UTF-8 ({e.reason}); {FIX}") from None
    return out


def _need(members: dict[str, str], name: str, tgz: Path) -> str:
    if name not in members:
        raise DataError(f"{tgz}: member {name} is missing; {FIX}")
    return members[name]


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def clean_train_line(line: str) -> str | None:
    """Step 1 for one line of ``train.tags``: None when fairseq's grep drops it."""
    if any(tag in line for tag in _DROP):
        return None
    for tag in _STRIP:
        line = line.replace(tag, "")
    return line


def seg_text(line: str) -> str:
    """The text of one ``<seg id="N">...</seg>`` line, as fairseq's sed commands leave it."""
    return _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'")


def clean_corpus(src: list[str], tgt: list[str]) -> list[tuple[str, str]]:
    """clean-corpus-n.perl with ``-ratio 1.5`` and lengths 1..175 (see the module docstring)."""
    kept = []
    for f, e in zip(src, tgt):
        f, e = " ".join(f.split()), " ".join(e.split())
        if not f or not e:
            continue
        fc, ec = len(f.split(" ")), len(e.split(" "))
        if not (MIN_LEN <= fc <= MAX_LEN and MIN_LEN <= ec <= MAX_LEN):
            continue
        if ec / fc > RATIO or fc / ec > RATIO:
            continue
        if any(len(w) > MAX_WORD for w in f.split(" ") + e.split(" ")):
            continue
        kept.append((f, e))
    return kept


def prepare_iwslt14_from_tgz(tgz_path: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write ``{train,valid,test}.{de,en}`` into ``out_dir``; returns line counts per split."""
    from sacremoses import MosesTokenizer

    tgz, out = Path(tgz_path), Path(out_dir)
    members = _read_members(tgz)
    toks = {lang: MosesTokenizer(lang=lang) for lang in LANGS}

    def tok(lang: str, line: str) -> str:
        return toks[lang].tokenize(line, escape=True, return_str=True)

    tokenized = {}
    for lang in LANGS:
        name = f"train.tags.de-en.{lang}"
        raw = _lines(_need(members, name, tgz))
        tokenized[lang] = [tok(lang, ln) for ln in (clean_train_line(x) for x in raw) if ln is not None]
    if len(tokenized["de"]) != len(tokenized["en"]):
        raise DataError(
            f"{tgz}: train.tags.de-en.de keeps {len(tokenized['de'])} lines but train.tags.de-en.en keeps "
            f"{len(tokenized['en'])} after dropping tag lines; {FIX}"
        )
    pairs = [(f.lower(), e.lower()) for f, e in clean_corpus(tokenized["de"], tokenized["en"])]
    splits: dict[str, list[tuple[str, str]]] = {
        "valid": [p for i, p in enumerate(pairs, start=1) if i % 23 == 0],
        "train": [p for i, p in enumerate(pairs, start=1) if i % 23 != 0],
    }
    test: dict[str, list[str]] = {lang: [] for lang in LANGS}
    for lang in LANGS:
        for name in TEST_SETS:
            xml = _need(members, f"IWSLT14.{name}.de-en.{lang}.xml", tgz)
            segs = [seg_text(ln) for ln in _lines(xml) if "<seg id" in ln]
            test[lang].extend(tok(lang, s).lower() for s in segs)
    if len(test["de"]) != len(test["en"]):
        raise DataError(f"{tgz}: the de and en test xml files hold {len(test['de'])} and {len(test['en'])} segments; {FIX}")
    splits["test"] = list(zip(test["de"], test["en"]))

    out.mkdir(parents=True, exist_ok=True)
    tmp_paths = []
    for split, rows in splits.items():
        for col, lang in enumerate(LANGS):
            tmp = out / f".{split}.{lang}.tmp"
            tmp.write_text("".join(r[col] + "\n" for r in rows), encoding="utf-8")
            tmp_paths.append((tmp, out / f"{split}.{lang}"))
    for tmp, final in tmp_paths:
        os.replace(tmp, final)
    return {k: len(v) for k, v in splits.items()}
