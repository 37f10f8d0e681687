"""Sweeps and scale-out: launcher configs (joblib, SLURM), DDP glue, W&B grouping per sweep.

Fast tests compose configs and exercise ``harness/distributed.py`` in-process; the ``slow`` ones
run the real CLI (a 2-job joblib sweep, a 2-job sweep of 2-process CPU DDP jobs) and real W&B
offline runs on the tiny fixtures. None needs SLURM, a GPU or the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg
from softmax_approx.harness import distributed as dist_mod
from softmax_approx.harness.distributed import DistributedJob, hydra_child_command, is_global_zero, reduce_memory
from softmax_approx.harness.validation import CONF_DIR


def _compose(overrides: list[str], tmp_path: Path):
    """Compose with Hydra's own node and set HydraConfig (launcher keys interpolate it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}/logs", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


# ------------------------------------------------------------------ launcher configs
def test_joblib_launcher_composes(tmp_path):
    cfg = _compose(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher["n_jobs"] == 2 and launcher["prefer"] == "processes"


def test_slurm_launcher_follows_the_trainer(tmp_path):
    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                    "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                    "+hydra.launcher.additional_parameters.mail-type=END"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 90
    # one task per device (Lightning's DDP reads SLURM's ranks), GPUs per node = devices
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] >= 1
    assert launcher["additional_parameters"] == {"mail-type": "END"}
    assert launcher["submitit_folder"].startswith(str(tmp_path / "logs" / "multiruns"))


def test_slurm_launcher_single_gpu_defaults(tmp_path):
    cfg = _compose(["hydra/launcher=slurm", "trainer=gpu"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (1, 1, 1)
    assert launcher["partition"] is None  # the cluster's default


def test_plugin_submitit_slurm_composes_without_our_file(tmp_path):
    cfg = _compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["partition"] == "debug" and launcher["tasks_per_node"] == 1


def test_slurm_config_becomes_sbatch_options(tmp_path, monkeypatch):
    """The plugin's own launch() turns our keys into an sbatch script (stopped before sbatch runs)."""
    submitit = pytest.importorskip("submitit")
    from hydra.utils import instantiate

    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2", "trainer.num_nodes=3",
                    "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=16"],
                   tmp_path)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)

    class Captured(Exception):
        pass

    def capture(self, fn, *args):
        raise Captured(self._executor._make_submission_file_text("python -m x", "uid"))

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    # submitit only builds a SLURM executor where `srun` exists: a stand-in that is never run
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(Captured) as got:
        launcher.launch([["seed=0"]], initial_job_idx=0)
    sbatch = str(got.value)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --time=30", "#SBATCH --mem=16GB", "#SBATCH --cpus-per-task=8"):
        assert line in sbatch, sbatch


