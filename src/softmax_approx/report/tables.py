"""Build the tables of each experiment kind and render them as Markdown, LaTeX and CSV.

A `Table` holds display rows (strings, for md/tex) and long-format rows (numbers, for csv)
so the CSV stays machine-readable while the Markdown stays readable. Every table carries
its profile and the definition of each number it shows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softmax_approx.report.definitions import Experiment, Setting
from softmax_approx.report.io import write_text
from softmax_approx.report.paired import Paired, paired, signed, unpaired_note
from softmax_approx.report.results import Cell, Record, Stats, stats

MEMORY_KEYS = ("attention_bytes", "softmax_state_bytes", "total_activation_bytes")

MEMORY_DEFINITION = (
    "attention activation = bytes of the tensors saved for backward inside the attention "
    "modules during one training step (ActivationMeter: storages deduplicated, parameters "
    "excluded); softmax state = the n x n part of it (the policy's kept state plus a dropout "
    "mask if one is kept); total activation = the same over the whole model; reduction vs X = "
    "1 - bytes(policy) / bytes(X), with the ratio bytes(X) / bytes(policy) in brackets."
)


@dataclass
class Table:
    name: str
    title: str
    profile: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Profile: `{self.profile}`.", ""]
        lines += [f"- {n}" for n in self.notes]
        lines += ["", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        cols = "l" * len(self.header)
        out = [
            f"% {self.title} (profile: {self.profile})",
            *[f"% {n}" for n in self.notes],
            "\\begin{tabular}{" + cols + "}",
            "\\toprule",
            " & ".join(_tex(h) for h in self.header) + " \\\\",
            "\\midrule",
            *[" & ".join(_tex(c) for c in row) + " \\\\" for row in self.rows],
            "\\bottomrule",
            "\\end{tabular}",
        ]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        rows = self.csv_rows or [dict(zip(self.header, r)) for r in self.rows]
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields or self.header, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv_value(v) for k, v in r.items()})
        return buf.getvalue()

    def write(self, tables_dir: Path | str) -> list[Path]:
        d = Path(tables_dir)
        return [
            write_text(d / f"{self.name}.md", self.to_markdown()),
            write_text(d / f"{self.name}.tex", self.to_latex()),
            write_text(d / f"{self.name}.csv", self.to_csv()),
        ]


def _tex(s: str) -> str:
    rep = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "_": "\\_", "#": "\\#",
           "$": "\\$", "{": "\\{", "}": "\\}", "±": "$\\pm$", "×": "$\\times$", "Δ": "$\\Delta$"}
    return "".join(rep.get(c, c) for c in s)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def fmt_bytes(n: float) -> str:
    if n is None or math.isnan(n):
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_reduction(policy_bytes: float, base_bytes: float) -> str:
    if any(math.isnan(x) for x in (policy_bytes, base_bytes)) or base_bytes <= 0:
        return "n/a"
    red = 100.0 * (1.0 - policy_bytes / base_bytes)
    ratio = base_bytes / policy_bytes if policy_bytes > 0 else math.inf
    return f"{red:.1f}% ({ratio:.2f}×)"


def reduction_pct(policy_bytes: float, base_bytes: float) -> float:
    if math.isnan(policy_bytes) or math.isnan(base_bytes) or base_bytes <= 0:
        return float("nan")
    return 100.0 * (1.0 - policy_bytes / base_bytes)


def _base_row(exp: Experiment, cell: Cell) -> dict[str, Any]:
    return {
        "experiment": exp.name,
        "profile": exp.profile,
        "task": cell.task,
        "policy": cell.setting.policy,
        "params": cell.setting.params_dict,
        "setting": cell.setting.label,
        "status": cell.status,
        "n": len(cell.completed),
        "n_failed": len(cell.failed),
    }


def mem_stats(cell: Cell, key: str) -> Stats:
    return cell.values(lambda r: r.memory.get(key))


def _baseline(cells: dict[tuple[str, Setting], Cell], task: str, policy: str) -> Cell | None:
    for (t, s), c in cells.items():
        if t == task and s.policy == policy and not s.params and not s.activations:
            return c
    for (t, s), c in cells.items():
        if t == task and s.policy == policy:
            return c
    return None


def show_seeds(cell: Cell, stat: Stats, digits: int = 2, scale: float = 1.0) -> str:
    """`Cell.show` plus how many planned seeds have no result yet (a partial reproduction)."""
    text = cell.show(stat, digits, scale)
    missing = cell.expected - len(cell.completed) - len(cell.failed)
    return text + (f" [{missing} not run]" if cell.status == "completed" and missing > 0 else "")


def _status_or(cell: Cell | None, text: str) -> str:
    if cell is None:
        return "not run"
    return text if cell.status == "completed" else cell.status


# ----------------------------------------------------------------------------- memory
def memory_table(exp: Experiment, cells: dict[tuple[str, Setting], Cell]) -> Table:
    base_name = exp.raw.get("baseline", "eager")
    ref_name = exp.raw.get("reference", "exact")
    has_ref = any(s.policy == ref_name for s in exp.settings) and ref_name != base_name
    header = ["task", "policy", "batch (B×L)", "attention activation", "softmax state",
              "total activation", f"attention vs {base_name}", f"softmax state vs {base_name}",
              f"total vs {base_name}"]
    header += [f"attention vs {ref_name}"] if has_ref else []
    rows, csv_rows = [], []
    for (task, setting), cell in cells.items():
        if cell.status == "not planned":
            continue
        base, ref = _baseline(cells, task, base_name), _baseline(cells, task, ref_name)
        m = {k: mem_stats(cell, k) for k in MEMORY_KEYS}
        bm = {k: mem_stats(base, k) if base else stats([]) for k in MEMORY_KEYS}
        rm = mem_stats(ref, "attention_bytes") if ref else stats([])
        shapes = {tuple(r.memory.get("batch_shape") or ()) for r in cell.completed}
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
        row = _base_row(exp, cell) | {"batch_shape": shape}
        for k in MEMORY_KEYS:
            row[f"{k}_mean"], row[f"{k}_std"] = m[k].mean, m[k].std
        row[f"attention_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["attention_bytes"].mean, bm["attention_bytes"].mean)
        row[f"softmax_state_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["softmax_state_bytes"].mean, bm["softmax_state_bytes"].mean)
        row[f"total_reduction_vs_{base_name}_pct"] = reduction_pct(
            m["total_activation_bytes"].mean, bm["total_activation_bytes"].mean)
        kinds = sorted({k for r in cell.completed for k in (r.memory.get("by_kind") or {})})
        for kind in kinds:  # e.g. encoder_self / decoder_self / cross, when the run reports it
            for field_ in ("bytes", "softmax_state_bytes"):
                row[f"{kind}_{field_}_mean"] = cell.values(
                    lambda r, k=kind, f=field_: ((r.memory.get("by_kind") or {}).get(k) or {}).get(f)).mean
        if has_ref:
            row[f"attention_reduction_vs_{ref_name}_pct"] = reduction_pct(
                m["attention_bytes"].mean, rm.mean)
        csv_rows.append(row)
    notes = [MEMORY_DEFINITION, f"Mean over seeds {exp.seeds}; bytes are per training step "
             "on the batch shown (fp32 unless the task's config says otherwise)."]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes + _devices(cells), csv_rows)


def memory_by_kind_table(exp: Experiment, cells: dict[tuple[str, Setting], Cell]) -> Table | None:
    """Per attention kind (encoder self / decoder causal self / cross), for the tasks whose
    runs report ``memory.by_kind`` (translation); None when no run does."""
    kinds: list[str] = []
    for cell in cells.values():
        for r in cell.completed:
            kinds += [k for k in (r.memory.get("by_kind") or {}) if k not in kinds]
    if not kinds:
        return None
    header = ["task", "policy"] + [f"{k} {what}" for k in kinds for what in ("attention", "softmax state")]
    rows, csv_rows = [], []
    for (task, setting), cell in cells.items():
        if not any(r.memory.get("by_kind") for r in cell.completed):
            continue
        row, csv_row = [task, setting.label], _base_row(exp, cell)
        for kind in kinds:
            for field_, label in (("bytes", "attention"), ("softmax_state_bytes", "softmax state")):
                st = cell.values(lambda r, k=kind, f=field_: ((r.memory.get("by_kind") or {}).get(k) or {}).get(f))
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


def _devices(cells: dict[tuple[str, Setting], Cell]) -> list[str]:
    devs = set()
    for cell in cells.values():
        for r in cell.completed:
            hw = (r.data.get("provenance") or {}).get("hardware") or {}
            gpus = hw.get("gpus") or []
            dev = hw.get("device") or (", ".join(map(str, gpus)) if gpus else None)
            if not dev and hw:
                dev = f"CPU ({hw.get('machine') or hw.get('processor') or 'unknown'})"
            if dev:
                devs.add(str(dev))
    return [f"Measured on: {', '.join(sorted(devs))}."] if devs else []


# ----------------------------------------------------------------------------- quality
def task_kind(task: str, cells: dict[tuple[str, Setting], Cell], kinds: dict[str, str]) -> str:
    for (t, _), c in cells.items():
        if t == task:
            for r in c.completed + c.failed:
                if r.data.get("task_kind"):
                    return str(r.data["task_kind"])
    return kinds.get(task, "classification")


def quality_metric(exp: Experiment, kind: str) -> dict[str, Any]:
    metrics = exp.raw.get("metrics") or {}
    default = {"classification": {"key": "test/acc", "scale": 100, "label": "accuracy (%)"},
               "translation": {"key": "test/bleu", "scale": 1, "label": "BLEU"}}
    return {**default.get(kind, default["classification"]), **(metrics.get(kind) or {})}


def bleu_signature(cells: dict[tuple[str, Setting], Cell]) -> str:
    """The sacreBLEU signature the runs report, else the library's default one."""
    for c in cells.values():
        for r in c.completed:
            for src in (r.metrics, r.data):
                for k in ("test/bleu_signature", "bleu_signature"):
                    if isinstance(src.get(k), str):
                        return src[k]
    try:
        from sacrebleu.metrics import BLEU

        return f"{BLEU().get_signature()} (sacreBLEU defaults; runs did not record one)"
    except Exception:  # pragma: no cover - sacrebleu is a dependency
        return "unknown"


