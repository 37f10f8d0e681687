"""`python -m softmax_approx.bench gpu_check --out DIR`: one bounded check for a GPU machine.

What it measures (one process, about 8 minutes on one GPU; ``--budget-s`` bounds it):

1. the attention benchmark (bench/attention.py) on the device for every policy, in fp32 and in
   bf16 under ``torch.autocast``, n = 512, 1024, 2048, 4096 (``peaked`` logits): saved-tensor
   bytes beside the ``torch.cuda.max_memory_allocated`` peak of one forward+backward (peak
   reset before each, minus the baseline), forward+backward time over ``eager`` and ``sdpa``,
   gradient-free forward time over ``eager``, gradient fidelity against float64;
2. a short training per task and policy (default ``eager`` and ``paper``, 200 steps, the
   ``cpu`` profile's model and data sizes, ``trainer=gpu``), each as its own
   ``python -m softmax_approx.train`` subprocess with a timeout; its results.json is collected.

It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` atomically after every stage (status
``running`` until the end), so a killed check still leaves what it measured. Without a CUDA
device it prints one line and exits 2; ``--device cpu`` runs the same code paths on the CPU
(with tiny ``--seq-len`` / ``--train-steps``), which is what the tests do. Documented in
docs/gpu.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

import torch

from . import attention as bench
from ..utils.atomic import write_text
from ..utils.errors import one_line
from ..utils.run_record import FILENAME, RunStatus

TASKS = ("sst2", "imdb", "multi30k", "iwslt14_mini")
TRAIN_POLICIES = ("eager", "paper")
AMP = {"fp32": None, "bf16": "bf16"}        # the check's precisions -> bench --amp
TRAIN_COMMAND = [sys.executable, "-m", "softmax_approx.train"]
SCHEMA = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m softmax_approx.bench gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md and train/")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default; exits 2 without one) or cpu to exercise the code path")
    p.add_argument("--seq-len", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--precisions", nargs="+", choices=sorted(AMP), default=["fp32", "bf16"],
                   help="fp32 inputs, as is (fp32) or under torch.autocast (bf16)")
    p.add_argument("--policy", action="append", help="NAME[:key=value,...], repeatable (default: every policy)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--logits", choices=sorted(bench.LOGIT_SIGMA), default="peaked")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(fullgraph=True) per policy (off by default: compiling "
                        "every policy, size and precision does not fit the 8-minute budget)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"tasks to train ('none' = skip training; default {' '.join(TASKS)})")
    p.add_argument("--train-policies", nargs="+", default=list(TRAIN_POLICIES), help="attention=... of each training")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--train-batches", type=int, default=100,
                   help="trainer.limit_train_batches: epochs of this many steps, so validation (and the best "
                        "checkpoint) comes every N steps on every task")
    p.add_argument("--eval-batches", type=int, default=10, help="trainer.limit_val_batches and limit_test_batches")
    p.add_argument("--train-timeout", type=float, default=150.0, help="seconds per training run")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="whole-check budget: trainings that would start after it are skipped (recorded)")
    p.add_argument("--data-dir", default=None,
                   help="datasets folder (paths.data_dir); default: the training's own default "
                        "($SOFTMAX_APPROX_DATA, else the user data cache that `make data` fills)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every training run, repeatable")
    return p


def _validate(args) -> None:
    for name in ("repeats", "batch", "heads", "head_dim", "train_steps", "train_batches", "eval_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(n < 1 for n in args.seq_len):
        raise ValueError(f"--seq-len values must be >= 1, got {args.seq_len}")
    if args.train_timeout <= 0 or args.budget_s <= 0:
        raise ValueError("--train-timeout and --budget-s must be > 0")
    for spec in args.policy or []:
        bench.parse_policy(spec)
    for item in args.train_override:
        if "=" not in item:
            raise ValueError(f"--train-override {item!r}: expected KEY=VALUE")
    if args.tasks != ["none"] and "none" in args.tasks:
        raise ValueError("--tasks none cannot be combined with task names")


def device_info(device: torch.device) -> dict[str, Any]:
    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "host": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, total_memory_bytes=props.total_memory,
                    capability=f"{props.major}.{props.minor}")
    else:
        info.update(name=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    return info


# -- 1. attention benchmark ---------------------------------------------------------------------
def bench_args(args, precision: str, n: int) -> argparse.Namespace:
    """The attention benchmark's own options for one precision and length (one parser, one place)."""
    argv = ["--device", args.device, "--seq-len", str(n), "--batch", str(args.batch), "--heads", str(args.heads),
            "--head-dim", str(args.head_dim), "--logits", args.logits, "--repeats", str(args.repeats)]
    argv += [x for spec in args.policy or [] for x in ("--policy", spec)]
    argv += ["--amp", AMP[precision]] if AMP[precision] else []
    argv += ["--compile"] if args.compile else []
    return bench.build_parser().parse_args(argv)


