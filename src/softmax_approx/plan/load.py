"""experiments/*.yaml and _common.yaml -> typed definitions, every key checked once.

Why check here: a typo or a wrong type becomes one line naming the file and the key when the
file is read, instead of a silently ignored key or a traceback half way through rendering.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import yaml

from softmax_approx.plan.definitions import (
    DEFAULT_METRICS,
    KINDS,
    MEASURES,
    Claim,
    Common,
    Experiment,
    Metric,
    Setting,
    TaskSubset,
)
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.profiles import profile_names

# Keys a profile section may replace wholesale.
_PROFILE_KEYS = ("tasks", "policies", "seeds", "overrides", "bench_args", "per_task")
# Every top-level key of a definition; anything else is a typo and refused.
_KEYS = ("name", "kind", "title", "description", "tasks", "policies", "seeds", "overrides",
         "per_task", "profiles", "bench_args", "baseline", "reference", "metrics",
         "also_paired_with", "also_paired_why", "uses", "uses_metrics_of", "figure", "x_axis",
         "evidence_profiles", "claims")
_CLAIM_KEYS = ("id", "claim", "source", "measure", "policy", "params", "verdict_on", "threshold",
               "tolerance", "margin", "task_kind", "context_policies", "why")
_METRIC_KEYS = ("key", "scale", "label", "definition")


def default_experiments_dir() -> Path:
    """`$SOFTMAX_APPROX_EXPERIMENTS`, else the repository's experiments/, else ./experiments."""
    env = os.environ.get("SOFTMAX_APPROX_EXPERIMENTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "experiments"
    return repo if repo.is_dir() else Path.cwd() / "experiments"


# ----------------------------------------------------------------------------- typed reading
def _bad(where: str, key: str, want: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: `{key}` must be {want}, got {value!r}; fix that key")


def _str(data: dict, key: str, where: str, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _bad(where, key, "a string", value)
    return default if value is None else str(value)


def _strs(data: dict, key: str, where: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
        raise _bad(where, key, "a list of strings", value)
    return [str(v) for v in value]


def _ints(data: dict, key: str, where: str) -> list[int]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise _bad(where, key, "a list of integers", value)
    return [int(v) for v in value]


def _number(data: dict, key: str, where: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(where, key, "a number", value)
    return float(value)


def _mapping(data: dict, key: str, where: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise _bad(where, key, "a mapping", value)
    return value


def _unknown(data: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def parse_policies(items: list[Any], where: str) -> list[Setting]:
    """`[eager, {name: paper, grid: {S: [1, 5]}}, {name: quant, params: {bits: 8}}]` -> settings;
    an entry may add `activations: exact | int8` (the whole-model activation mode)."""
    if not isinstance(items, list):
        raise _bad(where, "policies", "a list of policy names or {name: ...} entries", items)
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


def _metrics(data: dict, where: str) -> dict[str, Metric]:
    out = {}
    for kind, spec in _mapping(data, "metrics", where).items():
        at = f"metrics.{kind}"
        if not isinstance(spec, dict):
            raise _bad(where, at, "a mapping of key, scale, label, definition", spec)
        _unknown(spec, _METRIC_KEYS, f"{where}: {at}")
        merged = {**DEFAULT_METRICS.get(str(kind), DEFAULT_METRICS["classification"]), **spec}
        out[str(kind)] = Metric(
            key=_str(merged, "key", f"{where}: {at}"),
            scale=_number(merged, "scale", f"{where}: {at}", 1),
            label=_str(merged, "label", f"{where}: {at}"),
            definition=_str(merged, "definition", f"{where}: {at}"),
        )
    return out


def _claims(data: dict, where: str) -> list[Claim]:
    items = data.get("claims") or []
    if not isinstance(items, list):
        raise _bad(where, "claims", "a list of claims", items)
    out = []
    for i, item in enumerate(items):
        at = f"{where}: claims[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: must be a mapping with id, claim, source and measure")
        _unknown(item, _CLAIM_KEYS, at)
        for key in ("id", "claim", "source", "measure"):
            if key not in item:
                raise ConfigError(f"{at}: missing `{key}`; add it")
        if item["measure"] not in MEASURES:
            raise ConfigError(f"{at}: measure={item['measure']!r} is not one of {', '.join(MEASURES)}")
        out.append(Claim(
            id=_str(item, "id", at), claim=_str(item, "claim", at), source=_str(item, "source", at),
            measure=str(item["measure"]), policy=_str(item, "policy", at),
            params=dict(_mapping(item, "params", at)), verdict_on=_str(item, "verdict_on", at),
            threshold=_number(item, "threshold", at, 0), tolerance=_number(item, "tolerance", at, 0),
            margin=_number(item, "margin", at, 1.0), task_kind=_str(item, "task_kind", at),
            context_policies=tuple(_strs(item, "context_policies", at)),
            why=" ".join(_str(item, "why", at, "").split()),
        ))
    return out


def _per_task(data: Any, exp: Experiment, where: str) -> dict[str, TaskSubset]:
    """`per_task: {imdb: {policies: [...], seeds: [0]}}`: a subset of the grid for one task
    (fewer settings or seeds where a task is expensive); its settings must be in `policies`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: per_task must map a task to {{policies: [...], seeds: [...]}}")
    out: dict[str, TaskSubset] = {}
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
        out[str(task)] = TaskSubset(settings, _ints(spec, "seeds", f"{where}: per_task.{task}"))
    return out


def resolve(data: dict[str, Any], profile: str, path: Path | None = None) -> Experiment:
    """Apply the `profiles.<profile>` section (its keys replace the top-level ones) and type
    every key; a bad one is a ConfigError naming the file and the key."""
    where = str(path) if path else str(data.get("name", "<experiment>"))
    for key in ("name", "kind"):
        if key not in data:
            raise ConfigError(f"{where}: missing `{key}`; add e.g. `{key}: ...` at the top level")
    if data["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind={data['kind']!r} is not one of {', '.join(KINDS)}")
    _unknown(data, _KEYS, where)
    merged = dict(data)
    section = _mapping(data, "profiles", where).get(profile)
    if section:
        if not isinstance(section, dict):
            raise _bad(where, f"profiles.{profile}", "a mapping", section)
        unknown = set(section) - set(_PROFILE_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: profiles.{profile} has unknown keys {sorted(unknown)}; "
                f"allowed: {', '.join(_PROFILE_KEYS)}"
            )
        merged.update(section)
    evidence = _strs(merged, "evidence_profiles", where) or ["cpu", "paper"]
    unknown_profiles = [p for p in evidence if p not in profile_names()]
    if unknown_profiles:
        raise ConfigError(f"{where}: evidence_profiles {unknown_profiles} are not profiles "
                          f"({', '.join(profile_names())})")
    x_axis = _mapping(merged, "x_axis", where)
    exp = Experiment(
        name=str(data["name"]),
        kind=str(data["kind"]),
        title=_str(data, "title", where, str(data["name"])),
        profile=profile,
        description=" ".join(_str(data, "description", where, "").split()),
        tasks=_strs(merged, "tasks", where),
        settings=parse_policies(merged.get("policies") or [], where),
        seeds=_ints(merged, "seeds", where),
        overrides=_strs(merged, "overrides", where),
        path=path,
        uses=_strs(merged, "uses", where),
        baseline=_str(merged, "baseline", where, "eager"),
        reference=_str(merged, "reference", where, "exact"),
        metrics=_metrics(merged, where),
        also_paired_with=_strs(merged, "also_paired_with", where),
        also_paired_why=_str(merged, "also_paired_why", where, "").strip(),
        uses_metrics_of=_str(merged, "uses_metrics_of", where),
        figure=_str(merged, "figure", where, "which_policy"),
        x_axis={str(k): str(v) for k, v in x_axis.items()} or {"paper": "S", "topk": "keep_ratio"},
        evidence_profiles=evidence,
        claims=_claims(merged, where),
        bench_args=_strs(merged, "bench_args", where),
    )
    exp.per_task = _per_task(merged.get("per_task") or {}, exp, where)
    return exp


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML ({msg}); fix the file's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping with at least `name` and `kind`")
    return data


def load_common(exp_dir: Path | str | None = None) -> Common:
    """experiments/_common.yaml (per-profile overrides, order, optional task_kinds); empty if absent."""
    exp_dir = Path(exp_dir) if exp_dir else default_experiments_dir()
    path = exp_dir / "_common.yaml"
    if not path.exists():
        return Common()
    data, where = _load_yaml(path), str(path)
    _unknown(data, ("order", "profiles", "task_kinds"), where)
    overrides = {}
    for profile, section in _mapping(data, "profiles", where).items():
        if not isinstance(section, dict):
            raise _bad(where, f"profiles.{profile}", "a mapping with `overrides`", section)
        _unknown(section, ("overrides",), f"{where}: profiles.{profile}")
        overrides[str(profile)] = _strs(section, "overrides", f"{where}: profiles.{profile}")
    kinds = {str(k): str(v) for k, v in _mapping(data, "task_kinds", where).items()}
    return Common(_strs(data, "order", where), overrides, kinds)


# ----------------------------------------------------------------------------- all of them
def load_experiments(profile: str, exp_dir: Path | str | None = None) -> list[Experiment]:
    """All definitions (`_common.yaml` `order`, then file name; `_*.yaml` skipped) for `profile`."""
    if profile not in profile_names():
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(profile_names())}")
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
    order = load_common(exp_dir).order
    exps.sort(key=lambda e: order.index(e.name) if e.name in order else len(order))
    names = [e.name for e in exps]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{exp_dir}: experiment names {sorted(dup)} are used by several files")
    return exps
