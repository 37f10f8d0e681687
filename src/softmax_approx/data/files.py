"""Which files each task needs (its ``task.data``: ``data/datasets.py``), a cheap presence
check, and where caches go.

Why: the config validator must tell a user that data is missing *before* a run starts, with
the exact paths and the command that fetches them, without reading or tokenizing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from softmax_approx.data.datasets import dataset, shipped, shipped_names

#: the shipped tasks whose dataset can be fetched (read from their yamls)
TASKS = tuple(shipped_names())
IWSLT_SUBDIR = "iwslt14/iwslt14.tokenized.de-en"
#: download recipes that cannot fetch anything: the user supplies the archive
MANUAL_RECIPES = {
    "iwslt14": "`python -m softmax_approx.data prepare-iwslt14 --tgz PATH/TO/de-en.tgz --data-dir {data_dir}`"
               " (IWSLT'14 is not redistributable: supply the original de-en.tgz)",
}


def fetch_command(task: str, data_dir: str | Path = "DIR") -> str:
    """The command that puts ``task``'s files into ``data_dir``."""
    recipe = shipped(task, data_dir).download or task
    if recipe in MANUAL_RECIPES:
        return MANUAL_RECIPES[recipe].format(data_dir=data_dir)
    return f"`python -m softmax_approx.data download {task} --data-dir {data_dir}` (or `make data`)"


def expected_files(task: str, data_dir: str | Path) -> dict[str, list[Path]]:
    """Per logical file, the accepted paths (any one of them suffices), without touching disk."""
    return {k: list(v) for k, v in shipped(task, data_dir).files.items()}


def check_files(task: str, data_dir: str | Path, data: dict | None = None, kind: str | None = None) -> dict[str, Path]:
    """Raise a one-line DataError listing missing files and the fetch command; else return paths.

    ``data``: the composed config's ``task.data`` (a run's own files); without it, the shipped
    task's. Cheap: only ``stat`` calls, nothing is read.
    """
    spec = dataset(task, data_dir, data, kind)
    if spec.kind == "classification":
        from softmax_approx.data.formats import format_of

        for split, alternatives in spec.files.items():
            for path in alternatives:
                format_of(path, spec.format, f"task.data.{split}")
    return spec.check_files(data_dir)


def default_user_cache() -> Path:
    """The user's cache folder for this package (``platformdirs``: ``$XDG_CACHE_HOME`` or
    ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    import platformdirs

    return platformdirs.user_cache_path("softmax_approx", appauthor=False)


def default_data_dir() -> Path:
    """The data directory when none is given: ``$SOFTMAX_APPROX_DATA``, else ``<user cache>/data``.

    Used by the training config (``paths.data_dir``), ``make data`` and ``make reproduce``, so a
    fresh clone needs no data path; ``paths.data_dir=DIR`` / ``DATA_DIR=DIR`` override it.
    """
    env = os.environ.get("SOFTMAX_APPROX_DATA")
    return Path(env) if env else default_user_cache() / "data"


def resolve_cache_dir(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` when given (``paths.cache_dir``); else the user cache. Never the data folder:
    data folders are often shared between users and read-only on clusters, and a cache written
    there would make the folder's content depend on who ran what (``data_dir`` is kept for
    callers' signatures)."""
    if cache_dir is not None:
        return Path(cache_dir)
    return default_user_cache()

