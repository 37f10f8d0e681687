"""results.json files -> aggregated tables (md, tex, csv) and figures (png, pdf).

Public API (used by `python -m softmax_approx.report`, `reproduce` and the notebook):

    from softmax_approx.report import load_results, aggregate, render_report
    records = load_results("outputs/reproduce/smoke/runs")
    report = render_report("outputs/reproduce/smoke")   # writes tables/ and figures/
    report.tables["quality"].to_markdown()
"""

# before the imports below: without the harness extra (PyYAML, matplotlib) one line names it
from softmax_approx.utils.extras import require

require("harness", "softmax_approx.report")

from softmax_approx.plan import Experiment, Setting, load_common, load_experiments
from softmax_approx.report.fidelity import fidelity_layers
from softmax_approx.report.figures import (
    plot_fidelity,
    plot_fidelity_layers,
    plot_tradeoff,
    plot_which_policy,
)
from softmax_approx.report.paired import Paired, paired
from softmax_approx.report.render import Report, render_report
from softmax_approx.report.results import Cell, Record, Stats, aggregate, load_results, stats
from softmax_approx.report.table import Table
from softmax_approx.report.tradeoff import tradeoff_points
from softmax_approx.report.wandb_source import load_wandb


def render_tables(out, **kwargs) -> Report:
    """Alias of `render_report` (tables and figures are rendered together)."""
    return render_report(out, **kwargs)


__all__ = [
    "Cell", "Experiment", "Paired", "Record", "Report", "Setting", "Stats", "Table", "aggregate",
    "fidelity_layers", "load_common", "load_experiments", "load_results",
    "load_wandb", "plot_fidelity", "plot_fidelity_layers", "plot_tradeoff", "plot_which_policy", "paired", "render_report",
    "render_tables", "stats", "tradeoff_points",
]
