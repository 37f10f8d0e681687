"""The provenance table: per task, how many runs, their wall time, code versions and machines."""

from __future__ import annotations

from pathlib import Path

from softmax_approx.report.provenance import provenance_table, run_wall_seconds
from softmax_approx.report.results import Record
from softmax_approx.utils.run_record import RunRecord


def record(task, status="completed", commit="abcdef1234", dirty=False, start="2026-01-01T10:00:00+00:00",
           end="2026-01-01T10:03:00+00:00", gpus=()):
    prov = {"git_commit": commit, "git_dirty": dirty, "packages": {"torch": "2.13.0+cpu"},
            "hardware": {"machine": "x86_64", "cpu_count": 2, "torch_threads": 1, "gpus": list(gpus)},
            "started": start, "finished": end}
    return Record(RunRecord(task=task, status=status, provenance=prov), Path(f"/runs/{task}/results.json"))


def test_provenance_rows_per_task():
    recs = [record("sst2"), record("sst2", commit="1234567999", dirty=True, end="2026-01-01T10:09:00+00:00"),
            record("sst2", status="failed"),
            record("multi30k", start="2026-01-01T11:00:00+00:00", end="2026-01-01T11:30:00+00:00",
                   gpus=["NVIDIA H200"])]
    table = provenance_table(recs, "cpu")
    rows = {row[0]: row for row in table.rows}
    assert list(rows) == ["multi30k", "sst2"]
    sst2 = rows["sst2"]
    assert sst2[1] == "2"                                    # the failed run is not counted
    assert sst2[2] == "3.0-9.0" and sst2[3] == "0.20"        # minutes per run; 12 min in all
    assert sst2[4] == "1234567+dirty: 1, abcdef1: 1"
    assert sst2[5] == "CPU x86_64, 2 cores, 1 thread(s), torch 2.13.0+cpu"
    assert sst2[6].startswith("2026-01-01T10:00") and sst2[7].startswith("2026-01-01T10:09")
    assert rows["multi30k"][5].startswith("1x NVIDIA H200")
    assert "| sst2 | 2 |" in table.to_markdown()


def test_wall_time_unknown_without_times():
    rec = Record(RunRecord(task="sst2", status="completed", provenance={"started": None}), None)
    assert run_wall_seconds(rec) is None
    assert provenance_table([rec], "cpu").rows[0][2:4] == ["unknown", "unknown"]
