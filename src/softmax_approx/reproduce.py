"""`make reproduce`: experiment definitions -> training runs (resumable) -> tables and figures.

    python -m softmax_approx.reproduce run --profile smoke --out OUT --data-dir DIR
        [--only memory] [--task sst2] [--jobs 2] [--dry-run] [--run-timeout SECONDS] [--no-report]

Every definition in experiments/ is expanded for the profile into runs (a run = a list of
Hydra overrides). A run's directory is OUT/runs/<experiment>/<run key>, where the key is a
readable slug plus a hash of the overrides, so the same settings always map to the same
directory and a run several experiments need is trained once.

Why one subprocess per run rather than one Hydra multirun per experiment: a multirun shares
one process (or one joblib pool) between jobs, so a crash or an out-of-memory kill can take
its siblings down, and it cannot skip the jobs that already completed. Here each run is
`python -m softmax_approx.train <overrides> hydra.run.dir=<run dir>`; a run whose
results.json says `completed` is skipped, any other is (re)run, and a run that dies without
writing results.json gets a `failed` one with the tail of its output, so the tables show it.

One `reproduce` per OUT (a lock on `OUT/.lock`): a second one refuses at once with one line.
Each run is its own process group; a SIGTERM/SIGINT/SIGUSR1 to `reproduce` is forwarded to the
runs in flight, which checkpoint and stop (`preempted` / `interrupted`), and `reproduce` waits
for them, starts nothing new, and exits 75 (130 for Ctrl-C): the same command resumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

from softmax_approx.plan import (
    Experiment,
    Plan,
    RunSpec,
    build_plan,
    load_common,
    load_experiments,
    select,
)
from softmax_approx.report.io import write_json
from softmax_approx.utils.errors import UserError
from softmax_approx.utils.profiles import profile_names
from softmax_approx.utils.run_record import FILENAME, RunRecord, RunStatus, failed_record, read_results, write_failed

# The training command; tests point it at a fake train script.
TRAIN_COMMAND: list[str] = [sys.executable, "-m", "softmax_approx.train"]
BENCH_COMMAND: list[str] = [sys.executable, "-m", "softmax_approx.bench"]
LOG_NAME = "reproduce.log"
TAIL_LINES = 40


def _quote(value: str) -> str:
    """Quote an override value Hydra's grammar would not take bare (spaces, '=', ',' ...)."""
    if re.fullmatch(r"[A-Za-z0-9_./:+-]*", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_status(path: Path) -> str:
    """The record's ``RunStatus`` (``running``: a crashed or live run), ``failed`` when it is
    unreadable, or ``missing`` (no file: not a record's status, the plan's)."""
    try:
        return read_results(path).status
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):  # ResultsError (unreadable, newer schema) is a ValueError
        return RunStatus.FAILED


def find_completed(out: Path, key: str) -> Path | None:
    """A completed results.json of `key` under any experiment directory (owners may change)."""
    for path in sorted((out / "runs").glob(f"*/{key}/{FILENAME}")):
        if read_status(path) == RunStatus.COMPLETED:
            return path
    return None


@dataclass
class Job:
    spec: RunSpec
    run_dir: Path
    owner: str
    status: str = "pending"
    seconds: float = 0.0
    proc: Any = None
    started: float = 0.0
    log: Any = None
    error: str | None = None  # why it failed (printed with its progress line)


@dataclass
class Progress:
    """Prints one line per event: done / running / left, elapsed, and the run's status."""

    total: int
    stream: Any = field(default_factory=lambda: sys.stdout)
    t0: float = field(default_factory=time.monotonic)
    done: int = 0
    running: int = 0

    def line(self, status: str, job: Job, extra: str = "") -> None:
        left = self.total - self.done - self.running
        el = str(_dt.timedelta(seconds=int(time.monotonic() - self.t0)))
        print(f"[{self.done}/{self.total} done | {self.running} running | {left} left | {el}] "
              f"{status:<9} {job.owner}/{job.spec.key}{extra}", file=self.stream, flush=True)


