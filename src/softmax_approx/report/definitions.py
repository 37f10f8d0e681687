"""Experiment definitions (experiments/*.yaml) -> the runs they need and the cells they show.

Why here and not in reproduce.py: both `reproduce` (which launches runs) and the report
(which lays out tables) must expand a definition the same way, so the expansion lives in one
place below both. A run is identified by its Hydra overrides only; its directory name is a
readable slug plus a hash of those overrides, so the same settings always land in the same
directory and a run used by several experiments is launched once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from softmax_approx.utils.errors import ConfigError

PROFILES = ("smoke", "cpu", "paper")
KINDS = ("memory", "quality", "tradeoff", "fidelity", "claims", "bench")
# Keys a profile section may replace wholesale.
_PROFILE_KEYS = ("tasks", "policies", "seeds", "overrides", "bench_args", "per_task")


def default_experiments_dir() -> Path:
    """`$SOFTMAX_APPROX_EXPERIMENTS`, else the repository's experiments/, else ./experiments."""
    env = os.environ.get("SOFTMAX_APPROX_EXPERIMENTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "experiments"
    return repo if repo.is_dir() else Path.cwd() / "experiments"


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
    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # task -> {"settings": [...], "seeds": [...]}: a task that runs only part of the grid
    per_task: dict[str, dict[str, list]] = field(default_factory=dict)

    def settings_for(self, task: str) -> list[Setting]:
        return list(self.per_task.get(task, {}).get("settings") or self.settings)

    def seeds_for(self, task: str) -> list[int]:
        return list(self.per_task.get(task, {}).get("seeds") or self.seeds)

    def planned(self, task: str, setting: Setting) -> bool:
        return setting in self.settings_for(task)

    @property
    def uses(self) -> list[str]:
        return list(self.raw.get("uses", []))

    def bench_command(self) -> list[str]:
        """Arguments of `python -m softmax_approx.bench` (kind `bench` only)."""
        args = [str(a) for a in self.raw.get("bench_args") or []]
        for s in self.settings:
            args += ["--policy", s.policy + (":" + ",".join(f"{k}={v}" for k, v in s.params)
                                             if s.params else "")]
        return args

    def bench_key(self) -> str:
        digest = hashlib.sha1("\n".join(self.bench_command()).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    def runs(self, common_overrides: list[str]) -> list[RunSpec]:
        """Every (task, setting, seed) of this experiment as a RunSpec (none for `bench`)."""
        out = []
        for task, setting, seed in ((t, s, n) for t in self.tasks for s in self.settings_for(t)
                                    for n in self.seeds_for(t)):
            ov = [f"task={task}", f"attention={setting.policy}"]
            ov += [f"attention.params.{k}={v}" for k, v in setting.params]
            ov += [f"activations={setting.activations}"] if setting.activations else []
            ov += [f"profile={self.profile}", f"seed={seed}", *common_overrides, *self.overrides]
            out.append(RunSpec(run_key(task, setting, seed, ov), task, setting, seed, tuple(ov)))
        return out


def run_key(task: str, setting: Setting, seed: int, overrides: list[str]) -> str:
    """Readable and stable: `<task>-<policy>[-<param><value>]-s<seed>-<8 hex of overrides>`."""
    digest = hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return f"{task}-{setting.slug}-s{seed}-{digest}"


def parse_policies(items: list[Any], where: str) -> list[Setting]:
    """`[eager, {name: paper, grid: {S: [1, 5]}}, {name: quant, params: {bits: 8}}]` -> settings;
    an entry may add `activations: exact | int8` (the whole-model activation mode)."""
    settings: list[Setting] = []
    for item in items:
        if isinstance(item, str):
            settings.append(Setting(item))
            continue
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(
                f"{where}: policies entry {item!r} must be a policy name or "
                "{name: <policy>, grid: {param: [values]}}"
            )
        fixed = dict(item.get("params") or {})
        grid = dict(item.get("grid") or {})
        keys = sorted(grid)
        for values in itertools.product(*(_as_list(grid[k]) for k in keys)):
            params = {**fixed, **dict(zip(keys, values))}
            act = item.get("activations")
            settings.append(Setting(str(item["name"]), tuple(sorted(params.items())),
                                    None if act in (None, "none") else str(act)))
    return settings


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML ({msg}); fix the file's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping with at least `name` and `kind`")
    return data


def load_common(exp_dir: Path | str | None = None) -> dict[str, Any]:
    """experiments/_common.yaml (per-profile overrides, optional task_kinds); empty if absent."""
    exp_dir = Path(exp_dir) if exp_dir else default_experiments_dir()
    path = exp_dir / "_common.yaml"
    return _load_yaml(path) if path.exists() else {}


def common_overrides(common: dict[str, Any], profile: str) -> list[str]:
    section = (common.get("profiles") or {}).get(profile) or {}
    return [str(o) for o in section.get("overrides") or []]


def resolve(data: dict[str, Any], profile: str, path: Path | None = None) -> Experiment:
    """Apply the `profiles.<profile>` section (its keys replace the top-level ones)."""
    where = str(path) if path else data.get("name", "<experiment>")
    for key in ("name", "kind"):
        if key not in data:
            raise ConfigError(f"{where}: missing `{key}`; add e.g. `{key}: ...` at the top level")
    if data["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind={data['kind']!r} is not one of {', '.join(KINDS)}")
    merged = dict(data)
    section = (data.get("profiles") or {}).get(profile)
    if section:
        unknown = set(section) - set(_PROFILE_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: profiles.{profile} has unknown keys {sorted(unknown)}; "
                f"allowed: {', '.join(_PROFILE_KEYS)}"
            )
        merged.update(section)
    exp = Experiment(
        name=str(data["name"]),
        kind=str(data["kind"]),
        title=str(data.get("title", data["name"])),
        profile=profile,
        description=" ".join(str(data.get("description", "")).split()),
        tasks=[str(t) for t in merged.get("tasks") or []],
        settings=parse_policies(merged.get("policies") or [], where),
        seeds=[int(s) for s in merged.get("seeds") or []],
        overrides=[str(o) for o in merged.get("overrides") or []],
        raw=merged,
        path=path,
    )
    exp.per_task = _per_task(merged.get("per_task") or {}, exp, where)
    return exp


def _per_task(data: Any, exp: Experiment, where: str) -> dict[str, dict[str, list]]:
    """`per_task: {imdb: {policies: [...], seeds: [0]}}`: a subset of the grid for one task
    (fewer settings or seeds where a task is expensive); its settings must be in `policies`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: per_task must map a task to {{policies: [...], seeds: [...]}}")
    out: dict[str, dict[str, list]] = {}
    for task, spec in data.items():
        if str(task) not in exp.tasks:
            raise ConfigError(f"{where}: per_task.{task}: not one of this profile's tasks "
                              f"{exp.tasks}; add it to `tasks` or remove the entry")
        if not isinstance(spec, dict) or set(spec) - {"policies", "seeds"}:
            raise ConfigError(f"{where}: per_task.{task} may only set `policies` and `seeds`")
        settings = parse_policies(spec.get("policies") or [], f"{where}: per_task.{task}")
        extra = [s.label for s in settings if s not in exp.settings]
        if extra:
            raise ConfigError(f"{where}: per_task.{task} lists {extra}, which are not in "
                              "`policies`; a task may only run a subset of the table's rows")
        out[str(task)] = {"settings": settings, "seeds": [int(x) for x in spec.get("seeds") or []]}
    return out


def load_experiments(profile: str, exp_dir: Path | str | None = None) -> list[Experiment]:
    """All definitions (`_common.yaml` `order`, then file name; `_*.yaml` skipped) for `profile`."""
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    exp_dir = Path(exp_dir) if exp_dir else default_experiments_dir()
    if not exp_dir.is_dir():
        raise ConfigError(
            f"{exp_dir}: experiments directory not found; pass --experiments DIR "
            "or set SOFTMAX_APPROX_EXPERIMENTS"
        )
    exps = []
    for path in sorted(exp_dir.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        exps.append(resolve(_load_yaml(path), profile, path))
    order = [str(n) for n in load_common(exp_dir).get("order") or []]
    exps.sort(key=lambda e: order.index(e.name) if e.name in order else len(order))
    names = [e.name for e in exps]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{exp_dir}: experiment names {sorted(dup)} are used by several files")
    return exps


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


def build_plan(
    exps: list[Experiment], common: dict[str, Any], only: list[str] | None = None
) -> Plan:
    """Expand `exps`; owners are decided over ALL of them so `--only` never moves a run."""
    profile = exps[0].profile if exps else "smoke"
    ov = common_overrides(common, profile)
    runs: dict[str, RunSpec] = {}
    owner: dict[str, str] = {}
    users: dict[str, list[str]] = {}
    for exp in exps:
        for spec in exp.runs(ov):
            runs.setdefault(spec.key, spec)
            owner.setdefault(spec.key, exp.name)
            users.setdefault(spec.key, []).append(exp.name)
    if only:
        keep = {e.name for e in select(exps, only)}
        for key in [k for k, u in users.items() if not keep & set(u)]:
            del runs[key], owner[key], users[key]
    return Plan(profile, runs, owner, users)
