"""results.json from start to end: the one recorder (start / finish / stop / fail), the one
builder of a ``failed`` record (the same from train, a sweep job, eval and reproduce), the
full-disk fallback, and the one metric converter."""

from __future__ import annotations

import errno
import json
import math
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.utilities.exceptions import SIGTERMException

from conftest import compose_cfg
from softmax_approx import eval as eval_mod
from softmax_approx import reproduce
from softmax_approx import train as train_mod
from softmax_approx.harness import recorder as recorder_mod
from softmax_approx.harness.measure import RunStats
from softmax_approx.harness.preemption import Preempted
from softmax_approx.harness.recorder import RunRecorder
from softmax_approx.utils import run_record
from softmax_approx.utils.run_record import (
    SMALL_FIELDS,
    RunRecord,
    RunStatus,
    failed_record,
    float_metrics,
    read_results,
)


def _known(run_dir: Path, **fields) -> RunRecord:
    """What a run knows of itself when it starts (the fields ``new_record`` fills)."""
    known = dict(task="sst2", policy="paper", policy_params={"S": 5}, seed=3, run_dir=str(run_dir), job_id="j/0",
                 config={"seed": 3}, provenance={"started": "2026-01-01T00:00:00+00:00"})
    return RunRecord(**{**known, **fields})


@pytest.fixture
def writes(monkeypatch) -> list[str]:
    """The status of every results.json the recorder writes, in order (through the one writer)."""
    seen: list[str] = []
    real = run_record.write_results

    def spy(path, record):
        seen.append(record.status)
        return real(path, record)

    monkeypatch.setattr(run_record, "write_results", spy)
    monkeypatch.setattr(recorder_mod, "write_results", spy)
    return seen


# ------------------------------------------------------------------------------ the recorder
def test_running_written_once_at_start_and_completed_once_at_the_end(tmp_path, writes):
    rec = RunRecorder(_known(tmp_path), tmp_path)
    rec.start()
    assert read_results(tmp_path / "results.json").status == RunStatus.RUNNING
    rec.trained(RunStats(memory={"attention_bytes": 7}, timing={"step_seconds_median": 0.5}, fidelity=None,
                         nonfinite_grad_steps=2), seconds=1.5)
    on_disk = read_results(tmp_path / "results.json")
    assert on_disk.status == RunStatus.RUNNING and on_disk.memory is None  # nothing written mid-run
    rec.finish({"val/acc": 0.5, "test/acc": torch.tensor(0.25).item()})
    back = read_results(tmp_path / "results.json")
    assert writes == [RunStatus.RUNNING, RunStatus.COMPLETED]
    assert back == rec.record and back.status == RunStatus.COMPLETED and back.error is None
    assert list(back.metrics) == ["test/acc", "val/acc"]  # sorted by name
    assert back.timing == {"train_seconds": 1.5, "step_seconds_median": 0.5}
    assert back.memory == {"attention_bytes": 7} and back.extra["nonfinite_grad_steps"] == 2
    assert back.provenance["started"] == "2026-01-01T00:00:00+00:00" and back.provenance["finished"]


@pytest.mark.parametrize("signal, status", [
    (Preempted("SIGTERM", 4, None), RunStatus.PREEMPTED),
    (Preempted("SIGUSR1", 4, "last.ckpt"), RunStatus.PREEMPTED),
    (Preempted("SIGINT", 4, None), RunStatus.INTERRUPTED),
    (SIGTERMException(), RunStatus.PREEMPTED),  # Lightning's own, no status of its own
])
def test_stop_writes_the_signal_status_once(signal, status, tmp_path, writes):
    rec = RunRecorder(_known(tmp_path), tmp_path)
    rec.start()
    rec.stop(signal)
    back = read_results(tmp_path / "results.json")
    assert writes == [RunStatus.RUNNING, status] and back.status == status and status in RunStatus.STOPPED
    assert back.error and "\n" not in back.error


def test_fail_is_failed_record_of_what_was_known(tmp_path, writes):
    known = _known(tmp_path, memory={"attention_bytes": 7})
    rec = RunRecorder(known, tmp_path)
    rec.start()
    rec.fail(ValueError("bad value\nsecond line of the message"))
    back = read_results(tmp_path / "results.json")
    assert writes == [RunStatus.RUNNING, RunStatus.FAILED]
    assert back.status == RunStatus.FAILED and back.error.startswith("ValueError: bad value") and "\n" not in back.error
    # differential: the record the builder makes from the same knowledge, up to the end time
    expected = failed_record(back.error, known)
    expected.provenance["finished"] = back.provenance["finished"]
    assert back == expected and back.memory == {"attention_bytes": 7}


