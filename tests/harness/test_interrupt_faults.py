"""Faults around interruption and checkpoint writing (docs/reliability.md §8): Ctrl-C is a
preemption (``interrupted``, exit 130, the same command resumes); a signal outside training is
one line, exit 75 and a clear status; a disk that fills up while a best checkpoint is written
leaves no torn ``best-N.ckpt``; a moved copy of the data resumes while a data file whose content
changed in place is refused naming it. Each test failed before the change it covers.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg
from fixtures_data import write_multi30k, write_sst2
from softmax_approx.harness import rundir
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
    # the run's identity is the data's content, never where it lies
    fingerprint = rundir.read_fingerprint(run_b)
    assert fingerprint["data_sha256"] == rundir.read_fingerprint(ref)["data_sha256"]
    assert set(fingerprint["data_sha256"]) == {"train", "test"}
    assert str(tmp_path) not in json.dumps(fingerprint)


def test_a_changed_recipe_is_still_refused_after_a_move(tmp_path, data_dir):
    from softmax_approx.utils.errors import ConfigError

    run_a = tmp_path / "a"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*EPOCHS3, "fault.fail_at_step=6"], run_a, data_dir))
    run_b = Path(shutil.move(str(run_a), str(tmp_path / "b")))
    with pytest.raises(ConfigError, match=r"different config \(optimizer.lr\)"):
        train(compose_cfg([*EPOCHS3, "optimizer.lr=0.5"], run_b, data_dir))


# ------------------------------------------------------------------ data content, not location
#: a tiny Multi30k run: 4 batches an epoch, 2 epochs, crashed in the second
TRANSLATION = ["profile=smoke", "logger=none", "task=multi30k", "model.d_model=16", "model.n_heads=2",
               "model.n_layers=1", "model.d_ff=32", "trainer.max_epochs=2", "trainer.max_steps=-1",
               "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
               "trainer.val_check_interval=null", "trainer.deterministic=true", "task.datamodule.subset=null",
               "task.datamodule.vocab_size=120", "task.datamodule.batch_size=8", "task.datamodule.max_tokens=null",
               "task.datamodule.max_len=16", "task.module.beam=1", "task.module.val_bleu_max_sentences=4",
               "task.module.n_samples=1", "memory.warmup_steps=1", "timing.skip_steps=0"]
#: task -> (overrides, tiny, the file changed, how it is rewritten)
CHANGES = {
    "sst2": ([*EPOCHS3], True, "sst2/dev.tsv",
             lambda p: p.write_text(p.read_text().replace("\t1\n", "\t0\n", 1))),
    "multi30k": (TRANSLATION, False, "multi30k/test_2016_flickr.en.gz",
                 lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()).replace(b"\n", b" x\n", 1)))),
}


def _task_data(tmp_path: Path, task: str) -> Path:
    data = tmp_path / "data"
    write_sst2(data, n_train=96, n_dev=16) if task == "sst2" else write_multi30k(data, sizes=(64, 16, 8))
    return data


@pytest.mark.parametrize("task", sorted(CHANGES))
def test_changed_data_content_at_the_same_path_is_refused_naming_the_file(task, tmp_path, capsys):
    """Before: only the tokenizer's sha256 stood for the data, so a changed test (or val) file,
    which the tokenizer never reads, resumed silently and mixed two test sets into one result.
    Now: exit 2, one line naming the file; the checkpoint and the fingerprint are left as they
    were, and putting the old content back resumes the run."""
    from softmax_approx.train import run_job

    overrides, tiny, name, change = CHANGES[task]
    data, run = _task_data(tmp_path, task), tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*overrides, "fault.fail_at_step=6"], run, data, tiny=tiny))
    fingerprint, ckpt = (run / rundir.FINGERPRINT_FILE).read_bytes(), last_checkpoint(run).read_bytes()
    original = (data / name).read_bytes()
    change(data / name)
    assert (data / name).read_bytes() != original
    with pytest.raises(SystemExit) as info:
        run_job(compose_cfg(overrides, run, data, tiny=tiny))
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {data / name}: its content changed since {run}"), err
    assert "restore that file" in err[0]
    assert (run / rundir.FINGERPRINT_FILE).read_bytes() == fingerprint and last_checkpoint(run).read_bytes() == ckpt
    assert load_results(run / "results.json")["status"] == "failed"  # not completed: still resumable
    (data / name).write_bytes(original)
    train(compose_cfg(overrides, run, data, tiny=tiny))
    assert load_results(run / "results.json")["status"] == "completed"


def test_data_sha256_is_the_sha256_of_each_file_the_datamodule_read(tmp_path):
    """Differential: the fingerprint's hashes equal hashlib over the bytes of every file setup
    read (each split; gzip'd translation files as stored), keyed by logical name."""
    import hashlib

    from softmax_approx.data.classification import ClassificationDataModule
    from softmax_approx.data.translation import TranslationDataModule

    data = tmp_path / "data"
    write_sst2(data, n_train=40, n_dev=8)
    write_multi30k(data, sizes=(16, 4, 4))
    modules = [ClassificationDataModule(task="sst2", data_dir=str(data), vocab_size=120, val_size=5),
               TranslationDataModule(task="multi30k", data_dir=str(data), vocab_size=120)]
    for dm in modules:
        dm.setup("fit")
        files = dm.data_files()
        assert files and dm.data_sha256() == {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}
    assert set(modules[0].data_files()) == {"train", "test"}
    assert set(modules[1].data_files()) == {f"{s}.{lang}" for s in ("train", "val", "test_2016_flickr") for lang in ("de", "en")}


def test_check_data_names_the_first_changed_file_and_accepts_older_runs(tmp_path):
    from softmax_approx.harness.resume import ResumeDecision, check_data
    from softmax_approx.utils.errors import ConfigError

    files = {"train": tmp_path / "train.tsv", "test": tmp_path / "dev.tsv", "val": tmp_path / "val.tsv"}
    before = {"train": "a" * 64, "test": "b" * 64, "val": "c" * 64}
    resume = ResumeDecision("resume", previous_data=before)
    check_data(tmp_path, resume, files, dict(before))  # same content: resumes
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/dev.tsv: its content changed .*\(test: sha256 b{{12}} then, "
                                          r"d{12} now\) \(\+1 more\); restore that file"):
        check_data(tmp_path, resume, files, {**before, "test": "d" * 64, "val": "e" * 64})
    changed = {k: "f" * 64 for k in before}
    check_data(tmp_path, ResumeDecision("resume", previous_data=None), files, changed)  # before data hashes
    check_data(tmp_path, ResumeDecision("fresh", previous_data=before), files, changed)  # nothing to resume


def _strip_data_hashes(run: Path) -> None:
    """Make ``run`` look like one started before data hashes: no ``data_sha256`` in its
    ``config_fingerprint`` nor in ``last.ckpt``."""
    fp = rundir.read_fingerprint(run)
    assert fp.pop("data_sha256")
    rundir.write_fingerprint(run, fp)
    ckpt = torch.load(last_checkpoint(run), map_location="cpu", weights_only=False)
    assert ckpt["callbacks"][rundir.CKPT_KEY].pop("data_sha256")
    torch.save(ckpt, last_checkpoint(run))


def test_a_run_fingerprinted_before_data_hashes_still_resumes(tmp_path, data_dir):
    """A run in progress when data hashes were added resumes to the uninterrupted metrics and
    from then on carries the hashes of the data it read."""
    ref = tmp_path / "ref"
    train(compose_cfg(EPOCHS3, ref, data_dir))
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg([*EPOCHS3, "fault.fail_at_step=6"], run, data_dir))
    _strip_data_hashes(run)
    train(compose_cfg(EPOCHS3, run, data_dir))
    rec = load_results(run / "results.json")
    assert rec["status"] == "completed" and rec["resumed_from"] == str(last_checkpoint(run))
    assert rec["metrics"] == load_results(ref / "results.json")["metrics"]
    assert rundir.read_fingerprint(run)["data_sha256"] == rundir.read_fingerprint(ref)["data_sha256"]
    assert torch.load(last_checkpoint(run), weights_only=False)["callbacks"][rundir.CKPT_KEY]["data_sha256"]


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