def plan_jobs(plan: Plan, out: Path) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs already completed)."""
    todo, done = [], []
    for key, spec in plan.runs.items():
        run_dir = plan.run_dir(out, key)
        found = find_completed(out, key)
        job = Job(spec, found.parent if found else run_dir, plan.owner[key])
        if found:
            job.status = RunStatus.COMPLETED
            done.append(job)
        else:
            job.status = read_status(run_dir / FILENAME)
            todo.append(job)
    return todo, done


def _command(job: Job, data_dir: str, train_command: list[str]) -> list[str]:
    ov = job.spec.command_overrides(job.run_dir, data_dir)
    ov = [o.split("=", 1)[0] + "=" + _quote(o.split("=", 1)[1]) if o.startswith(("paths.", "hydra."))
          else o for o in ov]
    return [*train_command, *ov, f"experiment_name={job.owner}"]


def _env(jobs: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def _start(job: Job, cmd: list[str], env: dict[str, str], launcher: Any = None) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    res = job.run_dir / FILENAME
    if res.exists():  # a failed/crashed attempt: keep it beside, never mistake it for this one
        res.replace(job.run_dir / "results.previous.json")
    job.log = open(job.run_dir / LOG_NAME, "w", encoding="utf-8")
    job.log.write("$ " + " ".join(cmd) + "\n")
    job.log.flush()
    if launcher is not None:  # slurm / submitit_local (harness/launch.py): same command, a submitit job
        job.proc = launcher.submit(cmd, env, job.run_dir / LOG_NAME)
    else:
        job.proc = subprocess.Popen(cmd, stdout=job.log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
    job.started = time.monotonic()


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError:
        return ""


def _finish(job: Job, rc: int, note: str = "") -> None:
    """Settle a finished job's status; write a `failed` results.json if train left none."""
    job.log.close()
    job.seconds = time.monotonic() - job.started
    res = job.run_dir / FILENAME
    status = read_status(res)
    if status == RunStatus.COMPLETED or status in RunStatus.STOPPED:  # stopped by a signal: resumable as it is
        job.status = status
        return
    tail = _tail(job.run_dir / LOG_NAME)
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    spec = job.spec
    # what the plan knows of the run, under what train left (a `running` or `failed` record)
    planned = RunRecord(task=spec.task, policy=spec.setting.policy, policy_params=spec.setting.params_dict,
                        seed=spec.seed, experiment=job.owner, run_dir=str(job.run_dir), job_id=spec.key, memory={})
    left = None
    if status != "missing":
        try:
            left = read_results(res)
        except (OSError, ValueError):
            pass
    error = left.error if status == RunStatus.FAILED and left is not None and left.error else None
    record = failed_record(error or note or f"train exited with code {rc} without a completed {FILENAME}: {last}",
                           planned, left, returncode=rc, stderr_tail=tail)
    record.profile = record.profile or _profile_of(spec)
    write_failed(res, record)  # on a full disk: the small record, or one line saying it could not
    job.status, job.error = RunStatus.FAILED, record.error


def _profile_of(spec: RunSpec) -> str | None:
    return next((o.split("=", 1)[1] for o in spec.overrides if o.startswith("profile=")), None)


def execute(jobs: list[Job], data_dir: str, n_parallel: int = 1, progress: Progress | None = None,
            train_command: list[str] | None = None, run_timeout: float = 0, launcher: Any = None) -> None:
    """Run `jobs` with at most `n_parallel` at a time; a failure never stops the others.
    ``launcher`` (harness/launch.py) submits each run as a submitit job instead of a subprocess."""
    train_command = list(train_command or TRAIN_COMMAND)
    progress = progress or Progress(len(jobs))
    env = _env(n_parallel)
    queue, live = deque(jobs), []
    stop = _SignalForwarder(live)
    try:
        with stop:
            _run_queue(queue, live, data_dir, n_parallel, progress, train_command, run_timeout, launcher, env, stop)
    except KeyboardInterrupt:
        for job in live:
            _kill(job.proc)
            job.log.close()
        raise
    if stop.received is not None:
        raise Stopped(stop.received, [j for j in jobs if j.status in RunStatus.STOPPED])


