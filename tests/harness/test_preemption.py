"""Preemption and cluster faults (docs/reliability.md §7): SIGTERM/SIGUSR1 checkpoint at the
current step, ``preempted`` + requeue + exit 75; step/time checkpoint cadence with mid-epoch
resume; a kill during the checkpoint write; non-finite gradients with a finite loss; one
process per run directory; DDP resume (slow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg
from softmax_approx import train as train_mod
from softmax_approx.harness.callbacks import LastCheckpoint, NonFiniteGradientError, _seconds
from softmax_approx.harness.preemption import EXIT_PREEMPTED, Preempted, requeue_slurm, slurm_job_id
from softmax_approx.harness.results import load_results
from softmax_approx.harness.resume import last_checkpoint
from softmax_approx.harness.run_lock import RunDirLocked, RunLock, is_launching_rank
from softmax_approx.train import train

# Three epochs of 4 batches (12 steps); step 6 is mid-epoch 1.
EPOCHS3 = ["trainer.max_epochs=3", "trainer.deterministic=true"]


def _cfg(run: Path, data_dir: Path, extra=()):
    return compose_cfg([*EPOCHS3, *extra], run, data_dir)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run: the metrics every interrupted-and-resumed run must equal exactly."""
    run = tmp_path_factory.mktemp("ref")
    metrics, objects = train(_cfg(run, data_dir))
    return objects["record"]


# ------------------------------------------------------------------ 1. SIGTERM / SIGUSR1
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_the_current_step_then_resume_matches(signame, tmp_path, data_dir, reference):
    run = tmp_path / "run"
    with pytest.raises(Preempted, match=f"{signame} received: stopped at global step 7"):
        train(_cfg(run, data_dir, ["fault.signal_at_step=6", f"fault.signal_name={signame}"]))
    rec = load_results(run / "results.json")
    assert rec["status"] == "preempted" and rec["error"].startswith(f"Preempted: {signame} received")
    ck = _ckpt(last_checkpoint(run))
    assert (ck["epoch"], ck["global_step"]) == (1, 7)  # mid-epoch 1, the step it was at
    loader = ck["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader["epoch"] == 1  # the data position travels with it
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored
    metrics, objects = train(_cfg(run, data_dir))
    rec = load_results(run / "results.json")
    assert rec["status"] == "completed" and objects["trainer"].global_step == 12
    assert rec["metrics"] == reference["metrics"]  # exact (deterministic, CPU)


def test_run_job_exits_75_and_requeues_under_slurm(tmp_path, data_dir, monkeypatch, capsys):
    """A fake ``scontrol`` on PATH records the requeue call Lightning's SLURM handler would make."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(SystemExit) as info:
        train_mod.run_job(_cfg(tmp_path / "run", data_dir, ["fault.signal_at_step=2"]))
    assert info.value.code == EXIT_PREEMPTED == 75
    assert calls.read_text().split() == ["requeue", "4242"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("preempted: Preempted: SIGTERM received: stopped at global step 3")
    assert load_results(tmp_path / "run" / "results.json")["status"] == "preempted"


def test_slurm_job_id_and_requeue_outside_slurm():
    assert slurm_job_id({}) is None and requeue_slurm({}) is False
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}) == "5_3"


# ----------------------------------------------------------------------- 2. cadence
def test_step_cadence_checkpoints_mid_epoch_and_resume_matches(tmp_path, data_dir, reference):
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(_cfg(run, data_dir, ["callbacks.last_checkpoint.every_n_train_steps=3", "fault.fail_at_step=7"]))
    ck = _ckpt(last_checkpoint(run))
    assert (ck["epoch"], ck["global_step"]) == (1, 6)  # step 6 (mid-epoch 1), not epoch 0's end
    metrics, objects = train(_cfg(run, data_dir, ["callbacks.last_checkpoint.every_n_train_steps=3"]))
    assert load_results(run / "results.json")["metrics"] == reference["metrics"]


def test_time_cadence_parses_and_fires(tmp_path, data_dir):
    assert _seconds("00:01:30") == 90 and _seconds(45) == 45.0 and _seconds(None) is None
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):  # interval 0.000001 s: due after every step
        train(_cfg(run, data_dir, ["+callbacks.last_checkpoint.train_time_interval=0.000001", "fault.fail_at_step=6"]))
    assert _ckpt(last_checkpoint(run))["global_step"] == 6


# ------------------------------------------------------------- 3. kill during the write
WRITER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from softmax_approx.harness.callbacks import LastCheckpoint

    class Strategy:
        def barrier(self, name=None): pass

    class SlowTrainer:
        is_global_zero = True
        global_step = 99
        strategy = Strategy()
        def save_checkpoint(self, path):
            with open(path, "wb") as f:  # a big checkpoint, written slowly, through the atomic writer
                for _ in range(10_000):
                    f.write(b"x" * 65536); f.flush(); time.sleep(0.001)

    LastCheckpoint(sys.argv[1]).save(SlowTrainer())
""")


def test_sigkill_during_the_checkpoint_write_keeps_the_previous_one(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    good = {"global_step": 5, "state_dict": {"w": torch.arange(4.0)}}
    torch.save(good, ckpt_dir / "last.ckpt")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ckpt_dir)])
    tmp = ckpt_dir / ".last.ckpt.tmp"
    deadline = time.time() + 60
    while (not tmp.exists() or tmp.stat().st_size < 4 << 20) and time.time() < deadline:
        time.sleep(0.01)
    assert tmp.exists() and tmp.stat().st_size >= 4 << 20, "the writer never got going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    back = _ckpt(ckpt_dir / "last.ckpt")  # still the previous, complete checkpoint
    assert back["global_step"] == 5 and torch.equal(back["state_dict"]["w"], good["state_dict"]["w"])


