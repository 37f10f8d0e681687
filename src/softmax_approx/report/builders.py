"""Which tables and figures each experiment kind renders: one builder per kind, in one table.

Why a table: `render_report` looks the builder up by the definition's `kind` instead of
branching on it, so a new kind is one function and one entry here (and its name in
`softmax_approx.plan.definitions.KINDS`, which a test keeps equal to this table's keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from softmax_approx.plan import Experiment
from softmax_approx.report import figures
from softmax_approx.report.bench import bench_table
from softmax_approx.report.claims import claims_table
from softmax_approx.report.fidelity import fidelity_layers_table, fidelity_table
from softmax_approx.report.formats import Cells
from softmax_approx.report.memory import memory_tables
from softmax_approx.report.quality import quality_tables
from softmax_approx.report.table import Table
from softmax_approx.report.tradeoff import tradeoff_points, tradeoff_table


@dataclass
class Inputs:
    """What a builder may read besides its own definition."""

    cells: dict[str, Cells]  # experiment name -> its cells
    experiments: dict[str, Experiment]  # every definition of the profile, by name
    task_kinds: dict[str, str]  # task -> classification | translation | ...
    bench: dict[str, tuple]  # bench experiment name -> (status, records, source)


@dataclass
class Built:
    """A builder's output: tables, and figures to draw (file stem -> draw at that path stem)."""

    tables: list[Table]
    figures: dict[str, Callable[[Path], Any]] = field(default_factory=dict)


Builder = Callable[[Experiment, Inputs], Built]


def build_memory(exp: Experiment, inp: Inputs) -> Built:
    return Built(memory_tables(exp, inp.cells.get(exp.name, {})))


def build_quality(exp: Experiment, inp: Inputs) -> Built:
    return Built(quality_tables(exp, inp.cells.get(exp.name, {}), inp.task_kinds))


def build_fidelity(exp: Experiment, inp: Inputs) -> Built:
    cells = inp.cells.get(exp.name, {})
    return Built([fidelity_table(exp, cells), fidelity_layers_table(exp, cells)],
                 {exp.name: lambda base: figures.plot_fidelity(exp, cells, base)})


def build_tradeoff(exp: Experiment, inp: Inputs) -> Built:
    """Memory from this experiment's cells, quality measured as `uses_metrics_of` defines it."""
    quality_exp = inp.experiments.get(exp.uses_metrics_of or "", exp)
    points = tradeoff_points(exp, inp.cells.get(exp.name, {}), inp.task_kinds, quality_exp)
    return Built([tradeoff_table(exp, points)],
                 {exp.name: lambda base: figures.plot_tradeoff(points, base, exp.title, exp.profile)})


def build_bench(exp: Experiment, inp: Inputs) -> Built:
    """The bench table, and "which policy should I use": memory vs time vs gradient error."""
    status, records, source = inp.bench[exp.name]
    return Built([bench_table(exp, status, records, source)],
                 {exp.figure: lambda base: figures.plot_which_policy(records, base, exp.profile)})


def build_claims(exp: Experiment, inp: Inputs) -> Built:
    return Built([claims_table(exp, inp.cells, inp.experiments, inp.task_kinds, inp.bench)])


BUILDERS: dict[str, Builder] = {
    "memory": build_memory,
    "quality": build_quality,
    "fidelity": build_fidelity,
    "tradeoff": build_tradeoff,
    "bench": build_bench,
    "claims": build_claims,
}
