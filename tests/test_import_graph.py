"""Nothing imports upward: the layer order of docs/architecture.md, checked with ast over src/.

Every ``import``/``from ... import`` counts, also those inside functions (a lazy import is still
a dependency). A module may import its own package and any package of a lower layer; the entry
points (train, eval, reproduce, bench) may import anything. ``report`` reads results.json files
only: it may import ``utils`` and nothing that needs torch, Lightning or Hydra.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "softmax_approx"

#: lowest first; docs/architecture.md shows the same order
LAYERS = ["utils", "core", "nn", "integrations", "models", "data", "tasks", "conf", "harness"]
ENTRY_POINTS = {"train", "eval", "reproduce", "bench", "__init__", "__main__"}
REPORT_ALLOWED = {"utils", "report"}
HEAVY = {"torch", "lightning", "hydra", "omegaconf", "transformers"}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``."""
    rel = path.relative_to(SRC).with_suffix("").parts
    package = ["softmax_approx", *rel[:-1]] if rel[-1] != "__init__" else ["softmax_approx", *rel[:-1]]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            else:
                out.append((node.module or "", node.lineno))
    return out


def _top(path: Path) -> str:
    first = path.relative_to(SRC).parts[0]
    return first.removesuffix(".py")


def _edges() -> list[tuple[str, str, str, int]]:
    """(importing top-level part, imported name, file, line) for every import in the package."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        for name, line in _imports(path):
            edges.append((_top(path), name, str(path.relative_to(SRC.parent)), line))
    return edges


def _inner(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "softmax_approx" and len(parts) > 1 else None


def test_the_layers_cover_every_package():
    tops = {_top(p) for p in SRC.rglob("*.py")}
    unknown = tops - set(LAYERS) - ENTRY_POINTS - {"report"}
    assert not unknown, f"place {sorted(unknown)} in LAYERS (and docs/architecture.md)"


def test_nothing_imports_upward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for src, name, file, line in _edges():
        dst = _inner(name)
        if src not in rank or dst is None or dst == src:
            continue
        if dst not in rank or rank[dst] > rank[src]:
            bad.append(f"{file}:{line} ({src}) imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_report_needs_only_utils_and_no_torch_lightning_or_hydra():
    bad = []
    for src, name, file, line in _edges():
        if src != "report":
            continue
        dst = _inner(name)
        if (dst is not None and dst not in REPORT_ALLOWED) or name.split(".")[0] in HEAVY:
            bad.append(f"{file}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_core_imports_neither_lightning_nor_hydra():
    bad = [f"{f}:{ln} imports {n}" for s, n, f, ln in _edges()
           if s == "core" and n.split(".")[0] in {"lightning", "hydra", "omegaconf"}]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("src,name", [("tasks", "softmax_approx.harness.measure"), ("core", "softmax_approx.nn")])
def test_the_check_would_catch_an_upward_import(src, name, monkeypatch):
    """The test itself can fail: an injected upward import is reported."""
    fake = [(src, name, f"{src}/fake.py", 1)]
    monkeypatch.setattr(__import__(__name__), "_edges", lambda: fake)
    with pytest.raises(AssertionError, match="upward imports"):
        test_nothing_imports_upward()
