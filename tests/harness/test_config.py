"""Config tree: every group option composes, every task x profile has the recipe of the table below, attention
files hold exactly their policy's parameters, run dirs are unique, bad configs fail early
with one line (exit code 2 from the real CLI)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import compose_cfg
from softmax_approx.core import POLICIES, POLICY_NAMES
from softmax_approx.utils.errors import ConfigError, DataError
from softmax_approx.harness.validation import CONF_DIR, validate_config
from softmax_approx.data.datasets import shipped_names
from softmax_approx.utils.task_conf import task_kinds

CLASSIFICATION_TASKS = ("sst2", "imdb")
PROFILES = ("smoke", "cpu", "paper")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def raw_compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "group",
    ["task", "model", "attention", "trainer", "logger", "callbacks", "profile", "debug", "experiment", "paths", "hydra"],
)
def test_every_group_option_composes(group, tmp_path):
    opts = options(group)
    assert opts, f"conf/{group} has no options"
    for opt in opts:
        if group == "task" and task_kinds()[opt] != "classification":
            continue  # translation tasks are checked by their own tests
        if group == "model" and OmegaConf.load(CONF_DIR / "model" / f"{opt}.yaml").get("kind") != "classification":
            continue
        cfg = raw_compose([f"{group}={opt}", "trainer=cpu"] if group != "trainer" else [f"{group}={opt}"])
        assert cfg.hydra.runtime.choices[group] == opt


def test_attention_files_hold_exactly_their_policy_parameters():
    assert options("attention") == sorted(POLICY_NAMES)
    for name in POLICY_NAMES:
        node = OmegaConf.load(CONF_DIR / "attention" / f"{name}.yaml")
        assert set(node.keys()) == {"name", "params"}
        assert node.name == name
        fields = {f.name for f in dataclasses.fields(POLICIES[name])}
        assert set(node.params.keys()) == fields, name
    assert OmegaConf.load(CONF_DIR / "attention/paper.yaml").params == {"S": 5}
    assert OmegaConf.load(CONF_DIR / "attention/topk.yaml").params == {"keep_ratio": 0.125}
    assert OmegaConf.load(CONF_DIR / "attention/quant.yaml").params == {"bits": 8}


# The effective recipe of every task x profile (attention must not change it). A change to the
# config tree that silently moves one of these values fails here; change the table on purpose.
# (optimizer, lr, scheduler (or None), warm-up, epochs, batch_size, max_tokens, max_len, vocab_size)
ADAMW, ADAM = "torch.optim.AdamW", "torch.optim.Adam"
LINEAR, CONSTANT, INV_SQRT = "tasks.schedules.linear_warmup_decay", "tasks.schedules.constant_lr", "tasks.schedules.inverse_sqrt"
RECIPES = {
    ("sst2", "smoke"): (ADAMW, 1e-3, LINEAR, 5, 1, 32, None, 64, 2000),
    ("sst2", "cpu"): (ADAMW, 5e-4, LINEAR, 200, 3, 64, None, 64, 16000),
    ("sst2", "paper"): (ADAM, 5e-4, CONSTANT, 0, 10, 128, None, 64, 16000),
    ("imdb", "smoke"): (ADAMW, 1e-3, LINEAR, 5, 1, 16, None, 128, 2000),
    ("imdb", "cpu"): (ADAMW, 5e-4, LINEAR, 200, 2, 32, None, 256, 16000),
    ("imdb", "paper"): (ADAM, 5e-4, CONSTANT, 0, 10, 128, None, 512, 16000),
    ("text_classification", "smoke"): (ADAMW, 1e-3, LINEAR, 5, 1, 32, None, 128, 2000),
    ("text_classification", "cpu"): (ADAMW, 5e-4, LINEAR, 200, 3, 64, None, 128, 16000),
    ("text_classification", "paper"): (ADAM, 5e-4, CONSTANT, 0, 10, 128, None, 128, 16000),
    ("multi30k", "smoke"): (ADAM, 1e-3, None, None, 1, 32, None, 40, 1000),
    ("multi30k", "cpu"): (ADAM, 5e-4, None, None, 4, 128, None, 40, 8000),
    ("multi30k", "paper"): (ADAM, 5e-4, None, None, 20, 128, None, 40, 8000),
    ("iwslt14", "smoke"): (ADAMW, 1e-3, INV_SQRT, 5, 1, 32, None, 64, 1000),
    ("iwslt14", "cpu"): (ADAMW, 1e-3, INV_SQRT, 400, 1, None, 2048, 128, 10000),
    ("iwslt14", "paper"): (ADAMW, 5e-4, INV_SQRT, 4000, 50, None, 4096, 256, 10000),
    ("iwslt14_mini", "smoke"): (ADAMW, 1e-3, INV_SQRT, 5, 1, 32, None, 64, 1000),
    ("iwslt14_mini", "cpu"): (ADAMW, 1e-3, INV_SQRT, 400, 12, None, 2048, 128, 8000),
    ("iwslt14_mini", "paper"): (ADAMW, 5e-4, INV_SQRT, 4000, 150, None, 4096, 256, 8000),
}
# Model sizes: the smoke and cpu profiles shrink every model alike; paper keeps the model file's.
MODEL_SIZES = {"smoke": (32, 2, 1, 64), "cpu": (128, 4, 2, 256)}
PAPER_MODEL = {"sst2": (256, 8, 3, 512), "imdb": (256, 8, 3, 512), "text_classification": (256, 8, 3, 512),
               "multi30k": (256, 8, 3, 512),
               "iwslt14": (512, 4, 6, 1024), "iwslt14_mini": (512, 4, 6, 1024)}


def test_recipe_table_covers_every_task_and_profile():
    # every shipped dataset is pinned; a task yaml of your own needs no row here
    assert set(shipped_names()) | {"text_classification"} <= {t for t, _ in RECIPES} <= set(options("task"))
    assert {p for _, p in RECIPES} == set(options("profile")) == set(PROFILES)


@pytest.mark.parametrize("task,profile", sorted(RECIPES))
def test_effective_recipe_of_every_task_profile_attention(task, profile):
    opt, lr, sched, warmup, epochs, batch, max_tokens, max_len, vocab = RECIPES[task, profile]
    for attention in options("attention"):
        cfg = raw_compose([f"task={task}", f"profile={profile}", f"attention={attention}", "paths.data_dir=/d",
                           "paths.output_dir=/o"])
        with open_dict(cfg):
            del cfg["hydra"]
        c = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        assert cfg.profile_name == profile and cfg.attention.name == attention
        got = (c["optimizer"]["_target_"], c["optimizer"]["lr"],
               c["scheduler"] and c["scheduler"]["_target_"].removeprefix("softmax_approx."),
               c["scheduler"] and c["scheduler"]["warmup_steps"], c["trainer"]["max_epochs"],
               c["task"]["datamodule"]["batch_size"], c["task"]["datamodule"]["max_tokens"],
               c["task"]["datamodule"]["max_len"], c["task"]["datamodule"]["vocab_size"])
        assert got == RECIPES[task, profile], (task, profile, attention)
        m = c["model"]
        sizes = MODEL_SIZES.get(profile, PAPER_MODEL[task])
        assert (m["d_model"], m["n_heads"], m["n_layers"], m["d_ff"]) == sizes, (task, profile)
        assert (c["task"]["datamodule"]["subset"] is None) == (profile != "smoke")
        assert c["trainer"]["accelerator"] == ("gpu" if profile == "paper" else "cpu")


def test_command_line_overrides_reach_table_values():
    cfg = raw_compose(["task=iwslt14", "profile=cpu", "optimizer.lr=0.01", "scheduler.warmup_steps=7",
                       "trainer.max_epochs=2", "task.datamodule.max_tokens=512"])
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps, cfg.trainer.max_epochs) == (0.01, 7, 2)
    assert cfg.task.datamodule.max_tokens == 512
    # a table cell can be changed too, and every key reading it follows
    assert raw_compose(["task=sst2", "profile=cpu", "task.sizes.epochs.cpu=5"]).trainer.max_epochs == 5
    assert raw_compose(["task=multi30k", "scheduler=null"]).scheduler is None


def test_variant_inherits_its_base_task():
    base, mini = raw_compose(["task=iwslt14", "profile=paper"]), raw_compose(["task=iwslt14_mini", "profile=paper"])
    assert mini.task.name == "iwslt14_mini" and mini.task.datamodule.task == "iwslt14_mini"
    assert mini.task.datamodule.mini_val_size == 1000 and "mini_val_size" not in base.task.datamodule
    assert OmegaConf.to_container(mini.optimizer) == OmegaConf.to_container(base.optimizer)
    assert mini.model == base.model and mini.task.module == base.task.module
    assert "recipe is iwslt14's" in (CONF_DIR / "task/iwslt14_mini.yaml").read_text()


def test_constant_lr_keeps_the_base_rate():
    import torch

    from softmax_approx.tasks.schedules import constant_lr

    for warmup, want in ((0, [1.0, 1.0, 1.0, 1.0]), (2, [0.5, 1.0, 1.0, 1.0])):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched, seen = constant_lr(opt, total_steps=10, warmup_steps=warmup), []
        for _ in range(4):
            seen.append(opt.param_groups[0]["lr"] / 0.1)
            opt.step()
            sched.step()
        assert seen == pytest.approx(want)


def test_profile_scales_and_paper_defaults(tmp_path):
    smoke = compose_cfg(["profile=smoke"], tmp_path, tiny=False)
    cpu = compose_cfg(["profile=cpu"], tmp_path, tiny=False)
    paper = raw_compose(["profile=paper"])
    assert smoke.model.d_model < cpu.model.d_model < paper.model.d_model
    assert smoke.trainer.max_steps > 0 and smoke.task.datamodule.subset.train > 0
    assert cpu.task.datamodule.subset is None  # full training sets
    assert paper.hydra.runtime.choices.trainer == "gpu"
    assert (paper.model.n_layers, paper.model.d_model, paper.model.n_heads, paper.model.d_ff) == (3, 256, 8, 512)
    assert paper.task.datamodule.batch_size == 128 and paper.optimizer.lr == 5e-4
    # command line beats the profile's trainer choice
    assert raw_compose(["profile=paper", "trainer=cpu"]).hydra.runtime.choices.trainer == "cpu"


def test_defaults_order_and_seed(tmp_path):
    cfg = compose_cfg([], tmp_path, tiny=False)
    assert cfg.seed == 0
    assert compose_cfg(["seed=7"], tmp_path, tiny=False).seed == 7
    defaults = OmegaConf.load(CONF_DIR / "train.yaml").defaults
    names = [d if isinstance(d, str) else next(iter(d)) for d in defaults]
    assert names[0] == "_self_"
    assert names[-3:] == ["experiment", "optional local", "debug"]
    # a task's recipe comes after the profile (never reset by it); groups that a task or
    # profile may override come before both
    assert names.index("model") < names.index("trainer") < names.index("profile") < names.index("task")
    assert not (CONF_DIR / "task_profile").exists()


def test_experiment_holds_deltas_only():
    for name in options("experiment"):
        text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
        assert text.lstrip().startswith("# @package _global_") or "\n# @package _global_" in text
        cfg = raw_compose([f"experiment={name}"])
        assert cfg.experiment_name == name


def test_run_dirs_unique_within_a_second():
    a = raw_compose([])
    b = raw_compose([])
    da, db = str(a.hydra.run.dir), str(b.hydra.run.dir)
    assert da != db and da.rsplit("_", 1)[0][:-3] == db.rsplit("_", 1)[0][:-3]
    text = (CONF_DIR / "hydra/default.yaml").read_text()
    assert "subdir: ${hydra.job.num}" in text and "${run_uid:}" in text


def test_unknown_key_is_rejected_by_struct_mode():
    with pytest.raises(Exception, match="model.bogus|bogus"):
        raw_compose(["model.bogus=1"])


BAD = [
    (["model.n_heads=3"], ConfigError, r"^model\.n_heads=3 does not divide model\.d_model=\d+; allowed n_heads: 1, 2"),
    (["model.max_len=0"], ConfigError, r"^model\.max_len=0: must be an integer >= 1$"),
    (["task.datamodule.max_len=0"], ConfigError, r"max_len=0"),
    (["attention=paper", "attention.params.S=0"], ConfigError, r"^attention\.params \(paper\): .*S"),
    (["attention=topk", "attention.params.keep_ratio=2.0"], ConfigError, r"^attention\.params \(topk\): .*keep_ratio"),
    (["attention=quant", "attention.params.bits=3"], ConfigError, r"bits"),
    (["attention=paper", "+attention.params.T=3"], ConfigError, r"unknown parameter.*T"),
    (["attention.name=magic"], ConfigError, r"^attention\.name='magic': allowed values: .*paper"),
    (["model.kind=translation"], ConfigError, r"does not fit task=sst2 .*choose model= one of: (.*, )?transformer_cls"),
    (["+model.bogus=1"], ConfigError, r"^model\.bogus: unknown key .*allowed keys: .*d_model"),
    (["+task.datamodule.bogus=1"], ConfigError, r"^task\.datamodule\.bogus: unknown key"),
    (["seed=null"], ConfigError, r"^seed=None: must be an integer"),
    (["profile_name=mine"], ConfigError, r"^task\.sizes\.\w+ has no column for profile 'mine' .*conf/task/sst2\.yaml$"),
    (["model.pool=cls"], ConfigError, r"prepend_cls=true"),
    (["model.dropout=1.5"], ConfigError, r"^model\.dropout=1\.5"),
    (["trainer=gpu"], ConfigError, r"trainer\.accelerator=gpu: no CUDA"),
    (["test_weights=last"], ConfigError, r"allowed values: best, current"),
    (["paths.data_dir=/nonexistent/dir"], DataError, r"missing data file.*sst2/train\.tsv.*softmax_approx\.data download sst2"),
]


@pytest.mark.parametrize("overrides,err,pattern", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_config_fails_with_one_line(overrides, err, pattern, make_cfg):
    import torch

    if overrides == ["trainer=gpu"] and torch.cuda.is_available():
        pytest.skip("CUDA present")
    cfg = make_cfg(overrides)
    with pytest.raises(err) as info:
        validate_config(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert __import__("re").search(pattern, msg), msg


def test_valid_config_passes(make_cfg):
    for task in CLASSIFICATION_TASKS:
        validate_config(make_cfg([f"task={task}", "attention=paper"]))


def _cli(args, cwd):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "softmax_approx.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_bad_config_exits_2_with_one_line_before_reading_data(tmp_path):
    # The data dir is empty: the run must stop at the config check, before any data access.
    r = _cli(["model.n_heads=3", f"paths.data_dir={tmp_path}"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] or not any("Traceback" in ln for ln in lines), r.stderr
    assert lines[-1].startswith("error: model.n_heads=3 does not divide model.d_model="), r.stderr
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["bogus_key=1"], "error: Could not override 'bogus_key'"),
        (["model=nope"], "error: In 'train': Could not find 'model/nope'"),
    ],
)
def test_entry_point_composition_errors_exit_2(argv, expected, capsys):
    from softmax_approx.train import _precheck_overrides

    with pytest.raises(SystemExit) as info:
        _precheck_overrides(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(expected), err
    GlobalHydra.instance().clear()


def test_entry_point_user_error_exits_2(tmp_path, capsys, monkeypatch):
    """Missing data through the real @hydra.main wrapper: one line naming the file and the fix."""
    from softmax_approx import train as train_mod

    monkeypatch.chdir(tmp_path)  # a fresh working directory: outputs/ goes there
    monkeypatch.setattr(sys, "argv", ["softmax-approx-train", f"paths.data_dir={tmp_path}/none",
                                      "logger=none", "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as info:
        train_mod.main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: task sst2: missing data file(s)") and "softmax_approx.data download sst2" in err
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_cli_multirun_dirs_and_results(tmp_path, data_dir):
    """Real CLI sweep from a fresh working directory (no log-dir override): one sweep dir under
    ./outputs/multiruns, one numbered subdir per job, each with its results.json and job id."""
    r = _cli(["-m", "seed=0,1", f"paths.data_dir={data_dir}", "logger=csv",
              *[o for o in __import__("conftest").TINY if not o.startswith("logger=")]], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    recs = sorted((json_load(p) for p in sweeps[0].glob("*/results.json")), key=lambda x: x["seed"])
    assert [x["seed"] for x in recs] == [0, 1] and all(x["status"] == "completed" for x in recs)
    assert {x["job_id"] for x in recs} == {f"{sweeps[0].name}/0", f"{sweeps[0].name}/1"}


def json_load(path):
    import json

    return json.loads(path.read_text())
