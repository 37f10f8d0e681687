"""The memory tables (kind `memory`): activation bytes per policy setting and their reduction
against the baseline (and the reference policy), plus the split per attention kind."""

from __future__ import annotations

from softmax_approx.plan import Experiment
from softmax_approx.report.formats import (
    MEMORY_DEFINITION,
    MEMORY_KEYS,
    Cells,
    base_row,
    baseline_cell,
    fmt_bytes,
    fmt_reduction,
    mem_stats,
    reduction_pct,
)
from softmax_approx.report.results import Cell, Record, Stats, stats
from softmax_approx.report.table import Table


def _by_kind(r: Record) -> dict:
    return (r.run.memory or {}).get("by_kind") or {}


def memory_table(exp: Experiment, cells: Cells) -> Table:
    base_name, ref_name = exp.baseline, exp.reference
    has_ref = any(s.policy == ref_name for s in exp.settings) and ref_name != base_name
    header = ["task", "policy", "batch (B×L)", "attention activation", "softmax state",
              "total activation", f"attention vs {base_name}", f"softmax state vs {base_name}",
              f"total vs {base_name}"]
    header += [f"attention vs {ref_name}"] if has_ref else []
    rows, csv_rows = [], []
    for (task, setting), cell in cells.items():
        if cell.status == "not planned":
            continue
        base, ref = baseline_cell(cells, task, base_name), baseline_cell(cells, task, ref_name)
        m = {k: mem_stats(cell, k) for k in MEMORY_KEYS}
        bm = {k: mem_stats(base, k) if base else stats([]) for k in MEMORY_KEYS}
        rm = mem_stats(ref, "attention_bytes") if ref else stats([])
        shapes = {tuple((r.run.memory or {}).get("batch_shape") or ()) for r in cell.completed}
        shape = " / ".join("×".join(map(str, s)) for s in sorted(shapes) if s) or "n/a"

        def shown(st: Stats, cell: Cell = cell) -> str:
            return cell.show(st) if cell.status != "completed" or st.n == 0 else fmt_bytes(st.mean)

        def vs(key: str, b: Stats, bcell: Cell | None, name: str, cell: Cell = cell) -> str:
            if cell.status != "completed":
                return cell.status
            if bcell is None or bcell.status != "completed":
                return f"{name} {bcell.status if bcell else 'not run'}"
            return fmt_reduction(m[key].mean, b.mean)

        rows.append([
            task, setting.label, shape if cell.status == "completed" else cell.status,
            shown(m["attention_bytes"]), shown(m["softmax_state_bytes"]),
            shown(m["total_activation_bytes"]),
            vs("attention_bytes", bm["attention_bytes"], base, base_name),
            vs("softmax_state_bytes", bm["softmax_state_bytes"], base, base_name),
            vs("total_activation_bytes", bm["total_activation_bytes"], base, base_name),
        ] + ([vs("attention_bytes", rm, ref, ref_name)] if has_ref else []))
        row = base_row(exp, cell) | {"batch_shape": shape}
        for k in MEMORY_KEYS:
            row[f"{k}_mean"], row[f"{k}_std"] = m[k].mean, m[k].std
        row[f"attention_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["attention_bytes"].mean, bm["attention_bytes"].mean)
        row[f"softmax_state_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["softmax_state_bytes"].mean, bm["softmax_state_bytes"].mean)
        row[f"total_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["total_activation_bytes"].mean, bm["total_activation_bytes"].mean)
        kinds = sorted({k for r in cell.completed for k in _by_kind(r)})
        for kind in kinds:  # e.g. encoder_self / decoder_self / cross, when the run reports it
            for field_ in ("bytes", "softmax_state_bytes"):
                row[f"{kind}_{field_}_mean"] = cell.values(
                    lambda r, k=kind, f=field_: (_by_kind(r).get(k) or {}).get(f)).mean
        if has_ref:
            row[f"attention_reduction_vs_{ref_name}_pct"] = reduction_pct(
                m["attention_bytes"].mean, rm.mean)
        csv_rows.append(row)
    notes = [MEMORY_DEFINITION, f"Mean over seeds {exp.seeds}; bytes are per training step "
             "on the batch shown (fp32 unless the task's config says otherwise)."]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes + _devices(cells), csv_rows)


def memory_by_kind_table(exp: Experiment, cells: Cells) -> Table | None:
    """Per attention kind (encoder self / decoder causal self / cross), for the tasks whose
    runs report ``memory.by_kind`` (translation); None when no run does."""
    kinds: list[str] = []
    for cell in cells.values():
        for r in cell.completed:
            kinds += [k for k in _by_kind(r) if k not in kinds]
    if not kinds:
        return None
    header = ["task", "policy"] + [f"{k} {what}" for k in kinds for what in ("attention", "softmax state")]
    rows, csv_rows = [], []
    for (task, setting), cell in cells.items():
        if not any(_by_kind(r) for r in cell.completed):
            continue
        row, csv_row = [task, setting.label], base_row(exp, cell)
        for kind in kinds:
            for field_, label in (("bytes", "attention"), ("softmax_state_bytes", "softmax state")):
                st = cell.values(lambda r, k=kind, f=field_: (_by_kind(r).get(k) or {}).get(f))
                row.append(fmt_bytes(st.mean) if st.n else cell.show(st))
                csv_row[f"{kind}_{field_}_mean"] = st.mean if st.n else None
        rows.append(row)
        csv_rows.append(csv_row)
    notes = [
        "Bytes saved for backward by each kind of attention module, summed over the layers of "
        "that kind, on the same training batch as the memory table (ActivationMeter scoped per "
        "module). attention = everything the modules keep (projections included); softmax "
        "state = the policy's n x n part.",
        f"Mean over seeds {exp.seeds}.",
    ]
    return Table(f"{exp.name}_by_kind", f"{exp.title}: by attention kind", exp.profile, header, rows, notes, csv_rows)


def _devices(cells: Cells) -> list[str]:
    devs = set()
    for cell in cells.values():
        for r in cell.completed:
            hw = (r.run.provenance or {}).get("hardware") or {}
            gpus = hw.get("gpus") or []
            dev = hw.get("device") or (", ".join(map(str, gpus)) if gpus else None)
            if not dev and hw:
                dev = f"CPU ({hw.get('machine') or hw.get('processor') or 'unknown'})"
            if dev:
                devs.add(str(dev))
    return [f"Measured on: {', '.join(sorted(devs))}."] if devs else []


def memory_tables(exp: Experiment, cells: Cells) -> list[Table]:
    """The memory table, and the per-kind one when some run reports ``memory.by_kind``."""
    by_kind = memory_by_kind_table(exp, cells)
    return [memory_table(exp, cells)] + ([by_kind] if by_kind is not None else [])
