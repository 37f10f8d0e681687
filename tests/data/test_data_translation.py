"""Parallel-text readers and the translation DataModule on tiny real-format fixtures."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch

from softmax_approx.data import tokenizer as tokmod
from softmax_approx.data.translation import TranslationDataModule, moses_detokenize
from softmax_approx.data.readers import read_parallel
from softmax_approx.utils.errors import DataError

sys.path.insert(0, str(Path(__file__).parents[1]))
from fixtures_data import parallel_pairs, write_iwslt_prepared, write_multi30k  # noqa: E402

os.environ.setdefault("WANDB_MODE", "disabled")


def _dm(tmp_path: Path, **kw) -> TranslationDataModule:
    args = dict(task="multi30k", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), vocab_size=150,
                max_len=12, batch_size=4)
    args.update(kw)
    return TranslationDataModule(**args)


def test_multi30k_gz_and_plain_read_alike(tmp_path):
    write_multi30k(tmp_path / "a", gz=True)
    write_multi30k(tmp_path / "b", gz=False)
    a = read_parallel(tmp_path / "a/multi30k/train.de.gz", tmp_path / "a/multi30k/train.en.gz", task="multi30k")
    b = read_parallel(tmp_path / "b/multi30k/train.de", tmp_path / "b/multi30k/train.en", task="multi30k")
    assert a == b == parallel_pairs(40, 0)


def test_unequal_parallel_files_name_both(tmp_path):
    d = write_multi30k(tmp_path)
    with gzip.open(d / "val.en.gz", "wt") as fh:
        fh.write("One.\nTwo.\n")
    with pytest.raises(DataError) as e:
        read_parallel(d / "val.de.gz", d / "val.en.gz", task="multi30k")
    msg = str(e.value)
    assert "val.de.gz has 8 lines" in msg and "val.en.gz has 2" in msg


def test_empty_and_corrupt_files(tmp_path):
    d = write_multi30k(tmp_path)
    with gzip.open(d / "val.en.gz", "wt") as fh:
        fh.write("")
    with pytest.raises(DataError, match=r"val\.en\.gz: file is empty"):
        read_parallel(d / "val.de.gz", d / "val.en.gz", task="multi30k")
    (d / "val.en.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"val\.en\.gz: corrupt or truncated gzip"):
        read_parallel(d / "val.de.gz", d / "val.en.gz", task="multi30k")


def test_missing_iwslt_names_files_and_prepare_command(tmp_path):
    write_iwslt_prepared(tmp_path)  # valid + test only: fine for the mini task, not the full one
    _dm(tmp_path, task="iwslt14_mini").check_files()
    with pytest.raises(DataError) as e:
        _dm(tmp_path, task="iwslt14").check_files()
    assert "train.de" in str(e.value) and "prepare-iwslt14 --tgz" in str(e.value)


def test_multi30k_batches_follow_contract_and_decode_roundtrips(tmp_path):
    write_multi30k(tmp_path)
    dm = _dm(tmp_path)
    dm.setup()
    assert (dm.pad_id, dm.bos_id, dm.eos_id) == (0, 2, 3)
    assert dm.split_sizes_full == {"train": 40, "val": 8, "test": 8}
    n = 0
    for b in dm.train_dataloader():
        assert set(b) == {"src_ids", "src_mask", "tgt_in", "tgt_out", "tgt_mask", "src_text", "ref_text", "index"}
        for k in ("src_ids", "tgt_in", "tgt_out"):
            assert b[k].dtype == torch.long
        assert b["src_mask"].dtype == torch.bool and b["tgt_mask"].dtype == torch.bool
        assert torch.equal(b["src_ids"] == dm.pad_id, ~b["src_mask"])
        assert b["tgt_in"].shape == b["tgt_out"].shape == b["tgt_mask"].shape
        assert b["tgt_in"].shape[1] <= 12 and b["src_ids"].shape[1] <= 12
        assert (b["tgt_in"][:, 0] == dm.bos_id).all()
        lengths = b["tgt_mask"].sum(1)
        for r, L in enumerate(lengths.tolist()):
            assert b["tgt_out"][r, L - 1] == dm.eos_id  # y + <eos>
            assert torch.equal(b["tgt_in"][r, 1:L], b["tgt_out"][r, : L - 1])  # shifted by one
            assert (b["tgt_out"][r, L:] == dm.pad_id).all()
        assert len(b["src_text"]) == len(b["ref_text"]) == b["src_ids"].shape[0]
        n += b["src_ids"].shape[0]
    assert n == 40
    # the BPE decoder rebuilds the raw text exactly (what sacreBLEU compares against)
    b = next(iter(dm.test_dataloader()))
    for row, ref in zip(b["tgt_out"], b["ref_text"]):
        assert dm.decode(row) == ref
    assert dm.decode([dm.bos_id, *dm.encode("Ein Mann."), dm.eos_id, dm.pad_id]) == "Ein Mann."


def test_iwslt_mini_split_and_detokenized_references(tmp_path):
    write_iwslt_prepared(tmp_path, {"valid": 30, "test": 10})
    dm = _dm(tmp_path, task="iwslt14_mini", mini_val_size=6)
    dm.setup()
    assert dm.split_sizes_full == {"train": 24, "val": 6, "test": 10}
    assert "trained on a 24-line split of fairseq valid" in dm.test_split_name
    b = next(iter(dm.test_dataloader()))
    assert all("&apos;" not in r and r.endswith("'s.") for r in b["ref_text"])  # Moses-detokenized
    assert dm.decode(dm.encode("it &apos;s a man .") + [dm.eos_id]) == "it's a man."
    assert moses_detokenize("it &apos;s that pyramid .") == "it's that pyramid."


def test_full_iwslt_reads_train_valid_test(tmp_path):
    write_iwslt_prepared(tmp_path, {"train": 25, "valid": 7, "test": 5})
    dm = _dm(tmp_path, task="iwslt14")
    dm.setup()
    assert dm.split_sizes_full == {"train": 25, "val": 7, "test": 5}


def test_max_tokens_batches_respect_budget_and_cache_reuse(tmp_path):
    write_multi30k(tmp_path)
    before = tokmod.TRAIN_COUNT
    dm = _dm(tmp_path, batch_size=None, max_tokens=40)
    dm.setup()
    dm2 = _dm(tmp_path, batch_size=None, max_tokens=40)
    dm2.setup()
    assert tokmod.TRAIN_COUNT == before + 1
    total = 0
    for b in dm.train_dataloader():
        B = b["src_ids"].shape[0]
        assert B * max(b["src_ids"].shape[1], b["tgt_in"].shape[1]) <= 40 or B == 1
        total += B
    assert total == 40


def test_subset_caps_translation(tmp_path):
    write_multi30k(tmp_path)
    dm = _dm(tmp_path, subset={"train": 10, "test": 3})
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 10, "val": 8, "test": 3}
