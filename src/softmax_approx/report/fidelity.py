"""The fidelity tables (kind `fidelity`): the in-training probe's gradient cosine and relative
error per policy setting, and the same per attention layer."""

from __future__ import annotations

from typing import Any

from softmax_approx.plan import Experiment
from softmax_approx.report.formats import Cells, base_row, show_seeds
from softmax_approx.report.results import Record
from softmax_approx.report.table import Table

LAYER_COLUMNS = ["task", "setting", "seed", "layer", "cosine", "rel_err"]


def _layers(record: Record) -> dict[str, Any]:
    return ((record.run.fidelity or {}).get("layers")) or {}


def fidelity_of(record: Record, what: str = "cosine") -> float | None:
    """Mean over attention layers of the probe's `what` (cosine or rel_err); None if absent."""
    vals = [v.get(what) for v in _layers(record).values()
            if isinstance(v, dict) and v.get(what) is not None]
    return sum(vals) / len(vals) if vals else None


def fidelity_layers(cells: Cells) -> list[dict[str, Any]]:
    """One row per (task, setting, seed, layer): the per-layer view used by the notebook."""
    rows = []
    for (task, setting), cell in cells.items():
        for r in cell.completed:
            for name, v in _layers(r).items():
                rows.append({"task": task, "policy": setting.policy, "setting": setting.label,
                             "params": setting.params_dict, "seed": r.run.seed, "layer": name,
                             "cosine": v.get("cosine"), "rel_err": v.get("rel_err")})
    return rows


def fidelity_table(exp: Experiment, cells: Cells) -> Table:
    header = ["policy"]
    for task in exp.tasks:
        header += [f"{task} grad cosine", f"{task} grad rel. err."]
    rows, csv_rows = [], []
    for setting in exp.settings:
        row = [setting.label]
        for task in exp.tasks:
            cell = cells[(task, setting)]
            cos, rel = cell.values(fidelity_of), cell.values(lambda r: fidelity_of(r, "rel_err"))
            row += [show_seeds(cell, cos, 4), show_seeds(cell, rel, 4)]
            csv_rows.append(base_row(exp, cell) | {"cosine_mean": cos.mean, "cosine_std": cos.std,
                                                   "rel_err_mean": rel.mean, "rel_err_std": rel.std})
        rows.append(row)
    notes = [exp.description or "Gradient fidelity from the in-training probe.",
             f"Per run: mean over attention layers; then mean ± sample std over seeds {exp.seeds}."]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes, csv_rows)


def fidelity_layers_table(exp: Experiment, cells: Cells) -> Table:
    layers = fidelity_layers(cells)
    return Table(f"{exp.name}_layers", f"{exp.title}: per layer", exp.profile, LAYER_COLUMNS,
                 [[str(r[k]) for k in LAYER_COLUMNS] for r in layers],
                 ["One row per task, setting, seed and attention layer."], layers)
