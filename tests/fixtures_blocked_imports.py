"""Run Python in a subprocess as if some packages were not installed.

Every meta-path finder is wrapped so that none finds the named top-level modules: importing
one raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None, as for a package
that is not installed, so a test sees what a bare install of softmax-approx sees
without building one. The harness's own dependencies pull in pandas and pyarrow (``datasets``),
which are refused too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from softmax_approx.utils.extras import EXTRAS

SRC = Path(__file__).resolve().parents[1] / "src"

#: top-level modules of each extra, plus what the harness's dependencies bring along
BLOCKED = {
    "harness": sorted({m.split(".")[0] for m in EXTRAS["harness"].values()} | {"pandas", "pyarrow"}),
    "hf": sorted({m.split(".")[0] for m in EXTRAS["hf"].values()}),
}

_BLOCKER = """\
import sys
class _Absent:
    # wraps every finder: the named modules are found by none, as when not installed
    names = frozenset({names!r})
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Absent(f) for f in sys.meta_path]
"""


def run_without(blocked: list[str] | set[str], code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` (after the blocker) in a fresh interpreter with the repository's src/ first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    script = _BLOCKER.format(names=sorted(blocked)) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=timeout)
