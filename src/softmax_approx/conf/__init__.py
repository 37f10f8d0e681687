"""The Hydra config tree, shipped inside the package (found as ``pkg://softmax_approx.conf``).

Why a package: an installed ``softmax-approx-train`` must find its configs from any directory,
with or without the repository. ``CONF_DIR`` is the one place that says where the tree is; the
resolvers its yaml files use are registered on import (Hydra imports this package to read it).

* ``${cwd:}`` - the directory the command was started in. Unlike ``${hydra:runtime.cwd}`` it
  resolves before Hydra has set up a job, which ``hydra.sweep.dir`` of a multirun needs.
* ``${default_data_dir:}`` - ``$SOFTMAX_APPROX_DATA``, else the user's data cache
  (``data.files.default_data_dir``).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent
CONFIG_MODULE = __name__  # for hydra.initialize_config_module
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # for @hydra.main
CONFIG_NAME = "train"


def _default_data_dir() -> str:
    from softmax_approx.data.files import default_data_dir

    return str(default_data_dir())


def check_profile_columns(cfg) -> str | None:
    """The problem, in one line, when the task's ``task.sizes`` table has no column for the
    profile in use (a new profile must add one to every task file), else None."""
    profile = cfg.get("profile_name")
    task = cfg.get("task") or {}
    for key, column in (task.get("sizes") or {}).items():
        if profile not in column:
            return (f"task.sizes.{key} has no column for profile {profile!r} (columns: {', '.join(column)}); "
                    f"add `{profile}: ...` to it in conf/task/{task.get('name')}.yaml")
    return None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
    if not OmegaConf.has_resolver("default_data_dir"):
        OmegaConf.register_new_resolver("default_data_dir", _default_data_dir)


register_resolvers()