def test_a_non_writing_rank_writes_nothing_but_keeps_the_record(tmp_path, writes):
    rec = RunRecorder(_known(tmp_path), tmp_path, writes=False)  # a DDP rank other than 0
    rec.start()
    rec.fail("RuntimeError: boom")
    assert writes == [] and not (tmp_path / "results.json").exists()
    assert (rec.record.status, rec.record.error) == (RunStatus.FAILED, "RuntimeError: boom")


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_falls_back_to_the_small_record_in_the_old_files_blocks(tmp_path, monkeypatch):
    rec = RunRecorder(_known(tmp_path, config={"padding": "x" * 2000}), tmp_path)
    rec.start()  # a running record longer than the small one
    monkeypatch.setattr(run_record, "write_text", _enospc)  # the atomic writer cannot make its temp file
    rec.fail("OSError: [Errno 28] No space left on device")
    back = read_results(tmp_path / "results.json")
    small = failed_record(back.error, rec.record, small=True)
    assert back.status == RunStatus.FAILED and back.extra["note"].startswith("small record")
    assert {name: getattr(back, name) for name in SMALL_FIELDS} == {name: getattr(small, name) for name in SMALL_FIELDS}
    assert back.provenance["started"] == "2026-01-01T00:00:00+00:00" and back.config is None


def test_builder_later_records_win_and_small_keeps_only_identity(tmp_path):
    plan = _known(tmp_path, memory={})
    left = RunRecord(status=RunStatus.RUNNING, task="sst2", policy="paper", seed=3, profile="smoke", memory=None)
    rec = failed_record("RuntimeError: died", plan, None, left, returncode=-9)
    assert (rec.status, rec.error, rec.profile, rec.memory, rec.extra) == (
        RunStatus.FAILED, "RuntimeError: died", "smoke", None, {"returncode": -9})
    assert rec.policy_params == {} and rec.run_dir is None  # a later record is taken whole, defaults too
    only_plan = failed_record("RuntimeError: died", plan)
    assert only_plan.policy_params == {"S": 5} and only_plan.run_dir == str(tmp_path) and only_plan.memory == {}
    small = failed_record(rec.error, rec, small=True)
    assert small.policy_params == {} and small.profile is None and small.extra == {"note": small.extra["note"]}
    assert all(getattr(small, name) == getattr(rec, name) for name in SMALL_FIELDS)


# ---------------------------------------------------------- one failed record from every entry point
def _train_failure(tmp_path: Path, data_dir: Path) -> tuple[Path, str]:
    run = tmp_path / "train"
    with pytest.raises(torch.OutOfMemoryError):
        train_mod.train(compose_cfg(["fault.fail_at_step=0"], run, data_dir))
    return run, "SimulatedOutOfMemory"


def _sweep_job_failure(tmp_path: Path, data_dir: Path) -> tuple[Path, str]:
    """A multirun job whose config check failed before train() wrote anything."""
    from test_reliability import _as_multirun_job

    run = tmp_path / "sweep" / "0"
    cfg = _as_multirun_job(compose_cfg(["model.n_heads=3"], run, data_dir), tmp_path / "sweep", 0)
    assert train_mod.run_job(cfg) is None
    return run, "ConfigError: model.n_heads=3"


def _eval_failure(tmp_path: Path, data_dir: Path) -> tuple[Path, str]:
    """A Lightning checkpoint without the model's weights: refused after the record was started."""
    ckpt = tmp_path / "empty.ckpt"
    import lightning

    torch.save({"state_dict": {}, "pytorch-lightning_version": lightning.__version__}, ckpt)
    run = tmp_path / "eval"
    with pytest.raises(Exception):
        eval_mod.evaluate(compose_cfg([f"ckpt_path={ckpt}"], run, data_dir, config_name="eval"))
    return run, "ConfigError: ckpt_path="


