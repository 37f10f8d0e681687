"""A storage policy defined outside the package works everywhere: one class in the user's own
module, one attention yaml in the user's own config dir (docs/method.md's example, as written).
The module is written to a temporary directory (not the package), then used in code, trained
through the harness, benchmarked and rendered."""

from __future__ import annotations

import csv
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from softmax_approx import bench
from softmax_approx.core import POLICIES, ActivationMeter, approx_softmax, attention
from softmax_approx.harness.validation import validate_config
from softmax_approx.nn import MultiHeadAttention
from softmax_approx.report import render_report
from softmax_approx.train import train
from softmax_approx.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _doc_blocks(lang: str) -> list[str]:
    """The ``lang`` code blocks of docs/method.md's "Your own policy" section, as written."""
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    section = text.split("## Your own policy", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


# the documented example is the policy under test: the docs cannot drift from what works
MODULE = "my_policies"
(POLICY_SOURCE,) = _doc_blocks("python")
(YAML,) = _doc_blocks("yaml")


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """The user's module on the Python path (as a user's PYTHONPATH puts it); unregistered
    afterwards so that no other test sees the policy."""
    where = tmp_path_factory.mktemp("user_code")
    (where / f"{MODULE}.py").write_text(POLICY_SOURCE)
    sys.path.insert(0, str(where))
    try:
        yield __import__(MODULE)
    finally:
        sys.path.remove(str(where))
        sys.modules.pop(MODULE, None)
        POLICIES.pop("halfkeep", None)


def _qkv(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, 8, generator=g, requires_grad=True) for _ in range(3)]


def _grads(policy, mask=None, dropout_p=0.0):
    q, k, v = _qkv()
    out = attention(q, k, v, mask=mask, dropout_p=dropout_p, policy=policy)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return [t.grad for t in (q, k, v)]


