"""`make reproduce` on a fresh machine: missing datasets are fetched first, present ones are left
alone, and an offline machine gets one line naming `make data` (no run is started)."""

from __future__ import annotations

import io

import pytest

from fixtures_data import write_sst2
from softmax_approx.data.ensure import ensure_data
from softmax_approx.data.files import default_data_dir
from softmax_approx.utils.errors import DataError


def test_present_data_is_not_fetched(tmp_path):
    write_sst2(tmp_path)
    calls = []
    assert ensure_data(["sst2"], tmp_path, fetch=lambda *a: calls.append(a)) == [] and calls == []


def test_missing_data_is_fetched(tmp_path):
    log = io.StringIO()
    fetched = ensure_data(["sst2", "sst2"], tmp_path, log, fetch=lambda name, d: write_sst2(d))
    assert fetched == ["sst2"] and "sst2 is missing" in log.getvalue()


def test_offline_stops_with_one_line_naming_make_data(tmp_path):
    def offline(name, d):
        raise DataError("could not reach the network")

    with pytest.raises(DataError) as info:
        ensure_data(["multi30k"], tmp_path, fetch=offline)
    msg = str(info.value)
    assert "\n" not in msg and "`make data`" in msg and "could not reach the network" in msg


def test_a_fetch_that_leaves_files_missing_is_an_error(tmp_path):
    with pytest.raises(DataError, match="task imdb: data missing"):
        ensure_data(["imdb"], tmp_path, fetch=lambda *a: None)


def test_iwslt14_mini_names_the_prepare_command(tmp_path):
    def no_iwslt(name, d):
        assert name == "iwslt14"
        raise DataError("not redistributable")

    with pytest.raises(DataError, match="prepare-iwslt14"):
        ensure_data(["iwslt14_mini"], tmp_path, fetch=no_iwslt)


def test_default_data_dir_is_the_user_cache_unless_the_env_says(monkeypatch, tmp_path):
    monkeypatch.delenv("SOFTMAX_APPROX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "softmax_approx" / "data"
    monkeypatch.setenv("SOFTMAX_APPROX_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"


def test_reproduce_fetch_data_stops_before_any_run_with_one_line(tmp_path, monkeypatch, capsys):
    """`make reproduce` (reproduce run --fetch-data) on an offline machine with no data: exit 2,
    one line naming `make data`, no training process started, nothing written to OUT."""
    from softmax_approx import reproduce
    import softmax_approx.data.download as download

    defs = tmp_path / "experiments"
    defs.mkdir()
    (defs / "_common.yaml").write_text("task_kinds: {sst2: classification}\nprofiles:\n  smoke:\n    overrides: []\n")
    (defs / "memory.yaml").write_text("name: memory\nkind: memory\ntasks: [sst2]\npolicies: [eager]\nseeds: [0]\n")

    def offline(task, data_dir, **kw):
        raise DataError("no network")

    monkeypatch.setattr(download, "download", offline)
    monkeypatch.setattr(reproduce, "TRAIN_COMMAND", ["false"])
    code = reproduce.main(["run", "--profile", "smoke", "--out", str(tmp_path / "out"), "--data-dir",
                           str(tmp_path / "data"), "--experiments", str(defs), "--fetch-data", "--no-report"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: task sst2: data missing"), err
    assert "`make data`" in err[0] and not (tmp_path / "out").exists()
