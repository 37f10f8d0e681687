"""Reliability (docs/reliability.md): resume, completed runs skipped, fault-isolated sweeps,
atomic writes, unique run dirs, validated config and data (one line, exit 2), non-finite loss.

Fast tests run in-process on the tiny fixtures; the real-CLI ones (SIGKILL + resume, a real
multirun) are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from conftest import TINY, compose_cfg
from fixtures_data import write_imdb_tgz, write_sst2
from softmax_approx import train as train_mod
from softmax_approx.train import train
from softmax_approx.harness import recorder as recorder_mod
from softmax_approx.harness import sweep as sweep_mod
from softmax_approx.harness.callbacks import LastCheckpoint, step_seed
from softmax_approx.utils.errors import ConfigError, NonFiniteLossError
from softmax_approx.harness.results import load_results, resolved_config
from softmax_approx.utils.run_record import jsonable, write_json_atomic
from softmax_approx.harness.resume import config_differences, decide, last_checkpoint, wandb_run_id
from softmax_approx.harness.validation import CONF_DIR

# Three epochs of 4 batches: last.ckpt after every epoch; a crash at step 6 is mid-epoch 1.
EPOCHS3 = ["trainer.max_epochs=3", "trainer.deterministic=true"]


def _cfg(tmp: Path, data_dir: Path, extra=()):
    return compose_cfg([*EPOCHS3, *extra], tmp, data_dir)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------ 1. resume
def _config_of(cfg) -> dict:
    return jsonable(resolved_config(cfg))


def test_resume_decision_table(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir)
    conf = _config_of(cfg)
    run = tmp_path
    assert decide(run, conf).action == "fresh"  # empty dir
    rec = {"status": "running", "config": conf, "metrics": {}}
    write_json_atomic(run / "results.json", rec)
    assert decide(run, conf).action == "fresh"  # crashed before the first checkpoint
    last = last_checkpoint(run)
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, last)
    d = decide(run, conf)
    assert (d.action, d.ckpt_path) == ("resume", str(last))
    other = run / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    assert decide(run, conf, explicit_ckpt=str(other)).ckpt_path == str(other)
    write_json_atomic(run / "results.json", {**rec, "status": "failed"})
    assert decide(run, conf).action == "resume"  # e.g. a NaN stop: resume from the last good state
    write_json_atomic(run / "results.json", {**rec, "status": "completed", "metrics": {"test/acc": 0.75}})
    d = decide(run, conf)
    assert (d.action, d.metrics) == ("skip", {"test/acc": 0.75})
    # a torn / foreign results.json is not "completed"
    (run / "results.json").write_text('{"status": "compl')
    assert decide(run, conf).action == "resume"


def test_resume_refuses_a_run_dir_of_another_config(tmp_path, data_dir):
    conf = _config_of(_cfg(tmp_path, data_dir))
    write_json_atomic(tmp_path / "results.json", {"status": "completed", "config": conf, "metrics": {}})
    other = _config_of(_cfg(tmp_path, data_dir, ["optimizer.lr=0.01", "attention=paper"]))
    with pytest.raises(ConfigError, match=r"different config \(.*optimizer\.lr.*\); use another hydra\.run\.dir"):
        decide(tmp_path, other)
    # where files live, logging and the fault-injection aid do not make it another run
    same = _config_of(_cfg(tmp_path, data_dir, ["logger=csv", "tags=[x]", "fault.nan_at_step=3"]))
    assert config_differences(conf, same) == []
    assert decide(tmp_path, same).action == "skip"


def test_completed_run_is_not_trained_again(tmp_path, data_dir, capsys, monkeypatch):
    write_json_atomic(tmp_path / "results.json",
                      {"status": "completed", "config": _config_of(_cfg(tmp_path, data_dir)), "metrics": {"test/acc": 0.5}})
    monkeypatch.setattr(train_mod.hydra.utils, "instantiate", lambda *a, **k: pytest.fail("built something"))
    metrics, objects = train(_cfg(tmp_path, data_dir))
    assert metrics == {"test/acc": 0.5} and objects["skipped"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "already completed; not training again" in out[0]
    assert load_results(tmp_path / "results.json")["status"] == "completed"


def test_crash_then_rerun_resumes_to_the_same_metrics(tmp_path, data_dir):
    """In-process: a crash in epoch 1 (simulated OOM), then the same config again in the same
    dir resumes from last.ckpt (epoch 0) and ends with exactly the uninterrupted metrics."""
    ref_metrics, ref = train(_cfg(tmp_path / "ref", data_dir))
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        train(_cfg(run, data_dir, ["fault.fail_at_step=6"]))
    failed = load_results(run / "results.json")
    assert failed["status"] == "failed" and failed["error"].startswith("SimulatedOutOfMemory: CUDA out of memory")
    ck = _ckpt(last_checkpoint(run))
    assert (ck["epoch"], ck["global_step"]) == (0, 4)

    metrics, objects = train(_cfg(run, data_dir))  # same config (the fault key is ignored)
    rec = load_results(run / "results.json")
    assert rec["status"] == "completed" and rec["resumed_from"] == str(last_checkpoint(run))
    assert objects["trainer"].global_step == ref["trainer"].global_step == 12
    assert rec["metrics"] == ref["record"]["metrics"]  # exact equality on CPU
    assert metrics["test/acc"] == ref_metrics["test/acc"] and metrics["val/acc_best"] == ref_metrics["val/acc_best"]
    assert rec["memory"] == ref["record"]["memory"]  # measured in epoch 0, carried by the checkpoint
    assert _ckpt(last_checkpoint(run))["epoch"] == 2


def test_best_metric_and_measurements_survive_a_checkpoint(make_cfg):
    """The *_best metric (not in torchmetrics' state_dict) travels in checkpoints and comes back
    after the subclass's on_train_start reset; the measurements travel as callback state."""
    from softmax_approx.harness.measure import GradientProbe, MemoryMeter, StepTimer

    _, objects = train(make_cfg())
    module = objects["model"]
    ckpt: dict = {}
    module.val_acc_best.reset()
    module.val_acc_best(torch.tensor(0.8125))
    module.on_save_checkpoint(ckpt)
    fresh = type(module)(net=module.net, optimizer=module.optimizer_factory)
    fresh.on_load_checkpoint(ckpt)
    fresh.on_train_start()  # resets val_acc_best, as on every fit
    fresh.on_train_epoch_start()
    assert fresh.val_acc_best.compute().item() == pytest.approx(0.8125)
    for kind in (MemoryMeter, StepTimer, GradientProbe):
        old = next(cb for cb in objects["callbacks"] if isinstance(cb, kind))
        new = kind()
        new.load_state_dict(old.state_dict())
        assert new.state_dict() == old.state_dict()
    meter = next(cb for cb in objects["callbacks"] if isinstance(cb, MemoryMeter))
    assert meter.memory is not None and meter.memory["attention_bytes"] > 0


def test_step_seed_depends_on_position_only():
    assert step_seed(0, 1, 2) == step_seed(0, 1, 2)
    assert len({step_seed(s, e, b) for s in range(3) for e in range(3) for b in range(50)}) == 450


def test_wandb_run_id_is_persisted_and_passed_with_resume_allow(tmp_path):
    from softmax_approx.harness.instantiate import instantiate_loggers

    a = wandb_run_id(tmp_path)
    assert a == wandb_run_id(tmp_path) == (tmp_path / "wandb_run_id").read_text().strip()
    assert wandb_run_id(tmp_path / "other") != a
    cfg = OmegaConf.create({"wandb": {"_target_": "lightning.pytorch.loggers.wandb.WandbLogger", "group": None,
                                      "save_dir": str(tmp_path), "offline": True}})
    (logger,) = instantiate_loggers(cfg, default_group="g", run_dir=tmp_path)
    init = logger._wandb_init  # what wandb.init will get (the run is started lazily)
    assert (init["id"], init["resume"], init["group"]) == (a, "allow", "g")


# ------------------------------------------------------------------------ 2. fault-isolated sweeps
def _as_multirun_job(cfg, sweep_dir: Path, num: int):
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.job.num = num
    HydraConfig().set_config(cfg)
    return cfg


def test_multirun_job_failures_are_recorded_and_do_not_raise(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep"
    # a runtime failure (simulated CUDA OOM) and a config error: neither raises nor exits
    oom = _as_multirun_job(compose_cfg(["fault.fail_at_step=1"], sweep / "0", data_dir), sweep, 0)
    assert train_mod.run_job(oom) is None
    bad = _as_multirun_job(compose_cfg(["model.n_heads=3"], sweep / "1", data_dir), sweep, 1)
    assert train_mod.run_job(bad) is None
    ok = _as_multirun_job(compose_cfg([], sweep / "2", data_dir), sweep, 2)
    assert isinstance(train_mod.run_job(ok), float)
    recs = [load_results(sweep / str(i) / "results.json") for i in range(3)]
    assert [r["status"] for r in recs] == ["failed", "failed", "completed"]
    assert recs[0]["error"].startswith("SimulatedOutOfMemory") and recs[0]["job_id"] == "sweep/0"
    assert recs[1]["error"].startswith("ConfigError: model.n_heads=3 does not divide")
    err = capsys.readouterr().err
    assert "error: job failed, the sweep goes on: SimulatedOutOfMemory" in err

    (sweep / "3" / ".hydra").mkdir(parents=True)  # a job killed before it wrote anything
    summary = sweep_mod.summarize(sweep)
    assert {k: v["status"] for k, v in summary.jobs.items()} == {"0": "failed", "1": "failed", "2": "completed", "3": "missing"}
    assert set(summary.failed) == {"0", "1", "3"}
    assert summary.lines()[0].endswith("1/4 jobs completed")


def test_single_run_still_raises_and_exits(tmp_path, data_dir):
    cfg = compose_cfg(["fault.fail_at_step=1"], tmp_path, data_dir)
    with pytest.raises(torch.OutOfMemoryError):
        train_mod.run_job(cfg)
    with pytest.raises(SystemExit) as info:
        train_mod.run_job(compose_cfg(["model.n_heads=3"], tmp_path / "b", data_dir))
    assert info.value.code == 2


# ----------------------------------------------------------- 3. unique dirs, atomic writes, order
def test_run_dirs_unique_for_jobs_started_in_the_same_second():
    dirs = []
    for _ in range(8):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", return_hydra_config=True)
        dirs.append(str(cfg.hydra.run.dir))
        assert re.search(r"/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{8}$", dirs[-1]), dirs[-1]
    GlobalHydra.instance().clear()
    assert len(set(dirs)) == 8
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra/default.yaml"), resolve=False)
    assert raw["sweep"]["subdir"] == "${hydra.job.num}"  # jobs of one sweep: numbered subdirs


class _Boom:
    """json.dump writes part of the file before it reaches this and raises."""


@pytest.mark.parametrize("writer", ["results", "report"])
def test_atomic_write_keeps_the_old_file_on_error(tmp_path, writer):
    path = tmp_path / "out.json"
    if writer == "results":
        write_json_atomic(path, {"status": "completed"})
        with pytest.raises(TypeError):
            write_json_atomic(path, {"status": "running", "padding": "x" * 100_000, "z": _Boom()})
    else:
        from softmax_approx.report.io import atomic_write

        path.write_text("old table\n")
        with pytest.raises(RuntimeError):
            with atomic_write(path) as f:
                f.write("half a table")
                raise RuntimeError("renderer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left
    assert path.read_text() in ('{\n  "status": "completed"\n}\n', "old table\n")


def test_results_written_running_first_and_completed_last(tmp_path, data_dir, monkeypatch):
    from softmax_approx.utils import run_record

    seen = []
    real = run_record.write_results
    monkeypatch.setattr(run_record, "write_results", lambda p, rec: (seen.append(rec.status), real(p, rec))[1])
    monkeypatch.setattr(recorder_mod, "write_results", run_record.write_results)
    train(compose_cfg([], tmp_path / "a", data_dir))
    assert seen == ["running", "completed"]
    seen.clear()
    with pytest.raises(torch.OutOfMemoryError):
        train(compose_cfg(["fault.fail_at_step=0"], tmp_path / "b", data_dir))
    assert seen == ["running", "failed"]


# --------------------------------------------------------------- 4./5. config and data: exit 2
def _main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The console script's code path in-process: precheck, @hydra.main, train, exit code."""
    monkeypatch.setattr(sys, "argv", ["softmax-approx-train", *argv, "logger=none", "hydra/job_logging=disabled",
                                      "hydra/hydra_logging=disabled", "hydra.output_subdir=null"])
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as info:
            train_mod.main()
    finally:
        GlobalHydra.instance().clear()
    return info.value.code, capsys.readouterr().err


# (overrides, what the single error line must contain). {data} = fixture data, {empty} = empty dir.
CONFIG_CASES = [
    (["attention.name=magic"], r"^error: attention\.name='magic': allowed values: .*paper.*topk"),
    (["attention=paper", "attention.params.S=0"], r"^error: attention\.params \(paper\): .*S"),
    (["attention=paper", "attention.params.S=2.5"], r"^error: attention\.params \(paper\): .*S"),
    (["attention=topk", "attention.params.keep_ratio=0"], r"^error: attention\.params \(topk\): .*keep_ratio"),
    (["attention=topk", "attention.params.keep_ratio=1.5"], r"^error: attention\.params \(topk\): .*keep_ratio"),
    (["attention=quant", "attention.params.bits=3"], r"^error: attention\.params \(quant\): .*bits"),
    (["attention=paper", "+attention.params.T=1"], r"^error: attention\.params \(paper\): .*T"),
    (["model.n_heads=3"], r"^error: model\.n_heads=3 does not divide model\.d_model=16; allowed n_heads: 1, 2, 4, 8, 16"),
    (["model.d_model=0"], r"^error: model\.d_model=0: must be an integer >= 1"),
    (["model.n_layers=0"], r"^error: model\.n_layers=0: must be an integer >= 1"),
    (["model.d_ff=0"], r"^error: model\.d_ff=0: must be an integer >= 1"),
    (["model.max_len=0"], r"^error: model\.max_len=0: must be an integer >= 1"),
    (["task.datamodule.max_len=0"], r"^error: task\.datamodule\.max_len=0: must be an integer >= 1"),
    (["model.max_len=8"], r"^error: model\.max_len=8 is below task\.datamodule\.max_len=32"),
    (["model.dropout=-0.1"], r"^error: model\.dropout=-0\.1: must be a number in \[0, 1\)"),
    (["model.attn_dropout=1.0"], r"^error: model\.attn_dropout=1\.0: must be a number in \[0, 1\)"),
    (["model.pool=cls"], r"prepend_cls=true"),
    (["model.kind=translation"], r"^error: model\.kind='translation' does not fit task=sst2 .*choose model= one of"),
    (["optimizer.lr=0"], r"^error: optimizer\.lr=0: must be a number in \(0\.0, inf\)"),
    (["optimizer.lr=-0.001"], r"^error: optimizer\.lr=-0\.001: must be a number in \(0\.0, inf\)"),
    (["optimizer.weight_decay=-1"], r"^error: optimizer\.weight_decay=-1: must be a number in \[0\.0, inf\)"),
    (["scheduler.warmup_steps=-1"], r"^error: scheduler\.warmup_steps=-1: must be an integer >= 0"),
    (["task.datamodule.batch_size=0"], r"^error: task\.datamodule\.batch_size=0: must be an integer >= 1"),
    (["seed=abc"], r"^error: seed='abc': must be an integer"),
    (["seed=1.5"], r"^error: seed=1\.5: must be an integer"),
    (["trainer.max_epochs=0"], r"^error: trainer\.max_epochs=0: must be an integer >= 1 when trainer\.max_steps=-1"),
    (["trainer.max_steps=0"], r"^error: trainer\.max_steps=0: must be -1 \(no step limit\) or an integer >= 1"),
    (["trainer.gradient_clip_val=-1"], r"^error: trainer\.gradient_clip_val=-1: must be a number in \[0\.0, inf\)"),
    (["test_weights=last"], r"^error: test_weights='last': allowed values: best, current"),
    (["fault.nan_at_step=-1"], r"^error: fault\.nan_at_step=-1: must be an integer >= 0"),
    (["ckpt_path=/nonexistent/x.ckpt"], r"^error: ckpt_path='/nonexistent/x\.ckpt': no such checkpoint file"),
    (["+model.bogus=1"], r"^error: model\.bogus: unknown key .*allowed keys: .*d_model"),
    (["+task.datamodule.bogus=1"], r"^error: task\.datamodule\.bogus: unknown key"),
    (["bogus_key=1"], r"^error: Could not override 'bogus_key'"),
    (["model=nope"], r"^error: In 'train': Could not find 'model/nope'"),
    (["paths.data_dir={empty}"], r"^error: task sst2: missing data file\(s\) .*sst2/train\.tsv.*softmax_approx\.data download sst2"),
    (["task=imdb", "paths.data_dir={empty}"], r"^error: task imdb: missing data file.*softmax_approx\.data download imdb"),
    (["trainer=gpu"], r"^error: trainer\.accelerator=gpu: no CUDA device here; use trainer=cpu"),
]


@pytest.mark.parametrize("overrides,pattern", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_every_bad_config_is_one_line_and_exit_2(overrides, pattern, tmp_path, data_dir, monkeypatch, capsys):
    if overrides == ["trainer=gpu"] and torch.cuda.is_available():
        pytest.skip("CUDA present")
    (tmp_path / "empty").mkdir()
    argv = [*TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/run"]
    argv += [o.format(data=data_dir, empty=tmp_path / "empty") for o in overrides]
    code, err = _main([a for a in argv if a != "logger=none"], monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not list(tmp_path.rglob("*.ckpt"))  # failed before training


def _bad_data(kind: str, root: Path) -> tuple[list[str], str]:
    d = root / "data"
    if kind == "truncated_archive":
        tgz = write_imdb_tgz(d, n_per_class=24)
        tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
        return ["task=imdb"], r"aclImdb\.tar\.gz: truncated or corrupt archive .*; "
    write_sst2(d, n_train=96, n_dev=16)
    tsv = d / "sst2" / "train.tsv"
    if kind == "malformed_tsv":
        tsv.write_text(tsv.read_text() + "a row without a label\n")
        return [], r"sst2/train\.tsv:98: "
    if kind == "label_outside_set":
        tsv.write_text(tsv.read_text() + "a fine film \t7\n")
        return [], r"sst2/train\.tsv:98: label must be 0 or 1, got '7'"
    tsv.write_text("")  # empty
    return [], r"sst2/train\.tsv: file is empty"


@pytest.mark.parametrize("kind", ["truncated_archive", "malformed_tsv", "label_outside_set", "empty_file"])
def test_bad_data_surfaces_through_train_as_one_line_and_exit_2(kind, tmp_path, monkeypatch, capsys):
    overrides, pattern = _bad_data(kind, tmp_path)
    argv = [*TINY, *overrides, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path}/run"]
    code, err = _main([a for a in argv if a != "logger=none"], monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    rec = load_results(tmp_path / "run" / "results.json")  # found while reading: the run is marked failed
    assert rec["status"] == "failed" and rec["error"].startswith("DataError: ")


# ------------------------------------------------------------------------ 6. non-finite values
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train(_cfg(run, data_dir, ["fault.nan_at_step=6"]))
    msg = str(info.value)
    assert "\n" not in msg
    assert re.match(r"non-finite training loss \(nan\) at global step 6 \(epoch 1, batch index 2\); "
                    r"the last good checkpoint \S+last\.ckpt is kept", msg), msg
    rec = load_results(run / "results.json")
    assert rec["status"] == "failed" and rec["error"] == f"NonFiniteLossError: {msg}"
    ck = _ckpt(last_checkpoint(run))
    assert (ck["epoch"], ck["global_step"]) == (0, 4)  # the state before the NaN, not overwritten
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    # rerunning the same command resumes from it and finishes
    metrics, _ = train(_cfg(run, data_dir))
    assert load_results(run / "results.json")["status"] == "completed" and metrics["test/acc"] >= 0


def test_last_checkpoint_is_not_overwritten_with_nonfinite_weights(tmp_path):
    class _Trainer:
        sanity_checking = fast_dev_run = False
        current_epoch = 0

        def save_checkpoint(self, path):  # pragma: no cover - must not be called
            raise AssertionError("saved non-finite weights")

    cb = LastCheckpoint(str(tmp_path))
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    cb.on_train_epoch_end(_Trainer(), net)
    assert cb.skipped_nonfinite == 1 and not (tmp_path / "last.ckpt").exists()


# ----------------------------------------------------------------------- real CLI (slow)
def _cli_args(data_dir: Path, run_dir: Path | None = None, extra=()) -> list[str]:
    args = [*TINY, *EPOCHS3, f"paths.data_dir={data_dir}", *extra]
    return args + ([f"hydra.run.dir={run_dir}"] if run_dir else [])


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_same_command_resumes(tmp_path, data_dir):
    cmd = [sys.executable, "-m", "softmax_approx.train"]
    ref = subprocess.run([*cmd, *_cli_args(data_dir, tmp_path / "ref")], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen([*cmd, *_cli_args(data_dir, run)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = last_checkpoint(run)
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_results(run / "results.json")["status"] == "running"  # killed mid-run
    assert _ckpt(last)["epoch"] < 2

    again = subprocess.run([*cmd, *_cli_args(data_dir, run)], env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Restoring states from the checkpoint path at" in again.stdout + again.stderr
    a, b = load_results(tmp_path / "ref" / "results.json"), load_results(run / "results.json")
    assert b["status"] == "completed" and b["resumed_from"] == str(last)
    assert b["metrics"] == a["metrics"]  # exact equality (trainer.deterministic=true, CPU)
    assert b["memory"] == a["memory"]

    third = subprocess.run([*cmd, *_cli_args(data_dir, run)], env=_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "already completed; not training again" in third.stdout
    assert load_results(run / "results.json") == b


@pytest.mark.slow
def test_real_multirun_survives_failing_jobs_then_exits_1(tmp_path, data_dir):
    """Job 0: simulated CUDA OOM at step 1; job 1: invalid value (exit 2 in a single run);
    job 2: fine. All three run, the failures are recorded, then the command exits 1."""
    args = [a for a in _cli_args(data_dir, extra=["trainer.max_epochs=1"]) if a not in EPOCHS3]
    r = subprocess.run([sys.executable, "-m", "softmax_approx.train", "-m", "fault.fail_at_step=1,-1,null", *args],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    recs = [load_results(sweep / str(i) / "results.json") for i in range(3)]
    assert [x["status"] for x in recs] == ["failed", "failed", "completed"]
    assert recs[0]["error"].startswith("SimulatedOutOfMemory: CUDA out of memory")
    assert recs[1]["error"].startswith("ConfigError: fault.fail_at_step=-1: must be an integer >= 0")
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert (summary["n_jobs"], summary["n_failed"]) == (3, 2)
    assert f"sweep {sweep}: 1/3 jobs completed" in r.stderr
    assert "  job 0: failed: SimulatedOutOfMemory" in r.stderr and "  job 1: failed: ConfigError" in r.stderr

    # the same sweep again into the same sweep dir: the completed job is skipped, not retrained
    before = (sweep / "2" / "results.json").read_text()
    r2 = subprocess.run([sys.executable, "-m", "softmax_approx.train", "-m", "fault.fail_at_step=1,-1,null",
                         f"hydra.sweep.dir={sweep}", *args], cwd=tmp_path, env=_env(),
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 1 and "already completed; not training again" in r2.stdout, r2.stderr[-2000:]
    assert (sweep / "2" / "results.json").read_text() == before


@pytest.mark.slow
def test_crash_during_testing_resumes_to_testing_only(tmp_path, data_dir, monkeypatch):
    """Training finished, the process died while testing: the rerun trains nothing more (the
    final last.ckpt), tests, and reports what an uninterrupted run reports."""
    import lightning as L

    _, ref = train(compose_cfg([], tmp_path / "ref", data_dir))
    real_test = L.Trainer.test
    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed while testing")))
    with pytest.raises(RuntimeError, match="killed while testing"):
        train(compose_cfg([], tmp_path / "run", data_dir))
    monkeypatch.setattr(L.Trainer, "test", real_test)
    _, objects = train(compose_cfg([], tmp_path / "run", data_dir))
    rec = objects["record"]
    assert rec["status"] == "completed" and rec["resumed_from"].endswith("last.ckpt")
    assert objects["trainer"].global_step == ref["trainer"].global_step
    assert rec["metrics"] == ref["record"]["metrics"]
