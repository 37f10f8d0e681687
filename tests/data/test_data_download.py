"""Download plumbing (no network: file:// URLs and fakes), the HF writers, IWSLT'14 preparation."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pooch
import pytest
import requests

from softmax_approx.data.__main__ import main as cli
from softmax_approx.data.download import download, download_sst2, fetch, write_imdb_tree_from_hf
from softmax_approx.data.iwslt_prepare import clean_corpus, prepare_iwslt14_from_tgz, seg_text
from softmax_approx.data.readers import read_glue_sst2, read_imdb, read_parallel
from softmax_approx.data.translation import TranslationDataModule
from softmax_approx.utils.errors import DataError

sys.path.insert(0, str(Path(__file__).parents[1]))
from fixtures_data import write_iwslt_tgz  # noqa: E402


def _source(tmp_path: Path, data: bytes = b"hello data\n") -> tuple[str, str]:
    src = tmp_path / "remote.bin"
    src.write_bytes(data)
    return "https://example.invalid/remote.bin", hashlib.sha256(data).hexdigest()


class FakeServer:
    """A pooch downloader serving local bytes; the first ``failures`` calls fail like a network."""

    def __init__(self, data: bytes = b"hello data\n", failures: int = 0):
        self.data, self.failures, self.calls = data, failures, 0

    def __call__(self, url, output_file, pooch_obj):
        self.calls += 1
        if self.calls <= self.failures:
            raise requests.exceptions.ConnectionError("Name or service not known")
        Path(output_file).write_bytes(self.data)


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    monkeypatch.setattr(pooch.core.time, "sleep", lambda s: None)


def test_fetch_verifies_and_keeps_a_matching_file(tmp_path):
    url, sha = _source(tmp_path)
    server = FakeServer()
    dest = fetch(url, tmp_path / "out" / "f.bin", sha, downloader=server)
    assert dest.read_bytes() == b"hello data\n" and server.calls == 1
    assert [p.name for p in dest.parent.iterdir()] == ["f.bin"]  # no temp file left
    fetch(url, dest, sha, downloader=server)
    assert server.calls == 1  # checked, not downloaded again
    dest.write_bytes(b"tampered")
    fetch(url, dest, sha, downloader=server)
    assert server.calls == 2 and dest.read_bytes() == b"hello data\n"  # a wrong file is replaced


def test_checksum_mismatch_leaves_no_file(tmp_path):
    url, _ = _source(tmp_path)
    with pytest.raises(DataError, match="sha256 .* does not match the expected 000000000000") as e:
        fetch(url, tmp_path / "out" / "f.bin", "0" * 64, downloader=FakeServer())
    assert "\n" not in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_retry_then_success(tmp_path):
    url, sha = _source(tmp_path)
    server = FakeServer(failures=2)
    dest = fetch(url, tmp_path / "out" / "f.bin", sha, downloader=server)
    assert server.calls == 3 and dest.is_file()


def test_offline_gives_one_line_error_and_no_file(tmp_path):
    server = FakeServer(failures=99)
    with pytest.raises(DataError) as e:
        fetch("https://example.invalid/x.gz", tmp_path / "x.gz", None, downloader=server)
    assert "after 3 tries" in str(e.value) and "\n" not in str(e.value) and server.calls == 3
    assert not (tmp_path / "x.gz").exists() and list(tmp_path.iterdir()) == []


def test_imdb_is_pinned_to_the_published_archive_hash():
    from softmax_approx.data import download as dl

    assert len(dl.IMDB_SHA256) == 64 and set(dl.IMDB_SHA256) <= set("0123456789abcdef")


def _fake_hf(name):
    if name == "stanfordnlp/sst2":
        return {"train": [{"sentence": "a fine film ", "label": 1}, {"sentence": "dull", "label": 0}],
                "validation": [{"sentence": "great fun", "label": 1}]}
    return {split: [{"text": "Great.<br />Loved it.", "label": 1}, {"text": "Bad.", "label": 0}]
            for split in ("train", "test")}


def test_hf_writers_produce_the_layouts_our_readers_read(tmp_path):
    download_sst2(tmp_path, load_dataset=_fake_hf)
    rows = read_glue_sst2(tmp_path / "sst2" / "train.tsv")
    assert [(r.text, r.label) for r in rows] == [("a fine film", 1), ("dull", 0)]
    write_imdb_tree_from_hf(tmp_path, load_dataset=_fake_hf)
    imdb = read_imdb(tmp_path / "imdb")
    assert [(e.text, e.label) for e in imdb["test"]] == [("Bad.", 0), ("Great. Loved it.", 1)]


def test_iwslt_download_explains_manual_step(tmp_path):
    with pytest.raises(DataError, match="prepare-iwslt14 --tgz"):
        download("iwslt14", tmp_path)


def test_prepare_iwslt14_from_tgz(tmp_path):
    tgz = write_iwslt_tgz(tmp_path / "de-en.tgz", n_train=50)
    out = tmp_path / "data" / "iwslt14" / "iwslt14.tokenized.de-en"
    counts = prepare_iwslt14_from_tgz(tgz, out)
    # 52 kept lines (title + description + 50 pairs); every 23rd -> valid
    assert counts == {"valid": 2, "train": 50, "test": 15}
    train = read_parallel(out / "train.de", out / "train.en", task="iwslt14")
    assert train[0] == ("ein titel", "a title")  # tags stripped, lowercased
    assert all("<" not in de + en and de == de.lower() for de, en in train)
    assert any("&apos;s" in en for _, en in train)  # Moses escaping, like fairseq's files
    assert not any("far far" in en for _, en in train)  # ratio 1.5 filter
    test = read_parallel(out / "test.de", out / "test.en", task="iwslt14")
    assert test[0][0].startswith("ted.dev2010 ein &apos;") and test[0][1].startswith("ted.dev2010 a &apos;")
    assert not any("’" in de + en or "<seg" in de + en for de, en in test)  # ’ -> ' (escaped), tags gone
    assert test[1][1].startswith("tedx.dev2012")  # fairseq's concatenation order
    dm = TranslationDataModule(task="iwslt14", data_dir=str(tmp_path / "data"), vocab_size=150, max_len=16,
                               batch_size=4, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.split_sizes_full == {"train": 50, "val": 2, "test": 15}


def test_prepare_rules():
    assert seg_text('<seg id="12">  Hallo ’Welt’ </seg>') == "Hallo 'Welt'"
    kept = clean_corpus(["a b", "a", "", "x " * 176], ["c d e", "b c d", "z", "y"])
    assert kept == [("a b", "c d e")]


def test_prepare_truncated_tgz_names_file(tmp_path):
    tgz = write_iwslt_tgz(tmp_path / "de-en.tgz")
    tgz.write_bytes(tgz.read_bytes()[:200])
    with pytest.raises(DataError, match=r"de-en\.tgz: truncated or corrupt archive"):
        prepare_iwslt14_from_tgz(tgz, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_check_and_errors(tmp_path, capsys):
    assert cli(["check", "multi30k", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task multi30k: missing") and "download multi30k" in err
    tgz = write_iwslt_tgz(tmp_path / "de-en.tgz")
    assert cli(["prepare-iwslt14", "--tgz", str(tgz), "--data-dir", str(tmp_path)]) == 0
    assert cli(["check", "iwslt14", "--data-dir", str(tmp_path)]) == 0
