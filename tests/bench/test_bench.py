"""The benchmark CLI: records carry the documented keys and consistent derived figures."""

import json

import pytest
import torch

from softmax_approx import bench

KEYS = {
    "policy", "params", "seq_len", "batch", "heads", "head_dim", "dropout_p", "logits",
    "state_bytes_per_score", "attention_saved_bytes", "reduction_vs_eager", "reduction_vs_exact",
    "module_reduction_vs_eager", "time_ratio_vs_eager", "grad_cosine", "grad_rel_err",
}


def test_bench_writes_records_with_documented_keys(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--seq-len", "32", "--batch", "1", "--heads", "2", "--head-dim", "8",
                     "--repeats", "1", "--logits", "peaked", "--policy", "paper:S=2",
                     "--policy", "topk:keep_ratio=0.25", "--json", str(out), "--markdown", str(tmp_path / "b.md")])
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["policy"] for r in records] == ["eager", "exact", "paper", "topk"]
    for r in records:
        assert KEYS <= set(r)
    eager, exact, paper, topk = records
    assert eager["state_bytes_per_score"] == 12.0              # CPU: probs + float mask + dropped
    scores = 2 * 32 * 32
    assert 4.0 <= exact["state_bytes_per_score"] <= 4.0 + 64 / scores   # fp32 probs + the dropout seed tensor
    assert eager["reduction_vs_eager"] == 0.0 and exact["reduction_vs_exact"] == 0.0
    assert paper["reduction_vs_eager"] == pytest.approx(1 - paper["state_bytes_per_score"] / 12.0)
    assert paper["params"] == {"S": 2} and topk["params"] == {"keep_ratio": 0.25}
    assert exact["grad_cosine"] > 0.999999 and 0.9 < paper["grad_cosine"] < 1.0
    assert "| peaked | 32 | paper(S=2) |" in (tmp_path / "b.md").read_text()
    assert "paper(S=2)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["--policy", "paper:S=0"], "S must be an integer >= 1"),
    (["--policy", "nope"], "unknown policy"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--amp", "bf16", "--dtype", "bf16"], "--amp bf16 autocasts fp32 inputs"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_bench_rejects_bad_options_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


NEW_KEYS = {"amp", "seconds_infer", "infer_time_ratio_vs_eager", "time_ratio_vs_sdpa", "peak_bytes_fwd_bwd",
            "compiled_seconds_fwd_bwd", "compiled_time_ratio", "compile_error"}
TINY = ["--seq-len", "16", "--batch", "1", "--heads", "2", "--head-dim", "8", "--repeats", "1", "--logits", "random"]


def _run(tmp_path, argv):
    out = tmp_path / "bench.json"
    assert bench.main([*TINY, *argv, "--json", str(out), "--markdown", str(tmp_path / "b.md")]) == 0
    return json.loads(out.read_text()), (tmp_path / "b.md").read_text()


def test_infer_and_sdpa_ratios_are_consistent(tmp_path):
    records, md = _run(tmp_path, ["--policy", "paper:S=2", "--policy", "sdpa"])
    assert [r["policy"] for r in records] == ["eager", "exact", "paper", "sdpa"]
    eager, sdpa = records[0], records[-1]
    for r in records:
        assert NEW_KEYS <= set(r)
        assert r["seconds_infer"] > 0
        assert r["infer_time_ratio_vs_eager"] > 0              # interleaved with eager: see below
        assert r["time_ratio_vs_sdpa"] == pytest.approx(r["seconds_fwd_bwd"] / sdpa["seconds_fwd_bwd"])
        assert r["peak_bytes_fwd_bwd"] is None                 # CUDA only
        assert r["compiled_time_ratio"] is None and r["compile_error"] is None   # no --compile
    assert eager["infer_time_ratio_vs_eager"] == 1.0 and sdpa["time_ratio_vs_sdpa"] == 1.0
    assert "infer time / eager" in md and "compiled" not in md


def test_infer_ratio_is_timed_interleaved_with_eager(monkeypatch):
    """The ratio is this policy's median over eager's median, eager's calls alternating with it."""
    from softmax_approx.bench import attention as mod
    calls = []
    monkeypatch.setattr(mod, "_infer_step", lambda q, k, v, p, name, params, amp=None: name)
    fake = {"paper": [3.0, 5.0, 4.0], "eager": [1.0, 2.0, 4.0]}
    monkeypatch.setattr(mod, "median_seconds", lambda step, n, dev: (calls.append(step), fake[step].pop(0))[1])
    seconds, ratio = mod.time_infer(torch.zeros(1), None, None, 0.0, "paper", {}, 3)
    assert calls == ["paper", "eager"] * 3
    assert seconds == 4.0 and ratio == 2.0


def test_without_sdpa_the_sdpa_ratio_is_null(tmp_path):
    records, _ = _run(tmp_path, ["--policy", "exact"])
    assert [r["policy"] for r in records] == ["eager", "exact"]
    assert all(r["time_ratio_vs_sdpa"] is None for r in records)


def test_compile_reports_a_ratio_or_the_error_per_policy(tmp_path, monkeypatch):
    """A policy that compiles gets a positive ratio; one that cannot is recorded, not fatal."""
    from softmax_approx.bench import attention as mod

    real = mod.attention

    def data_dependent(q, k, v, **kw):                       # a graph break: fails fullgraph=True
        if kw.get("policy") == "exact" and q.sum() > -1e9:
            return real(q, k, v, **kw)
        return real(q, k, v, **kw)

    monkeypatch.setattr(mod, "attention", data_dependent)
    records, md = _run(tmp_path, ["--policy", "exact", "--compile", "--compile-backend", "aot_eager"])
    eager, exact = records
    assert exact["compiled_time_ratio"] is None and exact["compiled_seconds_fwd_bwd"] is None
    assert isinstance(exact["compile_error"], str) and "\n" not in exact["compile_error"]
    if eager["compile_error"] is None:                       # the core compiles with fullgraph=True
        assert eager["compiled_time_ratio"] == pytest.approx(eager["compiled_seconds_fwd_bwd"] / eager["seconds_fwd_bwd"])
        assert eager["compile_seconds_first_call"] > 0
    else:                                                    # before the core supports torch.compile
        assert eager["compiled_time_ratio"] is None
    assert "| random | 16 | exact |" in md and "Compile errors" in md and f"- exact: `{exact['compile_error']}`" in md


def test_compiled_function_is_reused_across_logits(tmp_path, monkeypatch):
    """One compilation per (policy, shape, precision): the second generator reuses it."""
    from softmax_approx.bench import attention as mod

    real = mod.attention

    def plain(q, k, v, dropout_p=0.0, policy="eager", training=True, **params):
        if torch.compiler.is_compiling():                    # what compiles, whatever the core does
            probs = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)
            return torch.nn.functional.dropout(probs, dropout_p, training) @ v
        return real(q, k, v, dropout_p=dropout_p, policy=policy, training=training, **params)

    monkeypatch.setattr(mod, "attention", plain)
    out = tmp_path / "c.json"
    assert bench.main([*TINY[:-2], "--logits", "random", "peaked", "--policy", "exact", "--compile",
                       "--compile-backend", "aot_eager", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["logits"], r["policy"]) for r in records] == [(g, p) for g in ("random", "peaked") for p in ("eager", "exact")]
    for r in records:
        assert r["compile_error"] is None and r["compiled_time_ratio"] > 0
        assert r["compiled_time_ratio"] == pytest.approx(r["compiled_seconds_fwd_bwd"] / r["seconds_fwd_bwd"])
    first = {(r["logits"], r["policy"]): r["compile_seconds_first_call"] for r in records}
    assert first["random", "eager"] == first["peaked", "eager"] != first["random", "exact"]


