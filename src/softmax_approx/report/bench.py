"""The bench table: records of `python -m softmax_approx.bench` (one attention call per policy
on synthetic inputs) laid out per policy setting and sequence length.

Why beside the training-run memory table: training runs use the sequence lengths of their
data (40-64 tokens in smoke), where the n x n part is small; the benchmark shows how the
state and the whole call scale at the lengths where the paper's memory claim is about.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from softmax_approx.plan import Experiment, Setting
from softmax_approx.report.table import Table


def load_bench(out: Path, exp: Experiment) -> tuple[str, list[dict[str, Any]], str]:
    """(status, records, source file relative to OUT, so published tables name no machine path) for
    `exp`: OUT/bench/<key>.json written by reproduce, else OUT/bench.json written by `make bench`;
    `failed` if only a failure record exists."""
    path = out / "bench" / f"{exp.bench_key()}.json"
    for p in (path, out / "bench.json"):
        if p.exists():
            try:
                data = json.loads(p.read_text())
            except ValueError:
                return "failed", [], _in_out(p, out)
            recs = data if isinstance(data, list) else data.get("records", [])
            return "completed", [r for r in recs if isinstance(r, dict)], _in_out(p, out)
    failed = path.with_suffix(".failed.json")
    if failed.exists():
        return "failed", [], _in_out(failed, out)
    return "not run", [], _in_out(path, out)


def _in_out(p: Path, out: Path) -> str:
    return "OUT/" + p.relative_to(out).as_posix()


def _match(rec: dict[str, Any], setting: Setting) -> bool:
    return setting.matches(str(rec.get("policy")), dict(rec.get("params") or {}))


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def _ratio(x: Any) -> str:
    """A time ratio; n/a for records written before the benchmark measured it."""
    return "n/a" if x is None else f"{float(x):.2f}"


def bench_table(exp: Experiment, status: str, records: list[dict[str, Any]], source: str) -> Table:
    groups = sorted({(str(r.get("logits")), int(r.get("seq_len", 0))) for r in records})
    if not groups:
        groups = [("", 0)]
    header = ["policy"]
    for logits, n in groups:
        tag = f"n={n}" + (f" {logits}" if len({g[0] for g in groups}) > 1 else "")
        header += [f"{tag} state B/score", f"{tag} state vs eager", f"{tag} call vs eager",
                   f"{tag} time ×eager", f"{tag} infer ×eager", f"{tag} grad cos"]
    rows = []
    for setting in exp.settings:
        row = [setting.label]
        for logits, n in groups:
            rec = next((r for r in records if _match(r, setting) and str(r.get("logits")) == logits
                        and int(r.get("seq_len", 0)) == n), None)
            if rec is None:
                row += [status if status != "completed" else "not run"] * 6
                continue
            row += [f"{float(rec['state_bytes_per_score']):.3f}", _pct(rec.get("reduction_vs_eager")),
                    _pct(rec.get("module_reduction_vs_eager")),
                    f"{float(rec.get('time_ratio_vs_eager', float('nan'))):.2f}",
                    _ratio(rec.get("infer_time_ratio_vs_eager")),
                    f"{float(rec.get('grad_cosine', float('nan'))):.5f}"]
        rows.append(row)
    first = records[0] if records else {}
    shape = (f"B={first.get('batch')}, H={first.get('heads')}, head_dim={first.get('head_dim')}, "
             f"dropout={first.get('dropout_p')}, {first.get('dtype')} on {first.get('device')}"
             if first else "no records")
    notes = [exp.description, f"Shape: {shape}. Source: `{source}`."]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes,
                 [dict(r, experiment=exp.name, profile=exp.profile) for r in records])


def matching(records: list[dict[str, Any]], policy: str | None,
             params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Records of `policy` (and `params`, a subset match; no policy: all)."""
    if not policy:
        return list(records)
    want = Setting(policy, tuple(sorted((params or {}).items())))
    return [r for r in records if _match(r, want)]


def at_longest(records: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    """(n, logits, records) at the longest sequence length, one logits kind (peaked first):
    where the n x n part dominates, i.e. where a policy choice matters."""
    if not records:
        return 0, "", []
    n = max(int(r.get("seq_len", 0)) for r in records)
    kinds = sorted({str(r.get("logits")) for r in records if int(r.get("seq_len", 0)) == n},
                   key=lambda k: (k != "peaked", k))
    return n, kinds[0], [r for r in records if int(r.get("seq_len", 0)) == n
                         and str(r.get("logits")) == kinds[0]]
