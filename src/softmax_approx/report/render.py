"""Everything `python -m softmax_approx.report` does: results -> tables and figures.

One function, `render_report`, shared by the CLI, `reproduce` and the notebook, so the three
can never disagree on what a table contains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from softmax_approx.plan import Common, Experiment, load_common, load_experiments, select
from softmax_approx.report import bench as bench_mod
from softmax_approx.report.builders import BUILDERS, Inputs
from softmax_approx.report.io import write_text
from softmax_approx.report.provenance import provenance_table, runs_table
from softmax_approx.report.results import Cell, Record, aggregate, load_results
from softmax_approx.report.table import Table
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.profiles import profile_names
from softmax_approx.utils.run_record import FILENAME
from softmax_approx.utils.task_conf import task_kinds

MANIFEST = "reproduce.json"


@dataclass
class Report:
    """What was rendered: the tables (objects and files), figures and the cells behind them."""

    profile: str
    tables: dict[str, Table] = field(default_factory=dict)
    cells: dict[str, dict] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    task_kinds: dict[str, str] = field(default_factory=dict)
    bench: dict[str, tuple] = field(default_factory=dict)  # name -> (status, records, source)


def infer_profile(out: Path, records: list[Record], profile: str | None) -> str:
    """--profile, else the profile `reproduce` recorded in OUT/reproduce.json, else the runs'."""
    if profile:
        return profile
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            return str(json.loads(manifest.read_text())["profile"])
        except (ValueError, KeyError):
            pass
    found = sorted({r.run.profile for r in records if r.run.profile})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"{out}: no {FILENAME} with a profile found; pass --profile "
                          f"({', '.join(profile_names())}) or point --runs at the run directories")
    raise ConfigError(f"{out}: runs of several profiles {found}; pass --profile to pick one")


def build_cells(exps: list[Experiment], records: list[Record],
                common: Common) -> dict[str, dict[tuple, Cell]]:
    ov = common.overrides_for(exps[0].profile) if exps else []
    return {e.name: aggregate(records, e, ov) for e in exps if e.tasks and e.settings}


def render_report(out: Path | str, runs_dir: Path | str | None = None,
                  records: list[Record] | None = None, profile: str | None = None,
                  exp_dir: Path | str | None = None, only: list[str] | None = None,
                  write: bool = True) -> Report:
    """Load results, aggregate each experiment, write OUT/tables/* and OUT/figures/*."""
    out = Path(out)
    if records is None:
        records = load_results(Path(runs_dir) if runs_dir else out / "runs")
    profile = infer_profile(out, records, profile)
    all_exps = load_experiments(profile, exp_dir)
    exps = select(all_exps, only)
    by_name = {e.name: e for e in all_exps}
    common = load_common(exp_dir)
    # each task's kind from its yaml (conf/task/); _common.yaml's task_kinds may add tasks of your own
    kinds = {**task_kinds(), **common.task_kinds}
    rep = Report(profile, records=records, experiments=by_name, task_kinds=kinds)
    rep.cells = build_cells(all_exps, records, common)
    rep.bench = {e.name: bench_mod.load_bench(out, e) for e in all_exps if e.kind == "bench"}
    inputs = Inputs(rep.cells, by_name, kinds, rep.bench)
    tdir, fdir = out / "tables", out / "figures"

    def emit(table: Table) -> None:
        rep.tables[table.name] = table
        if write:
            rep.files.extend(table.write(tdir))

    for exp in exps:
        built = BUILDERS[exp.kind](exp, inputs)
        for table in built.tables:
            emit(table)
        if write:
            for name, draw in built.figures.items():
                draw(fdir / name)
                rep.files += [fdir / f"{name}.png", fdir / f"{name}.pdf"]
    emit(provenance_table(records, profile))
    emit(runs_table(records, profile))
    if write:
        index = "\n".join(t.to_markdown() for t in rep.tables.values()
                          if not t.name.endswith("_layers"))
        rep.files.append(write_text(out / "report.md", index))
    return rep