def test_amp_autocasts_fp32_inputs(tmp_path):
    records, _ = _run(tmp_path, ["--policy", "paper:S=2", "--amp", "bf16"])
    for r in records:
        assert r["dtype"] == "fp32" and r["amp"] == "bf16"
        assert 0.98 < r["grad_cosine"] < 1.0                  # bf16 rounding: close, never exact
    assert records[1]["grad_rel_err"] > 1e-3                  # exact policy, bf16 matmuls: not fp32's 1e-7


def test_report_bench_table_shows_the_infer_ratio():
    """report/bench.py: an `infer ×eager` column per length; n/a for records older than it."""
    from fixtures_results import bench_records
    from softmax_approx.report.bench import bench_table
    from softmax_approx.plan import load_experiments

    exp = next(e for e in load_experiments("smoke") if e.kind == "bench")
    recs = bench_records(exp, seq_lens=(128,))
    for r in recs:
        r["infer_time_ratio_vs_eager"] = 1.0 if r["policy"] == "eager" else 1.25
    table = bench_table(exp, "completed", recs, "bench.json")
    col = table.header.index("n=128 infer ×eager")
    assert [row[col] for row in table.rows] == ["1.00" if s.policy == "eager" else "1.25" for s in exp.settings]
    old = bench_table(exp, "completed", bench_records(exp, seq_lens=(128,)), "bench.json")
    assert {row[col] for row in old.rows} == {"n/a"}
