"""The optional extras and the one-line stop of a command that needs one it lacks.

The bare install is the library (torch + NumPy). The harness commands (train, eval, reproduce,
report, data, the decode and gpu_check benchmarks) need the ``harness`` extra, the Transformers
route and ``bench hf`` the ``hf`` extra. Each such command calls :func:`require` first, before
its heavy imports, so a missing extra is one line naming the install command instead of an
ImportError traceback. Only entry points call it; the library never does.

``EXTRAS`` maps each extra's distributions (those of pyproject.toml's
``[project.optional-dependencies]``; a test keeps the two equal) to the module each provides.
"""

from __future__ import annotations

import importlib.util
import sys

EXTRAS: dict[str, dict[str, str]] = {
    "harness": {
        "lightning": "lightning",
        "torchmetrics": "torchmetrics",
        "hydra-core": "hydra",
        "hydra-joblib-launcher": "hydra_plugins.hydra_joblib_launcher",
        "hydra-submitit-launcher": "hydra_plugins.hydra_submitit_launcher",
        "submitit": "submitit",
        "omegaconf": "omegaconf",
        "pyyaml": "yaml",
        "wandb": "wandb",
        "sacrebleu": "sacrebleu",
        "sacremoses": "sacremoses",
        "tokenizers": "tokenizers",
        "datasets": "datasets",
        "matplotlib": "matplotlib",
        "pooch": "pooch",
        "platformdirs": "platformdirs",
    },
    "hf": {"transformers": "transformers"},
}


def _importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a parent package is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` whose module cannot be found."""
    return [dist for dist, module in EXTRAS[extra].items() if not _importable(module)]


def install_hint(extra: str) -> str:
    """The pip command that adds ``extra`` to an installed softmax-approx."""
    return f"pip install 'softmax-approx[{extra}]'"


def require(extra: str, command: str | None = None) -> None:
    """Stop with one line (exit code 1) when a distribution of ``extra`` is not installed.

    ``command`` names what needs it in the message; default: the running program.
    """
    absent = missing(extra)
    if not absent:
        return
    what = command or _program()
    shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
    raise SystemExit(f"{what} needs the '{extra}' extra ({shown} not installed): {install_hint(extra)}")


def _program() -> str:
    """``python -m softmax_approx.x`` or the console script's name, as the user typed it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "this command"
