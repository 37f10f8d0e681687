"""Tiny datasets written in the real published formats, for the data tests.

Each writer builds the same layout the real download has (GLUE TSV, aclImdb tree and tarball,
gzip'd Multi30k, fairseq's prepared IWSLT'14 folder, the original IWSLT'14 de-en.tgz).
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

POS_WORDS = "good great wonderful charming superb lovely moving brilliant".split()
NEG_WORDS = "bad awful dull boring terrible clumsy tedious weak".split()
FILL = "the film movie story plot acting was is a an and it this of".split()


def _sentence(rng: random.Random, label: int, n: int) -> str:
    words = [rng.choice(FILL) for _ in range(n)]
    for _ in range(max(1, n // 4)):
        words[rng.randrange(n)] = rng.choice(POS_WORDS if label else NEG_WORDS)
    return " ".join(words)


def write_sst2(data_dir: Path, n_train: int = 60, n_dev: int = 12, seed: int = 0) -> Path:
    """GLUE SST-2 TSVs (train/dev rows carry a space before the tab, like GLUE's)."""
    rng = random.Random(seed)
    d = data_dir / "sst2"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, label, rng.randint(3, 20))} \t{label}")
        (d / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return d


def imdb_members(n_per_class: int = 6, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    out = {}
    for split in ("train", "test"):
        for pol, label in (("pos", 1), ("neg", 0)):
            for i in range(n_per_class):
                rating = rng.randint(7, 10) if label else rng.randint(1, 4)
                text = _sentence(rng, label, rng.randint(10, 40)) + ".<br /><br />" + _sentence(rng, label, 8)
                out[f"aclImdb/{split}/{pol}/{i}_{rating}.txt"] = text
    out["aclImdb/README"] = "Large Movie Review Dataset v1.0 (fixture)\n"
    out["aclImdb/imdb.vocab"] = "the\nand\n"
    return out


def write_imdb_tree(data_dir: Path, n_per_class: int = 6) -> Path:
    root = data_dir / "imdb"
    for name, text in imdb_members(n_per_class).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root / "aclImdb"


def write_imdb_tgz(data_dir: Path, n_per_class: int = 6, members: dict[str, str] | None = None) -> Path:
    root = data_dir / "imdb"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "aclImdb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (members or imdb_members(n_per_class)).items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


DE = "ein mann eine frau zwei hunde spielen im park auf der straße mit einem ball".split()
EN = "a man a woman two dogs play in the park on the street with a ball".split()


def parallel_pairs(n: int, seed: int = 0, *, raw: bool = True) -> list[tuple[str, str]]:
    """Aligned toy pairs; ``raw`` gives detokenized capitalised text (Multi30k style)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        k = rng.randint(2, 9)
        idx = [rng.randrange(len(DE)) for _ in range(k)]
        de = " ".join(DE[i] for i in idx)
        en = " ".join(EN[i] for i in idx)
        if raw:
            pairs.append((de.capitalize() + ".", en.capitalize() + "."))
        else:
            pairs.append((de + " .", en + " &apos;s ."))
    return pairs


def write_multi30k(data_dir: Path, sizes=(40, 8, 8), gz: bool = True) -> Path:
    d = data_dir / "multi30k"
    d.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(zip(("train", "val", "test_2016_flickr"), sizes)):
        pairs = parallel_pairs(n, seed)
        for lang, col in (("de", 0), ("en", 1)):
            text = "\n".join(p[col] for p in pairs) + "\n"
            if gz:
                with gzip.open(d / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
                    fh.write(text)
            else:
                (d / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return d


def write_iwslt_prepared(data_dir: Path, sizes=None) -> Path:
    """fairseq's prepared layout; ``sizes`` maps split -> line count (default valid+test only)."""
    sizes = sizes or {"valid": 30, "test": 10}
    d = data_dir / "iwslt14" / "iwslt14.tokenized.de-en"
    d.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes.items()):
        pairs = parallel_pairs(n, seed + 10, raw=False)
        for lang, col in (("de", 0), ("en", 1)):
            (d / f"{split}.{lang}").write_text("\n".join(p[col] for p in pairs) + "\n", encoding="utf-8")
    return d


def write_iwslt_tgz(path: Path, n_train: int = 50) -> Path:
    """A tiny original-style IWSLT'14 ``de-en.tgz`` (train.tags + the five dev/test xml files)."""
    rng = random.Random(3)
    de_lines, en_lines = [], []
    header = [
        ("<url>http://www.ted.com/talks/x.html</url>",) * 2,
        ("<keywords>talks, science</keywords>",) * 2,
        ("<talkid>1</talkid>",) * 2,
        ("<title>Ein Titel</title>", "<title>A Title</title>"),
        ("<description>Über Hunde.</description>", "<description>About dogs.</description>"),
    ]
    for de, en in header:
        de_lines.append(de)
        en_lines.append(en)
    for i in range(n_train):
        k = rng.randint(2, 8)
        idx = [rng.randrange(len(DE)) for _ in range(k)]
        de_lines.append(" ".join(DE[j] for j in idx).capitalize() + ", oder?")
        en_lines.append(" ".join(EN[j] for j in idx).capitalize() + "'s, right?")
    de_lines.append("Ein sehr kurzer Satz.")  # ratio filter: 4 vs 12 tokens -> dropped
    en_lines.append("A sentence that is far far far far far far too long.")
    de_lines.append("   ")  # empty after cleaning -> dropped
    en_lines.append("Nothing.")
    members = {"de-en/train.tags.de-en.de": "\n".join(de_lines) + "\n",
               "de-en/train.tags.de-en.en": "\n".join(en_lines) + "\n"}
    for s, name in enumerate(("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")):
        for lang, words in (("de", DE), ("en", EN)):
            segs = [f'<seg id="{j + 1}"> {name} {words[j]} ’{j}’ </seg>' for j in range(s + 1)]
            xml = "<mteval>\n<doc docid=\"1\">\n" + "\n".join(segs) + "\n</doc>\n</mteval>\n"
            members[f"de-en/IWSLT14.{name}.de-en.{lang}.xml"] = xml
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
