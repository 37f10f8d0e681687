"""results.json: atomic writes, provenance, failed runs, the best-checkpoint rule, loggers
(W&B offline files in the run dir, CSV, none) and debug=fdr."""

from __future__ import annotations

import json
import os

import pytest

from softmax_approx.train import NoBestCheckpoint, train
from softmax_approx.harness.results import load_results, write_json_atomic


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "results.json"
    write_json_atomic(p, {"a": 1, "nan": float("nan")})
    write_json_atomic(p, {"a": 2})
    assert load_results(p) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["results.json"]
    assert json.loads(json.dumps(load_results(p)))  # plain JSON, no NaN tokens


def test_results_schema_and_provenance(make_cfg, tmp_path):
    _, objects = train(make_cfg(["attention=paper", "seed=0", "tags=[unit]"]))
    rec = load_results(tmp_path / "results.json")
    for key in ("schema", "status", "error", "task", "task_kind", "policy", "policy_params", "seed", "profile",
                "experiment", "tags", "run_dir", "job_id", "metrics", "memory", "timing", "params", "fidelity",
                "config", "provenance"):
        assert key in rec, key
    assert rec["schema"] == 1 and rec["policy_params"] == {"S": 5} and rec["profile"] == "smoke"
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
