"""The quality tables (kind `quality`): the test metric per task and policy setting over seeds,
and the paired differences to the baseline (and to `also_paired_with`) behind them."""

from __future__ import annotations

from typing import Any

from softmax_approx.plan import Experiment, Metric
from softmax_approx.report.formats import PAIRED_DEFINITION, Cells, base_row, baseline_cell, show_seeds
from softmax_approx.report.paired import paired, signed, unpaired_note
from softmax_approx.report.results import stats
from softmax_approx.report.table import Table


def task_kind(task: str, cells: Cells, kinds: dict[str, str]) -> str:
    """The kind the task's runs recorded, else the configured one, else classification."""
    for (t, _), c in cells.items():
        if t == task:
            for r in c.completed + c.failed:
                if r.run.task_kind:
                    return str(r.run.task_kind)
    return kinds.get(task, "classification")


def bleu_signature(cells: Cells) -> str:
    """The sacreBLEU signature the runs report, else the library's default one."""
    for c in cells.values():
        for r in c.completed:
            for src in (r.run.metrics, r.run.extra):
                for k in ("test/bleu_signature", "bleu_signature"):
                    if isinstance(src.get(k), str):
                        return src[k]
    try:
        from sacrebleu.metrics import BLEU

        return f"{BLEU().get_signature()} (sacreBLEU defaults; runs did not record one)"
    except Exception:  # pragma: no cover - sacrebleu is a dependency
        return "unknown"


def quality_cells(cells: Cells, exp: Experiment, kinds: dict[str, str],
                  base_name: str | None = None) -> dict[tuple, dict[str, Any]]:
    """Per cell: metric stats (scaled) and the difference of means to the baseline (the
    experiment's `baseline` unless `base_name` is given)."""
    base_name = base_name or exp.baseline
    out = {}
    for (task, setting), cell in cells.items():
        kind = task_kind(task, cells, kinds)
        metric: Metric = exp.metric(kind)
        scale = metric.scale
        st = cell.values(lambda r, k=metric.key: r.run.metrics.get(k))
        base = baseline_cell(cells, task, base_name)
        bst = base.values(lambda r, k=metric.key: r.run.metrics.get(k)) if base else stats([])
        delta = (st.mean - bst.mean) * scale if st.n and bst.n else float("nan")
        pair = paired(cell, base, lambda r, k=metric.key: r.run.metrics.get(k), scale)
        out[(task, setting)] = {"cell": cell, "kind": kind, "metric": metric, "stats": st,
                                "scale": scale, "delta": delta, "base": base, "paired": pair}
    return out


def paired_cell(info: dict[str, Any], base_name: str) -> str:
    """The paired Δ of one quality cell, or why there is none."""
    cell, base, pair = info["cell"], info["base"], info["paired"]
    if cell.status != "completed":
        return cell.status
    if base is None or base.status != "completed":
        return f"{base_name} {base.status if base else 'not run'}"
    if cell.setting == base.setting:
        return "baseline"
    if pair.n == 0:
        return "no common seed" if info["stats"].n else "not measured"
    return pair.fmt()