# ------------------------------------------------------------------ DDP trainer config
def test_ddp_trainer_config_builds_a_ddp_trainer(tmp_path):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    cfg = _compose(["trainer=ddp", "trainer.accelerator=cpu", "logger=none"], tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and cfg.trainer.num_nodes == 1
    # the bucket batch sampler shards per rank itself; Lightning must not wrap it
    assert cfg.trainer.use_distributed_sampler is False
    with open_dict(cfg.trainer):
        cfg.trainer.default_root_dir = str(tmp_path)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_every_trainer_preset_keeps_the_batch_sampler(tmp_path):
    for name in ("cpu", "gpu", "ddp"):
        assert _compose([f"trainer={name}"], tmp_path).trainer.use_distributed_sampler is False, name


# ------------------------------------------------------------------ memory across ranks
def _mem(attn, soft, total, shape, peak=None, step=2, by_kind=None):
    m = {"attention_bytes": attn, "softmax_state_bytes": soft, "total_activation_bytes": total,
         "batch_shape": shape, "peak_step_bytes": peak, "measured_at_step": step}
    if by_kind is not None:
        m["by_kind"] = by_kind
    return m


def test_reduce_memory_max_per_device_and_sum():
    r0 = _mem(100, 60, 300, [8, 10], peak=1000, step=2, by_kind={"encoder": {"attention_bytes": 40}})
    r1 = _mem(150, 50, 280, [8, 12], peak=900, step=3, by_kind={"encoder": {"attention_bytes": 70}})
    out = reduce_memory([r0, r1])
    assert (out["attention_bytes"], out["softmax_state_bytes"], out["total_activation_bytes"]) == (150, 60, 300)
    assert out["peak_step_bytes"] == 1000 and out["by_kind"] == {"encoder": {"attention_bytes": 70}}
    # where: the rank with the largest batch (8 x 12 on rank 1)
    assert out["batch_shape"] == [8, 12] and out["measured_at_step"] == 3
    ranks = out["ranks"]
    assert ranks["world_size"] == 2 and ranks["per_rank"] == [r0, r1]
    assert ranks["sum"]["attention_bytes"] == 250 and ranks["sum"]["total_activation_bytes"] == 580
    assert ranks["sum"]["peak_step_bytes"] == 1900 and ranks["sum"]["by_kind"] == {"encoder": {"attention_bytes": 110}}


def test_reduce_memory_edge_cases():
    one = _mem(1, 1, 1, [1, 1])
    assert reduce_memory([one]) is one  # one process: the plain schema, no "ranks"
    assert reduce_memory([None, None]) is None
    cpu = reduce_memory([_mem(5, 2, 9, [2, 3]), None, _mem(7, 1, 8, [2, 3])])
    assert cpu["peak_step_bytes"] is None and cpu["attention_bytes"] == 7 and cpu["ranks"]["world_size"] == 3
    assert cpu["batch_shape"] == [2, 3] and cpu["measured_at_step"] == 2  # tie -> lowest rank
    again = reduce_memory([cpu, cpu])  # a record restored from a checkpoint is not nested twice
    assert "ranks" not in again["ranks"]["per_rank"][0]


def test_gather_memory_without_a_process_group_is_identity():
    m = _mem(1, 2, 3, [4, 5])
    assert dist_mod.gather_memory(m) is m


@pytest.mark.parametrize(
    "env, zero",
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
     ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True), ({"SLURM_PROCID": "3"}, False), ({"SLURM_PROCID": "0"}, True),
     ({"RANK": "0", "LOCAL_RANK": "1"}, True), ({"RANK": "2"}, False)],
)
def test_is_global_zero_from_environment(env, zero, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_global_zero() is zero


def test_distributed_job_restores_launcher_environment(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    job = DistributedJob.start()
    from lightning.pytorch.strategies.launchers import subprocess_script

    assert subprocess_script._hydra_subprocess_cmd is hydra_child_command
    # what Lightning's launcher leaves in the main process after starting its children
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29512", NODE_RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    job.end(trainer=None)
    assert os.environ["MASTER_ADDR"] == "10.0.0.1"
    assert not {"MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"} & set(os.environ)


def test_child_command_runs_only_this_job(tmp_path):
    """Under -m, Lightning's own child command would re-run the whole sweep in every rank."""
    cfg = _compose(["seed=1", "attention=paper", "hydra/job_logging=disabled"], tmp_path)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.overrides.task = ["seed=1", "attention=paper", f"paths.data_dir={tmp_path}/d"]
        cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN", "hydra/launcher=joblib", "hydra/job_logging=disabled",
                                     f"hydra.sweep.dir={tmp_path}/sw"]
        cfg.hydra.runtime.output_dir = str(tmp_path / "sw" / "3")
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig().set_config(cfg)
    cmd, cwd = hydra_child_command(local_rank=1)
    assert cmd[:3] == [sys.executable, "-m", "softmax_approx.train"] and cwd == str(tmp_path)
    assert "-m" not in cmd[3:] and "--multirun" not in cmd
    assert cmd[3:6] == ["seed=1", "attention=paper", f"paths.data_dir={tmp_path}/d"]
    assert "hydra/job_logging=disabled" in cmd
    assert not [c for c in cmd if c.startswith(("hydra/launcher", "hydra.mode", "hydra.sweep"))]
    assert f'hydra.run.dir="{tmp_path / "sw" / "3"}"' in cmd and "hydra.output_subdir=null" in cmd


# ------------------------------------------------------------------ W&B grouping
def _as_multirun_job(cfg, sweep_dir: Path, num: int):
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.job.num = num
    HydraConfig().set_config(cfg)
    return cfg


GRID = [(policy, seed) for policy in ("paper", "topk") for seed in (0, 1)]


def test_wandb_group_is_the_sweep_and_names_are_distinct(tmp_path, data_dir):
    """The logger train.py builds for each job of `attention=paper,topk seed=0,1` (no run started)."""
    from softmax_approx.harness.job import run_info as _run_info
    from softmax_approx.harness.instantiate import instantiate_loggers

    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00_abcd1234"
    seen = []
    for num, (policy, seed) in enumerate(GRID):
        cfg = compose_cfg(["logger=wandb", f"attention={policy}", f"seed={seed}"], sweep / str(num), data_dir)
        cfg = _as_multirun_job(cfg, sweep, num)
        run_dir, job_id, sweep_name = _run_info(cfg)
        assert job_id == f"{sweep.name}/{num}" and run_dir == sweep / str(num)
        (lg,) = instantiate_loggers(cfg.logger, default_group=cfg.get("experiment_name") or sweep_name)
        seen.append((lg._wandb_init["group"], lg._wandb_init["name"], lg._wandb_init["dir"]))
    assert {g for g, _, _ in seen} == {sweep.name}
    assert len({n for _, n, _ in seen}) == len(GRID)
    assert [n for _, n, _ in seen] == [f"sst2-{p}-seed{s}" for p, s in GRID]
    assert [d for _, _, d in seen] == [str(sweep / str(i)) for i in range(len(GRID))]


@pytest.mark.slow
def test_wandb_offline_runs_one_per_job_grouped_by_sweep(tmp_path, data_dir, monkeypatch):
    """Real offline W&B runs of a 2-job sweep, through train(): one run per job dir, same group."""
    import wandb

    from softmax_approx import train as train_mod

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    seen = []
    original = train_mod.finish_wandb

    def spy(status):
        seen.append((wandb.run.group, wandb.run.name, wandb.run.id) if wandb.run is not None else None)
        original(status)

    monkeypatch.setattr(train_mod, "finish_wandb", spy)
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00_feed0001"
    for num, (policy, seed) in enumerate([("paper", 0), ("topk", 1)]):
        cfg = compose_cfg(["logger=wandb", f"attention={policy}", f"seed={seed}"], sweep / str(num), data_dir)
        train_mod.train(_as_multirun_job(cfg, sweep, num))
        assert wandb.run is None
    assert [s[:2] for s in seen] == [(sweep.name, "sst2-paper-seed0"), (sweep.name, "sst2-topk-seed1")]
    assert seen[0][2] != seen[1][2]
    for num in (0, 1):
        runs = list((sweep / str(num) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), runs
        assert json.loads((sweep / str(num) / "results.json").read_text())["job_id"] == f"{sweep.name}/{num}"


# ------------------------------------------------------------------ real CLI sweeps (slow)
def _cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env["WANDB_MODE"] = "disabled"
    return subprocess.run([sys.executable, "-m", "softmax_approx.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _tiny_cli(data_dir: Path, tmp_path: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", "logger=csv",  # outputs/ under the test's working dir
            *[o for o in TINY if not o.startswith("logger=")]]


def _records(tmp_path: Path) -> tuple[Path, list[dict]]:
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # one sweep: no rank re-ran the sweep
    recs = sorted((json.loads(p.read_text()) for p in sweeps[0].rglob("results.json")), key=lambda r: r["seed"])
    return sweeps[0], recs


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_processes(tmp_path, data_dir):
    """`hydra/launcher=joblib`: both jobs complete, each in its own loky worker (not the launching
    process), with torch threads capped per worker."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "softmax_approx.train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "seed=0,1", "hydra.job_logging.formatters.simple.format='pid=%(process)d %(message)s'",
         *_tiny_cli(data_dir, tmp_path)],
        cwd=tmp_path, env={**env, "WANDB_MODE": "disabled"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    sweep, recs = _records(tmp_path)
    assert [x["seed"] for x in recs] == [0, 1] and all(x["status"] == "completed" for x in recs)
    assert {x["job_id"] for x in recs} == {f"{sweep.name}/0", f"{sweep.name}/1"}
    pids = [{ln.split()[0] for ln in (sweep / str(n) / "train.log").read_text().splitlines() if ln.startswith("pid=")}
            for n in (0, 1)]
    assert all(len(p) == 1 for p in pids), pids
    assert pids[0] != pids[1] and f"pid={proc.pid}" not in pids[0] | pids[1], (pids, proc.pid)
    # loky caps each worker's BLAS/OpenMP threads at cpu_count // n_jobs
    threads = max((os.cpu_count() or 1) // 2, 1)
    assert all(x["provenance"]["hardware"]["torch_threads"] <= threads for x in recs)


@pytest.mark.slow
def test_ddp_two_cpu_processes_per_job_in_a_sweep(tmp_path, data_dir):
    """`-m` over 2 jobs, each trained by 2 gloo processes: one results.json per job, by rank 0,
    with memory combined across ranks; rank 1 ran in the same job dir (its log is there)."""
    r = _cli(["-m", "seed=0,1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
              *_tiny_cli(data_dir, tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep, recs = _records(tmp_path)
    assert len(recs) == 2 and [x["seed"] for x in recs] == [0, 1]
    for num, rec in enumerate(recs):
        assert rec["status"] == "completed", rec["error"]
        assert rec["config"]["trainer"]["strategy"] == "ddp" and "test/acc" in rec["metrics"]
        mem, ranks = rec["memory"], rec["memory"]["ranks"]
        assert ranks["world_size"] == 2 and len(ranks["per_rank"]) == 2
        for key in ("attention_bytes", "softmax_state_bytes", "total_activation_bytes"):
            per = [p[key] for p in ranks["per_rank"]]
            assert all(v > 0 for v in per)
            assert mem[key] == max(per) and ranks["sum"][key] == sum(per)
        assert (sweep / str(num) / "train_ddp_process_1.log").exists()
