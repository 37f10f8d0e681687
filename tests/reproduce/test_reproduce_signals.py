"""`make reproduce` under signals and concurrency (docs/reproduce.md, docs/reliability.md §8):
a signal to the parent reaches the runs in flight, which checkpoint and stop, and the parent
waits for them; a second reproduce on the same OUT refuses at once with one line. The training
command is a fake train script (a real subprocess that handles SIGTERM as train does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_report import write_defs

# Writes its pid, then waits; SIGTERM/SIGINT: record `preempted`/`interrupted` and exit 75/130,
# as softmax_approx.train does after checkpointing.
SLOW_TRAIN = textwrap.dedent("""\
    import json, os, signal, sys, time
    ov = dict(a.split("=", 1) for a in sys.argv[1:])
    run_dir = ov["hydra.run.dir"].strip("'")
    os.makedirs(run_dir, exist_ok=True)
    def stop(signum, frame):
        status, code = ("interrupted", 130) if signum == signal.SIGINT else ("preempted", 75)
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump({"schema": 1, "status": status, "error": f"Preempted: signal {signum}", "task": ov["task"]}, f)
        sys.exit(code)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(os.environ["FAKE_TRAIN_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)
    """)

DRIVER = textwrap.dedent("""\
    import sys
    from softmax_approx import reproduce
    reproduce.TRAIN_COMMAND = [sys.executable, sys.argv[1]]
    sys.exit(reproduce.main(sys.argv[2:]))
    """)


@pytest.fixture
def setup(tmp_path):
    defs = write_defs(tmp_path / "experiments", paper_s="[2]", extra="")
    (tmp_path / "slow_train.py").write_text(SLOW_TRAIN)
    (tmp_path / "data").mkdir()
    pids = tmp_path / "pids.txt"
    pids.touch()
    env = {**os.environ, "FAKE_TRAIN_PIDS": str(pids), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path / "slow_train.py"), "run", "--profile", "cpu",
           "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--experiments", str(defs),
           "--jobs", "2", "--no-report"]
    return {"cmd": cmd, "env": env, "pids": pids, "out": tmp_path / "out"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_runs(s, parent: subprocess.Popen, n: int) -> list[int]:
    deadline = time.time() + 120
    while time.time() < deadline and parent.poll() is None:
        pids = [int(x) for x in s["pids"].read_text().split()]
        if len(pids) >= n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the runs did not start: {parent.poll()}")


@pytest.mark.parametrize("signame,code,status", [("SIGTERM", 75, "preempted"), ("SIGINT", 130, "interrupted")])
def test_a_signal_to_reproduce_reaches_its_runs_and_it_waits_for_them(signame, code, status, setup):
    """Before: the parent died at once and its runs (own sessions) went on unsupervised."""
    parent = subprocess.Popen(setup["cmd"], env=setup["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    pids = []
    try:
        pids = _wait_for_runs(setup, parent, 2)
        os.kill(parent.pid, getattr(signal, signame))  # the parent only, as `kill PID` does
        out, err = parent.communicate(timeout=60)
        assert parent.returncode == code, err
        assert not [p for p in pids if _alive(p)]  # the runs got the signal, and were waited for
        assert err.strip().splitlines()[-1].startswith(
            f"reproduce: {signame} received: 2 run(s) in flight checkpointed and stopped, no new run started")
        assert "Traceback" not in err
        runs = json.loads((setup["out"] / "reproduce.json").read_text())["runs"]
        assert sum(r["status"] == status for r in runs) == 2
        assert {r["status"] for r in runs} == {status, "missing"}  # nothing else was started
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_second_reproduce_on_the_same_out_refuses_at_once(setup):
    """Before: both ran the same runs; both exited 1, reproduce.json said `failed` for runs that
    completed, and one reproduce.log was truncated."""
    first = subprocess.Popen(setup["cmd"], env=setup["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        pids = _wait_for_runs(setup, first, 2)
        t0 = time.time()
        second = subprocess.run(setup["cmd"], env=setup["env"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and time.time() - t0 < 60
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is in use by pid {first.pid} (another reproduce on the same OUT)" in lines[0]
        assert len(setup["pids"].read_text().split()) == 2  # the second started no run
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