def run_bench(args, report: dict, save) -> None:
    """Benchmark each (precision, n) separately: an error (e.g. out of memory) loses only that one."""
    for precision in args.precisions:
        for n in args.seq_len:
            print(f"gpu_check: attention benchmark {precision} n={n}\n{bench.HEADER}", flush=True)
            try:
                recs = bench.run(bench_args(args, precision, n))
                report["bench"] += [dict(r, precision=precision) for r in recs]
            except Exception as err:                            # noqa: BLE001 - recorded, next size runs
                report["bench_errors"].append({"precision": precision, "seq_len": n, "error": one_line(err)[:500]})
            finally:
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            save()


# -- 2. training --------------------------------------------------------------------------------
def train_overrides(args, task: str, policy: str, run_dir: Path) -> list[str]:
    return [f"task={task}", f"attention={policy}", "profile=cpu",
            f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
            f"trainer.max_steps={args.train_steps}", "trainer.max_epochs=-1",
            f"trainer.limit_train_batches={args.train_batches}",
            f"trainer.limit_val_batches={args.eval_batches}", f"trainer.limit_test_batches={args.eval_batches}",
            "logger=csv", *([f"paths.data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []),
            f"hydra.run.dir={run_dir}", "experiment_name=gpu_check", *args.train_override]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group (it may have DataLoader workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _tail_line(path: Path) -> str:
    """The log's last meaningful line (Hydra's closing HYDRA_FULL_ERROR hint skipped)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in deque(f, maxlen=40) if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_training(args, task: str, policy: str, out: Path, timeout: float) -> dict[str, Any]:
    """One training subprocess; the row of the report (status, metrics, timing, memory)."""
    run_dir = (out / "train" / f"{task}-{policy}").resolve()
    if run_dir.exists():                   # a fresh run: a previous check's results would be resumed
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [*TRAIN_COMMAND, *train_overrides(args, task, policy, run_dir)]
    log = run_dir / "train.log"
    row: dict[str, Any] = {"task": task, "policy": policy, "run_dir": str(run_dir), "command": cmd}
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        except BaseException:              # Ctrl-C reaches only our group: take the run down too
            _kill_group(proc)
            raise
    row["seconds"] = time.monotonic() - start
    row["returncode"] = rc
    try:
        result = json.loads((run_dir / FILENAME).read_text())
    except (OSError, ValueError):
        result = {}
    row.update(status=result.get("status", RunStatus.FAILED), error=result.get("error"),
               metrics={k: v for k, v in (result.get("metrics") or {}).items() if k.startswith(("test/", "val/"))},
               timing=result.get("timing") or {}, memory=result.get("memory") or {})
    if rc is None:
        row.update(status="timeout", error=f"timed out after {timeout:.0f} s (--train-timeout / --budget-s)")
    elif rc != 0 or row["status"] != RunStatus.COMPLETED:
        row["status"] = RunStatus.FAILED
        row["error"] = row["error"] or f"train exited with code {rc}: {_tail_line(log)}"
    return row


def run_trainings(args, report: dict, save, deadline: float, out: Path) -> None:
    tasks = [] if args.tasks == ["none"] else args.tasks
    for task in tasks:
        for policy in args.train_policies:
            left = deadline - time.monotonic()
            if left < 10:
                report["training"].append({"task": task, "policy": policy, "status": "skipped",
                                           "error": f"time budget exhausted (--budget-s {args.budget_s:g})"})
                save()
                continue
            print(f"gpu_check: training {task} attention={policy}", flush=True)
            report["training"].append(run_training(args, task, policy, out, min(args.train_timeout, left)))
            save()


# -- report -------------------------------------------------------------------------------------
def _mib(x: Any) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _ratio(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown(report: dict) -> str:
    dev = report["device"]
    lines = [f"# GPU check ({report['status']})", "",
             f"Device: {dev.get('name')} ({dev['type']}), torch {dev['torch']}, CUDA {dev.get('cuda')}. "
             f"Started {report['started']}, {report['seconds']:.0f} s. Command: `{report['command']}`.", "",
             "## Attention benchmark", "",
             "One call (B, H, n, d) = ({batch}, {heads}, n, {head_dim}), dropout 0.1, {logits} logits. "
             "Saved = bytes kept for backward by the attention call (q, k, v included); peak = "
             "`max_memory_allocated` during one forward+backward minus the allocation before it "
             "(n/a off CUDA). Times are medians of {repeats}.".format(**report["options"]), ""]
    compiled = bool(report["options"].get("compile"))
    cols = ["precision", "n", "policy", "state B/score", "saved MiB", "peak MiB fwd+bwd", "time / eager",
            "time / sdpa", "infer time / eager", *(["compiled / uncompiled"] if compiled else []), "grad cosine"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["bench"]:
        lines.append("| " + " | ".join(str(c) for c in [
            r["precision"], r["seq_len"], bench._label(r), f"{r['state_bytes_per_score']:.3f}",
            _mib(r["attention_saved_bytes"]), _mib(r["peak_bytes_fwd_bwd"]), _ratio(r["time_ratio_vs_eager"]),
            _ratio(r.get("time_ratio_vs_sdpa")), _ratio(r["infer_time_ratio_vs_eager"]),
            *([bench._compiled(r)] if compiled else []), f"{r['grad_cosine']:.5f}"]) + " |")
    lines += bench.compile_errors(report["bench"])
    for e in report["bench_errors"]:
        lines.append(f"\nFailed: {e['precision']} n={e['seq_len']}: `{e['error']}`")
    lines += ["", "## Training", "",
              "`python -m softmax_approx.train task=T attention=P profile=cpu trainer=...` with "
              "`trainer.max_steps={train_steps}`, epochs of at most {train_batches} batches, "
              "{eval_batches} validation and test batches.".format(**report["options"]), ""]
    cols = ["task", "policy", "status", "seconds", "step s (median)", "tokens/s", "attention MiB",
            "peak step MiB", "test metrics", "error"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for t in report["training"]:
        timing, memory = t.get("timing") or {}, t.get("memory") or {}
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((t.get("metrics") or {}).items())
                            if k.startswith("test/") and isinstance(v, (int, float)))
        step = timing.get("step_seconds_median")
        tps = timing.get("tokens_per_second")
        lines.append("| " + " | ".join([
            t["task"], t["policy"], t["status"], f"{t.get('seconds', 0):.0f}",
            "n/a" if step is None else f"{step:.4f}", "n/a" if tps is None else f"{tps:.0f}",
            _mib(memory.get("attention_bytes")), _mib(memory.get("peak_step_bytes")), metrics or "n/a", (t.get("error") or "").replace("|", "/")]) + " |")
    if not report["training"]:
        lines.append("| (no training: --tasks none) |" + " |" * (len(cols) - 1))
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    write_text(out / "gpu_check.json", json.dumps(report, indent=1, default=str))
    write_text(out / "gpu_check.md", markdown(report))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
    except ValueError as err:
        parser.exit(2, f"gpu_check: {err}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} built for CUDA {torch.version.cuda} sees no device")
        print(f"gpu_check: no CUDA device ({why}); use --device cpu to exercise the code path", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    report: dict[str, Any] = {
        "schema": SCHEMA, "status": "running", "device": device_info(torch.device(args.device)),
        "command": " ".join(["python -m softmax_approx.bench gpu_check", *argv]),
        "options": {k: v for k, v in vars(args).items()},
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0, "bench": [], "bench_errors": [], "training": [],
    }

    def save() -> None:
        report["seconds"] = time.monotonic() - t0
        write_report(out, report)

    torch.manual_seed(0)
    run_bench(args, report, save)
    run_trainings(args, report, save, deadline, out)
    failed = bool(report["bench_errors"]) or any(t["status"] != RunStatus.COMPLETED for t in report["training"])
    report["status"] = "completed with failures" if failed else "completed"
    save()
    print(f"gpu_check: {report['status']} in {report['seconds']:.0f} s; wrote {out / 'gpu_check.json'} "
          f"and {out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # python -m softmax_approx.bench.gpu_check
    sys.exit(main())