class Stopped(Exception):
    """A signal stopped `reproduce`: the runs in flight checkpointed and stopped; none was started after."""

    def __init__(self, sig: signal.Signals, stopped: list) -> None:
        self.sig, self.stopped = sig, stopped
        super().__init__(f"{sig.name} received: {len(stopped)} run(s) in flight checkpointed and stopped, "
                         "no new run started; rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        return 130 if self.sig == signal.SIGINT else 75


class _SignalForwarder:
    """While installed, SIGTERM/SIGINT/SIGUSR1 to `reproduce` go to each run's process group
    (the runs checkpoint at their next safe point and exit); `reproduce` then starts nothing new.
    A second Ctrl-C raises KeyboardInterrupt (the runs are killed)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, live: list) -> None:
        self.live = live
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_SignalForwarder":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum)
        for job in list(self.live):
            self.forward(job, signum)

    @staticmethod
    def forward(job: Any, signum: int) -> None:
        pid = getattr(job.proc, "pid", None)
        if pid is not None:  # a local run: its own session and process group (see _start)
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass


def _run_queue(queue: deque, live: list, data_dir: str, n_parallel: int, progress: Progress,
               train_command: list[str], run_timeout: float, launcher: Any, env: dict[str, str],
               stop: _SignalForwarder) -> None:
    """Start jobs as slots free up, settle each as it ends; after a signal, only wait."""
    while queue or live:
        if stop.received is not None:
            queue.clear()  # wait for the runs in flight; start nothing new
        while queue and len(live) < max(1, n_parallel) and stop.received is None:
            job = queue.popleft()
            _start(job, _command(job, data_dir, train_command), env, launcher)
            live.append(job)
            if stop.received is not None:  # the signal came while it was starting
                stop.forward(job, stop.received)
            progress.running += 1
            progress.line("started", job)
        time.sleep(0.05)
        for job in list(live):
            rc = job.proc.poll()
            note = ""
            if rc is None and run_timeout and time.monotonic() - job.started > run_timeout:
                _kill(job.proc)
                rc, note = job.proc.wait(), f"timed out after {run_timeout:g} s (--run-timeout)"
            if rc is None:
                continue
            _finish(job, rc, note)
            live.remove(job)
            progress.running -= 1
            progress.done += 1
            progress.line(job.status, job, f" ({job.seconds:.1f} s)" + (f": {job.error}" if job.error else ""))


def _kill(proc: Any) -> None:
    import signal

    if hasattr(proc, "cancel"):  # a submitit job (harness.launch.SubmittedRun)
        proc.cancel()
        return

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def bench_path(out: Path, exp: Experiment) -> Path:
    """Where a bench experiment's records go: OUT/bench/<name>-<hash of its arguments>.json."""
    return out / "bench" / f"{exp.bench_key()}.json"


def run_bench(exp: Experiment, out: Path, stream: Any, run_timeout: float = 0) -> str:
    """Run `python -m softmax_approx.bench` once for `exp` unless its JSON exists; on failure
    write <key>.failed.json (error + output tail) so the report can say `failed`."""
    path = bench_path(out, exp)
    if path.exists():
        print(f"bench     {path.name}: exists, skipped", file=stream, flush=True)
        return RunStatus.COMPLETED
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = path.with_suffix(".failed.json")
    log = path.with_suffix(".log")
    tmp = path.with_suffix(".partial.json")
    cmd = [*BENCH_COMMAND, "--json", str(tmp), *exp.bench_command()]
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(1),
                                timeout=run_timeout or None).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    ok = rc == 0 and tmp.exists()
    if ok:
        tmp.replace(path)
        failed.unlink(missing_ok=True)
    else:
        tail = _tail(log)
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        write_json(failed, {"status": RunStatus.FAILED, "returncode": rc, "command": cmd,
                            "error": f"bench exited with code {rc}: {last}", "stderr_tail": tail})
    status = RunStatus.COMPLETED if ok else RunStatus.FAILED
    print(f"bench     {path.name}: {status} ({time.monotonic() - t0:.1f} s)", file=stream, flush=True)
    return status


