"""The `activations` config group: composed, applied to the built model, and carried by the
experiment definitions (run overrides, run keys, table labels, baselines)."""

from __future__ import annotations

import pytest
import torch

from softmax_approx.harness.build import apply_activations
from softmax_approx.models.classifier import TransformerClassifier
from softmax_approx.nn.compress import CompressedLinear, FusedGELU, SeededDropout
from softmax_approx.plan.definitions import Setting
from softmax_approx.plan.load import parse_policies, resolve
from softmax_approx.plan.runs import runs_of
from softmax_approx.report.results import Cell
from softmax_approx.report.formats import baseline_cell

from conftest import compose_cfg


def _net():
    torch.manual_seed(0)
    return TransformerClassifier(vocab_size=50, n_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=16)


@pytest.mark.parametrize("group", ["none", "exact", "int8"])
def test_group_composes_and_applies(tmp_path, group):
    cfg = compose_cfg([f"activations={group}"], tmp_path)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    counts = apply_activations(net, cfg.activations)
    linears = [m for m in net.modules() if isinstance(m, CompressedLinear)]
    if group == "none":
        assert counts is None and not linears
        assert not any(isinstance(m, (FusedGELU, SeededDropout)) for m in net.modules())
    else:
        assert counts["linear"] == len(linears) > 0 and counts["gelu"] == 1 and counts["attention"] is None
        assert {m.compress_mode for m in linears} == {group}
        assert any(isinstance(m, SeededDropout) for m in net.modules())
    assert net.state_dict().keys() == before.keys()
    ids = torch.randint(1, 50, (2, 8))
    net(ids).sum().backward()  # trains


def test_settings_carry_the_activations_mode_into_runs_and_labels():
    data = {"name": "a", "kind": "quality", "tasks": ["sst2"], "seeds": [0],
            "policies": ["eager", "recompute", {"name": "recompute", "activations": "int8"},
                         {"name": "recompute", "activations": "none"}]}
    exp = resolve(data, "cpu")
    eager, plain, int8, none = exp.settings
    assert none == plain and int8 != plain  # `none` is the default: the same run as plain recompute
    assert int8.label == "recompute + activations=int8" and int8.slug == "recompute-actint8"
    runs = {r.setting: r for r in runs_of(exp, [])}
    assert "activations=int8" in runs[int8].overrides
    assert not any(o.startswith("activations=") for o in runs[plain].overrides)
    assert runs[int8].key != runs[plain].key
    cells = {("sst2", s): Cell("sst2", s, expected=1) for s in (int8, plain)}  # int8 listed first
    assert baseline_cell(cells, "sst2", "recompute") is cells[("sst2", plain)]


def test_experiment_files_parse():
    from softmax_approx.plan import load_experiments

    exps = {e.name: e for e in load_experiments("cpu")}
    act = exps["activations"]
    assert act.tasks == ["sst2", "multi30k"] and act.seeds == [0, 1, 2]
    assert {s.activations for s in act.settings} == {None, "exact", "int8"}
    assert [s for s in exps["activations_memory"].settings] == act.settings
    assert parse_policies([{"name": "recompute", "activations": "exact"}], "x")[0] == Setting("recompute", (), "exact")
    assert act.baseline == "eager" and act.also_paired_with == ["recompute"]  # typed keys