def quality_cells(cells: dict[tuple[str, Setting], Cell], exp: Experiment,
                  kinds: dict[str, str], base_name: str | None = None) -> dict[tuple[str, Setting], dict[str, Any]]:
    """Per cell: metric stats (scaled) and the difference of means to the baseline (the
    experiment's `baseline` unless `base_name` is given)."""
    base_name = base_name or exp.raw.get("baseline", "eager")
    out = {}
    for (task, setting), cell in cells.items():
        kind = task_kind(task, cells, kinds)
        metric = quality_metric(exp, kind)
        scale = float(metric.get("scale", 1))
        st = cell.values(lambda r, k=metric["key"]: r.metrics.get(k))
        base = _baseline(cells, task, base_name)
        bst = base.values(lambda r, k=metric["key"]: r.metrics.get(k)) if base else stats([])
        delta = (st.mean - bst.mean) * scale if st.n and bst.n else float("nan")
        pair = paired(cell, base, lambda r, k=metric["key"]: r.metrics.get(k), scale)
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


PAIRED_DEFINITION = (
    "paired Δ = mean over seeds of (policy - {base}) for runs of the same seed (same initial "
    "weights, same data order); [low, high] = 95% t-interval over seeds, mean ± "
    "t(0.975, n-1) · sd / sqrt(n); n = seeds where both runs completed; n=1 has no interval."
)


