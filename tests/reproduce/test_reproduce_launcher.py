"""`make reproduce LAUNCHER=...` (src/softmax_approx/harness/launch.py): the submitit path gives the
same tables as local subprocesses, and the sbatch script carries the profile's resources."""

from __future__ import annotations

import io
import json
import re

import pytest

from softmax_approx import reproduce
from softmax_approx.harness.launch import SLURM_OVERRIDES, launch_command, resources, sbatch_text
from softmax_approx.utils.errors import ConfigError
from test_reproduce_e2e import TINY, write_defs, write_sst2


def _metrics(out):
    return {r["policy"]: r["metrics"] for r in
            (json.loads(p.read_text()) for p in sorted((out / "runs").rglob("results.json")))}


@pytest.mark.slow
def test_submitit_local_launcher_gives_the_local_tables(tmp_path):
    data = tmp_path / "data"
    write_sst2(data, n_train=96, n_dev=16)
    defs = write_defs(tmp_path, [*TINY, "trainer.deterministic=true"])
    outs = {}
    for kind in ("local", "submitit_local"):
        out = tmp_path / kind
        buf = io.StringIO()
        rc = reproduce.run("smoke", out, data, jobs=2, exp_dir=defs, stream=buf, launcher=kind)
        logs = {p.parent.name: p.read_text()[-2000:] for p in out.rglob("reproduce.log")}
        assert rc == 0, (buf.getvalue(), logs)
        lines = [re.sub(r"\[.*?\] ", "", ln) for ln in buf.getvalue().splitlines() if ln.startswith("[")]
        assert sorted(ln.split()[0] for ln in lines) == ["completed"] * 2 + ["started"] * 2
        outs[kind] = out
    assert any((outs["submitit_local"] / "submitit").iterdir())  # it went through submitit
    assert _metrics(outs["local"]) == _metrics(outs["submitit_local"])
    assert (outs["local"] / "tables" / "memory.md").read_text() == \
        (outs["submitit_local"] / "tables" / "memory.md").read_text()
    # same skip logic: the second call runs nothing
    buf = io.StringIO()
    assert reproduce.run("smoke", outs["submitit_local"], data, exp_dir=defs, stream=buf,
                         launcher="submitit_local") == 0
    assert "2 completed (skipped), 0 to run" in buf.getvalue()


def test_sbatch_lines_carry_the_profile_resources_and_overrides(tmp_path):
    text = sbatch_text(resources("paper", ["partition=gpu", "time=90", "mem=40G"]), tmp_path)
    sb = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --partition=gpu" in sb and "#SBATCH --time=90" in sb and "#SBATCH --mem=40G" in sb
    assert "#SBATCH --gpus-per-node=1" in sb and "#SBATCH --cpus-per-task=8" in sb
    assert "#SBATCH --nodes=1" in sb and "#SBATCH --ntasks-per-node=1" in sb
    assert any(ln.startswith("#SBATCH --signal=USR2@") for ln in sb)  # checkpoint before the limit
    smoke = sbatch_text(resources("smoke"), tmp_path)
    assert "--gpus-per-node" not in smoke and "#SBATCH --time=30" in smoke


def test_slurm_launcher_adds_the_usr2_checkpoint_signal_and_bad_keys_are_one_line(tmp_path):
    assert launch_command("slurm", ["train", "a=1"]) == ["train", "a=1", *SLURM_OVERRIDES]
    assert launch_command("submitit_local", ["train"]) == ["train"]
    with pytest.raises(ConfigError, match="--slurm 'gpu=2'"):
        resources("paper", ["gpu=2"])
    assert reproduce.main(["run", "--profile", "smoke", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path),
                           "--slurm", "nodes=2", "--dry-run"]) == 2
