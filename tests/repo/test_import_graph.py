"""Nothing imports upward: the layer order of docs/architecture.md, checked with ast over src/.

Every ``import``/``from ... import`` counts, also those inside functions (a lazy import is still
a dependency). A module may import its own package and any package of a lower layer; the entry
points (train, eval, reproduce, bench) may import anything. ``report`` reads results.json files
and the experiment definitions only: it may import ``utils`` and ``plan`` and nothing that needs
torch, Lightning or Hydra.

The last tests check the installed dependency set in subprocesses: the library (core, nn, the
attention benchmark, the Transformers integration) imports and runs with every package of the
harness extra absent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fixtures_blocked_imports import BLOCKED, run_without

SRC = Path(__file__).resolve().parents[2] / "src" / "softmax_approx"

#: lowest first; docs/architecture.md shows the same order
LAYERS = ["utils", "plan", "core", "nn", "integrations", "models", "data", "tasks", "conf", "harness"]
ENTRY_POINTS = {"train", "eval", "reproduce", "bench", "__init__", "__main__"}
REPORT_ALLOWED = {"utils", "plan", "report"}
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


# -- the installed dependency set: what the library modules import at run time --------------

#: the library of the bare install (pyproject.toml `dependencies`: torch, NumPy)
LIBRARY_MODULES = ["softmax_approx", "softmax_approx.core", "softmax_approx.nn", "softmax_approx.bench"]


def test_the_library_imports_nothing_beyond_torch_numpy_and_the_standard_library():
    """Importing core, nn and the attention benchmark loads no top-level module that importing
    torch and NumPy alone does not (a guarded ``try: import lightning`` would show here too)."""
    code = (
        "import sys, torch, numpy\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        f"for m in {LIBRARY_MODULES!r}: __import__(m)\n"
        "new = {m.split('.')[0] for m in sys.modules} - before - set(sys.stdlib_module_names) - {'softmax_approx'}\n"
        "print(sorted(new))\n"
    )
    proc = run_without([], code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the library imports more than torch and NumPy: {proc.stdout}"


def test_the_library_works_without_the_harness_and_transformers():
    """With every harness package and Transformers absent, core, nn and the attention benchmark
    import and run (a forward+backward through a patched nn.TransformerEncoderLayer)."""
    code = (
        "import torch\n"
        "from softmax_approx.core import attention\n"
        "from softmax_approx.nn import patch\n"
        "import softmax_approx.bench\n"
        "layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)\n"
        "assert patch(layer, 'paper', S=2) == ['self_attn']\n"
        "layer(torch.randn(2, 5, 16)).sum().backward()\n"
        "q = torch.randn(1, 2, 6, 8, requires_grad=True)\n"
        "attention(q, q, q, policy='topk', keep_ratio=0.5).sum().backward()\n"
        "print('ok')\n"
    )
    proc = run_without([*BLOCKED["harness"], *BLOCKED["hf"]], code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_transformers_integration_needs_only_transformers():
    """integrations.transformers imports with the harness absent (Transformers' own requirements,
    e.g. tokenizers and PyYAML, stay importable: the hf extra installs them)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    own = {Requirement(r).name.lower().replace("-", "_") for r in requires("transformers") or []
           if "extra ==" not in r}
    own |= {"yaml"} if "pyyaml" in own else set()
    blocked = [m for m in BLOCKED["harness"] if m not in own]
    proc = run_without(blocked, "import softmax_approx.integrations.transformers\nprint('ok')\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_blocker_would_catch_a_harness_import():
    """The check itself can fail: a harness module is refused inside the subprocess."""
    proc = run_without(BLOCKED["harness"], "import softmax_approx.harness.build\n")
    assert proc.returncode != 0 and "No module named" in proc.stderr
