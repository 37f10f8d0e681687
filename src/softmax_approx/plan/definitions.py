"""Experiment definitions as typed objects: what a definition says, for `reproduce` and the report.

Why typed: the report and the launcher read the same definitions; with every key a field (its
default written here, its meaning in docs/reproduce.md) nobody looks a key up in a dict, and a
key that is not a field cannot be read by mistake. Reading and checking the yaml is
`plan/load.py`; expanding a definition into runs is `plan/runs.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

#: the experiment kinds; report/builders.py has one table builder for each (a test checks)
KINDS = ("memory", "quality", "tradeoff", "fidelity", "claims", "bench")
MEASURES = ("max_memory_reduction", "bench_max_reduction", "paired_noninferior", "paired_max_gain")


@dataclass(frozen=True)
class Setting:
    """One policy with fixed parameters, e.g. paper(S=5): a row of most tables."""

    policy: str
    params: tuple[tuple[str, Any], ...] = ()
    #: whole-model activation mode (the ``activations`` config group), None = the default (none)
    activations: str | None = None

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        text = self.policy
        if self.params:
            text += " " + ", ".join(f"{k}={_fmt_param(k, v)}" for k, v in self.params)
        return text + (f" + activations={self.activations}" if self.activations else "")

    @property
    def slug(self) -> str:
        return self.policy + "".join(f"-{k}{v}" for k, v in self.params) + (
            f"-act{self.activations}" if self.activations else "")

    def matches(self, policy: str, params: dict[str, Any] | None) -> bool:
        """True if a run of `policy` with `params` (possibly with more keys) is this setting."""
        if policy != self.policy:
            return False
        params = params or {}
        return all(k in params and _same(params[k], v) for k, v in self.params)


def _fmt_param(key: str, value: Any) -> str:
    if key == "keep_ratio" and isinstance(value, float) and 0 < value < 1:
        frac = Fraction(value).limit_denominator(1024)
        if float(frac) == value:
            return f"{frac.numerator}/{frac.denominator}"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


@dataclass(frozen=True)
class Metric:
    """The quality metric of one task kind: results.json key, display scale and label."""

    key: str
    scale: float
    label: str
    definition: str | None = None  # the table note; None: "<key> (<kind>)"


#: used for a task kind the definition's `metrics` does not name (and merged under those it does)
DEFAULT_METRICS = {
    "classification": {"key": "test/acc", "scale": 100, "label": "accuracy (%)"},
    "translation": {"key": "test/bleu", "scale": 1, "label": "BLEU"},
}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and the rule that judges it (experiments/claims.yaml)."""

    id: str
    claim: str
    source: str  # the experiment whose cells (or benchmark records) measure it
    measure: str  # one of MEASURES
    policy: str | None = None  # the policies the claim is about; None: every policy
    params: dict[str, Any] = field(default_factory=dict)  # a subset of their parameters
    verdict_on: str | None = None  # memory claims: softmax_state (default) or module
    threshold: float = 0.0
    tolerance: float = 0.0
    margin: float = 1.0
    task_kind: str | None = None
    context_policies: tuple[str, ...] = ()
    why: str = ""


@dataclass
class TaskSubset:
    """`per_task.<task>`: the part of the grid one task runs (empty = all of it)."""

    settings: list[Setting] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class Experiment:
    """A definition resolved for one profile."""

    name: str
    kind: str
    title: str
    profile: str
    description: str = ""
    tasks: list[str] = field(default_factory=list)
    settings: list[Setting] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    path: Path | None = None
    per_task: dict[str, TaskSubset] = field(default_factory=dict)
    uses: list[str] = field(default_factory=list)  # experiments this one reads (claims)
    baseline: str = "eager"  # the policy reductions and paired differences are taken against
    reference: str = "exact"  # memory: a second reference column when it is in `policies`
    metrics: dict[str, Metric] = field(default_factory=dict)  # task kind -> metric (quality)
    also_paired_with: list[str] = field(default_factory=list)
    also_paired_why: str = ""
    uses_metrics_of: str | None = None  # tradeoff: the quality experiment whose metrics it plots
    figure: str = "which_policy"  # bench: the figure's file name
    x_axis: dict[str, str] = field(default_factory=lambda: {"paper": "S", "topk": "keep_ratio"})
    evidence_profiles: list[str] = field(default_factory=lambda: ["cpu", "paper"])
    claims: list[Claim] = field(default_factory=list)
    bench_args: list[str] = field(default_factory=list)

    def settings_for(self, task: str) -> list[Setting]:
        sub = self.per_task.get(task)
        return list((sub.settings if sub else None) or self.settings)

    def seeds_for(self, task: str) -> list[int]:
        sub = self.per_task.get(task)
        return list((sub.seeds if sub else None) or self.seeds)

    def planned(self, task: str, setting: Setting) -> bool:
        return setting in self.settings_for(task)

    def metric(self, kind: str) -> Metric:
        """The metric of a task kind: the definition's, else the default for that kind."""
        if kind in self.metrics:
            return self.metrics[kind]
        default = DEFAULT_METRICS.get(kind, DEFAULT_METRICS["classification"])
        return Metric(str(default["key"]), float(default["scale"]), str(default["label"]))

    def bench_command(self) -> list[str]:
        """Arguments of `python -m softmax_approx.bench` (kind `bench` only)."""
        args = list(self.bench_args)
        for s in self.settings:
            args += ["--policy", s.policy + (":" + ",".join(f"{k}={v}" for k, v in s.params)
                                             if s.params else "")]
        return args

    def bench_key(self) -> str:
        digest = hashlib.sha1("\n".join(self.bench_command()).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"


@dataclass
class Common:
    """experiments/_common.yaml: what every definition shares."""

    order: list[str] = field(default_factory=list)  # experiments run and owned in this order
    overrides: dict[str, list[str]] = field(default_factory=dict)  # profile -> every run's overrides
    task_kinds: dict[str, str] = field(default_factory=dict)  # kinds of tasks not in conf/task/

    def overrides_for(self, profile: str) -> list[str]:
        return list(self.overrides.get(profile, []))
