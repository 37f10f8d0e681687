"""One real end-to-end reproduce: two runs through the real `python -m softmax_approx.train`
CLI on fixture SST-2 files, two at a time, then the report; a second call skips both.
About 12 s on 2 CPU cores (most of it importing torch/lightning), so not marked slow."""

from __future__ import annotations

import io
import json
import textwrap

from fixtures_data import write_sst2
from softmax_approx import reproduce

TINY = ["logger=none", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=32",
        "trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "trainer.val_check_interval=null", "task.datamodule.subset=null",
        "task.datamodule.vocab_size=200", "task.datamodule.batch_size=8",
        "task.datamodule.max_len=32", "task.datamodule.val_size=16", "memory.warmup_steps=1",
        "timing.skip_steps=0", "probe.every_n_steps=2"]


def write_defs(tmp_path, overrides=TINY):
    """experiments/ with a ``smoke`` profile (``overrides``) and one memory experiment: eager and
    paper S=2 on sst2, seed 0."""
    defs = tmp_path / "experiments"
    defs.mkdir()
    (defs / "_common.yaml").write_text(
        "task_kinds: {sst2: classification}\nprofiles:\n  smoke:\n    overrides:\n"
        + "".join(f"      - {o}\n" for o in overrides))
    (defs / "memory.yaml").write_text(textwrap.dedent("""\
        name: memory
        kind: memory
        tasks: [sst2]
        policies: [eager, {name: paper, grid: {S: [2]}}]
        seeds: [0]
        """))
    return defs


def test_reproduce_two_real_runs(tmp_path):
    data = tmp_path / "data"
    write_sst2(data, n_train=96, n_dev=16)
    defs = write_defs(tmp_path)
    out = tmp_path / "out"
    buf = io.StringIO()
    rc = reproduce.run("smoke", out, data, jobs=2, exp_dir=defs, stream=buf)
    logs = {p.parent.name: p.read_text()[-2000:] for p in out.rglob("reproduce.log")}
    assert rc == 0, (buf.getvalue(), logs)
    res = [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("results.json"))]
    assert sorted(r["policy"] for r in res) == ["eager", "paper"]
    assert all(r["status"] == "completed" and r["profile"] == "smoke" for r in res)
    assert all(r["experiment"] == "memory" for r in res)
    md = (out / "tables" / "memory.md").read_text()
    assert "not run" not in md and "failed" not in md and "paper S=2" in md
    buf = io.StringIO()
    assert reproduce.run("smoke", out, data, exp_dir=defs, stream=buf) == 0
    assert "2 completed (skipped), 0 to run" in buf.getvalue()