def quality_table(exp: Experiment, cells: Cells, kinds: dict[str, str]) -> Table:
    base_name = exp.baseline
    q = quality_cells(cells, exp, kinds)
    header = ["policy"]
    for task in exp.tasks:
        label = exp.metric(task_kind(task, cells, kinds)).label
        header += [f"{task} {label}", f"{task} paired Δ vs {base_name} [95% CI]"]
    rows, csv_rows = [], []
    for setting in exp.settings:
        row = [setting.label]
        for task in exp.tasks:
            info = q[(task, setting)]
            cell = info["cell"]
            row.append(show_seeds(cell, info["stats"], 2, info["scale"]))
            row.append(paired_cell(info, base_name))
            extra = {}
            if info["kind"] == "translation":
                tok = cell.values(lambda r: r.run.metrics.get("test/bleu_tok"))
                extra = {"test/bleu_tok_mean": tok.mean, "test/bleu_tok_std": tok.std}
            st = info["stats"]
            csv_rows.append(base_row(exp, cell) | {
                "metric": info["metric"].key, "scale": info["scale"],
                "mean": st.mean * info["scale"], "std": st.std * info["scale"],
                f"delta_vs_{base_name}": info["delta"],
                "seeds": [r.run.seed for r in cell.completed]} | info["paired"].as_row() | extra)
        rows.append(row)
    kinds_used = {q[k]["kind"] for k in q}
    notes = [f"Mean ± sample std (ddof=1) over seeds {exp.seeds}; n = completed runs.",
             PAIRED_DEFINITION.format(base=base_name),
             f"The CSV also has `delta_vs_{base_name}` (difference of the means over all "
             "completed seeds) and the per-seed differences."]
    for kind in sorted(kinds_used):
        m = exp.metric(kind)
        definition = m.definition if m.definition is not None else f"{m.key} ({kind})"
        notes.append(" ".join(definition.split()))
    if "translation" in kinds_used:
        notes.append(f"sacreBLEU signature: `{bleu_signature(cells)}`.")
    splits = {}
    for (task, _), cell in cells.items():
        for r in cell.completed:
            if r.run.extra.get("test_split"):
                splits.setdefault(task, str(r.run.extra["test_split"]))
    if splits:
        notes.append("Test split: " + "; ".join(f"{t}: {s}" for t, s in splits.items()) + ".")
    return Table(exp.name, exp.title, exp.profile, header, rows, notes, csv_rows)


def paired_table(exp: Experiment, cells: Cells, kinds: dict[str, str]) -> Table:
    """Per task and non-baseline setting: each seed's difference to the baseline, their mean
    and 95% t-interval (the numbers behind the quality table's paired Δ and the claims); then
    the same against each of the experiment's `also_paired_with` references."""
    base_name = exp.baseline
    refs = [base_name] + [b for b in exp.also_paired_with if b != base_name]
    header = ["task", "policy", "metric", "vs", "per-seed Δ", "mean Δ", "95% CI", "n"]
    rows, csv_rows = [], []
    for ref in refs:
        _paired_rows(quality_cells(cells, exp, kinds, ref), ref, exp, rows, csv_rows)
    notes = [PAIRED_DEFINITION.format(base=" / ".join(refs)),
             f"Seeds planned: {exp.seeds}. Units: accuracy points (percent) or BLEU."]
    if len(refs) > 1:
        notes.append(exp.also_paired_why or f"Also paired with {', '.join(refs[1:])}.")
    return Table(f"{exp.name}_paired", f"{exp.title}: paired differences to {' and '.join(refs)}",
                 exp.profile, header, rows, notes, csv_rows)


def _paired_rows(q: dict, base_name: str, exp: Experiment, rows: list, csv_rows: list) -> None:
    """The paired table's rows against one reference setting."""
    for (task, setting), info in q.items():
        cell, base, pair = info["cell"], info["base"], info["paired"]
        if (base is not None and setting == base.setting) or cell.status == "not planned":
            continue
        label = info["metric"].label
        status = paired_cell(info, base_name)
        if pair.n == 0:
            rows.append([task, setting.label, label, base_name, status, status, status, "0"])
        else:
            per_seed = ", ".join(f"s{s}: {signed(d)}" for s, d in zip(pair.seeds, pair.diffs))
            note = unpaired_note(cell, base, pair)
            ci = ("no interval (n=1)" if pair.n == 1
                  else f"[{signed(pair.low)}, {signed(pair.high)}]")
            rows.append([task, setting.label, label, base_name, per_seed + (f" ({note})" if note else ""),
                         signed(pair.mean), ci, str(pair.n)])
        csv_rows.append(base_row(exp, cell) | {"metric": info["metric"].key, "scale": info["scale"],
                                               "baseline": base_name} | pair.as_row())


def quality_tables(exp: Experiment, cells: Cells, kinds: dict[str, str]) -> list[Table]:
    return [quality_table(exp, cells, kinds), paired_table(exp, cells, kinds)]