def quality_table(exp: Experiment, cells: dict[tuple[str, Setting], Cell],
                  kinds: dict[str, str]) -> Table:
    base_name = exp.raw.get("baseline", "eager")
    q = quality_cells(cells, exp, kinds)
    header = ["policy"]
    for task in exp.tasks:
        label = quality_metric(exp, task_kind(task, cells, kinds))["label"]
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
                tok = cell.values(lambda r: r.metrics.get("test/bleu_tok"))
                extra = {"test/bleu_tok_mean": tok.mean, "test/bleu_tok_std": tok.std}
            st = info["stats"]
            csv_rows.append(_base_row(exp, cell) | {
                "metric": info["metric"]["key"], "scale": info["scale"],
                "mean": st.mean * info["scale"], "std": st.std * info["scale"],
                f"delta_vs_{base_name}": info["delta"],
                "seeds": [r.seed for r in cell.completed]} | info["paired"].as_row() | extra)
        rows.append(row)
    kinds_used = {q[k]["kind"] for k in q}
    notes = [f"Mean ± sample std (ddof=1) over seeds {exp.seeds}; n = completed runs.",
             PAIRED_DEFINITION.format(base=base_name),
             f"The CSV also has `delta_vs_{base_name}` (difference of the means over all "
             "completed seeds) and the per-seed differences."]
    for kind in sorted(kinds_used):
        m = quality_metric(exp, kind)
        notes.append(" ".join(str(m.get("definition", f"{m['key']} ({kind})")).split()))
    if "translation" in kinds_used:
        notes.append(f"sacreBLEU signature: `{bleu_signature(cells)}`.")
    splits = {}
    for (task, _), cell in cells.items():
        for r in cell.completed:
            if r.data.get("test_split"):
                splits.setdefault(task, str(r.data["test_split"]))
    if splits:
        notes.append("Test split: " + "; ".join(f"{t}: {s}" for t, s in splits.items()) + ".")
    return Table(exp.name, exp.title, exp.profile, header, rows, notes, csv_rows)