# ------------------------------------------------------- 4. non-finite gradients
def test_nonfinite_gradient_is_skipped_and_counted(tmp_path, data_dir):
    run = tmp_path / "run"
    metrics, objects = train(_cfg(run, data_dir, ["fault.nan_grad_at_step=5"]))
    rec = load_results(run / "results.json")
    assert rec["status"] == "completed" and rec["nonfinite_grad_steps"] == 1
    assert objects["trainer"].global_step == 12
    assert all(torch.isfinite(p).all() for p in objects["model"].parameters())


def test_nonfinite_gradient_stop_names_the_step(tmp_path, data_dir):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteGradientError, match=r"with a finite loss at global step 5 \(epoch 1, batch index 1\)"):
        train(_cfg(run, data_dir, ["fault.nan_grad_at_step=5", "callbacks.nonfinite_grads.action=stop"]))
    assert load_results(run / "results.json")["status"] == "failed"
    assert _ckpt(last_checkpoint(run))["global_step"] == 4  # the last good state


def test_nonfinite_gradient_skip_without_it_would_poison_the_weights(tmp_path, data_dir):
    """The check is what keeps the weights finite: with the callback removed, the NaN gradient
    reaches AdamW and the next loss is NaN."""
    from softmax_approx.utils.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError):
        train(_cfg(tmp_path / "run", data_dir, ["fault.nan_grad_at_step=5", "callbacks.nonfinite_grads=null"]))


# ----------------------------------------------------------- 5. one process per run dir
HOLDER = textwrap.dedent("""
    import sys, time
    from softmax_approx.harness.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_on_a_locked_run_dir_stops_with_the_holders_pid(tmp_path, data_dir):
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        t0 = time.time()
        second = subprocess.run([sys.executable, "-m", "softmax_approx.train", *TINY, f"paths.data_dir={data_dir}",
                                 f"hydra.run.dir={run}"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0], second.stderr
        assert not (run / "results.json").exists()  # refused before touching anything
        assert time.time() - t0 < 60
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL): its lock went with it; the next run takes it
    with RunLock(run) as lock:
        assert (run / ".lock").read_text().strip() == str(os.getpid())
    assert lock._fd is None


def test_lock_is_released_on_exit_and_refused_while_held(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"in use by pid {os.getpid()}"):
            # a second open file description of the same file: what another process gets
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()
    assert is_launching_rank({}) and is_launching_rank({"LOCAL_RANK": "0"}) and not is_launching_rank({"RANK": "1"})


# ----------------------------------------------------------------------- real CLI (slow)
def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_cli_sigterm_mid_run_exits_75_then_the_same_command_resumes_to_the_same_metrics(tmp_path, data_dir):
    """A real ``softmax-approx-train`` process gets SIGTERM from outside (as from a scheduler) as
    soon as its first step checkpoint exists; it writes last.ckpt at the step it is at, says
    ``preempted`` and exits 75; the same command resumes there and ends with exactly the
    metrics of an uninterrupted run."""
    cmd = [sys.executable, "-m", "softmax_approx.train", *TINY, *EPOCHS3, "trainer.limit_train_batches=null",
           "callbacks.last_checkpoint.every_n_train_steps=2", f"paths.data_dir={data_dir}"]
    ref = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'ref'}"], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={run}"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last = last_checkpoint(run)
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("preempted: ")
    rec = load_results(run / "results.json")
    assert rec["status"] == "preempted"
    stopped = _ckpt(last)["global_step"]
    assert 2 <= stopped <= 30

    again = subprocess.run([*cmd, f"hydra.run.dir={run}"], env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = load_results(tmp_path / "ref" / "results.json"), load_results(run / "results.json")
    assert b["status"] == "completed" and b["resumed_from"] == str(last)
    assert b["metrics"] == a["metrics"]  # exact equality (trainer.deterministic=true, CPU)
    print(f"stopped at step {stopped} of 30")


@pytest.mark.slow
def test_ddp_two_processes_preempted_mid_epoch_resume_on_two_to_the_same_metrics(tmp_path, data_dir):
    """2 gloo processes; rank 0 gets SIGTERM before step 6 (mid-epoch 1); both ranks agree,
    last.ckpt is written at step 7 with each rank's data position; the same command resumes on 2
    processes and ends with exactly the uninterrupted 2-process run's metrics."""
    env = {k: v for k, v in _env().items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "softmax_approx.train", *TINY, *EPOCHS3, "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", f"paths.data_dir={data_dir}"]
    ref = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / 'ref'}"], env=env, capture_output=True, text=True,
                         timeout=400)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "run"
    first = subprocess.run([*cmd, f"hydra.run.dir={run}", "fault.signal_at_step=6"], env=env, capture_output=True,
                           text=True, timeout=400)
    assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
    assert load_results(run / "results.json")["status"] == "preempted"
    ck = _ckpt(last_checkpoint(run))
    assert (ck["epoch"], ck["global_step"]) == (1, 7)
    again = subprocess.run([*cmd, f"hydra.run.dir={run}"], env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = load_results(tmp_path / "ref" / "results.json"), load_results(run / "results.json")
    assert b["status"] == "completed" and b["resumed_from"] == str(last_checkpoint(run))
    assert b["metrics"] == a["metrics"]
