"""Failures that printed a traceback, or a wrong promise, where one true line belongs
(docs/reliability.md §8). Each test failed before its change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from softmax_approx import reproduce
from softmax_approx import train as train_mod
from softmax_approx.harness import sweep as sweep_mod
from softmax_approx.harness.callbacks import NonFiniteGradientError
from softmax_approx.harness.results import load_results
from softmax_approx.utils.errors import ConfigError

EPOCHS3 = ["trainer.max_epochs=3", "trainer.deterministic=true"]


@pytest.mark.parametrize("extra,says", [
    (["optimizer.lr=1e3"], "non-finite training loss"),  # a diverged run, correctly recorded
    (["fault.nan_at_step=2"], "non-finite training loss (nan) at global step 2"),
])
def test_a_diverged_run_is_one_line_and_exit_1(extra, says, tmp_path, data_dir, capsys):
    """Before: a 97-line traceback for a failure the record already explains."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train_mod.run_job(compose_cfg([*EPOCHS3, *extra], run, data_dir))
    assert info.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: NonFiniteLossError: " + says), err
    rec = load_results(run / "results.json")
    assert rec["status"] == "failed" and says in rec["error"]


def test_nonfinite_gradient_stop_promises_a_checkpoint_only_when_there_is_one(tmp_path, data_dir):
    """Before: "the last good checkpoint is kept" at step 1, when none had been written."""
    with pytest.raises(NonFiniteGradientError, match="no checkpoint was written before it") as info:
        train_mod.train(compose_cfg([*EPOCHS3, "fault.nan_grad_at_step=1", "callbacks.nonfinite_grads.action=stop"],
                                    tmp_path / "early", data_dir))
    assert "is kept" not in str(info.value)
    with pytest.raises(NonFiniteGradientError, match=r"the last good checkpoint .*last\.ckpt is kept"):
        train_mod.train(compose_cfg([*EPOCHS3, "fault.nan_grad_at_step=5", "callbacks.nonfinite_grads.action=stop"],
                                    tmp_path / "late", data_dir))


def test_ckpt_path_of_another_model_size_is_one_line_exit_2(tmp_path, data_dir, capsys):
    """Before: exit 1 and a truncated ``load_state_dict`` report."""
    metrics, objects = train_mod.train(compose_cfg([], tmp_path / "small", data_dir))
    ckpt = objects["record"]["test_weights"]
    with pytest.raises(SystemExit) as info:
        train_mod.run_job(compose_cfg(["model.d_model=32", f"ckpt_path={ckpt}"], tmp_path / "big", data_dir))
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "does not fit the composed model" in err[0] and "checkpoint [" in err[0], err
    assert "overrides.yaml" in err[0]


def test_launcher_slurm_without_slurm_is_one_line(tmp_path, monkeypatch, capsys):
    """Before: a submitit traceback when the first run was submitted."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    (tmp_path / "data").mkdir()
    rc = reproduce.main(["run", "--profile", "smoke", "--out", str(tmp_path / "out"), "--data-dir",
                         str(tmp_path / "data"), "--launcher", "slurm", "--no-report"])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "no SLURM here (sbatch is not on PATH)" in err[0], err


def test_sweep_summary_ignores_a_job_dir_an_earlier_sweep_left(tmp_path):
    """Before: job 2 of an earlier sweep into the same sweep dir (refused then) was listed as
    ``refused`` in a 2-job sweep, which then exited 1."""
    sweep = tmp_path / "sweep"
    old = sweep / "2"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "overrides.yaml").write_text("[]\n")
    (old / "job_error.json").write_text(json.dumps({"status": "refused", "error": "ConfigError: other sweep"}))
    past = time.time() - 3600
    for p in [old / ".hydra" / "overrides.yaml", old / ".hydra", old / "job_error.json"]:
        os.utime(p, (past, past))
    callback = sweep_mod.SweepSummary()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    callback.on_multirun_start(config)
    for num in ("0", "1"):  # this sweep's jobs, started now
        (sweep / num / ".hydra").mkdir(parents=True)
        (sweep / num / ".hydra" / "overrides.yaml").write_text("[]\n")
        (sweep / num / "results.json").write_text(json.dumps({"schema_version": 1, "status": "completed"}))
    callback.on_multirun_end(config)
    assert sorted(sweep_mod.LAST.jobs) == ["0", "1"] and not sweep_mod.LAST.failed
    assert sweep_mod.summarize(sweep).jobs["2"]["status"] == "refused"  # without a start: every dir


def test_unwritable_parent_of_the_run_dir_is_one_line_exit_2(tmp_path, data_dir, monkeypatch, capsys):
    """Before: Hydra's traceback while creating the run dir. (Permissions cannot be tested as
    root, who writes anyway: a parent that is a file is what any user cannot write into.)"""
    from test_reliability import _main

    (tmp_path / "afile").write_text("not a folder\n")
    code, err = _main([f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"], monkeypatch,
                      capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "hydra.run.dir=" in lines[0] and "cannot write there" in lines[0], err