def paired_table(exp: Experiment, cells: dict[tuple[str, Setting], Cell],
                 kinds: dict[str, str]) -> Table:
    """Per task and non-baseline setting: each seed's difference to the baseline, their mean
    and 95% t-interval (the numbers behind the quality table's paired Δ and the claims); then
    the same against each of the experiment's `also_paired_with` references."""
    base_name = exp.raw.get("baseline", "eager")
    refs = [base_name] + [str(b) for b in exp.raw.get("also_paired_with") or [] if b != base_name]
    header = ["task", "policy", "metric", "vs", "per-seed Δ", "mean Δ", "95% CI", "n"]
    rows, csv_rows = [], []
    for ref in refs:
        _paired_rows(quality_cells(cells, exp, kinds, ref), ref, exp, rows, csv_rows)
    notes = [PAIRED_DEFINITION.format(base=" / ".join(refs)),
             f"Seeds planned: {exp.seeds}. Units: accuracy points (percent) or BLEU."]
    if len(refs) > 1:
        notes.append(str(exp.raw.get("also_paired_why", "")).strip() or
                     f"Also paired with {', '.join(refs[1:])}.")
    return Table(f"{exp.name}_paired", f"{exp.title}: paired differences to {' and '.join(refs)}",
                 exp.profile, header, rows, notes, csv_rows)


def _paired_rows(q: dict, base_name: str, exp: Experiment, rows: list, csv_rows: list) -> None:
    """The paired table's rows against one reference setting."""
    for (task, setting), info in q.items():
        cell, base, pair = info["cell"], info["base"], info["paired"]
        if (base is not None and setting == base.setting) or cell.status == "not planned":
            continue
        label = info["metric"]["label"]
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
        csv_rows.append(_base_row(exp, cell) | {"metric": info["metric"]["key"], "scale": info["scale"],
                                                "baseline": base_name} | pair.as_row())


# ----------------------------------------------------------------------------- fidelity
def fidelity_of(record: Record, what: str = "cosine") -> float | None:
    """Mean over attention layers of the probe's `what` (cosine or rel_err); None if absent."""
    layers = ((record.data.get("fidelity") or {}).get("layers")) or {}
    vals = [v.get(what) for v in layers.values() if isinstance(v, dict) and v.get(what) is not None]
    return sum(vals) / len(vals) if vals else None


def fidelity_layers(cells: dict[tuple[str, Setting], Cell]) -> list[dict[str, Any]]:
    """One row per (task, setting, seed, layer): the per-layer view used by the notebook."""
    rows = []
    for (task, setting), cell in cells.items():
        for r in cell.completed:
            layers = ((r.data.get("fidelity") or {}).get("layers")) or {}
            for name, v in layers.items():
                rows.append({"task": task, "policy": setting.policy, "setting": setting.label,
                             "params": setting.params_dict, "seed": r.seed, "layer": name,
                             "cosine": v.get("cosine"), "rel_err": v.get("rel_err")})
    return rows


def fidelity_table(exp: Experiment, cells: dict[tuple[str, Setting], Cell]) -> Table:
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
            csv_rows.append(_base_row(exp, cell) | {"cosine_mean": cos.mean, "cosine_std": cos.std,
                                                    "rel_err_mean": rel.mean, "rel_err_std": rel.std})
        rows.append(row)
    notes = [exp.description or "Gradient fidelity from the in-training probe.",
             f"Per run: mean over attention layers; then mean ± sample std over seeds {exp.seeds}."]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes, csv_rows)


# ----------------------------------------------------------------------------- trade-off
def tradeoff_points(exp: Experiment, cells: dict[tuple[str, Setting], Cell],
                    kinds: dict[str, str], quality_exp: Experiment | None = None) -> list[dict[str, Any]]:
    """One point per (task, non-baseline setting) with memory reduction and quality change."""
    base_name = exp.raw.get("baseline", "eager")
    q = quality_cells(cells, quality_exp or exp, kinds)
    points = []
    for (task, setting), cell in cells.items():
        base = _baseline(cells, task, base_name)
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
                       "kind": info["kind"], "metric": info["metric"]["key"],
                       "metric_label": info["metric"]["label"],
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


# ----------------------------------------------------------------------------- all runs
def runs_table(records: list[Record], profile: str) -> Table:
    """Every results.json found, whatever its status: the audit trail of the report."""
    header = ["run", "status", "task", "policy", "seed", "profile", "main metric", "error"]
    rows, csv_rows = [], []
    for r in records:
        metric = next((f"{k}={v:.4g}" for k in ("test/acc", "test/bleu")
                       if isinstance(v := r.metrics.get(k), (int, float))), "")
        label = Setting(r.policy or "?", tuple(sorted(r.params.items()))).label
        err = (r.error or "")[:120]
        rows.append([r.key or str(r.data.get("job_id", "")), r.status, str(r.task), label,
                     str(r.seed), str(r.profile), metric, err])
        csv_rows.append({"run": r.key or r.data.get("job_id"), "path": str(r.path or ""),
                         "status": r.status, "task": r.task, "policy": r.policy,
                         "params": r.params, "seed": r.seed, "profile": r.profile,
                         "metrics": r.metrics, "memory": r.memory, "error": r.error})
    notes = ["Every results.json found; only `completed` runs feed the other tables."]
    return Table("runs", "All runs", profile, header, rows, notes, csv_rows)
