"""What a dataset is, in one place: the ``task.data`` node of its task yaml.

Why: the facts about a dataset (its files, the reader of their format, how validation is held
out, what the test split is called, which recipe downloads it, its kind) used to be spread over
dicts and ``if task == ...`` branches in a dozen files. Now a task yaml says them once, e.g.
``conf/task/sst2.yaml``::

    task:
      name: sst2
      kind: classification
      data:
        train: ${paths.data_dir}/sst2/train.tsv
        test: ${paths.data_dir}/sst2/dev.tsv
        format: glue_sst2        # null: from the suffix (.csv, .tsv, .jsonl)
        val_size: 872            # held out of train when there is no val file
        val_holdout: sentences   # rows | sentences (SST-2's leak-free rule)
        test_name: sst2 dev (GLUE; test labels not public)
        download: sst2           # the `python -m softmax_approx.data download` recipe; null: your files

and everything else reads :class:`Dataset`: the DataModules, the presence check and the config
validator (``files.py``), ``download``/``check`` on the command line, ``reproduce``'s data check
(``ensure.py``). A run reads the composed config's node (so ``task.data.train=...`` on the command
line counts); code outside Hydra reads the shipped yaml (``utils.task_conf``) with
``${paths.data_dir}`` set to its data folder. A path may be a list of alternatives: the first that
exists is read (IMDB: the extracted ``aclImdb/`` tree, else the archive).

Classification keys: ``train``, ``test`` (required), ``val`` (optional), ``format``, ``text`` and
``label`` (column names), ``val_size``, ``val_holdout``, ``test_name``, ``download``. Translation
keys: ``files`` (logical name -> path, read by ``data/translation.py``) and ``download``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from softmax_approx.utils.errors import ConfigError, DataError
from softmax_approx.utils.task_conf import task_conf, task_names

CLASSIFICATION_KEYS = ("train", "val", "test", "format", "text", "label", "val_size", "val_holdout",
                       "test_name", "download")
TRANSLATION_KEYS = ("files", "download")
#: how validation rows are held out of the training file when there is no val file
VAL_HOLDOUTS = ("rows", "sentences")
#: the default hold-out: a fraction of the training rows
DEFAULT_VAL_SIZE = 0.1


def _paths(value: Any) -> tuple[Path, ...]:
    """A path or a list of alternative paths; ``~`` expanded."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(Path(str(v)).expanduser() for v in items if v is not None)


@dataclass(frozen=True)
class Dataset:
    """One dataset: its files and how to read, split and fetch them."""

    name: str
    kind: str
    #: logical file -> accepted paths (the first that exists is read); classification: train/val/test
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    download: str | None = None
    # classification only
    format: str | None = None
    text: str = "text"
    label: str = "label"
    val_size: int | float = DEFAULT_VAL_SIZE
    val_holdout: str = "rows"
    test_name: str | None = None

    @classmethod
    def from_node(cls, name: str, kind: str, node: Mapping[str, Any] | None) -> "Dataset":
        """A dataset from a resolved ``task.data`` node; one ConfigError line for a bad key or value."""
        node = dict(node or {})
        allowed = CLASSIFICATION_KEYS if kind == "classification" else TRANSLATION_KEYS
        unknown = sorted(set(node) - set(allowed))
        if unknown:
            raise ConfigError(f"task.data.{unknown[0]}: unknown key for a {kind} dataset; allowed keys: {', '.join(allowed)}")
        if kind != "classification":
            files = {str(k): _paths(v) for k, v in (node.get("files") or {}).items() if v is not None}
            return cls(name, kind, files, node.get("download"))
        for key in ("train", "test"):
            if node.get(key) in (None, "", []):
                raise ConfigError(
                    f"task.data.{key} is not set: task={name} reads your labelled text from "
                    "task.data.train=FILE and task.data.test=FILE (.csv, .tsv or .jsonl; task.data.val=FILE optional)"
                )
        holdout = node.get("val_holdout") or "rows"
        if holdout not in VAL_HOLDOUTS:
            raise ConfigError(f"task.data.val_holdout={holdout!r}: allowed values: {', '.join(VAL_HOLDOUTS)}")
        files = {split: _paths(node[split]) for split in ("train", "val", "test") if node.get(split) not in (None, "", [])}
        val_size = node.get("val_size")
        return cls(
            name, kind, files, node.get("download"),
            format=node.get("format"), text=str(node.get("text") or "text"), label=str(node.get("label") or "label"),
            val_size=DEFAULT_VAL_SIZE if val_size is None else val_size, val_holdout=holdout,
            test_name=node.get("test_name"),
        )

    def check_files(self, data_dir: str | Path = "DIR") -> dict[str, Path]:
        """The existing path of every file; one DataError line naming the missing ones and how to
        get them (only ``stat`` calls)."""
        missing = list(dict.fromkeys(" or ".join(map(str, alts)) for alts in self.files.values()
                                     if not any(p.exists() for p in alts)))
        if missing:
            raise DataError(f"task {self.name}: missing data file(s) {'; '.join(missing)}; {self.fetch_hint(data_dir)}")
        return {k: next(p for p in alts if p.exists()) for k, alts in self.files.items()}

    def fetch_hint(self, data_dir: str | Path = "DIR") -> str:
        """What puts the files in place: the download recipe's command, or (your own data) the keys."""
        from softmax_approx.data.files import fetch_command

        if self.download is None:
            return "check task.data.train / task.data.test (and task.data.val): they name your own files"
        return f"fetch them with {fetch_command(self.name, data_dir)}"


def shipped_names() -> list[str]:
    """The shipped tasks whose dataset can be fetched (``download`` set): sst2, imdb, multi30k ..."""
    return [n for n in task_names() if (task_conf(n).get("data") or {}).get("download")]


def shipped(name: str, data_dir: str | Path) -> Dataset:
    """The dataset of the shipped task ``name`` (``conf/task/<name>.yaml``), files under ``data_dir``."""
    from omegaconf import OmegaConf

    names = shipped_names()
    if name not in names:
        raise DataError(f"task={name!r}: unknown data task; allowed: {', '.join(names)}")
    conf = task_conf(name)
    root = OmegaConf.create({"paths": {"data_dir": str(data_dir)}, "data": conf.get("data") or {}})
    node = OmegaConf.to_container(root.data, resolve=True)
    return Dataset.from_node(name, str(conf.get("kind")), node)  # type: ignore[arg-type]


def dataset(name: str, data_dir: str | Path, data: Mapping[str, Any] | None = None, kind: str | None = None) -> Dataset:
    """The composed config's dataset when ``data`` (its resolved ``task.data``) is given, else the
    shipped one of that name."""
    if data is None:
        return shipped(name, data_dir)
    return Dataset.from_node(name, kind or "classification", data)

