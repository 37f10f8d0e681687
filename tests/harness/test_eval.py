"""python -m softmax_approx.eval: test a saved checkpoint on a chosen split, in a run dir of its
own; ``train=false ckpt_path=...`` tests that checkpoint too; bad checkpoints are one line."""

from __future__ import annotations

import json
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_cfg
from softmax_approx import eval as eval_mod
from softmax_approx.train import train
from softmax_approx.utils.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One tiny training run: its metrics and best checkpoint."""
    run = tmp_path_factory.mktemp("train_run")
    metrics, objects = train(compose_cfg([], run, data_dir))
    ckpt = objects["record"]["test_weights"]
    assert ckpt.endswith(".ckpt")
    return metrics, ckpt


def _eval_cfg(overrides, run_dir, data_dir):
    return compose_cfg(overrides, run_dir, data_dir, config_name="eval")


def test_eval_reproduces_the_training_test_metrics_and_writes_its_own_record(trained, tmp_path, data_dir):
    train_metrics, ckpt = trained
    metrics, objects = eval_mod.evaluate(_eval_cfg([f"ckpt_path={ckpt}"], tmp_path / "ev", data_dir))
    assert metrics["test/acc"] == train_metrics["test/acc"]  # the same weights on the same split
    rec = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert rec["status"] == "completed" and rec["evaluated"] == ckpt and rec["test_weights"] == ckpt
    assert rec["metrics"]["test/acc"] == train_metrics["test/acc"] and rec["schema_version"] == 1
    assert rec["split"] == "test"
    assert rec["memory"] is None and rec["params"]["total"] > 0


def test_eval_on_another_split(trained, tmp_path, data_dir):
    """test_split=val: validation's numbers with the best weights, named ``val/*`` (never
    ``test/*``) and the split recorded at the top level of results.json."""
    train_metrics, ckpt = trained
    metrics, objects = eval_mod.evaluate(
        _eval_cfg([f"ckpt_path={ckpt}", "task.datamodule.test_split=val"], tmp_path, data_dir))
    assert metrics["val/acc"] == pytest.approx(train_metrics["val/acc"], abs=1e-7)
    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["split"] == "val" and not [k for k in rec["metrics"] if k.startswith("test/")]
    assert {"val/acc", "val/loss"} <= set(rec["metrics"])
    assert objects["datamodule"].test_split_name.startswith("sst2 val split")
    with pytest.raises(ConfigError, match=r"test_split='dev': allowed values: train, val, test"):
        eval_mod.evaluate(_eval_cfg([f"ckpt_path={ckpt}", "task.datamodule.test_split=dev"], tmp_path / "b", data_dir))


def test_train_false_tests_the_given_checkpoint(trained, tmp_path, data_dir):
    train_metrics, ckpt = trained
    metrics, objects = train(compose_cfg(["train=false", f"ckpt_path={ckpt}"], tmp_path, data_dir))
    assert metrics["test/acc"] == train_metrics["test/acc"] and objects["record"]["test_weights"] == ckpt


@pytest.mark.parametrize("what", ["missing", "garbage", "not_lightning", "none"])
def test_bad_checkpoint_is_one_line(what, tmp_path, data_dir):
    import torch

    path = tmp_path / "x.ckpt"
    if what == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif what == "not_lightning":
        torch.save({"weights": torch.ones(2)}, path)
    overrides = [] if what == "none" else [f"ckpt_path={path}"]
    expected = {"missing": "no such checkpoint file", "garbage": "not a PyTorch checkpoint",
                "not_lightning": "not a Lightning checkpoint", "none": "ckpt_path is required"}[what]
    with pytest.raises(ConfigError, match=expected) as info:
        eval_mod.evaluate(_eval_cfg(overrides, tmp_path / "ev", data_dir))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ev" / "results.json").exists()  # refused before any run started


def test_cli_missing_checkpoint_exits_2_with_one_line(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["eval", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"paths.data_dir={data_dir}",
                                      "logger=none", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as info:
            eval_mod.main()
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert err.startswith("error: ckpt_path=") and "no such checkpoint file" in err
