"""Report layer: fixture results.json -> tables (md/tex/csv) and figures, checked independently."""

from __future__ import annotations

import csv
import math
import json
import statistics
import textwrap
from pathlib import Path

import pytest

from fixtures_results import results_json, write_fixture_bench, write_fixture_runs
from softmax_approx.plan import build_plan, run_key
from softmax_approx.report import (
    Setting,
    load_common,
    load_experiments,
    load_results,
    load_wandb,
    render_report,
)
from softmax_approx.report.__main__ import main as report_main
from softmax_approx.report.io import atomic_write, write_text
from softmax_approx.report.paired import Paired
from softmax_approx.utils.errors import ConfigError

SEEDS = [0, 1, 2]


def write_defs(d: Path, paper_s: str = "[2, 5]", extra: str = ", recompute",
               verdict_on: str = "softmax_state") -> Path:
    """A small set of definitions (2 tasks, 4 settings, 3 seeds) in the real format."""
    d.mkdir(parents=True, exist_ok=True)
    pol = textwrap.dedent(f"""\
        tasks: [sst2, multi30k]
        policies: [eager, {{name: paper, grid: {{S: {paper_s}}}}}{extra}]
        seeds: [0, 1, 2]
        baseline: eager
        """)
    (d / "_common.yaml").write_text(textwrap.dedent("""\
        order: [memory, quality, tradeoff, fidelity, claims]
        task_kinds: {sst2: classification, multi30k: translation}
        profiles:
          cpu: {overrides: [probe.every_n_steps=3]}
        """))
    (d / "memory.yaml").write_text("name: memory\nkind: memory\nreference: recompute\n" + pol)
    (d / "quality.yaml").write_text("name: quality\nkind: quality\n" + pol + textwrap.dedent("""\
        metrics:
          classification: {key: test/acc, scale: 100, label: accuracy (%), definition: acc on dev}
          translation: {key: test/bleu, scale: 1, label: BLEU, definition: sacreBLEU detok}
        """))
    (d / "tradeoff.yaml").write_text("name: tradeoff\nkind: tradeoff\nuses_metrics_of: quality\n" + pol)
    (d / "fidelity.yaml").write_text(textwrap.dedent("""\
        name: fidelity
        kind: fidelity
        tasks: [sst2, multi30k]
        policies: [{name: paper, grid: {S: %s}}]
        seeds: [0, 1, 2]
        x_axis: {paper: S}
        """ % paper_s))
    (d / "claims.yaml").write_text(textwrap.dedent("""\
        name: claims
        kind: claims
        uses: [memory, quality]
        evidence_profiles: [cpu, paper]
        claims:
          - {id: mem, claim: mem claim, source: memory, measure: max_memory_reduction,
             policy: paper, verdict_on: %s, threshold: 84.0, tolerance: 1.0,
             context_policies: [recompute], why: the reason}
          - {id: bleu, claim: bleu claim, source: quality, measure: paired_noninferior,
             task_kind: translation, policy: paper, params: {S: 5}, margin: 1.0}
          - {id: acc, claim: acc claim, source: quality, measure: paired_max_gain,
             task_kind: classification, policy: paper, threshold: 5.4, tolerance: 0.5}
        """ % verdict_on))
    return d


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    return write_defs(tmp_path / "experiments")


@pytest.fixture
def out(tmp_path: Path, defs: Path) -> tuple[Path, list[dict]]:
    out = tmp_path / "out"
    written = write_fixture_runs(out, "cpu", defs, failed=("sst2", "recompute", 0))
    return out, written


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected(written: list[dict], task: str, policy: str, params: dict, key: str) -> list[float]:
    return [w["metrics"][key] for w in written
            if w["task"] == task and w["policy"] == policy and w["status"] == "completed"
            and all(w["policy_params"].get(k) == v for k, v in params.items())]


