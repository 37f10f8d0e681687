"""Packaging: the lean base install, the extras, the harness commands' one-line stop, one version.

The base install is the library (torch + NumPy); pyproject.toml's extras add the rest, and
``softmax_approx.utils.extras`` names the module each extra's distributions provide. The guard
tests run the real entry points in a subprocess where the harness packages are absent
(tests/fixtures_blocked_imports.py). README's install routes are checked against pyproject
here and run as written by .ci/package_check.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import softmax_approx
from fixtures_blocked_imports import BLOCKED, run_without
from softmax_approx.utils import extras

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``hydra-core>=1.3`` -> ``hydra-core``)."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_base_install_is_torch_and_numpy():
    assert sorted(_name(r) for r in PYPROJECT["project"]["dependencies"]) == ["numpy", "torch"]


def test_the_extras_table_names_every_distribution_of_each_extra():
    optional = PYPROJECT["project"]["optional-dependencies"]
    for extra, table in extras.EXTRAS.items():
        assert sorted(_name(r) for r in optional[extra]) == sorted(table), f"[{extra}] differs from utils/extras.py"


def test_the_test_extra_installs_everything_make_setup_needs():
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert "softmax-approx[harness,hf]" in optional["test"]
    assert {"build", "twine"} <= {_name(r) for r in optional["test"]}  # .ci/package_check
    assert "pip install --quiet -e '.[harness,hf,test]'" in (ROOT / "Makefile").read_text()


def test_the_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "softmax_approx.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", softmax_approx.__version__)


def test_every_console_script_points_at_a_main():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"softmax-approx-train", "softmax-approx-eval", "softmax-approx-reproduce", "softmax-approx-bench"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_readme_install_routes_agree_with_pyproject():
    install = README.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\[([a-z,]+)\]'", install))
    assert named == {"hf", "harness", "harness,hf,test"}, named
    defined = set(PYPROJECT["project"]["optional-dependencies"])
    assert all(set(group.split(",")) <= defined for group in named)
    wheel = f"dist/softmax_approx-{softmax_approx.__version__}-py3-none-any.whl"
    assert f"pip install {wheel} " in install and f"pip install '{wheel}[hf]'" in install
    assert "pip install torch" in install and "pip install '.[hf]'" in install and "make setup" in install


def test_require_passes_with_the_extras_installed():
    assert extras.missing("harness") == [] and extras.missing("hf") == []
    assert extras.require("harness") is None


HARNESS_COMMANDS = [
    ("softmax_approx.train", ["task=sst2"]),
    ("softmax_approx.eval", ["ckpt_path=x.ckpt"]),
    ("softmax_approx.reproduce", ["run", "--profile", "smoke", "--out", "out"]),
    ("softmax_approx.report", ["--out", "out"]),
    ("softmax_approx.data", ["download", "sst2"]),
    ("softmax_approx.bench", ["decode"]),
    ("softmax_approx.bench", ["gpu_check", "--out", "out"]),
]


@pytest.mark.parametrize("module,args", HARNESS_COMMANDS, ids=[f"{m} {a[0]}" for m, a in HARNESS_COMMANDS])
def test_a_harness_command_without_the_harness_stops_with_one_line(module, args, tmp_path):
    code = (f"import runpy, sys\nsys.argv = [{module!r}, *{args!r}]\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    proc = run_without(BLOCKED["harness"], code)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    what = module if module in ("softmax_approx.report", "softmax_approx.data") else f"python -m {module}"  # the package names itself
    assert lines[0].startswith(f"{what} needs the 'harness' extra (lightning")
    assert lines[0].endswith("not installed): pip install 'softmax-approx[harness]'")


def test_a_console_script_without_the_harness_names_itself_and_the_extra():
    """What the installed ``softmax-approx-train`` script does: import the module, call main."""
    code = ("import sys\nsys.argv = ['/venv/bin/softmax-approx-reproduce', 'run']\n"
            "from softmax_approx.reproduce import main\nsys.exit(main())\n")
    proc = run_without(["yaml"], code)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr == ("softmax-approx-reproduce needs the 'harness' extra (pyyaml not installed): "
                           "pip install 'softmax-approx[harness]'\n")


def test_the_transformers_benchmark_without_transformers_names_the_hf_extra():
    code = "import sys\nfrom softmax_approx.bench import main\nsys.exit(main(['hf']))\n"
    proc = run_without(BLOCKED["hf"], code)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "pip install 'softmax-approx[hf]'" in proc.stderr
