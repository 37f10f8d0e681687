"""Readers (SST-2, IMDB) and the classification DataModule on tiny real-format fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from softmax_approx.data.files import check_files
from softmax_approx.data import tokenizer as tokmod
from softmax_approx.data.classification import ClassificationDataModule
from softmax_approx.data.readers import read_glue_sst2, read_imdb
from softmax_approx.utils.errors import DataError
sys.path.insert(0, str(Path(__file__).parents[1]))
from fixtures_data import imdb_members, write_imdb_tgz, write_imdb_tree, write_sst2

os.environ.setdefault("WANDB_MODE", "disabled")


def _dm(tmp_path: Path, **kw) -> ClassificationDataModule:
    args = dict(task="sst2", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), max_len=16,
                vocab_size=120, batch_size=4, val_size=10, seed=0)
    args.update(kw)
    return ClassificationDataModule(**args)


# ---------------------------------------------------------------- SST-2 reader
def test_sst2_reader_parses_glue_tsv(tmp_path):
    d = write_sst2(tmp_path, n_train=20, n_dev=6)
    rows = read_glue_sst2(d / "train.tsv")
    assert len(rows) == 20
    assert [r.label for r in rows[:4]] == [0, 1, 0, 1]
    assert not rows[0].text.endswith(" ")  # GLUE's space before the tab is stripped


def test_sst2_malformed_row_names_file_and_line(tmp_path):
    d = write_sst2(tmp_path, n_train=5)
    lines = (d / "train.tsv").read_text().splitlines()
    lines[3] = "a row without any tab"
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv:4: expected 2 tab-separated"):
        read_glue_sst2(d / "train.tsv")


def test_sst2_label_two_is_rejected(tmp_path):
    d = write_sst2(tmp_path, n_train=5)
    lines = (d / "train.tsv").read_text().splitlines()
    lines[2] = "fine film \t2"
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label must be 0 or 1, got '2'"):
        read_glue_sst2(d / "train.tsv")


def test_sst2_bad_header_and_empty_file(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("text\tlabel\nok \t1\n")
    with pytest.raises(DataError, match=r"x\.tsv:1: expected GLUE SST-2 header"):
        read_glue_sst2(p)
    p.write_text("")
    with pytest.raises(DataError, match=r"x\.tsv: file is empty"):
        read_glue_sst2(p)


# ---------------------------------------------------------------- IMDB reader
def test_imdb_tree_and_tarball_give_identical_examples(tmp_path):
    write_imdb_tree(tmp_path / "a", n_per_class=4)
    write_imdb_tgz(tmp_path / "b", n_per_class=4)
    a = read_imdb(tmp_path / "a" / "imdb")
    b = read_imdb(tmp_path / "b" / "imdb")
    assert a == b
    assert len(a["train"]) == 8 and len(a["test"]) == 8
    assert sorted(e.label for e in a["train"]) == [0] * 4 + [1] * 4
    assert all("<br" not in e.text for e in a["train"])


def test_imdb_truncated_tarball_names_file(tmp_path):
    path = write_imdb_tgz(tmp_path, n_per_class=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"aclImdb\.tar\.gz: truncated or corrupt archive"):
        read_imdb(tmp_path / "imdb")


def test_imdb_impossible_rating_is_rejected(tmp_path):
    members = imdb_members(2)
    members["aclImdb/train/pos/99_2.txt"] = "a positive review rated 2"
    write_imdb_tgz(tmp_path, members=members)
    with pytest.raises(DataError, match=r"99_2\.txt: rating 2 is impossible for a 'pos' review"):
        read_imdb(tmp_path / "imdb")


# ---------------------------------------------------------------- file checks
def test_missing_files_name_paths_and_download_command(tmp_path):
    with pytest.raises(DataError) as e:
        check_files("sst2", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "sst2" / "train.tsv") in msg and str(tmp_path / "sst2" / "dev.tsv") in msg
    assert "python -m softmax_approx.data download sst2" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="aclImdb.tar.gz"):
        _dm(tmp_path, task="imdb").check_files()


# ---------------------------------------------------------------- DataModule
def test_datamodule_batches_follow_contract(tmp_path):
    write_sst2(tmp_path, n_train=60, n_dev=12)
    dm = _dm(tmp_path)
    dm.setup("fit")
    assert dm.pad_id == 0 and dm.vocab_size <= 120
    assert dm.split_sizes_full == {"train": 50, "val": 10, "test": 12}
    assert "test labels not public" in dm.test_split_name
    seen = 0
    for batch in dm.train_dataloader():
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        ids, mask, y = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.dtype == torch.long and mask.dtype == torch.bool and y.dtype == torch.long
        assert ids.shape == mask.shape and ids.shape[0] == y.shape[0] <= 4 and ids.shape[1] <= 16
        assert torch.equal(ids == dm.pad_id, ~mask)  # mask True exactly on real tokens
        assert mask[:, 0].all() and set(y.tolist()) <= {0, 1}
        seen += ids.shape[0]
    assert seen == 50
    assert sum(b["labels"].numel() for b in dm.test_dataloader()) == 12


def test_truncation_to_max_len_and_cls(tmp_path):
    write_sst2(tmp_path)
    dm = _dm(tmp_path, max_len=5, prepend_cls=True)
    dm.setup()
    ids = dm.encode("the film was good and the plot was great and the acting superb")
    assert len(ids) == 5 and ids[0] == dm.cls_id


def test_tokenizer_cache_is_reused(tmp_path):
    write_sst2(tmp_path)
    before = tokmod.TRAIN_COUNT
    dm1 = _dm(tmp_path)
    dm1.setup()
    assert tokmod.TRAIN_COUNT == before + 1
    assert dm1.tokenizer_path.is_file() and dm1.tokenizer_path.parent == tmp_path / "cache"
    mtime = dm1.tokenizer_path.stat().st_mtime_ns
    dm2 = _dm(tmp_path)
    dm2.setup()
    assert tokmod.TRAIN_COUNT == before + 1  # loaded, not retrained
    assert dm2.tokenizer_path == dm1.tokenizer_path and dm2.tokenizer_path.stat().st_mtime_ns == mtime
    dm3 = _dm(tmp_path, vocab_size=110)  # other settings -> other cache file
    dm3.setup()
    assert tokmod.TRAIN_COUNT == before + 2 and dm3.tokenizer_path != dm1.tokenizer_path


def test_tokenizer_cache_goes_to_the_user_cache_never_the_data_folder(tmp_path, monkeypatch):
    """Data folders are often shared and read-only: the cache goes to the user cache dir
    (platformdirs, here ``$XDG_CACHE_HOME``) or ``cache_dir`` (``paths.cache_dir``), writable
    data folder or not. Before: ``<data_dir>/.cache`` whenever the folder was writable."""
    write_sst2(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    dm = ClassificationDataModule(task="sst2", data_dir=str(tmp_path / "data"), vocab_size=120, val_size=5)
    dm.setup()
    assert dm.cache_dir == tmp_path / "xdg" / "softmax_approx" and dm.tokenizer_path.parent == dm.cache_dir
    assert dm.tokenizer_path.is_file()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before  # untouched
    os.chmod(tmp_path / "data", 0o555)
    try:
        dm = ClassificationDataModule(task="sst2", data_dir=str(tmp_path / "data"), vocab_size=120, val_size=5,
                                      cache_dir=str(tmp_path / "mine"))
        dm.setup()
        assert dm.tokenizer_path.parent == tmp_path / "mine" and dm.tokenizer_path.is_file()
    finally:
        os.chmod(tmp_path / "data", 0o755)


def test_subset_caps_are_seeded(tmp_path):
    write_sst2(tmp_path, n_train=60, n_dev=12)
    dm = _dm(tmp_path, subset={"train": 7, "val": 3, "test": 5})
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 7, "val": 3, "test": 5}
    dm2 = _dm(tmp_path, subset={"train": 7, "val": 3, "test": 5})
    dm2.setup()
    assert [e["ids"] for e in dm.datasets["train"].items] == [e["ids"] for e in dm2.datasets["train"].items]
    dm3 = _dm(tmp_path, subset={"train": 7}, split_seed=1)
    dm3.setup()
    assert [e["ids"] for e in dm.datasets["train"].items] != [e["ids"] for e in dm3.datasets["train"].items]


def test_imdb_datamodule_from_tarball(tmp_path):
    write_imdb_tgz(tmp_path, n_per_class=6)
    dm = _dm(tmp_path, task="imdb", val_size=2, max_len=32)
    dm.setup()
    assert dm.split_sizes_full == {"train": 10, "val": 2, "test": 12}
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 2


# ---------------------------------------------------------------- leak-free SST-2 validation
def _write_treebank_tsv(tmp_path: Path, n_sentences: int = 40, seed: int = 0) -> tuple[list[str], Path]:
    """GLUE-like train.tsv: whole sentences plus labelled sub-phrases of them (like SST's)."""
    import random

    rng = random.Random(seed)
    words = "the a film movie plot is was not very good bad dull funny smart and but it".split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + f" w{i}" for i in range(n_sentences)]
    rows = []
    for s in sentences:
        toks = s.split()
        rows.append(s)
        for _ in range(5):
            a = rng.randrange(len(toks))
            b = rng.randint(a + 1, len(toks))
            rows.append(" ".join(toks[a:b]))
    rng.shuffle(rows)
    d = tmp_path / "sst2"
    d.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"] + [f"{r} \t{i % 2}" for i, r in enumerate(rows)]
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    (d / "dev.tsv").write_text("sentence\tlabel\na dev sentence \t1\nanother one \t0\n")
    return sentences, d


