"""The benchmark CLI: records carry the documented keys and consistent derived figures."""

import json

import pytest

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
    assert exact["state_bytes_per_score"] == 4.0
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
])
def test_bench_rejects_bad_options_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err
