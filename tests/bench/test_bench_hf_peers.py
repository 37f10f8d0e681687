"""`python -m softmax_approx.bench hf --peers`: the peers' rows and our whole-model modes, on a
tiny config (numbers are not checked against targets here, only their order and bookkeeping)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_peers_rows_measured_on_one_model(tmp_path):
    from softmax_approx.bench import main
    from softmax_approx.bench.hf import PEER_IMPLEMENTATIONS, parse_spec

    js, md = tmp_path / "peers.json", tmp_path / "peers.md"
    argv = ["hf", "--model", "tiny", "--seq-len", "32", "--batch", "1", "--peers", "--peak", "--time",
            "--repeats", "1", "--json", str(js), "--markdown", str(md)]
    assert main(argv) == 0
    recs = {r["implementation"]: r for r in json.loads(js.read_text())}
    assert list(recs) == [parse_spec(s)[0] for s in PEER_IMPLEMENTATIONS]
    total = {k: r["total_bytes"] for k, r in recs.items()}
    # checkpointing every layer keeps only the layers' inputs (and what lies outside them)
    assert total["checkpoint"] < total["checkpoint-every-other"] < total["eager"]
    assert total["selective-checkpoint"] < total["eager"]
    # PyTorch's fused kernel without attention dropout keeps what `recompute` keeps, at this size
    assert total["sdpa-no-attention-dropout"] < total["sdpa"] == total["eager"]
    assert total["compress-int8-ln8"] < total["compress-int8-ln16"] < total["compress-int8"] < total["compress-exact"] < total["recompute"]
    assert recs["checkpoint"]["attention_bytes"] == 0  # its layers run without autograd in forward
    assert all(r["time_ratio_vs_eager"] > 0 and r["peak_bytes"] >= 0 for r in recs.values())
    table = md.read_text()
    assert "peak MiB of a step" in table and "time / eager" in table
    assert "activation checkpointing, every other layer" in table
    assert len(table.strip().splitlines()) == 2 + len(recs)


def test_unknown_configuration_is_a_usage_error(capsys):
    from softmax_approx.bench import main

    with pytest.raises(SystemExit) as exc:
        main(["hf", "--model", "tiny", "--implementation", "checkpoint-every-third"])
    assert exc.value.code == 2 and "checkpoint-every-third" in capsys.readouterr().err