def _reproduce_failure(tmp_path: Path, data_dir: Path) -> tuple[Path, str]:
    """A run whose process died (killed) after train wrote its ``running`` record."""
    run = tmp_path / "repro"
    run.mkdir()
    run_record.write_results(run / "results.json", _known(run, status=RunStatus.RUNNING, profile=None))
    (run / reproduce.LOG_NAME).write_text("epoch 0\nKilled\n")
    spec = types.SimpleNamespace(task="sst2", setting=types.SimpleNamespace(policy="paper", params_dict={"S": 5}),
                                 seed=3, key="sst2-paper-s3", overrides=["profile=smoke"])
    job = reproduce.Job(spec, run, "quality", log=open(run / "ignored.log", "w"))
    reproduce._finish(job, -9)
    assert job.status == RunStatus.FAILED
    return run, "train exited with code -9 without a completed results.json: Killed"


@pytest.mark.parametrize("entry", [_train_failure, _sweep_job_failure, _eval_failure, _reproduce_failure],
                         ids=["train", "sweep job", "eval", "reproduce"])
def test_every_entry_point_writes_the_same_kind_of_failed_record(entry, tmp_path, data_dir):
    run, cause = entry(tmp_path, data_dir)
    data = json.loads((run / "results.json").read_text())
    back = read_results(run / "results.json")
    assert back.status == RunStatus.FAILED and back.error.startswith(cause) and "\n" not in back.error
    assert back.run_dir == str(run) and back.provenance.get("finished")
    assert back.task == "sst2" and back.policy in ("eager", "paper") and back.seed is not None
    # what the builder makes of it is what is on disk (it is in the builder's form), up to the end time
    again = failed_record(back.error, back)
    again.provenance["finished"] = back.provenance["finished"]
    assert again == back and list(data)[:3] == ["schema", "schema_version", "status"]


# ------------------------------------------------------------------------------ the converter
def test_converter_numbers_tensors_nan_and_what_it_skips():
    got = float_metrics({
        "int": 3, "float": 0.5, "tensor": torch.tensor(0.25), "tensor1": torch.tensor([2.0]),
        "int_tensor": torch.tensor(7), "nan": float("nan"), "nan_tensor": torch.tensor(float("nan")),
        "inf": float("inf"),
        "text": "nrefs:1|tok:13a", "none": None, "list": [1.0], "bool": True, "vector": torch.ones(2),
    })
    assert set(got) == {"int", "float", "tensor", "tensor1", "int_tensor", "nan", "nan_tensor", "inf"}
    assert (got["int"], got["float"], got["tensor"], got["tensor1"], got["int_tensor"]) == (3.0, 0.5, 0.25, 2.0, 7.0)
    assert all(type(v) is float for v in got.values())
    assert math.isnan(got["nan"]) and math.isnan(got["nan_tensor"]) and got["inf"] == math.inf


def test_converter_is_the_one_checkpoints_and_results_use(tmp_path):
    """last.ckpt's metrics and results.json's go through the same function: the same input
    gives the same dict both ways, and NaN is written as null, never as a NaN token."""
    from softmax_approx.harness.callbacks import LastCheckpoint
    from softmax_approx.harness.job import logged_metrics

    trainer = types.SimpleNamespace(callback_metrics={"val/acc": torch.tensor(0.5), "val/loss": torch.tensor(float("nan")),
                                                      "note": "x"}, callbacks=[])
    cb = LastCheckpoint(str(tmp_path))
    cb._trainer = trainer
    from_ckpt = cb.state_dict()["callback_metrics"]
    from_log = logged_metrics(trainer)
    assert from_ckpt.keys() == from_log.keys() == {"val/acc", "val/loss"}
    assert from_ckpt["val/acc"] == from_log["val/acc"] == 0.5
    rec = RunRecorder(_known(tmp_path), tmp_path)
    rec.finish(from_log)
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == {"val/acc": 0.5, "val/loss": None}


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                                                      st.text(max_size=3), st.none(), st.booleans())))
def test_converter_keeps_exactly_the_numbers(metrics):
    got = float_metrics(metrics)
    numbers = {k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(got) == numbers
    for k in numbers:
        assert got[k] == float(metrics[k]) or (math.isnan(got[k]) and math.isnan(metrics[k]))


def test_every_status_the_code_writes_is_a_run_status():
    assert RunStatus.STOPPED == (RunStatus.PREEMPTED, RunStatus.INTERRUPTED)
    assert set(RunStatus.ALL) == {"running", "completed", "failed", "preempted", "interrupted"}
    assert Preempted("SIGINT").status in RunStatus.ALL and Preempted("SIGTERM").status in RunStatus.ALL
    assert RunRecord().status == RunStatus.RUNNING