def test_an_instance_runs_in_code_with_finite_gradients_and_its_declared_state(user_module):
    HalfKeep = user_module.HalfKeep
    keep = torch.rand(2, 1, 1, 16, generator=torch.Generator().manual_seed(2)) > 0.3
    keep[..., 0] = True
    for grad in _grads(HalfKeep(), mask=keep, dropout_p=0.1):
        assert torch.isfinite(grad).all()
    q, k, v = _qkv()
    with ActivationMeter() as meter:
        attention(q, k, v, policy=HalfKeep())
    rows, kept = 2 * 2 * 16, 8
    assert meter.report().softmax_state_bytes == rows * kept * (4 + 1)  # fp32 values + uint8 indices
    # keeping everything rebuilds the probabilities exactly: the exact policy's gradients
    for got, want in zip(_grads(HalfKeep(fraction=1.0), mask=keep), _grads("exact", mask=keep)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # half of the row: an approximation, not the exact gradient
    assert not torch.allclose(_grads(HalfKeep())[0], _grads("exact")[0], atol=1e-4)


def test_by_name_once_registered_and_in_approx_softmax_and_nn(user_module):
    assert POLICIES["halfkeep"] is user_module.HalfKeep
    for a, b in zip(_grads("halfkeep"), _grads(user_module.HalfKeep(fraction=0.5))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    approx_softmax(x, policy="halfkeep", fraction=1.0).backward(torch.ones(3, 10, dtype=torch.float64))
    torch.testing.assert_close(x.grad, torch.zeros_like(x), atol=1e-12, rtol=0)  # d(sum p)/dx = 0
    mha = MultiHeadAttention(16, 2, policy="halfkeep", policy_params={"fraction": 0.25})
    mha(torch.randn(2, 12, 16)).sum().backward()
    assert mha.policy.params == {"fraction": 0.25} and torch.isfinite(mha.q_proj.weight.grad).all()


def test_the_transformers_integration_records_it_in_the_config(user_module):
    transformers = pytest.importorskip("transformers")
    from softmax_approx.integrations import transformers as sa_hf

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    model = transformers.AutoModel.from_config(cfg, attn_implementation="eager").train()
    assert sa_hf.apply(model, user_module.HalfKeep(fraction=0.5)) == 1
    assert model.config.softmax_approx == {"policy": "halfkeep", "fraction": 0.5}
    ids = torch.randint(0, 50, (2, 10))
    model(input_ids=ids).last_hidden_state.sum().backward()
    assert sa_hf.policy_of(model.config).name == "halfkeep"


def _user_conf(tmp_path, text=YAML):
    conf = tmp_path / "myconf" / "attention"
    conf.mkdir(parents=True)
    (conf / "halfkeep.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"


@pytest.fixture(scope="module")
def trained(user_module, tmp_path_factory, data_dir):
    """One eager and one halfkeep run through train(cfg), the policy from the user's yaml."""
    root = tmp_path_factory.mktemp("ext")
    runs = {}
    for name in ("eager", "halfkeep"):
        overrides = ["attention=" + name, "logger=csv", "model.attn_dropout=0.0"]
        if name == "halfkeep":
            overrides.insert(0, _user_conf(root))
        cfg = compose_cfg(overrides, root / "out" / "runs" / name, data_dir)
        runs[name] = train(cfg)
    return root / "out", runs


def test_trains_through_the_harness_from_one_yaml_in_the_users_config_dir(trained):
    out, runs = trained
    metrics, objects = runs["halfkeep"]
    rec = json.loads((out / "runs" / "halfkeep" / "results.json").read_text())
    assert (rec["status"], rec["policy"], rec["policy_params"]) == ("completed", "halfkeep", {"fraction": 0.5})
    mhas = [m for m in objects["model"].net.modules() if isinstance(m, MultiHeadAttention)]
    assert mhas and all(type(m.policy).__name__ == "HalfKeep" and m.policy.fraction == 0.5 for m in mhas)
    eager = json.loads((out / "runs" / "eager" / "results.json").read_text())
    assert 0 < rec["memory"]["softmax_state_bytes"] < eager["memory"]["softmax_state_bytes"]
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_a_yaml_whose_name_differs_from_the_class_is_one_line_error(user_module, tmp_path, data_dir):
    cfg = compose_cfg([_user_conf(tmp_path, YAML.replace("name: halfkeep", "name: half")), "attention=halfkeep"],
                      tmp_path / "run", data_dir)
    with pytest.raises(ConfigError, match=r"attention.name='half' but .*HalfKeep.name is 'halfkeep'; set name: halfkeep"):
        validate_config(cfg)
    missing = tmp_path / "other"
    cfg = compose_cfg([_user_conf(missing, YAML.replace(MODULE, "no_such_module")), "attention=halfkeep"],
                      missing / "run", data_dir)
    with pytest.raises(ConfigError, match=r"attention._target_=no_such_module.HalfKeep: .*cannot be imported"):
        validate_config(cfg)


def test_benchmarks_it_by_import_path(user_module, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--seq-len", "16", "--batch", "1", "--heads", "2", "--head-dim", "8", "--repeats", "1",
                       "--logits", "random", "--policy", f"{MODULE}.HalfKeep:fraction=0.5", "--json", str(out)]) == 0
    records = {r["policy"]: r for r in json.loads(out.read_text())}
    assert list(records) == ["eager", "exact", "halfkeep"]
    half = records["halfkeep"]
    assert half["params"] == {"fraction": 0.5}
    assert 2.5 <= half["state_bytes_per_score"] <= 2.5 + 64 / (2 * 16 * 16)  # 8 of 16: 4 + 1 bytes each
    assert 0.5 < half["grad_cosine"] < records["exact"]["grad_cosine"]


def test_renders_it_in_the_memory_table(trained, tmp_path):
    out, runs = trained
    defs = tmp_path / "experiments"
    defs.mkdir()
    (defs / "_common.yaml").write_text("order: [memory]\n")
    (defs / "memory.yaml").write_text(textwrap.dedent("""\
        name: memory
        kind: memory
        tasks: [sst2]
        policies: [eager, {name: halfkeep, grid: {fraction: [0.5]}}]
        seeds: [0]
        baseline: eager
        reference: eager
        """))
    render_report(out, exp_dir=defs, only=["memory"])
    with open(out / "tables" / "memory.csv", newline="") as f:
        rows = {r["setting"]: r for r in csv.DictReader(f)}
    half = runs["halfkeep"][1]["record"]["memory"]["attention_bytes"]
    eager = runs["eager"][1]["record"]["memory"]["attention_bytes"]
    row = rows["halfkeep fraction=0.5"]
    assert (row["policy"], row["status"], row["params"]) == ("halfkeep", "completed", '{"fraction": 0.5}')
    assert float(row["attention_bytes_mean"]) == pytest.approx(half)
    assert float(row["attention_reduction_vs_eager_pct"]) == pytest.approx(100 * (1 - half / eager))
    assert "| sst2 | halfkeep fraction=0.5 |" in (out / "tables" / "memory.md").read_text()


def test_figures_and_help_know_it_without_an_edit(user_module, capsys):
    from softmax_approx.report.figures import MARKERS, policy_color, policy_marker

    assert (policy_marker("paper"), policy_color("paper")) == ("o", "C1")  # the built-ins' look is kept
    assert policy_marker("halfkeep") == policy_marker("halfkeep") not in MARKERS.values()
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "halfkeep   keeps the larger half of each row's probabilities" in capsys.readouterr().out
