"""Faults around interruption and checkpoint writing (docs/reliability.md §8): Ctrl-C is a
preemption (``interrupted``, exit 130, the same command resumes); a signal outside training is
one line, exit 75 and a clear status; a disk that fills up while a best checkpoint is written
leaves no torn ``best-N.ckpt``. Each test failed before the change it covers.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg
from softmax_approx.harness.results import load_results
from softmax_approx.harness.resume import last_checkpoint
from softmax_approx.train import train

EPOCHS3 = ["trainer.max_epochs=3", "trainer.deterministic=true"]


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _cli(run: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "softmax_approx.train", *TINY, *EPOCHS3, f"paths.data_dir={data_dir}",
           f"hydra.run.dir={run}", *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------ Ctrl-C and phases
@pytest.mark.parametrize("signame,extra,code,status,says", [
    ("SIGINT", ["fault.signal_at_step=6"], 130, "interrupted", "stopped at global step 7"),
    ("SIGTERM", ["fault.signal_phase=setup"], 75, "preempted", "stopped during data setup (no checkpoint)"),
    ("SIGTERM", ["fault.signal_phase=test"], 75, "preempted", "stopped during testing (checkpoint"),
])
def test_run_job_exit_code_status_and_one_line_per_signal(signame, extra, code, status, says, tmp_path, data_dir,
                                                          capsys):
    """In-process ``run_job`` (the console script's path): the exit code, one stderr line, the
    status and reason in results.json. Before: Ctrl-C was ``failed``/exit 1 with no checkpoint of
    its step; SIGTERM during setup killed the process with ``running`` left on disk; during
    test decoding it was ignored (exit 0)."""
    from softmax_approx.train import run_job

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        run_job(compose_cfg([*EPOCHS3, *extra, f"fault.signal_name={signame}"], run, data_dir))
    assert info.value.code == code
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert err[-1].startswith(f"{status}: Preempted: {signame} received: {says}"), err
    rec = load_results(run / "results.json")
    assert rec["status"] == status and says in rec["error"]


@pytest.mark.slow
def test_ctrl_c_during_training_checkpoints_exits_130_and_the_same_command_resumes(tmp_path, data_dir):
    """Before: ``failed``, ``SystemExit: 1``, no checkpoint of the step it was at."""
    run = tmp_path / "run"
    first = _cli(run, data_dir, "fault.signal_at_step=6", "fault.signal_name=SIGINT")
    assert first.returncode == 130, first.stderr[-2000:]
    assert _last_line(first).startswith("interrupted: Preempted: SIGINT received: stopped at global step 7")
    assert "Traceback" not in first.stderr
    rec = load_results(run / "results.json")
    assert rec["status"] == "interrupted" and "SIGINT" in rec["error"]
    assert torch.load(last_checkpoint(run), map_location="cpu", weights_only=False)["global_step"] == 7
    again = _cli(run, data_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    rec = load_results(run / "results.json")
    assert rec["status"] == "completed" and rec["resumed_from"] == str(last_checkpoint(run))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["setup", "between"])
def test_sigterm_outside_training_is_one_line_exit_75_and_resumable(phase, tmp_path, data_dir):
    """Before: during data setup the status stayed ``running`` (the process died by the signal);
    between fit and test it exited -15 with ``running``."""
    run = tmp_path / "run"
    first = _cli(run, data_dir, f"fault.signal_phase={phase}")
    assert first.returncode == 75, first.stderr[-2000:]
    want = "during data setup" if phase == "setup" else "after training, before testing"
    assert _last_line(first).startswith("preempted: Preempted: SIGTERM received: stopped " + want)
    assert "Traceback" not in first.stderr
    rec = load_results(run / "results.json")
    assert rec["status"] == "preempted" and want in rec["error"]
    assert last_checkpoint(run).exists() == (phase == "between")
    again = _cli(run, data_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_results(run / "results.json")["status"] == "completed"


# ------------------------------------------------------------------ atomic checkpoints
def test_disk_full_while_a_best_checkpoint_is_written_leaves_no_torn_file(tmp_path, data_dir, monkeypatch):
    """Lightning's writer moved a finished temp file from the system temp folder into place; a
    move across file systems is a copy, and a disk full mid-copy left half a ``best-N.ckpt``.
    Both ways of filling the disk are simulated: the copy of such a move, and the write itself."""
    real_move, real_save = shutil.move, torch.save

    def enospc():
        return OSError(errno.ENOSPC, "No space left on device")

    def move(src, dst, *a, **k):
        if Path(str(dst)).name.startswith("best-"):
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[: len(data) // 2])
            raise enospc()
        return real_move(src, dst, *a, **k)

    def save(obj, f, *a, **k):
        if "best-" in str(getattr(f, "name", "")):
            f.write(b"half a checkpoint")
            raise enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(shutil, "move", move)
    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train(compose_cfg(EPOCHS3, run, data_dir))
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert not [p for p in ckpts if p.name.startswith("best-")]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    for p in ckpts:
        torch.load(p, map_location="cpu", weights_only=False)  # whole
    assert load_results(run / "results.json")["status"] == "failed"


# ------------------------------------------------------------------ moved data / run folder
def test_resume_after_moving_the_data_and_the_run_folder(tmp_path, data_dir):
    """Before: refused as a "different config" (the data and run paths were part of it), while
    docs/reproduce.md says moving data does not invalidate results. Now the same run resumes in
    its new place to the uninterrupted run's metrics, the best checkpoint's score included."""
    ref = tmp_path / "ref"
    train(compose_cfg(EPOCHS3, ref, data_dir))
    data_a = Path(shutil.copytree(data_dir, tmp_path / "a" / "data"))
    run_a = tmp_path / "a" / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*EPOCHS3, "fault.fail_at_step=6"], run_a, data_a))
    moved = Path(shutil.move(str(tmp_path / "a"), str(tmp_path / "b")))
    data_b, run_b = moved / "data", moved / "run"
    train(compose_cfg(EPOCHS3, run_b, data_b))
    rec, want = load_results(run_b / "results.json"), load_results(ref / "results.json")
    assert rec["status"] == "completed" and rec["resumed_from"] == str(last_checkpoint(run_b))
    assert rec["test_weights"].startswith(str(run_b / "checkpoints"))
    assert rec["metrics"] == want["metrics"]


def test_a_changed_recipe_is_still_refused_after_a_move(tmp_path, data_dir):
    from softmax_approx.utils.errors import ConfigError

    run_a = tmp_path / "a"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*EPOCHS3, "fault.fail_at_step=6"], run_a, data_dir))
    run_b = Path(shutil.move(str(run_a), str(tmp_path / "b")))
    with pytest.raises(ConfigError, match=r"different config \(optimizer.lr\)"):
        train(compose_cfg([*EPOCHS3, "optimizer.lr=0.5"], run_b, data_dir))


# ------------------------------------------------------------------ step cadence before a validation
def test_step_checkpoint_due_before_a_validation_is_taken_after_it(tmp_path, data_dir):
    """``every_n_train_steps`` falling on a batch after which a validation is due: a checkpoint
    taken there resumes past that validation (Lightning skips it), so a crash then lost a
    validation and, with it, possibly the best checkpoint. It is now taken after the validation."""
    extra = [*EPOCHS3, "trainer.val_check_interval=2", "callbacks.last_checkpoint.every_n_train_steps=2"]
    ref = tmp_path / "ref"
    train(compose_cfg(extra, ref, data_dir))
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*extra, "fault.fail_at_step=7"], run, data_dir))
    ck = torch.load(last_checkpoint(run), map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6
    # the validation after step 6 (2 batches) had run when it was saved
    assert ck["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 2
    train(compose_cfg(extra, run, data_dir))
    assert load_results(run / "results.json")["metrics"] == load_results(ref / "results.json")["metrics"]