def test_quality_mean_and_sample_std_match_independent_computation(out, defs):
    out, written = out
    render_report(out, exp_dir=defs)
    rows = read_csv(out / "tables" / "quality.csv")
    assert len(rows) == 2 * 4  # tasks x settings
    checked = 0
    for row in rows:
        params = json.loads(row["params"])
        key = "test/acc" if row["task"] == "sst2" else "test/bleu"
        scale = 100.0 if key == "test/acc" else 1.0
        vals = [v * scale for v in expected(written, row["task"], row["policy"], params, key)]
        assert int(row["n"]) == len(vals)
        assert float(row["mean"]) == pytest.approx(statistics.mean(vals))
        assert float(row["std"]) == pytest.approx(statistics.stdev(vals))
        base = [v * scale for v in expected(written, row["task"], "eager", {}, key)]
        assert float(row["delta_vs_eager"]) == pytest.approx(statistics.mean(vals) - statistics.mean(base))
        # paired: only seeds both completed (sst2 recompute seed 0 failed)
        seeds = json.loads(row["paired_seeds"])
        assert int(row["paired_n"]) == len(seeds) == (2 if (row["task"], row["policy"]) == ("sst2", "recompute") else 3)
        checked += 1
    assert checked == 8
    # the Markdown cell shows the same numbers, formatted
    vals = [v * 100 for v in expected(written, "sst2", "paper", {"S": 5}, "test/acc")]
    md = (out / "tables" / "quality.md").read_text()
    assert f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} (n=3)" in md
    assert "Profile: `cpu`" in md and "acc on dev" in md and "sacreBLEU signature" in md


def test_failed_runs_show_as_failed(out, defs, tmp_path):
    out, written = out
    render_report(out, exp_dir=defs)
    md = (out / "tables" / "quality.md").read_text()
    # one of three seeds failed: numbers from the other two, the failure noted
    rec_line = next(ln for ln in md.splitlines() if ln.startswith("| recompute |"))
    assert "(n=2) [1 failed]" in rec_line
    # now every seed of that cell fails: the cell itself says failed, in every format
    for path in (out / "runs").rglob("results.json"):
        data = json.loads(path.read_text())
        if data["task"] == "sst2" and data["policy"] == "recompute":
            path.write_text(json.dumps(results_json("sst2", "recompute", {}, data["seed"], "cpu", "failed")))
    render_report(out, exp_dir=defs)
    md = (out / "tables" / "quality.md").read_text()
    rec_line = next(ln for ln in md.splitlines() if ln.startswith("| recompute |"))
    assert rec_line.split("|")[2].strip() == "failed"
    tex = (out / "tables" / "quality.tex").read_text()
    assert "recompute & failed & failed" in tex
    rows = read_csv(out / "tables" / "memory.csv")
    assert [r["status"] for r in rows if r["task"] == "sst2" and r["policy"] == "recompute"] == ["failed"]
    runs = read_csv(out / "tables" / "runs.csv")
    assert sum(r["status"] == "failed" for r in runs) == 3


def test_memory_reduction_vs_eager_and_reference(out, defs):
    out, written = out
    render_report(out, exp_dir=defs)
    rows = {(r["task"], r["setting"]): r for r in read_csv(out / "tables" / "memory.csv")}
    for task in ("sst2", "multi30k"):
        eager = statistics.mean(w["memory"]["attention_bytes"] for w in written
                                if w["task"] == task and w["policy"] == "eager")
        paper = statistics.mean(w["memory"]["attention_bytes"] for w in written
                                if w["task"] == task and w["policy_params"].get("S") == 5)
        row = rows[(task, "paper S=5")]
        assert float(row["attention_bytes_mean"]) == pytest.approx(paper)
        assert float(row["attention_reduction_vs_eager_pct"]) == pytest.approx(100 * (1 - paper / eager))
        assert row["attention_reduction_vs_recompute_pct"] != ""
    md = (out / "tables" / "memory.md").read_text()
    assert "80.0% (5.00×)" in md  # fixture: paper keeps 1/5 of eager's bytes


def test_memory_by_attention_kind_for_translation_only(out, defs):
    out, written = out
    render_report(out, exp_dir=defs)
    rows = read_csv(out / "tables" / "memory_by_kind.csv")
    assert rows and {r["task"] for r in rows} == {"multi30k"}           # classification has no kinds
    row = next(r for r in rows if r["setting"] == "paper S=5")
    for kind in ("encoder_self", "decoder_self", "cross"):
        want = statistics.mean(w["memory"]["by_kind"][kind]["bytes"] for w in written
                               if w["task"] == "multi30k" and w["policy_params"].get("S") == 5)
        assert float(row[f"{kind}_bytes_mean"]) == pytest.approx(want)
    assert "| multi30k | eager |" in (out / "tables" / "memory_by_kind.md").read_text()


