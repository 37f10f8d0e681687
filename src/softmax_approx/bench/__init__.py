"""`python -m softmax_approx.bench [SUBCOMMAND] ...`: the project's benchmarks, one module each.

    python -m softmax_approx.bench [--seq-len ...]     one attention call per policy (bench/attention.py)
    python -m softmax_approx.bench SUBCOMMAND ...      another benchmark: bench/<SUBCOMMAND>.py

Every benchmark module exposes ``main(argv: list[str] | None) -> int`` and documents its own
options (``python -m softmax_approx.bench SUBCOMMAND --help``). A first argument that names a
module of this package selects it; anything else goes to the attention benchmark, so the
original command line keeps working.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from .attention import main as attention_main


def subcommands() -> list[str]:
    """Names of the benchmark modules besides the default attention benchmark."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name != "attention")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in subcommands():
        module = importlib.import_module(f"{__name__}.{argv[0]}")
        return module.main(argv[1:])
    return attention_main(argv)
