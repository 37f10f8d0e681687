"""Experiment definitions -> the training runs they need: keys, overrides, owners.

Why here, below both `reproduce` (which launches the runs) and the report (which matches each
results.json to the run it planned): the two must expand a definition the same way. A run is
identified by its Hydra overrides only; its directory name is a readable slug plus a hash of
those overrides, so the same settings always land in the same directory and a run used by
several experiments is launched once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from softmax_approx.plan.definitions import Common, Experiment, Setting
from softmax_approx.utils.errors import ConfigError


@dataclass(frozen=True)
class RunSpec:
    """One training run: its identity (overrides) and its deterministic directory name."""

    key: str
    task: str
    setting: Setting
    seed: int
    overrides: tuple[str, ...]

    def command_overrides(self, run_dir: Path, data_dir: str | Path) -> list[str]:
        """Overrides passed to train: identity + where to write + where the data is."""
        return [*self.overrides, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]


def run_key(task: str, setting: Setting, seed: int, overrides: list[str]) -> str:
    """Readable and stable: `<task>-<policy>[-<param><value>]-s<seed>-<8 hex of overrides>`."""
    digest = hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return f"{task}-{setting.slug}-s{seed}-{digest}"


def runs_of(exp: Experiment, common_overrides: list[str]) -> list[RunSpec]:
    """Every (task, setting, seed) of `exp` as a RunSpec (none for `bench`, which has no tasks)."""
    out = []
    for task, setting, seed in ((t, s, n) for t in exp.tasks for s in exp.settings_for(t)
                                for n in exp.seeds_for(t)):
        ov = [f"task={task}", f"attention={setting.policy}"]
        ov += [f"attention.params.{k}={v}" for k, v in setting.params]
        ov += [f"activations={setting.activations}"] if setting.activations else []
        ov += [f"profile={exp.profile}", f"seed={seed}", *common_overrides, *exp.overrides]
        out.append(RunSpec(run_key(task, setting, seed, ov), task, setting, seed, tuple(ov)))
    return out


def select(exps: list[Experiment], only: list[str] | None) -> list[Experiment]:
    """The experiments named in `only` plus those they `use` (transitively), in file order."""
    if not only:
        return list(exps)
    by_name = {e.name: e for e in exps}
    wanted: set[str] = set()
    todo = list(only)
    while todo:
        name = todo.pop()
        if name not in by_name:
            raise ConfigError(f"--only {name}: no such experiment; known: {', '.join(by_name)}")
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].uses)
    return [e for e in exps if e.name in wanted]


@dataclass
class Plan:
    """Deduplicated runs of a profile; each run lives under the first experiment using it."""

    profile: str
    runs: dict[str, RunSpec]  # key -> run, in first-seen order
    owner: dict[str, str]  # key -> experiment whose directory holds the run
    users: dict[str, list[str]]  # key -> every experiment that reads the run

    def run_dir(self, out: Path | str, key: str) -> Path:
        return Path(out) / "runs" / self.owner[key] / key


def build_plan(exps: list[Experiment], common: Common, only: list[str] | None = None) -> Plan:
    """Expand `exps`; owners are decided over ALL of them so `--only` never moves a run."""
    profile = exps[0].profile if exps else "smoke"
    ov = common.overrides_for(profile)
    runs: dict[str, RunSpec] = {}
    owner: dict[str, str] = {}
    users: dict[str, list[str]] = {}
    for exp in exps:
        for spec in runs_of(exp, ov):
            runs.setdefault(spec.key, spec)
            owner.setdefault(spec.key, exp.name)
            users.setdefault(spec.key, []).append(exp.name)
    if only:
        keep = {e.name for e in select(exps, only)}
        for key in [k for k, u in users.items() if not keep & set(u)]:
            del runs[key], owner[key], users[key]
    return Plan(profile, runs, owner, users)