def test_tex_and_figures_are_valid(out, defs):
    out, _ = out
    rep = render_report(out, exp_dir=defs)
    tex = (out / "tables" / "quality.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "\\%" in tex
    for name in ("tradeoff", "fidelity"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(out.rglob("*.tmp"))
    assert set(rep.tables) >= {"memory", "quality", "tradeoff", "fidelity", "fidelity_layers", "claims", "runs"}
    layers = read_csv(out / "tables" / "fidelity_layers.csv")
    assert len(layers) == 2 * 2 * 3 * 2  # tasks x settings x seeds x layers


def test_tradeoff_points_and_fidelity_values(out, defs):
    out, written = out
    render_report(out, exp_dir=defs)
    pts = {(r["task"], r["setting"]): r for r in read_csv(out / "tables" / "tradeoff.csv")}
    p = pts[("multi30k", "paper S=2")]
    bleu = statistics.mean(expected(written, "multi30k", "paper", {"S": 2}, "test/bleu"))
    base = statistics.mean(expected(written, "multi30k", "eager", {}, "test/bleu"))
    assert float(p["quality_delta"]) == pytest.approx(bleu - base)
    assert float(p["memory_reduction_pct"]) == pytest.approx(80.0)
    fid = {(r["task"], r["setting"]): r for r in read_csv(out / "tables" / "fidelity.csv")}
    per_run = [statistics.mean(v["cosine"] for v in w["fidelity"]["layers"].values())
               for w in written if w["task"] == "sst2" and w["policy_params"].get("S") == 2]
    assert float(fid[("sst2", "paper S=2")]["cosine_mean"]) == pytest.approx(statistics.mean(per_run))


@pytest.mark.parametrize("verdict_on", ["softmax_state", "module"])
def test_claims_memory_both_definitions_verdict_on_the_named_one(tmp_path, verdict_on):
    defs = write_defs(tmp_path / "experiments", verdict_on=verdict_on)
    out = tmp_path / "out"
    written = write_fixture_runs(out, "cpu", defs, failed=None)
    render_report(out, exp_dir=defs)
    rows = {r["id"]: r for r in read_csv(out / "tables" / "claims.csv")}

    def red(task: str, key: str) -> float:
        mean = lambda pol, s: statistics.mean(  # noqa: E731
            w["memory"][key] for w in written if w["task"] == task and w["policy"] == pol
            and w["policy_params"].get("S") == s)
        return 100 * (1 - mean("paper", 5) / mean("eager", None))

    state = max(red(t, "softmax_state_bytes") for t in ("sst2", "multi30k"))
    module = max(red(t, "attention_bytes") for t in ("sst2", "multi30k"))
    # fixture: paper keeps 20% of eager's module bytes (80% < 83: not supported) but only
    # 1/15 of its n x n state (93.3%: supported), so the named definition decides
    assert state == pytest.approx(100 * (1 - 0.25 * 0.2 / 0.75)) and module == pytest.approx(80.0)
    mem = rows["mem"]
    assert float(mem["value_softmax_state"]) == pytest.approx(state)
    assert float(mem["value_module"]) == pytest.approx(module)
    assert float(mem["value"]) == pytest.approx(state if verdict_on == "softmax_state" else module)
    want = "supported" if verdict_on == "softmax_state" else "not supported"
    other = "not supported" if verdict_on == "softmax_state" else "supported"
    assert mem["verdict"] == want
    assert mem["verdict_on"] == {"softmax_state": "softmax state (n×n)",
                                 "module": "whole attention module"}[verdict_on]
    md = (out / "tables" / "claims.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| mem claim"))
    assert "softmax state (n×n): 93.3% (15.00×)" in line and "whole attention module: 80.0% (5.00×)" in line
    assert f"| {want} (" in line and other in line  # the other definition's verdict beside
    assert "Why `mem` judges" in md and "the reason" in md
    assert "recompute: 100.0% / 90.0%" in mem["context"]  # state / module of the context policy
    assert mem["is_evidence"] == "True" and "not evidence" not in md.lower()


def test_claims_quality_verdicts_on_paired_intervals(out, defs):
    out, _ = out
    render_report(out, exp_dir=defs)
    rows = {r["id"]: r for r in read_csv(out / "tables" / "claims.csv")}
    # fixture BLEU of paper S=5 is 5 points above eager on every seed: interval [5, 5] >= -1
    assert rows["bleu"]["verdict"] == "supported"
    assert float(rows["bleu"]["ci_low"]) == pytest.approx(5.0)
    # fixture accuracy gain of paper S=5 is exactly 5.0 points per seed: lower bound 5.0 >= 4.9
    assert rows["acc"]["verdict"] == "supported"
    assert rows["acc"]["verdict_on"] == "paired 95% CI" and "lower bound" in rows["acc"]["rule"]


def P(*diffs: float) -> Paired:
    return Paired(tuple(range(len(diffs))), tuple(diffs))


def test_claim_rules_read_the_interval():
    from softmax_approx.report.claims import _max_gain, _noninferior

    # BLEU, margin 1: lower bound >= -1 comparable; wholly below -1 worse; straddling or n=1 inconclusive
    assert _noninferior([("a", "s", P(-0.2, 0.1, 0.0))], 1.0)["verdict"] == "supported"
    assert _noninferior([("a", "s", P(-3.0, -2.5, -2.8))], 1.0)["verdict"] == "not supported"
    wide = P(-2.0, 0.5, 1.0)  # mean -0.17, interval about [-3.9, +3.6]
    assert wide.low < -1 < wide.high
    assert _noninferior([("a", "s", wide)], 1.0)["verdict"] == "inconclusive"
    assert _noninferior([("a", "s", P(0.3))], 1.0)["verdict"] == "inconclusive"  # n=1
    both = [("a", "s", P(-0.2, 0.1, 0.0)), ("b", "s", P(-3.0, -2.5, -2.8))]
    assert _noninferior(both, 1.0)["verdict"] == "not supported"  # every task must be comparable
    assert _noninferior([], 1.0).get("verdict") is None  # nothing measured
    # up to +5.4 (tolerance 0.5): some interval at or above 4.9 -> supported
    assert _max_gain([("a", "s", P(6.0, 6.2, 6.4))], 5.4, 0.5)["verdict"] == "supported"
    assert _max_gain([("a", "s", P(0.5, 1.0, 1.5))], 5.4, 0.5)["verdict"] == "not supported"
    assert _max_gain([("a", "s", P(1.0, 6.0, 9.0))], 5.4, 0.5)["verdict"] == "inconclusive"
    assert _max_gain([("a", "s", P(7.0))], 5.4, 0.5)["verdict"] == "inconclusive"  # n=1


def test_smoke_claims_table_says_not_evidence(tmp_path):
    out = tmp_path / "smoke"
    write_fixture_runs(out, "smoke", failed=None)
    write_fixture_bench(out, "smoke")
    rep = render_report(out)
    table = rep.tables["claims"]
    assert table.rows and all(row[1].startswith("NOT EVIDENCE (profile smoke)") for row in table.rows)
    assert all(row[5].startswith("not evidence (profile smoke); would read: ") for row in table.rows)
    assert all(r["is_evidence"] == "False" for r in read_csv(out / "tables" / "claims.csv"))
    assert any(n.startswith("NOT EVIDENCE") for n in table.notes)


def test_no_runs_means_not_run_and_not_measured(tmp_path, defs):
    out = tmp_path / "empty"
    (out / "runs").mkdir(parents=True)
    render_report(out, exp_dir=defs, profile="cpu")
    rows = read_csv(out / "tables" / "claims.csv")
    assert [r["verdict"] for r in rows] == ["not measured"] * 3
    assert "n/a" in (out / "tables" / "quality_paired.md").read_text() or \
        "not run" in (out / "tables" / "quality_paired.md").read_text()
    assert "not run" in (out / "tables" / "quality.md").read_text()


def test_real_definitions_fill_every_smoke_cell(tmp_path):
    """With every planned smoke run completed, no table cell of the real experiments is empty."""
    out = tmp_path / "smoke"
    write_fixture_runs(out, "smoke", failed=None)
    bench = write_fixture_bench(out, "smoke")
    rep = render_report(out)
    for name in ("memory", "quality", "tradeoff", "fidelity", "bench", "claims"):
        md = (out / "tables" / f"{name}.md").read_text()
        assert "not run" not in md and "failed" not in md and "not measured" not in md, name
    assert rep.profile == "smoke"
    # the bench claim reads the benchmark at its LONGEST n only: the paper policy's largest
    # n x n state reduction (the verdict) and whole-call reduction (beside it)
    claim = next(r for r in read_csv(out / "tables" / "claims.csv") if r["id"] == "memory_reduction_bench")
    longest = max(r["seq_len"] for r in bench)
    at_n = [r for r in bench if r["policy"] == "paper" and r["seq_len"] == longest]
    best = max(100 * r["reduction_vs_eager"] for r in at_n)
    assert float(claim["value"]) == pytest.approx(best)
    assert float(claim["value_module"]) == pytest.approx(max(100 * r["module_reduction_vs_eager"] for r in at_n))
    assert f"longest n={longest}" in claim["evidence"]
    assert claim["verdict"] == ("supported" if best >= 83.0 else "not supported")
    assert (out / "figures" / "which_policy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "tables" / "bench.md").read_text()
    assert "n=512 state B/score" in md and "| paper S=5 | 1.328 |" in md
    for profile in ("cpu", "paper"):
        exps = load_experiments(profile)
        assert build_plan(exps, load_common()).runs
        assert all(len(e.seeds) == 3 for e in exps if e.kind == "quality")


def test_atomic_write_leaves_old_file_and_no_partial(tmp_path):
    target = tmp_path / "tables" / "t.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("partial")
            raise RuntimeError("renderer crashed")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["t.csv"]
    fresh = tmp_path / "new.md"
    with pytest.raises(RuntimeError):
        with atomic_write(fresh) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert not fresh.exists()


def test_render_failure_keeps_previous_table(out, defs, monkeypatch):
    out, _ = out
    render_report(out, exp_dir=defs)
    before = (out / "tables" / "quality.tex").read_text()
    from softmax_approx.report import table

    def boom(self):
        raise RuntimeError("tex renderer crashed")

    monkeypatch.setattr(table.Table, "to_latex", boom)
    with pytest.raises(RuntimeError):
        render_report(out, exp_dir=defs)
    assert (out / "tables" / "quality.tex").read_text() == before
    assert not list(out.rglob("*.tmp"))


class FakeRun:
    def __init__(self, state: str, task: str, policy: str, params: dict, seed: int, acc: float):
        self.state, self.id, self.tags = state, f"{task}-{policy}-{seed}", []
        # as train.py logs it: the resolved config under "cfg"; metrics and probe values in
        # the summary (memory/* only when the harness logs it)
        self.config = {"params/total": 10, "cfg": {
            "task": {"name": task, "kind": "classification"},
            "attention": {"name": policy, "params": params}, "seed": seed, "profile_name": "cpu"}}
        self.summary = {"test/acc": acc, "memory/attention_bytes": 1000 if policy == "eager" else 250,
                        "probe/encoder.0.self_attn/cosine": 0.97, "_runtime": 3}


class FakeApi:
    def __init__(self, runs):
        self._runs, self.asked = runs, []

    def runs(self, path):
        self.asked.append(path)
        return self._runs


def test_from_wandb_with_fake_api(tmp_path, defs, monkeypatch):
    runs = [FakeRun("finished", "sst2", "eager", {}, s, 0.80 + 0.01 * s) for s in SEEDS]
    runs += [FakeRun("finished", "sst2", "paper", {"S": 5}, s, 0.82 + 0.02 * s) for s in SEEDS]
    runs += [FakeRun("crashed", "sst2", "paper", {"S": 2}, 0, 0.0)]
    api = FakeApi(runs)
    records = load_wandb("team/proj", api=api)
    assert api.asked == ["team/proj"]
    assert [r.run.status for r in records].count("failed") == 1
    rep = render_report(tmp_path / "wb", records=records, exp_dir=defs)
    rows = {(r["task"], r["setting"]): r for r in read_csv(tmp_path / "wb" / "tables" / "quality.csv")}
    assert float(rows[("sst2", "paper S=5")]["mean"]) == pytest.approx(statistics.mean([82, 84, 86]))
    assert rows[("sst2", "paper S=2")]["status"] == "failed"
    mem = {(r["task"], r["setting"]): r for r in read_csv(tmp_path / "wb" / "tables" / "memory.csv")}
    assert float(mem[("sst2", "paper S=5")]["attention_reduction_vs_eager_pct"]) == pytest.approx(75.0)
    assert rep.profile == "cpu"
    fid = {(r["task"], r["setting"]): r for r in read_csv(tmp_path / "wb" / "tables" / "fidelity.csv")}
    assert float(fid[("sst2", "paper S=5")]["cosine_mean"]) == pytest.approx(0.97)
    # the CLI path builds wandb.Api() itself
    import wandb

    monkeypatch.setattr(wandb, "Api", lambda: api)
    assert report_main(["--out", str(tmp_path / "wb2"), "--from-wandb", "team/proj",
                        "--experiments", str(defs)]) == 0
    assert (tmp_path / "wb2" / "tables" / "quality.md").exists()
    with pytest.raises(ConfigError, match="ENTITY/PROJECT"):
        load_wandb("no-slash", api=api)


def test_cli_renders_and_reports_bad_input_in_one_line(out, defs, tmp_path, capsys):
    out, _ = out
    assert report_main(["--out", str(out), "--experiments", str(defs)]) == 0
    assert "runs" in capsys.readouterr().out
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert report_main(["--out", str(empty), "--experiments", str(defs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--profile" in err and "\n" not in err


def test_definitions_errors_and_labels(tmp_path, defs):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\nkind: table\n")
    with pytest.raises(ConfigError, match="x.yaml: kind='table'"):
        load_experiments("smoke", bad)
    (bad / "x.yaml").write_text("name: x\nkind: memory\npolicies: [{grid: {S: [1]}}]\n")
    with pytest.raises(ConfigError, match="policies entry"):
        load_experiments("smoke", bad)
    with pytest.raises(ConfigError, match="profile='gpu'"):
        load_experiments("gpu", defs)
    assert Setting("topk", (("keep_ratio", 0.0625),)).label == "topk keep_ratio=1/16"
    assert Setting("paper", (("S", 5),)).matches("paper", {"S": 5, "other": 1})
    assert not Setting("paper", (("S", 5),)).matches("paper", {"S": 2})
    s = Setting("paper", (("S", 5),))
    assert run_key("sst2", s, 0, ["a=1", "b=2"]) == run_key("sst2", s, 0, ["b=2", "a=1"])
    assert run_key("sst2", s, 0, ["a=1"]) != run_key("sst2", s, 0, ["a=2"])


def test_load_results_marks_unreadable_file_failed(tmp_path):
    d = tmp_path / "runs" / "x" / "k"
    d.mkdir(parents=True)
    (d / "results.json").write_text("{not json")
    [rec] = load_results(tmp_path / "runs")
    assert rec.run.status == "failed" and "unreadable" in rec.run.error and rec.key == "k"


# ----------------------------------------------------------------------------- paired statistics
@pytest.mark.parametrize("df", [*range(1, 31), 31, 45, 60, 120, 1000])
def test_t_quantile_is_the_975_point_of_students_t(df):
    """Independent check: integrate the t density from 0 to the quantile -> 0.475."""
    import math

    import numpy as np

    from softmax_approx.report.paired import t_quantile_975

    q = t_quantile_975(df)
    x = np.linspace(0.0, q, 100_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    area = np.trapezoid(c * (1 + x**2 / df) ** (-(df + 1) / 2), x)
    assert area == pytest.approx(0.475, abs=2e-7)


def set_metric(out: Path, task: str, policy: str, params: dict, values: dict[int, float]) -> None:
    """Overwrite the test metric of the runs of one cell, per seed."""
    key = "test/acc" if task in ("sst2", "imdb") else "test/bleu"
    for path in (out / "runs").rglob("results.json"):
        data = json.loads(path.read_text())
        if (data["task"], data["policy"]) == (task, policy) and all(
                data["policy_params"].get(k) == v for k, v in params.items()) and data["seed"] in values:
            data["metrics"][key] = values[data["seed"]]
            path.write_text(json.dumps(data))


def test_paired_differences_and_t_interval_by_hand(out, defs):
    import numpy as np

    out, _ = out
    set_metric(out, "sst2", "eager", {}, {0: 0.80, 1: 0.82, 2: 0.79})
    set_metric(out, "sst2", "paper", {"S": 5}, {0: 0.83, 1: 0.83, 2: 0.84})
    render_report(out, exp_dir=defs)
    diffs = 100 * (np.array([0.83, 0.83, 0.84]) - np.array([0.80, 0.82, 0.79]))  # 3, 1, 5 points
    mean, sd = diffs.mean(), diffs.std(ddof=1)
    half = 4.302652729749464 * sd / np.sqrt(3)  # scipy.stats.t.ppf(0.975, 2)
    paired_csv = read_csv(out / "tables" / "quality_paired.csv")
    rows = {(r["task"], r["setting"]): r for r in paired_csv if r["baseline"] == "eager"}
    row = rows[("sst2", "paper S=5")]
    assert json.loads(row["paired_diffs"]) == pytest.approx(list(diffs))
    assert float(row["paired_mean"]) == pytest.approx(mean)
    assert float(row["paired_ci95_low"]) == pytest.approx(mean - half)
    assert float(row["paired_ci95_high"]) == pytest.approx(mean + half)
    assert ("sst2", "eager") not in rows  # the baseline has no row of its own
    q = (out / "tables" / "quality.md").read_text()
    assert f"+{mean:.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n=3)" in q
    # seed 0 of sst2 recompute failed: the pair is lost, the others count (n=2, t with 1 df)
    rec = rows[("sst2", "recompute")]
    assert json.loads(rec["paired_seeds"]) == [1, 2]
    d = np.array(json.loads(rec["paired_diffs"]))
    assert float(rec["paired_ci95_high"]) - float(rec["paired_mean"]) == pytest.approx(
        12.706204736174696 * d.std(ddof=1) / np.sqrt(2))
    # the trade-off uses the same paired mean and interval
    pts = {(r["task"], r["setting"]): r for r in read_csv(out / "tables" / "tradeoff.csv")}
    assert float(pts[("sst2", "paper S=5")]["quality_delta"]) == pytest.approx(mean)
    assert float(pts[("sst2", "paper S=5")]["quality_ci95_low"]) == pytest.approx(mean - half)


def test_one_seed_has_no_interval_and_says_so(tmp_path):
    out = tmp_path / "smoke"
    write_fixture_runs(out, "smoke", failed=None)
    rep = render_report(out, write=False)
    q = rep.tables["quality"].to_markdown()
    assert "(n=1, no interval)" in q and "[" not in q.split("|---|")[1].replace("[1 failed]", "")
    paired = rep.tables["quality_paired"]
    assert {row[6] for row in paired.rows} == {"no interval (n=1)"}
    assert {row[3] for row in paired.rows} == {"eager", "recompute"}
    assert all(math.isnan(r["paired_ci95_low"]) for r in paired.csv_rows)


# ----------------------------------------------------------------------------- figures
def _labels(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if hasattr(t, "xyann")]


def _inside_axes(fig) -> bool:
    from softmax_approx.report.figures import text_box

    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        frame = ax.get_window_extent(r)
        for t in ax.texts:
            if hasattr(t, "xyann"):
                b = text_box(t, r)
                if b.x0 < frame.x0 - 1 or b.x1 > frame.x1 + 1 or b.y0 < frame.y0 - 1 or b.y1 > frame.y1 + 1:
                    return False
    return True


def test_which_policy_figure_labels_every_setting_without_overlap(tmp_path):
    from softmax_approx.report.figures import label_overlaps, plot_which_policy
    from fixtures_results import bench_records

    exp = next(e for e in load_experiments("cpu") if e.kind == "bench")
    recs = bench_records(exp, seq_lens=(128, 1024))
    fig = plot_which_policy(recs, tmp_path / "wp", "cpu")
    shown = [r for r in recs if r["seq_len"] == 1024]  # the longest n only
    assert sorted(_labels(fig)) == sorted(
        Setting(r["policy"], tuple(sorted(r["params"].items()))).label for r in shown)
    assert label_overlaps(fig) == [] and _inside_axes(fig)
    assert "n=1024" in fig.axes[0].get_title()
    assert (tmp_path / "wp.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "wp.pdf").exists()


def test_labels_never_overlap_even_in_a_tight_cluster():
    from matplotlib.transforms import Bbox

    from softmax_approx.report.figures import _new_figure, label_overlaps, place_labels

    fig = _new_figure((6, 4))
    ax = fig.subplots()
    xs = [50 + 0.3 * i for i in range(10)]
    ys = [10 + 0.2 * (i % 3) for i in range(10)]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 20)
    anns = place_labels(ax, xs, ys, [f"setting number {i}" for i in range(10)])
    assert len(anns) == 10 and label_overlaps(fig) == []
    r = fig.canvas.get_renderer()
    pts = ax.transData.transform(list(zip(xs, ys)))
    from softmax_approx.report.figures import text_box

    for a in anns:  # no label covers a marker's centre
        b = text_box(a, r)
        assert not any(Bbox.from_extents(x - 2, y - 2, x + 2, y + 2).overlaps(b) for x, y in pts)


def test_tradeoff_figure_has_no_overlapping_labels(out, defs):
    from softmax_approx.report.figures import label_overlaps, plot_tradeoff
    from softmax_approx.report.tradeoff import tradeoff_points

    out, _ = out
    rep = render_report(out, exp_dir=defs, write=False)
    pts = tradeoff_points(rep.experiments["tradeoff"], rep.cells["tradeoff"], rep.task_kinds,
                          rep.experiments["quality"])
    fig = plot_tradeoff(pts, title="t", profile="cpu")
    want = [p for p in pts if p["status"] == "completed" and not p["is_baseline"]]
    assert len(_labels(fig)) == len(want) and label_overlaps(fig) == [] and _inside_axes(fig)
    assert {ax.get_title() for ax in fig.axes if ax.get_visible()} >= {"sst2", "multi30k"}


def test_fidelity_figure_has_no_offset_text_under_its_titles(tmp_path):
    """Cosines like 0.99998 made matplotlib write an axis offset (+9.9998e-1) over the title."""
    from softmax_approx.report.figures import plot_fidelity

    out = tmp_path / "smoke"
    write_fixture_runs(out, "smoke", failed=None)
    for path in (out / "runs").rglob("results.json"):
        data = json.loads(path.read_text())
        if data["policy"] == "quant" and data.get("fidelity"):
            for i, layer in enumerate(data["fidelity"]["layers"].values()):
                layer["cosine"] = 0.999981 + 1e-6 * i
            path.write_text(json.dumps(data))
    rep = render_report(out, write=False)
    fig = plot_fidelity(rep.experiments["fidelity"], rep.cells["fidelity"])
    r = fig.canvas.get_renderer()
    fig.draw(r)
    for ax in fig.axes:
        assert ax.yaxis.get_offset_text().get_text() == ""
        assert ax.xaxis.get_offset_text().get_text() == ""
        assert ax.get_yscale() == "log"
    titles = [ax.title.get_window_extent(r) for ax in fig.axes]
    ticks = [t.get_window_extent(r) for ax in fig.axes for t in ax.get_yticklabels() if t.get_text()]
    assert not any(a.overlaps(b) for a in titles for b in ticks)


def test_partial_cells_say_how_many_seeds(out, defs):
    """A reproduction still running: a seed without results.json shrinks n and is named."""
    out, _ = out
    for path in (out / "runs").rglob("results.json"):
        data = json.loads(path.read_text())
        if data["task"] == "multi30k" and data["seed"] == 2 and data["policy_params"].get("S") == 5:
            path.unlink()
    render_report(out, exp_dir=defs)
    line = next(ln for ln in (out / "tables" / "quality.md").read_text().splitlines()
                if ln.startswith("| paper S=5 |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[3].endswith("(n=2) [1 not run]") and "(n=2)" in cells[4]
    assert "not run" not in cells[1]  # sst2 is complete


def test_cpu_plan_is_the_promised_one_and_renders_without_holes(tmp_path):
    """cpu: SST-2 every memory setting x 3 seeds, Multi30k 5 settings x 3, IMDB 4 x 3."""
    exps = load_experiments("cpu")
    plan = build_plan(exps, load_common())
    by_task: dict[str, set] = {}
    for spec in plan.runs.values():
        by_task.setdefault(spec.task, set()).add((spec.setting.label, spec.seed))
    memory = next(e for e in exps if e.name == "memory")
    # the activations experiment adds recompute + activations=exact / int8 on SST-2 and Multi30k
    whole = {(f"recompute + activations={a}", n) for a in ("exact", "int8") for n in (0, 1, 2)}
    assert by_task["sst2"] == {(s.label, n) for s in memory.settings for n in (0, 1, 2)} | whole
    m30k = {"eager", "paper S=5", "quant bits=8", "topk keep_ratio=1/4", "recompute"}
    assert by_task["multi30k"] == {(s, n) for s in m30k for n in (0, 1, 2)} | whole
    imdb = {"eager", "paper S=5", "quant bits=8", "recompute"}
    assert by_task["imdb"] == {(s, n) for s in imdb for n in (0, 1, 2)}
    assert set(by_task) == {"sst2", "multi30k", "imdb"}
    out = tmp_path / "cpu"
    write_fixture_runs(out, "cpu", failed=None)
    write_fixture_bench(out, "cpu")
    rep = render_report(out)
    for name in ("memory", "quality", "quality_paired", "tradeoff", "fidelity", "claims"):
        md = rep.tables[name].to_markdown()
        assert "not run" not in md and "failed" not in md and "not measured" not in md, name
    for name, table in rep.tables.items():  # published as they are: no path of this machine
        assert str(tmp_path) not in table.to_markdown(), name
    assert "Source: `OUT/bench/" in rep.tables["bench"].to_markdown()
    q = rep.tables["quality"].to_markdown()
    line = next(ln for ln in q.splitlines() if ln.startswith("| paper S=2 |"))
    assert line.count("not planned") == 2 * 2  # multi30k and imdb: value and paired Δ
    paper5 = next(ln for ln in q.splitlines() if ln.startswith("| paper S=5 |"))
    assert paper5.count("(n=3)") == 2 * 3 and "no interval)" not in q  # 3 tasks x (value, Δ)
    assert not any(r[0] == "imdb" and r[1] == "paper S=2" for r in rep.tables["memory"].rows)


def test_per_task_must_be_a_subset(tmp_path):
    d = tmp_path / "e"
    d.mkdir()
    (d / "m.yaml").write_text(textwrap.dedent("""\
        name: m
        kind: memory
        tasks: [sst2]
        policies: [eager]
        seeds: [0]
        per_task: {sst2: {policies: [recompute]}}
        """))
    with pytest.raises(ConfigError, match=r"per_task.sst2 lists \['recompute'\]"):
        load_experiments("cpu", d)
    (d / "m.yaml").write_text((d / "m.yaml").read_text().replace("sst2: {policies: [recompute]}",
                                                                 "imdb: {seeds: [0]}"))
    with pytest.raises(ConfigError, match="per_task.imdb: not one of"):
        load_experiments("cpu", d)
