"""Experiment planning: experiments/*.yaml -> typed definitions -> the runs they need.

`reproduce` launches the plan's runs; the report reads the same definitions to lay out its
tables and the same run keys to find each planned run's results.json. Plain Python and PyYAML
(no torch, Lightning or Hydra), so the report may import it.

    from softmax_approx.plan import load_experiments, load_common, build_plan
    plan = build_plan(load_experiments("smoke"), load_common())
"""

from softmax_approx.plan.definitions import Claim, Common, Experiment, Metric, Setting
from softmax_approx.plan.load import load_common, load_experiments
from softmax_approx.plan.runs import Plan, RunSpec, build_plan, run_key, runs_of, select

__all__ = [
    "Claim", "Common", "Experiment", "Metric", "Plan", "RunSpec", "Setting", "build_plan",
    "load_common", "load_experiments", "run_key", "runs_of", "select",
]
