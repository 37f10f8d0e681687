"""reproduce: planning, dedup, deterministic run dirs, skip completed, rerun failed/missing,
fault isolation. The training command is a fake train script (a real subprocess that writes a
results.json in the real schema, or crashes), so no test here trains a model."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import pytest

from softmax_approx import reproduce
from softmax_approx.plan import build_plan, load_common, load_experiments
from test_report import write_defs


# Imports nothing of the project (so each fake run starts in milliseconds) and writes the
# fields the report reads, in the results.json schema.
FAKE_TRAIN = textwrap.dedent("""\
    import json, os, sys
    ov = dict(a.split("=", 1) for a in sys.argv[1:])
    run_dir = ov["hydra.run.dir"].strip("'")
    with open(os.environ["FAKE_TRAIN_LOG"], "a") as f:
        f.write(run_dir + "\\n")
    if any(s and s in run_dir for s in os.environ.get("FAKE_TRAIN_CRASH", "").split(",")):
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: CUDA out of memory (fake)", file=sys.stderr)
        sys.exit(1)
    params = {k.split(".")[-1]: int(v) for k, v in ov.items() if k.startswith("attention.params.")}
    seed, mt = int(ov["seed"]), ov["task"] == "multi30k"
    value = (20.0 if mt else 0.8) + 0.01 * seed + 0.001 * params.get("S", 0)
    data = {"schema": 1, "status": "completed", "error": None, "task": ov["task"],
            "task_kind": "translation" if mt else "classification", "policy": ov["attention"],
            "policy_params": params, "seed": seed, "profile": ov["profile"],
            "experiment": ov.get("experiment_name"), "run_dir": run_dir,
            "metrics": {"test/bleu" if mt else "test/acc": value},
            "memory": {"attention_bytes": 1000 // (1 + params.get("S", 0)),
                       "softmax_state_bytes": 10, "total_activation_bytes": 5000},
            "fidelity": {"layers": {"enc.0": {"cosine": 0.9, "rel_err": 0.1}}},
            "config": {"paths": {"data_dir": ov["paths.data_dir"]},
                       "probe": ov.get("probe.every_n_steps")}}
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(data, f)
    """)

N = 2 * 2 * 3  # tasks x settings (eager, paper S=2) x seeds


@pytest.fixture
def env(tmp_path, monkeypatch):
    defs = write_defs(tmp_path / "experiments", paper_s="[2]", extra="")
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    log = tmp_path / "launched.txt"
    log.touch()
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.delenv("FAKE_TRAIN_CRASH", raising=False)
    monkeypatch.setattr(reproduce, "TRAIN_COMMAND", [sys.executable, str(script)])
    (tmp_path / "data").mkdir()  # reproduce checks the data directory exists up front
    return {"defs": defs, "out": tmp_path / "out", "data": tmp_path / "data", "log": log}


def launched(env) -> list[str]:
    return env["log"].read_text().splitlines()


def go(env, **kw) -> tuple[int, str]:
    buf = io.StringIO()
    kw.setdefault("report", False)
    rc = reproduce.run("cpu", env["out"], env["data"], exp_dir=env["defs"], stream=buf, **kw)
    return rc, buf.getvalue()


def test_plan_dedupes_shared_runs_and_keys_are_deterministic(env):
    exps = load_experiments("cpu", env["defs"])
    plan = build_plan(exps, load_common(env["defs"]))
    # memory/quality/tradeoff share 2 tasks x 2 settings x 3 seeds; fidelity's runs are among them
    assert len(plan.runs) == N
    key = next(k for k, s in plan.runs.items() if s.setting.policy == "paper" and s.seed == 1)
    assert plan.owner[key] == "memory"
    assert plan.users[key] == ["memory", "quality", "tradeoff", "fidelity"]
    again = build_plan(load_experiments("cpu", env["defs"]), load_common(env["defs"]))
    assert list(again.runs) == list(plan.runs)
    assert "probe.every_n_steps=3" in plan.runs[key].overrides
    # --only never moves a run to another directory
    only = build_plan(exps, load_common(env["defs"]), only=["fidelity"])
    assert set(only.runs) < set(plan.runs) and all(only.owner[k] == "memory" for k in only.runs)
    # a changed override gives a different run
    (env["defs"] / "_common.yaml").write_text(
        (env["defs"] / "_common.yaml").read_text().replace("every_n_steps=3", "every_n_steps=4"))
    changed = build_plan(load_experiments("cpu", env["defs"]), load_common(env["defs"]))
    assert not set(changed.runs) & set(plan.runs)


def test_runs_everything_once_then_skips_completed(env):
    rc, text = go(env, jobs=2)
    assert rc == 0
    first = launched(env)
    assert len(first) == len(set(first)) == N
    assert all("/runs/memory/" in d for d in first)
    assert f"[{N}/{N} done | 0 running | 0 left" in text
    res = json.loads(Path(first[0], "results.json").read_text())
    assert res["status"] == "completed" and res["config"]["paths"]["data_dir"] == str(env["data"].resolve())
    manifest = json.loads((env["out"] / "reproduce.json").read_text())
    assert manifest["profile"] == "cpu" and {r["status"] for r in manifest["runs"]} == {"completed"}
    rc, text = go(env)
    assert rc == 0 and len(launched(env)) == N  # nothing relaunched
    assert f"{N} completed (skipped), 0 to run" in text


def test_crash_is_isolated_recorded_and_rerun(env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_CRASH", "sst2-paper-S2-s1")
    rc, text = go(env, report=True)
    assert rc == 1
    assert len(launched(env)) == N  # the crash stopped nothing else
    [crashed] = [d for d in launched(env) if "sst2-paper-S2-s1" in d]
    res = json.loads(Path(crashed, "results.json").read_text())
    assert res["status"] == "failed" and res["returncode"] == 1
    assert "CUDA out of memory (fake)" in res["stderr_tail"]
    assert "CUDA out of memory" in res["error"] and res["task"] == "sst2" and res["seed"] == 1
    assert "failed" in text and "sst2-paper-S2-s1" in text
    # the report shows it: 2 of 3 seeds of that cell completed
    md = (env["out"] / "tables" / "quality.md").read_text()
    assert "(n=2) [1 failed]" in md
    # resume: only the failed run is relaunched, and now it completes
    monkeypatch.delenv("FAKE_TRAIN_CRASH")
    rc, _ = go(env)
    assert rc == 0
    assert launched(env)[N:] == [crashed]
    assert json.loads(Path(crashed, "results.json").read_text())["status"] == "completed"
    assert json.loads(Path(crashed, "results.previous.json").read_text())["status"] == "failed"


def test_missing_and_stale_running_runs_are_rerun(env):
    go(env)
    runs = launched(env)
    import shutil

    shutil.rmtree(runs[3])  # deleted run
    stale = Path(runs[5], "results.json")  # a run killed mid-way leaves status "running"
    data = json.loads(stale.read_text())
    data["status"] = "running"
    stale.write_text(json.dumps(data))
    rc, _ = go(env)
    assert rc == 0
    assert sorted(launched(env)[N:]) == sorted([runs[3], runs[5]])


def test_only_and_dry_run(env):
    rc, text = go(env, only=["fidelity"], dry_run=True)
    assert rc == 0 and launched(env) == []
    assert "6 to run" in text and "probe.every_n_steps=3" in text
    rc, _ = go(env, only=["fidelity"])
    assert rc == 0 and len(launched(env)) == 6
    rc, text = go(env, dry_run=True)
    assert "6 completed (skipped), 6 to run" in text


def test_run_timeout_marks_failed(env, tmp_path, monkeypatch):
    slow = tmp_path / "slow_train.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    monkeypatch.setattr(reproduce, "TRAIN_COMMAND", [sys.executable, str(slow)])
    rc, _ = go(env, only=["fidelity"], run_timeout=0.5, jobs=2)
    assert rc == 1
    res = [json.loads(p.read_text()) for p in (env["out"] / "runs").rglob("results.json")]
    assert len(res) == 6 and all(r["status"] == "failed" and "timed out" in r["error"] for r in res)


def test_cli(env, capsys):
    code = reproduce.main(["run", "--profile", "cpu", "--out", str(env["out"]), "--data-dir",
                           str(env["data"]), "--experiments", str(env["defs"]), "--only", "quality",
                           "--jobs", "2"])
    assert code == 0 and len(launched(env)) == N
    assert (env["out"] / "tables" / "quality.md").exists()
    assert (env["out"] / "figures" / "tradeoff.png").exists() is False  # --only quality
    code = reproduce.main(["run", "--profile", "cpu", "--out", str(env["out"]), "--data-dir",
                           str(env["data"]), "--experiments", str(env["defs"]), "--only", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--only nope: no such experiment" in err


FAKE_BENCH = textwrap.dedent("""\
    import json, os, sys
    args = sys.argv[1:]
    if os.environ.get("FAKE_BENCH_CRASH"):
        print("RuntimeError: bench exploded (fake)", file=sys.stderr)
        sys.exit(3)
    path = args[args.index("--json") + 1]
    pols = [args[i + 1] for i, a in enumerate(args) if a == "--policy"]
    recs = [{"policy": p.split(":")[0], "params": {}, "seq_len": 64, "logits": "peaked",
             "state_bytes_per_score": 1.0, "reduction_vs_eager": 0.5,
             "module_reduction_vs_eager": 0.4, "time_ratio_vs_eager": 1.0, "grad_cosine": 1.0}
            for p in pols]
    with open(path, "w") as f:
        json.dump(recs, f)
    """)


def test_bench_experiment_runs_once_and_records_failure(env, tmp_path, monkeypatch):
    (env["defs"] / "bench.yaml").write_text(
        "name: bench\nkind: bench\npolicies: [eager, recompute]\nbench_args: [--seq-len, 64]\n")
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE_BENCH)
    monkeypatch.setattr(reproduce, "BENCH_COMMAND", [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_BENCH_CRASH", "1")
    rc, text = go(env, only=["bench"], report=True)
    assert rc == 1 and "failed" in text
    [failed] = (env["out"] / "bench").glob("*.failed.json")
    assert "bench exploded" in json.loads(failed.read_text())["stderr_tail"]
    assert "| eager | failed |" in (env["out"] / "tables" / "bench.md").read_text()
    monkeypatch.delenv("FAKE_BENCH_CRASH")
    rc, text = go(env, only=["bench"], report=True)
    assert rc == 0 and not failed.exists()
    [done] = (env["out"] / "bench").glob("bench-*[0-9a-f].json")
    assert [r["policy"] for r in json.loads(done.read_text())] == ["eager", "recompute"]
    assert "| recompute | 1.000 | 50.0% | 40.0% |" in (env["out"] / "tables" / "bench.md").read_text()
    rc, text = go(env, only=["bench"])
    assert "exists, skipped" in text


def test_task_filter_runs_one_task_now_and_the_rest_later(env):
    from softmax_approx.utils.errors import UserError

    rc, text = go(env, tasks=["sst2"])
    assert rc == 0 and len(launched(env)) == N // 2
    assert all("/sst2-" in d for d in launched(env))
    assert f"{N // 2} left for later (--task sst2)" in text and "rerun without --task" in text
    assert f"{N // 2}/{N} runs completed" in text
    rc, text = go(env)  # the rest of the plan, the finished task skipped
    assert rc == 0 and len(launched(env)) == N and all("/multi30k-" in d for d in launched(env)[N // 2:])
    assert f"{N // 2} completed (skipped)" in text
    with pytest.raises(UserError, match="--task imbd: no run of the plan has that task"):
        go(env, tasks=["imbd"])
