"""The fault cases of docs/reliability.md ("Fault table"): same inputs give the same
result, a completed result is never lost or mislabelled, every failure is one line with its
reason kept. Each test failed before the change it names and passes after.
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from softmax_approx import train as train_mod
from softmax_approx.harness import rundir
from softmax_approx.harness import sweep as sweep_mod
from softmax_approx.harness.results import load_results
from softmax_approx.harness.resume import last_checkpoint
from softmax_approx.utils import run_record
from softmax_approx.utils.errors import ConfigError, NonFiniteLossError
from softmax_approx.utils.task_conf import task_names
from test_interrupt_faults import _strip_data_hashes
from test_reliability import _as_multirun_job, _main
from test_reproduce import env, go, launched  # noqa: F401  (env is a fixture)

EPOCHS3 = ["trainer.max_epochs=3", "trainer.deterministic=true"]


def _crashed_run(run: Path, data: Path, extra=()) -> None:
    """A run that crashes in epoch 1, after last.ckpt of epoch 0 was written."""
    with pytest.raises(torch.OutOfMemoryError):
        train_mod.train(compose_cfg([*EPOCHS3, "fault.fail_at_step=6", *extra], run, data))


# ------------------------------------------------------------------ 1. same inputs, same result
def test_two_identical_runs_in_two_data_copies_give_identical_metrics(tmp_path, data_dir):
    copies = [shutil.copytree(data_dir, tmp_path / f"data{i}", ignore=shutil.ignore_patterns("*cache*", "*.json"))
              for i in (1, 2)]
    out = [train_mod.train(compose_cfg([], tmp_path / f"run{i}", d)) for i, d in enumerate(copies)]
    recs = [o[1]["record"] for o in out]
    assert recs[0]["tokenizer_sha256"] and recs[0]["tokenizer_sha256"] == recs[1]["tokenizer_sha256"]
    assert recs[0]["metrics"] == recs[1]["metrics"]
    assert load_results(tmp_path / "run0" / "results.json")["tokenizer_sha256"] == recs[0]["tokenizer_sha256"]
    assert rundir.read_fingerprint(tmp_path / "run0")["tokenizer_sha256"] == recs[0]["tokenizer_sha256"]


@pytest.mark.parametrize("fingerprint", ["with data hashes", "from before data hashes"])
def test_resume_with_another_tokenizer_is_refused(fingerprint, tmp_path, data_dir):
    """Changed training data: refused naming the file; a run fingerprinted before data hashes
    is still refused through its tokenizer (retrained on the new text)."""
    data = Path(shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("*cache*")))
    run = tmp_path / "run"
    _crashed_run(run, data)
    if fingerprint == "from before data hashes":
        _strip_data_hashes(run)
    before = rundir.read_fingerprint(run)["tokenizer_sha256"]
    with open(data / "sst2" / "train.tsv", "a") as f:  # the data changed: the tokenizer is retrained
        f.write("zyxwv quixotic flummoxed\t1\n" * 5)
    says = (rf"trained with tokenizer sha256 {before[:12]}, this data gives" if fingerprint == "from before data hashes"
            else rf"^{re.escape(str(data / 'sst2' / 'train.tsv'))}: its content changed since .*\(train: sha256 ")
    with pytest.raises(ConfigError, match=says):
        train_mod.train(compose_cfg(EPOCHS3, run, data))
    assert rundir.read_fingerprint(run)["tokenizer_sha256"] == before  # the run keeps its identity


# ------------------------------------------------------- 2. never lose or mislabel a completed result
def test_refused_sweep_job_keeps_the_completed_result_of_another_config(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep"
    train_mod.run_job(_as_multirun_job(compose_cfg(["attention=eager"], sweep / "0", data_dir), sweep, 0))
    done = (sweep / "0" / "results.json").read_text()
    assert json.loads(done)["status"] == "completed"
    # the sweep rerun with another value (a bad one, then a valid one: values in another order)
    for extra in (["attention=paper", "attention.params.S=0"], ["attention=paper"]):
        job = _as_multirun_job(compose_cfg(extra, sweep / "0", data_dir), sweep, 0)
        assert train_mod.run_job(job) is None
        assert (sweep / "0" / "results.json").read_text() == done  # kept, label and metrics
    assert "holds a completed run with a different config (attention" in capsys.readouterr().err
    summary = sweep_mod.summarize(sweep)
    assert summary.jobs["0"]["status"] == "refused" and "different config" in summary.jobs["0"]["error"]
    # the original command still skips to its result, and the refusal note is cleared
    metrics = train_mod.run_job(_as_multirun_job(compose_cfg(["attention=eager"], sweep / "0", data_dir), sweep, 0))
    assert metrics is not None and sweep_mod.summarize(sweep).jobs["0"]["status"] == "completed"


@pytest.mark.parametrize("lose", ["torn results.json", "torn results.json and no fingerprint file"])
def test_torn_results_json_does_not_skip_the_config_check(lose, tmp_path, data_dir):
    run = tmp_path / "run"
    _crashed_run(run, data_dir)
    (run / "results.json").write_text('{"status": "runn')
    if "no fingerprint" in lose:
        (run / rundir.FINGERPRINT_FILE).unlink()
    with pytest.raises(ConfigError, match="different config .*(config_fingerprint|last.ckpt) differs"):
        train_mod.train(compose_cfg([*EPOCHS3, "attention=paper"], run, data_dir))
    assert torch.load(last_checkpoint(run), weights_only=False)["callbacks"][rundir.CKPT_KEY]["config_sha256"]


def test_disk_full_leaves_no_temp_file_and_a_failed_record(tmp_path, data_dir, monkeypatch):
    import lightning as L

    real = L.Trainer.save_checkpoint

    def full(trainer, filepath, *a, **k):  # the disk fills up while last.ckpt is written
        if not str(filepath).endswith(".tmp"):
            return real(trainer, filepath, *a, **k)
        Path(filepath).write_bytes(b"half a checkpoint")
        monkeypatch.setattr(run_record, "write_text", _enospc)  # and stays full
        raise _enospc()

    monkeypatch.setattr(L.Trainer, "save_checkpoint", full)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train_mod.train(compose_cfg([], run, data_dir))
    assert not [p for p in run.rglob("*.tmp")]
    rec = load_results(run / "results.json")  # written into the old file's blocks
    assert rec["status"] == "failed" and "No space left" in rec["error"]


def test_failed_record_that_cannot_be_written_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_record, "write_text", _enospc)
    rec = run_record.RunRecord(status="running").finish("failed", "OSError: boom")
    assert run_record.write_failed(tmp_path / "missing" / "results.json", rec) is False
    assert re.match(r"error: could not record the failure in .*results\.json \(.*\).*OSError: boom",
                    capsys.readouterr().err)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------ 3. every failure one line, reason kept
BAD = [
    (["task.datamodule.vocab_size=0"], r"task\.datamodule\.vocab_size=0: must be an integer >= 100"),
    (["task.datamodule.vocab_size=1"], r"task\.datamodule\.vocab_size=1: must be an integer >= 100"),
    (["task.datamodule.subset={train: 0}"], r"task\.datamodule\.subset\.train=0: must be an integer >= 1"),
    (["task.datamodule.subset=0"], r"task\.datamodule\.subset=0: must be null or a mapping"),
    (["seed=-1"], r"seed=-1: must be an integer in \[0, 2\*\*32 - 1\]"),
    (["optimizer.lr=inf"], r"optimizer\.lr=inf: must be a finite number > 0"),
    (["trainer.val_check_interval=0"], r"trainer\.val_check_interval=0: must be an integer >= 1"),
    (["ckpt_path={notckpt}"], r"ckpt_path='.*notes\.txt': not a readable PyTorch checkpoint"),
    (["task=nosuch"], r"Available options in 'task': " + re.escape(", ".join(task_names())) + "$"),  # every task yaml
]


@pytest.mark.parametrize("overrides,pattern", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_value_is_one_line_exit_2_before_training(overrides, pattern, tmp_path, data_dir, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    argv = [f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/run", *TINY_NO_LOGGER,
            *[o.replace("{notckpt}", str(tmp_path / "notes.txt")) for o in overrides]]
    code, err = _main(argv, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("overrides,pattern", BAD[:7], ids=[" ".join(b[0]) for b in BAD[:7]])
def test_bad_value_reason_is_kept_in_results_and_sweep_summary(overrides, pattern, tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    job = _as_multirun_job(compose_cfg(overrides, sweep / "0", data_dir), sweep, 0)
    assert train_mod.run_job(job) is None
    assert re.search(pattern, load_results(sweep / "0" / "results.json")["error"])
    assert re.search(pattern, sweep_mod.summarize(sweep).jobs["0"]["error"])


def test_truncated_last_checkpoint_is_one_line_and_its_reason_kept(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    _crashed_run(run, data_dir)
    last = last_checkpoint(run)
    last.write_bytes(last.read_bytes()[:1000])
    pattern = r"last\.ckpt'?: not a readable PyTorch checkpoint .*truncated"
    with pytest.raises(ConfigError, match=pattern):
        train_mod.train(compose_cfg(EPOCHS3, run, data_dir))
    # in a sweep: the run's own (failed) record now says why, and so does the summary
    assert train_mod.run_job(_as_multirun_job(compose_cfg(EPOCHS3, run, data_dir), sweep, 0)) is None
    assert re.search(pattern, load_results(run / "results.json")["error"])
    assert re.search(pattern, sweep_mod.summarize(sweep).jobs["0"]["error"])


def test_read_only_run_dir_is_one_line_and_noted_for_the_summary(tmp_path, data_dir, monkeypatch):
    import os

    real_open = os.open

    def read_only(path, flags, *a, **k):  # a read-only mount (root ignores chmod, so simulated)
        if str(path).startswith(str(tmp_path / "run")) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    (tmp_path / "run").mkdir()
    cfg = compose_cfg([], tmp_path / "run", data_dir)
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir='.*run': cannot write there \(Read-only file system\)"):
        train_mod.train(cfg)
    sweep_mod.note_failure(tmp_path / "run", "ConfigError: read-only")
    (tmp_path / "run").mkdir(exist_ok=True)
    assert sweep_mod.summarize(tmp_path).jobs["run"] == {"status": "failed", "error": "ConfigError: read-only"}


def test_nan_before_any_checkpoint_promises_none(tmp_path, data_dir):
    with pytest.raises(NonFiniteLossError) as info:
        train_mod.train(compose_cfg(["fault.nan_at_step=1"], tmp_path, data_dir))
    msg = str(info.value)
    assert "no checkpoint was written" in msg and "is kept" not in msg and "resume" not in msg


def test_iwslt_hint_command_is_accepted(tmp_path, capsys):
    from softmax_approx.data.__main__ import main

    assert main(["download", "iwslt14_mini", "--data-dir", str(tmp_path)]) == 2  # not argparse's exit
    assert "prepare-iwslt14" in capsys.readouterr().err


def test_reproduce_checks_the_data_dir_once_and_prints_why_runs_failed(env, monkeypatch, capsys):  # noqa: F811
    shutil.rmtree(env["data"])
    rc, _ = go(env)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and launched(env) == [] and len(err) == 1 and "data directory" in err[0]
    env["data"].mkdir()
    monkeypatch.setenv("FAKE_TRAIN_CRASH", "sst2-paper-S2-s1")
    rc, text = go(env)
    [line] = [ln for ln in text.splitlines() if "failed" in ln and "sst2-paper-S2-s1" in ln and "done |" in ln]
    assert rc == 1 and "CUDA out of memory (fake)" in line


TINY_NO_LOGGER = [a for a in __import__("conftest").TINY if a != "logger=none"]


@pytest.mark.slow
def test_real_sweep_rerun_in_another_order_writes_no_swapped_labels(tmp_path, data_dir):
    """The real CLI: ``-m attention=eager,paper`` into a fixed sweep dir, then the same sweep
    with the values swapped. Every job is refused (exit 1, reasons in the summary); every
    completed record keeps its own label and metrics."""
    import subprocess
    import sys

    from conftest import TINY
    from test_reliability import _env

    def sweep(values: str) -> subprocess.CompletedProcess:
        args = [*TINY, f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"attention={values}"]
        return subprocess.run([sys.executable, "-m", "softmax_approx.train", "-m", *args], env=_env(),
                              capture_output=True, text=True, timeout=600)

    first = sweep("eager,paper")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {j: (tmp_path / "sweep" / j / "results.json").read_text() for j in ("0", "1")}
    assert [json.loads(before[j])["policy"] for j in ("0", "1")] == ["eager", "paper"]
    again = sweep("paper,eager")
    assert again.returncode == 1
    assert {j: (tmp_path / "sweep" / j / "results.json").read_text() for j in ("0", "1")} == before
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert {j: v["status"] for j, v in summary["jobs"].items()} == {"0": "refused", "1": "refused"}
    assert all("different config (attention" in v["error"] for v in summary["jobs"].values())