def _manifest(out: Path, profile: str, data_dir: str, only: list[str] | None,
              jobs: list[Job], started: str) -> None:
    write_json(out / "reproduce.json", {
        "profile": profile, "data_dir": str(data_dir), "only": only, "started": started,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [{"key": j.spec.key, "dir": str(j.run_dir), "experiment": j.owner,
                  "status": j.status, "seconds": round(j.seconds, 2),
                  "overrides": list(j.spec.overrides)} for j in jobs],
    })


def run(profile: str, out: Path | str, data_dir: Path | str, only: list[str] | None = None,
        jobs: int = 1, dry_run: bool = False, exp_dir: Path | str | None = None,
        report: bool = True, train_command: list[str] | None = None, run_timeout: float = 0,
        stream: Any = None, fetch_data: bool = False, launcher: str = "local",
        slurm: list[str] | None = None, tasks: list[str] | None = None) -> int:
    """Plan, skip completed, run the rest, render the report. Returns 0 if every run completed.

    ``tasks`` (``--task``): run only these tasks' missing runs now, e.g. the cheap ones first on
    a small machine; the plan, the skip rule and the report are unchanged (the others stay
    missing, and the report marks its tables partial).

    ``fetch_data`` (``--fetch-data``; `make reproduce` sets it): download the planned tasks'
    missing datasets before the first run, or stop with one line naming `make data` when that
    fails."""
    stream = stream or sys.stdout
    out = Path(out).resolve()
    from softmax_approx.harness.launch import make_launcher

    engine = make_launcher(launcher, out, profile, slurm)  # None = local subprocesses
    if launcher == "slurm":
        jobs = max(jobs, 1 << 16)  # the cluster schedules: submit every run at once
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    exps = load_experiments(profile, exp_dir)
    plan = build_plan(exps, load_common(exp_dir), only)
    todo, done = plan_jobs(plan, out)
    deferred = []
    if tasks:
        unknown = sorted(set(tasks) - {j.spec.task for j in done + todo})
        if unknown:
            raise UserError(f"--task {', '.join(unknown)}: no run of the plan has that task; "
                            f"the plan's tasks are {', '.join(sorted({j.spec.task for j in done + todo}))}")
        deferred = [j for j in todo if j.spec.task not in tasks]
        todo = [j for j in todo if j.spec.task in tasks]
    chosen = select(exps, only)
    names = [e.name for e in chosen]
    benches = [e for e in chosen if e.kind == "bench"]
    print(f"reproduce [{profile}]: {len(plan.runs)} runs for {', '.join(names)}; "
          f"{len(done)} completed (skipped), {len(todo)} to run"
          + (f", {len(deferred)} left for later (--task {','.join(tasks)})" if deferred else "")
          + f" -> {out}", file=stream, flush=True)
    if dry_run:
        for exp in benches:
            state = RunStatus.COMPLETED if bench_path(out, exp).exists() else "missing"
            print(f"  {state:<9} bench/{exp.bench_key()}  python -m softmax_approx.bench "
                  + " ".join(exp.bench_command()), file=stream)
        for job in done + todo + deferred:
            shared = ",".join(plan.users[job.spec.key])
            print(f"  {job.status:<9} {job.owner}/{job.spec.key}  [{shared}]  "
                  + " ".join(_command(job, str(data_dir), ["train"])[1:]), file=stream)
        return 0
    from softmax_approx.harness.run_lock import RunLock

    # one reproduce per OUT: a second one refuses here, before fetching data or starting runs
    created = not out.exists()
    rc = 2
    try:
        with RunLock(out, user="another reproduce on the same OUT", fix="wait for it to finish, or give another --out"):
            rc = _run_locked(out, profile, data_dir, only, jobs, exp_dir, report, train_command, run_timeout,
                             stream, engine, started, done, todo, deferred, benches, tasks, fetch_data)
            return rc
    finally:
        if created and rc == 2:  # stopped before anything was written: leave no OUT behind
            _remove_if_only_lock(out)