def _spans(text: str) -> set[str]:
    t = text.split()
    return {" ".join(t[a:b]) for a in range(len(t)) for b in range(a + 1, len(t) + 1)}


def test_sentence_holdout_leaves_no_held_out_text_in_training(tmp_path):
    sentences, _ = _write_treebank_tsv(tmp_path)
    dm = _dm(tmp_path, val_size=8, subset=None)
    dm.setup()
    rows = read_glue_sst2(tmp_path / "sst2" / "train.tsv")
    splits, _ = dm.splits()
    val = {r.text for r in splits["val"]}
    train = [r.text for r in splits["train"]]
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": len(train), "val": 8, "test": 2}
    assert len(val) == 8 and val <= set(sentences)  # whole sentences only
    leaked = set().union(*(_spans(v) for v in val))
    assert not [t for t in train if t in leaked]  # no held-out sentence, no sub-phrase of one
    info = dm.split_info
    assert info["train_rows_dropped_for_val"] == len(rows) - len(train) - 8 > 0
    assert info["train_rows_read"] == len(rows) and info["train_rows"] == len(train)
    # nothing else is lost: every row that is no span of a held-out sentence is trained on
    assert sorted(train) == sorted(r.text for r in rows if r.text not in leaked)


def test_sentence_holdout_is_seeded_and_counts_sentences():
    from softmax_approx.data.readers import sentence_holdout

    texts = ["a b c d", "b c", "c d", "a b", "e f g", "f g", "h i j k", "i j", "E  F g", "x"]
    s = sentence_holdout(texts, 2, 0, what="t")
    # sentences: "a b c d", "e f g" (and its duplicate "E  F g" after normalizing), "h i j k", "x"
    assert s.n_sentences == 4
    assert sorted(s.kept + s.held + s.dropped) == list(range(len(texts)))
    assert s == sentence_holdout(texts, 2, 0, what="t")
    held = {texts[i] for i in s.held}
    for i in s.kept:
        assert not any(texts[i] in h for h in held)
    with pytest.raises(DataError, match="between 1 and 3 whole sentences"):
        sentence_holdout(texts, 4, 0, what="t")


