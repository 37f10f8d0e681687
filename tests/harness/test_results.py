"""results.json: atomic writes, provenance, failed runs, the best-checkpoint rule, loggers
(W&B offline files in the run dir, CSV, none) and debug=fdr."""

from __future__ import annotations

import json
import os

import pytest

from softmax_approx.train import NoBestCheckpoint, train
from softmax_approx.harness.results import load_results
from softmax_approx.utils.run_record import (
    SCHEMA_VERSION,
    ResultsError,
    RunRecord,
    read_results,
    write_json_atomic,
    write_results,
)


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "results.json"
    write_json_atomic(p, {"a": 1, "nan": float("nan")})
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["results.json"]
    write_json_atomic(p, {"nan": float("nan"), "inf": [float("inf")]})
    assert json.loads(p.read_text()) == {"nan": None, "inf": [None]}  # strict JSON, no NaN tokens


def test_record_round_trip_keeps_fields_and_extras(tmp_path):
    rec = RunRecord(task="sst2", policy="paper", policy_params={"S": 5}, seed=3, metrics={"test/acc": 0.5})
    rec.update(resumed_from="x.ckpt", test_split="test2016", memory={"attention_bytes": 7})
    assert rec.memory == {"attention_bytes": 7} and rec.extra == {"resumed_from": "x.ckpt", "test_split": "test2016"}
    rec.finish("completed")
    write_results(tmp_path / "results.json", rec)
    data = json.loads((tmp_path / "results.json").read_text())
    # the keys of the first files stay, extras at the top level, plus schema_version
    assert data["schema"] == data["schema_version"] == SCHEMA_VERSION
    assert data["resumed_from"] == "x.ckpt" and "extra" not in data
    back = read_results(tmp_path / "results.json")
    assert back == rec and back.provenance["finished"]


def test_reader_fills_missing_fields_and_refuses_newer_or_broken_files(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": 1, "status": "failed", "task": "imdb", "returncode": 1}))
    rec = read_results(old)  # a first-version file of few keys (reproduce's record of a dead run)
    assert (rec.status, rec.task, rec.metrics, rec.extra) == ("failed", "imdb", {}, {"returncode": 1})
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "status": "completed"}))
    with pytest.raises(ResultsError, match=r"new.json: results schema .* upgrade softmax-approx"):
        read_results(new)
    torn = tmp_path / "torn.json"
    torn.write_text('{"status": "compl')
    with pytest.raises(ResultsError, match="torn.json: not valid JSON") as info:
        read_results(torn)
    assert "\n" not in str(info.value)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ResultsError, match="not a JSON object"):
        read_results(tmp_path / "list.json")


def test_sweep_failed_record_without_a_usable_config(tmp_path):
    from omegaconf import OmegaConf

    from softmax_approx.harness.recorder import RunRecorder

    with pytest.raises(Exception):  # without fallback a broken config is not hidden
        RunRecorder.for_config(OmegaConf.create({"seed": 0}), tmp_path, "sweep/3")
    rec = RunRecorder.for_config(OmegaConf.create({"seed": 0}), tmp_path, "sweep/3", fallback=True).fail("ConfigError: bad")
    assert (rec.status, rec.error, rec.job_id, rec.run_dir) == ("failed", "ConfigError: bad", "sweep/3", str(tmp_path))
    assert rec.provenance["started"] and rec.provenance["finished"]
    assert read_results(tmp_path / "results.json") == rec


def test_results_schema_and_provenance(make_cfg, tmp_path):
    _, objects = train(make_cfg(["attention=paper", "seed=0", "tags=[unit]"]))
    rec = load_results(tmp_path / "results.json")
    for key in ("schema", "schema_version", "status", "error", "task", "task_kind", "policy", "policy_params", "seed", "profile",
                "experiment", "tags", "run_dir", "job_id", "metrics", "memory", "timing", "params", "fidelity",
                "config", "provenance"):
        assert key in rec, key
    assert rec["schema"] == rec["schema_version"] == 1 and rec["policy_params"] == {"S": 5} and rec["profile"] == "smoke"
    assert rec["seed"] == 0 and rec["tags"] == ["unit"] and rec["run_dir"] == str(tmp_path)
    assert rec["config"]["attention"] == {"name": "paper", "params": {"S": 5}} and "hydra" not in rec["config"]
    prov = rec["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["lightning"] and prov["python"]
    assert prov["hardware"]["cpu_count"] >= 1 and prov["started"] <= prov["finished"]
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert set(rec["timing"]) >= {"train_seconds", "step_seconds_median", "tokens_per_second"}
    assert rec["metrics"]["val/acc_best"] >= rec["metrics"]["val/acc"] - 1e-9


def test_failure_writes_failed_status_and_reraises(make_cfg, tmp_path):
    # Passes the config check, then fails inside fit (a simulated CUDA OOM at step 1).
    cfg = make_cfg(["fault.fail_at_step=1"])
    with pytest.raises(Exception) as info:
        train(cfg)
    rec = load_results(tmp_path / "results.json")
    assert rec["status"] == "failed"
    assert rec["error"].startswith(type(info.value).__name__) and "\n" not in rec["error"]
    assert rec["provenance"]["finished"] is not None


def test_no_best_checkpoint_fails_loudly(make_cfg, tmp_path):
    cfg = make_cfg(["trainer.limit_val_batches=0"])  # no validation -> nothing to select on
    with pytest.raises(NoBestCheckpoint, match="refusing to test the last weights"):
        train(cfg)
    rec = load_results(tmp_path / "results.json")
    assert rec["status"] == "failed" and "no best checkpoint" in rec["error"]
    assert "test/acc" not in rec["metrics"]


def test_debug_fdr_tests_current_weights_and_says_so(make_cfg, tmp_path):
    metrics, objects = train(make_cfg(["debug=fdr", "logger=csv"]))
    rec = objects["record"]
    assert rec["status"] == "completed" and rec["test_weights"] == "current"
    assert "test/acc" in metrics and objects["loggers"] == []


def test_csv_logger_writes_metrics(make_cfg, tmp_path):
    train(make_cfg(["logger=csv"]))
    files = list((tmp_path / "csv").rglob("metrics.csv"))
    assert len(files) == 1
    header = files[0].read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/acc", "test/acc"} <= set(header)
    # the per-run memory and timing figures reach the loggers too (and so W&B)
    assert {"memory/attention_bytes", "memory/softmax_state_bytes", "memory/total_activation_bytes",
            "timing/train_seconds"} <= set(header)


def test_wandb_offline_run_in_run_dir_and_finished(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    train(make_cfg(["logger=wandb", "experiment_name=unit_group"]))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path).iterdir())
    assert list(runs[0].glob("run-*.wandb")), "no offline W&B log"
    assert wandb.run is None  # finished, so the next job starts a new run
    rec = load_results(tmp_path / "results.json")
    assert rec["config"]["logger"]["wandb"]["offline"] is True
