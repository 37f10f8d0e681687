"""Every training command the docs show runs as written (data dir aside).

Fast: each `python -m softmax_approx.train ...` / `softmax-approx-train ...` command found in
README.md, docs/*.md, the config files and the package's docstrings is composed (every value
of a sweep, every alternative of a `<a|b>` placeholder) and its job config resolved and checked.
Slow: the README's multirun commands (plain and `hydra/launcher=joblib`) are run exactly as
typed, from a fresh temporary working directory, with only `paths.data_dir` added.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from fixtures_data import write_sst2
from softmax_approx.conf import CONFIG_MODULE, CONFIG_NAME
from softmax_approx.harness.validation import validate_config

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("python -m softmax_approx.train", "softmax-approx-train")
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "src" / "softmax_approx").rglob("*.py")),
           *sorted((ROOT / "src" / "softmax_approx" / "conf").rglob("*.yaml"))]
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # DIR, DATA, T, P: a value the reader fills in


def documented_commands() -> list[tuple[str, str]]:
    """(where, command text after the program name) for every training command in the sources."""
    out = []
    for path in SOURCES:
        text = re.sub(r"\\\n\s*(#\s*)?", " ", path.read_text(encoding="utf-8"))  # join continuations
        for lineno, line in enumerate(text.splitlines(), 1):
            for prog in PROGRAMS:
                for m in re.finditer(re.escape(prog) + r"(?=[\s`]|$)", line):
                    rest = re.split(r"`|\s#|\"|;|\|\|", line[m.end():])[0]
                    out.append((f"{path.relative_to(ROOT)}:{lineno}", rest.strip()))
    return out


def overrides_of(command: str) -> list[list[str]]:
    """The override lists one command stands for: each sweep value and `<a|b>` alternative."""
    command = re.sub(r"<([\w.]+(?:\|[\w.]+)+)>", lambda m: m.group(1).replace("|", ","), command)
    tokens, skip, kept = shlex.split(command), False, []
    for tok in tokens:
        if skip:
            skip = False
            continue
        if tok in FLAGS_WITH_VALUE:
            skip = True
            continue
        if tok.startswith("-") or "<" in tok or ">" in tok or tok == "..." or "=" not in tok:
            continue
        key, value = tok.split("=", 1)
        if key.endswith("paths.data_dir"):
            continue  # the data dir is the reader's (set by the test)
        if PLACEHOLDER.match(value) or "..." in value:
            continue
        kept.append((key, value))
    # every value of every sweep at least once (first values elsewhere), not the full product
    values = [_sweep_values(v) for _, v in kept]
    base = [f"{k}={vs[0]}" for (k, _), vs in zip(kept, values)]
    out = [base]
    for i, ((k, _), vs) in enumerate(zip(kept, values)):
        out += [base[:i] + [f"{k}={v}"] + base[i + 1:] for v in vs[1:]]
    return out


def _sweep_values(value: str) -> list[str]:
    if "," in value and not value.startswith(("[", "{")) and "(" not in value:
        return value.split(",")
    return [value]


COMMANDS = documented_commands()


def test_the_docs_show_training_commands():
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert "README.md" in where and "src/softmax_approx/train.py" in where
    assert any("-m " in c and "hydra/launcher=joblib" in c for _, c in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_composes_and_validates(where, command, tmp_path):
    for overrides in overrides_of(command):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
                cfg = compose(CONFIG_NAME, overrides=[*overrides, f"paths.data_dir={tmp_path}"],
                              return_hydra_config=True)
        finally:
            GlobalHydra.instance().clear()
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(tmp_path / "run")
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation of the job resolves
        if cfg.trainer.accelerator == "cpu" and not cfg.get("model", {}).get("pretrained"):
            validate_config(cfg, check_data=False)


def test_a_plain_multirun_resolves_its_sweep_dir_without_a_job(tmp_path, monkeypatch):
    """The bug this guards: hydra.sweep.dir went through ${hydra:runtime.cwd}, which does not
    exist before the first job, so every plain `-m` command died in the sweeper."""
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(CONFIG_NAME, overrides=["seed=0"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    sweep_dir = Path(cfg.hydra.sweep.dir)  # resolves with no HydraConfig set
    assert sweep_dir.is_relative_to(tmp_path / "outputs" / "multiruns")


# ---------------------------------------------------------------- the real CLI (slow)
def readme_multiruns() -> list[str]:
    return [c for w, c in COMMANDS if w.startswith("README.md") and c.split()[:1] == ["-m"]]


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory) -> Path:
    """SST-2 big enough for the smoke profile's defaults (872 rows held out for validation)."""
    d = tmp_path_factory.mktemp("data")
    write_sst2(d, n_train=1200, n_dev=64)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_multiruns() or ["<none in README>"])
def test_readme_multirun_runs_as_written(command, sst2_dir, tmp_path):
    assert command != "<none in README>", "the README shows no -m command"
    argv = [sys.executable, "-m", "softmax_approx.train", *shlex.split(command), f"paths.data_dir={sst2_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("SOFTMAX_APPROX_DATA", None)
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    summary = json.loads((sweeps[0] / "sweep_summary.json").read_text())
    records = sorted((json.loads(p.read_text()) for p in sweeps[0].glob("*/results.json")), key=lambda r: r["seed"])
    seeds = [int(s) for s in re.search(r"seed=([\d,]+)", command).group(1).split(",")]
    assert [x["seed"] for x in records] == seeds and all(x["status"] == "completed" for x in records), summary
