"""`python -m softmax_approx.bench gpu_check`: the CPU path of the GPU check (`--device cpu`).

The trainings run through a stand-in train command (a small script that records its overrides
and writes a results.json, fails, or hangs) so the fast tests check the orchestration; the slow
test runs the real `python -m softmax_approx.train` on the fixture SST-2.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from softmax_approx import bench
from softmax_approx.bench import gpu_check

TINY = ["--device", "cpu", "--seq-len", "16", "--batch", "1", "--heads", "2", "--head-dim", "8", "--repeats", "1"]
REPORT_KEYS = {"schema", "status", "device", "command", "options", "started", "seconds", "bench", "bench_errors", "training"}
BENCH_KEYS = {"precision", "amp", "seq_len", "policy", "state_bytes_per_score", "attention_saved_bytes",
              "peak_bytes_fwd_bwd", "time_ratio_vs_eager", "time_ratio_vs_sdpa", "infer_time_ratio_vs_eager", "grad_cosine"}
TRAIN_KEYS = {"task", "policy", "status", "error", "seconds", "returncode", "metrics", "timing", "memory", "run_dir", "command"}

FAKE_TRAIN = textwrap.dedent('''
    import json, pathlib, sys, time
    ov = dict(a.split("=", 1) for a in sys.argv[1:])
    run = pathlib.Path(ov["hydra.run.dir"])
    if ov["task"] == "imdb":
        print("DataError: imdb/aclImdb.tar.gz not found under paths.data_dir; run make data")
        sys.exit(2)
    if ov["task"] == "multi30k":
        time.sleep(60)
    (run / "argv.json").write_text(json.dumps(sys.argv[1:]))
    (run / "results.json").write_text(json.dumps({
        "status": "completed", "error": None,
        "metrics": {"test/acc": 0.75, "val/acc": 0.7, "train/loss": 0.5},
        "timing": {"step_seconds_median": 0.01, "tokens_per_second": 1000.0},
        "memory": {"attention_bytes": 2 ** 20, "peak_step_bytes": None}}))
''')


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(gpu_check, "TRAIN_COMMAND", [sys.executable, str(script)])


def test_no_cuda_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["gpu_check", "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == ""
    assert lines[0].startswith("gpu_check: no CUDA device (") and lines[0].endswith("use --device cpu to exercise the code path")
    assert not (tmp_path / "o").exists()


def test_cpu_path_writes_both_files_with_documented_keys(tmp_path, fake_train, capsys):
    out = tmp_path / "o"
    rc = bench.main(["gpu_check", "--out", str(out), *TINY, "--policy", "paper:S=2", "--policy", "sdpa",
                     "--tasks", "sst2", "imdb", "multi30k", "--train-policies", "eager", "paper",
                     "--train-steps", "7", "--train-timeout", "3", "--data-dir", str(tmp_path / "data"),
                     "--train-override", "model.d_model=16"])
    assert rc == 1                                             # imdb failed, multi30k timed out
    report = json.loads((out / "gpu_check.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["status"] == "completed with failures" and report["bench_errors"] == []
    assert report["device"]["type"] == "cpu" and report["schema"] == gpu_check.SCHEMA

    # benchmark: every policy in fp32 and bf16 autocast, ratios consistent within a precision
    assert [(r["precision"], r["policy"]) for r in report["bench"]] == [
        (p, name) for p in ("fp32", "bf16") for name in ("eager", "exact", "paper", "sdpa")]
    for r in report["bench"]:
        assert BENCH_KEYS <= set(r)
        assert r["amp"] == (None if r["precision"] == "fp32" else "bf16") and r["seq_len"] == 16
        assert r["peak_bytes_fwd_bwd"] is None                 # no CUDA: no allocator peak
        assert r["attention_saved_bytes"] > 0
    eager = [r for r in report["bench"] if r["policy"] == "eager"]
    sdpa = [r for r in report["bench"] if r["policy"] == "sdpa"]
    assert all(r["infer_time_ratio_vs_eager"] == 1.0 and r["time_ratio_vs_eager"] == 1.0 for r in eager)
    assert all(r["time_ratio_vs_sdpa"] == 1.0 for r in sdpa)

    # training: one row per (task, policy) in order, with the run's own figures or its error
    rows = {(t["task"], t["policy"]): t for t in report["training"]}
    assert list(rows) == [(t, p) for t in ("sst2", "imdb", "multi30k") for p in ("eager", "paper")]
    for t in report["training"]:
        assert TRAIN_KEYS <= set(t)
    ok = rows["sst2", "paper"]
    assert ok["status"] == "completed" and ok["returncode"] == 0
    assert ok["metrics"] == {"test/acc": 0.75, "val/acc": 0.7}    # test/ and val/ only
    assert ok["timing"]["step_seconds_median"] == 0.01 and ok["memory"]["attention_bytes"] == 2 ** 20
    argv = json.loads((out / "train" / "sst2-paper" / "argv.json").read_text())
    for want in ("task=sst2", "attention=paper", "profile=cpu", "trainer=cpu", "trainer.max_steps=7",
                 f"paths.data_dir={(tmp_path / 'data').resolve()}", "model.d_model=16"):
        assert want in argv
    failed = rows["imdb", "eager"]
    assert failed["status"] == "failed" and failed["returncode"] == 2
    assert failed["error"] == "train exited with code 2: DataError: imdb/aclImdb.tar.gz not found under paths.data_dir; run make data"
    hung = rows["multi30k", "paper"]
    assert hung["status"] == "timeout" and hung["returncode"] is None and "timed out after 3 s" in hung["error"]
    assert hung["seconds"] < 30                                # the process group was killed

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (completed with failures)")
    assert "| fp32 | 16 | paper(S=2) |" in md and "| bf16 | 16 | sdpa |" in md
    assert "| sst2 | paper | completed |" in md and "test/acc=0.75" in md and "| multi30k | paper | timeout |" in md
    assert not list(out.glob(".*.tmp"))                        # atomic writes leave no temporaries
    assert "wrote" in capsys.readouterr().out


def test_budget_skips_trainings_and_tasks_none_skips_them_all(tmp_path, fake_train):
    argv = ["gpu_check", *TINY, "--precisions", "fp32", "--policy", "exact"]
    assert bench.main([*argv, "--out", str(tmp_path / "a"), "--tasks", "sst2", "--budget-s", "0.01"]) == 1
    rows = json.loads((tmp_path / "a" / "gpu_check.json").read_text())["training"]
    assert [(t["task"], t["policy"], t["status"]) for t in rows] == [("sst2", "eager", "skipped"), ("sst2", "paper", "skipped")]
    assert "--budget-s" in rows[0]["error"]

    assert bench.main([*argv, "--out", str(tmp_path / "b"), "--tasks", "none"]) == 0
    report = json.loads((tmp_path / "b" / "gpu_check.json").read_text())
    assert report["status"] == "completed" and report["training"] == []
    assert [r["policy"] for r in report["bench"]] == ["eager", "exact"]


def test_a_failing_size_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    real_run = gpu_check.bench.run

    def run(args):
        if args.seq_len == [16]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore detail")
        return real_run(args)

    monkeypatch.setattr(gpu_check.bench, "run", run)
    rc = bench.main(["gpu_check", "--out", str(tmp_path), *TINY[:2], "--seq-len", "16", "8", "--batch", "1",
                     "--heads", "1", "--head-dim", "4", "--repeats", "1", "--precisions", "fp32",
                     "--policy", "exact", "--tasks", "none"])
    assert rc == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["bench_errors"] == [{"precision": "fp32", "seq_len": 16,
                                       "error": "RuntimeError: CUDA out of memory. Tried to allocate 8.00 GiB"}]
    assert {r["seq_len"] for r in report["bench"]} == {8}
    assert "Failed: fp32 n=16" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("argv,fragment", [
    (["--seq-len", "0"], "--seq-len values must be >= 1"),
    (["--train-override", "model.d_model"], "expected KEY=VALUE"),
    (["--tasks", "none", "sst2"], "--tasks none cannot be combined"),
    (["--policy", "paper:S=0"], "S must be an integer >= 1"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["gpu_check", "--out", str(tmp_path), "--device", "cpu", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


@pytest.mark.slow
def test_real_training_on_fixture_data(tmp_path, data_dir):
    """The real train entry point, 4 steps of a tiny model on the fixture SST-2, via gpu_check."""
    out = tmp_path / "o"
    rc = bench.main(["gpu_check", "--out", str(out), *TINY, "--precisions", "fp32", "--policy", "exact",
                     "--tasks", "sst2", "--train-policies", "paper", "--train-steps", "4", "--train-batches", "2",
                     "--eval-batches", "1", "--train-timeout", "300", "--data-dir", str(data_dir),
                     "--train-override", "model.d_model=16", "--train-override", "model.n_heads=2",
                     "--train-override", "model.d_ff=32", "--train-override", "task.datamodule.vocab_size=200",
                     "--train-override", "task.datamodule.val_size=16"])
    report = json.loads((out / "gpu_check.json").read_text())
    row = report["training"][0]
    assert rc == 0, row.get("error")
    assert row["status"] == "completed" and row["returncode"] == 0
    assert 0.0 <= row["metrics"]["test/acc"] <= 1.0
    assert row["timing"]["step_seconds_median"] > 0 and row["memory"]["attention_bytes"] > 0


def test_train_overrides_default_to_gpu_and_the_harness_data_dir(tmp_path):
    """Without --data-dir the training picks its own default data folder (one place decides)."""
    args = gpu_check.build_parser().parse_args(["--out", str(tmp_path)])
    ov = gpu_check.train_overrides(args, "iwslt14_mini", "paper", tmp_path / "run")
    assert ov[:5] == ["task=iwslt14_mini", "attention=paper", "profile=cpu", "trainer=gpu", "trainer.max_steps=200"]
    assert not any(o.startswith("paths.data_dir=") for o in ov)
    assert f"hydra.run.dir={tmp_path / 'run'}" in ov
    args = gpu_check.build_parser().parse_args(["--out", str(tmp_path), "--data-dir", "d", "--device", "cpu"])
    ov = gpu_check.train_overrides(args, "sst2", "eager", tmp_path)
    assert "trainer=cpu" in ov and f"paths.data_dir={(tmp_path.cwd() / 'd').resolve()}" in ov