# ---------------------------------------------------------------- content-keyed tokenizer cache
def test_tokenizer_cache_is_keyed_by_content_not_mtime(tmp_path):
    write_sst2(tmp_path)
    dm1 = _dm(tmp_path)
    dm1.setup()
    assert dm1.tokenizer_sha256 == tokmod.tokenizer_sha256(dm1.tokenizer)
    before = tokmod.TRAIN_COUNT
    train = tmp_path / "sst2" / "train.tsv"
    os.utime(train, ns=(10**18, 10**18))  # touch: same content
    dm2 = _dm(tmp_path)
    dm2.setup()
    assert tokmod.TRAIN_COUNT == before and dm2.tokenizer_path == dm1.tokenizer_path
    assert dm2.tokenizer_sha256 == dm1.tokenizer_sha256
    train.write_text(train.read_text().replace("film", "mlif"))  # same size, new content
    dm3 = _dm(tmp_path)
    dm3.setup()
    assert tokmod.TRAIN_COUNT == before + 1 and dm3.tokenizer_path != dm1.tokenizer_path
    assert dm3.tokenizer_sha256 != dm1.tokenizer_sha256


def test_rebuilt_cache_gives_the_same_tokenizer(tmp_path):
    write_sst2(tmp_path)
    dm1 = _dm(tmp_path)
    dm1.setup()
    dm1.tokenizer_path.unlink()
    dm2 = _dm(tmp_path, cache_dir=str(tmp_path / "other-cache"))
    dm2.setup()
    assert dm2.tokenizer_path.read_bytes() == dm1.tokenizer.to_str().encode()
    assert [e["ids"] for e in dm2.datasets["train"].items] == [e["ids"] for e in dm1.datasets["train"].items]