def _remove_if_only_lock(out: Path) -> None:
    try:
        if {p.name for p in out.iterdir()} <= {".lock"}:
            (out / ".lock").unlink(missing_ok=True)
            out.rmdir()
    except OSError:
        pass


def _run_locked(out: Path, profile: str, data_dir: Path | str, only: list[str] | None, jobs: int,
                exp_dir: Path | str | None, report: bool, train_command: list[str] | None, run_timeout: float,
                stream: Any, engine: Any, started: str, done: list, todo: list, deferred: list,
                benches: list, tasks: list[str] | None, fetch_data: bool) -> int:
    """``run`` once OUT is locked: data, benchmarks, the runs, the summary line and the report."""
    if todo and fetch_data:  # fetch missing datasets first (or stop with one line naming `make data`)
        from softmax_approx.data.ensure import ensure_data

        ensure_data({j.spec.task for j in todo}, data_dir, stream)
    elif todo and not Path(data_dir).is_dir():  # one line, not one silent failure per run
        print(f"error: data directory {data_dir} does not exist; fetch the data with `make data` "
              "(or --fetch-data), or give --data-dir DIR", file=sys.stderr, flush=True)
        return 2
    all_jobs = done + todo + deferred
    _manifest(out, profile, str(data_dir), only, all_jobs, started)
    bench_failed = [e.name for e in benches if run_bench(e, out, stream, run_timeout) != RunStatus.COMPLETED]
    progress = Progress(len(todo), stream)
    try:
        execute(todo, str(Path(data_dir).resolve()), jobs, progress, train_command, run_timeout, engine)
    except Stopped as e:
        print(f"reproduce: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        _manifest(out, profile, str(data_dir), only, all_jobs, started)
    failed = [j for j in todo if j.status != RunStatus.COMPLETED]
    if deferred:
        print(f"reproduce: {len(deferred)} runs of other tasks not started (--task); rerun without "
              "--task to finish the plan", file=stream, flush=True)
    print(f"reproduce: {len(all_jobs) - len(failed) - len(deferred)}/{len(all_jobs)} runs completed"
          + (f"; failed: {', '.join(j.spec.key for j in failed)} (logs: <run dir>/{LOG_NAME})"
             if failed else ""), file=stream, flush=True)
    if report:
        from softmax_approx.report.render import render_report

        rep = render_report(out, profile=profile, exp_dir=exp_dir, only=only)
        print(f"report: {len(rep.files)} files under {out}/tables, {out}/figures", file=stream)
    return 1 if failed or bench_failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softmax_approx.reproduce", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) every experiment of a profile, then render")
    r.add_argument("--profile", required=True, choices=profile_names())
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--data-dir", type=Path, help="datasets (default: $SOFTMAX_APPROX_DATA, else the user's data cache)")
    r.add_argument("--only", action="append", help="only this experiment (+ those it uses); repeatable")
    r.add_argument("--task", action="append", dest="tasks", metavar="TASK",
                   help="run only this task's runs now (e.g. sst2); the rest stay missing; repeatable")
    r.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and each run's status")
    r.add_argument("--experiments", type=Path, help="definitions directory (default experiments/)")
    r.add_argument("--run-timeout", type=float, default=0, help="kill a run after this many seconds")
    r.add_argument("--no-report", action="store_true", help="skip rendering tables and figures")
    r.add_argument("--fetch-data", action="store_true",
                   help="download the planned tasks' missing datasets first (make reproduce sets it)")
    r.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit_local"),
                   help="where runs execute: local subprocesses (default), SLURM via submitit, or submitit's "
                        "local executor (docs/scaleout.md)")
    r.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                   help="override the profile's SLURM resources: partition, gpus, cpus, time (min), mem; repeatable")
    args = ap.parse_args(argv)
    try:
        if args.data_dir is None:
            from softmax_approx.data.files import default_data_dir

            args.data_dir = default_data_dir()
        return run(args.profile, args.out, args.data_dir, args.only, args.jobs, args.dry_run,
                   args.experiments, not args.no_report, run_timeout=args.run_timeout, fetch_data=args.fetch_data,
                   launcher=args.launcher, slurm=args.slurm, tasks=args.tasks)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproduce: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
