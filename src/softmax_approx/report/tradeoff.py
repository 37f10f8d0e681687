"""The trade-off table (kind `tradeoff`): per task and setting, the attention memory reduction
against the baseline beside the paired quality change (the points of the trade-off figure)."""

from __future__ import annotations

import math
from typing import Any

from softmax_approx.plan import Experiment
from softmax_approx.report.formats import (
    MEMORY_DEFINITION,
    PAIRED_DEFINITION,
    Cells,
    baseline_cell,
    mem_stats,
    reduction_pct,
)
from softmax_approx.report.paired import Paired, signed
from softmax_approx.report.quality import quality_cells
from softmax_approx.report.table import Table


def tradeoff_points(exp: Experiment, cells: Cells, kinds: dict[str, str],
                    quality_exp: Experiment | None = None) -> list[dict[str, Any]]:
    """One point per (task, non-baseline setting) with memory reduction and quality change."""
    base_name = exp.baseline
    q = quality_cells(cells, quality_exp or exp, kinds)
    points = []
    for (task, setting), cell in cells.items():
        base = baseline_cell(cells, task, base_name)
        red = float("nan")
        if base is not None:
            red = reduction_pct(mem_stats(cell, "attention_bytes").mean,
                                mem_stats(base, "attention_bytes").mean)
        info = q[(task, setting)]
        pair: Paired = info["paired"]
        # the paired mean where seeds pair up (it is the difference of means over those seeds)
        delta = pair.mean if pair.n else info["delta"]
        points.append({"task": task, "policy": setting.policy, "setting": setting.label,
                       "params": setting.params_dict, "status": cell.status,
                       "kind": info["kind"], "metric": info["metric"].key,
                       "metric_label": info["metric"].label,
                       "memory_reduction_pct": red, "quality_delta": delta,
                       "quality_ci95_low": pair.low, "quality_ci95_high": pair.high,
                       "n_paired": pair.n,
                       "is_baseline": setting.policy == base_name and not setting.params})
    return points


def tradeoff_table(exp: Experiment, points: list[dict[str, Any]]) -> Table:
    header = ["task", "policy", "attention memory reduction vs eager",
              "quality paired Δ vs eager [95% CI]"]
    rows = []
    for p in points:
        if p["status"] == "not planned":
            continue
        if p["status"] != "completed":
            rows.append([p["task"], p["setting"], p["status"], p["status"]])
            continue
        red, d = p["memory_reduction_pct"], p["quality_delta"]
        if math.isnan(d):
            q = "not measured"
        elif p["n_paired"] >= 2:
            q = (f"{signed(d)} [{signed(p['quality_ci95_low'])}, {signed(p['quality_ci95_high'])}] "
                 f"(n={p['n_paired']}, {p['metric']})")
        else:
            q = f"{signed(d)} (n={p['n_paired'] or 'unpaired'}, no interval, {p['metric']})"
        rows.append([p["task"], p["setting"],
                     "not measured" if math.isnan(red) else f"{red:.1f}%", q])
    notes = [exp.description, MEMORY_DEFINITION, PAIRED_DEFINITION.format(base="eager")]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes,
                 [dict(p, experiment=exp.name, profile=exp.profile) for p in points])
