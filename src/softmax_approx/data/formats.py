"""Readers of labelled text, by format name: ``csv``, ``tsv``, ``jsonl`` (your own files) and the
published formats of the shipped datasets (``glue_sst2``, ``aclimdb``).

Why one table: a dataset's yaml names its format (``task.data.format``, or none: the file's
suffix decides), and the classification DataModule looks the reader up here; a new format is one
reader function added to :data:`FORMATS`. Every reader returns :class:`Row` s whose labels are
the values as written (text, or a JSON number) and whose ``where`` names the file and line, so a
bad label can be reported there. Bad input is one :class:`DataError` line naming the file (and
line) and what it holds.

* ``csv`` / ``tsv``: a header row naming the columns (``task.data.text``, ``task.data.label``);
  comma- or tab-separated, fields may be quoted (Python's ``csv``, as pandas writes them).
* ``jsonl``: one JSON object a line with the two keys; the label a string or an integer.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

from softmax_approx.data.readers import glue_sst2_rows, read_imdb
from softmax_approx.utils.errors import ConfigError, DataError


class Row(NamedTuple):
    """One labelled text: the label as written in the file, and where it was written."""

    text: str
    label: Any
    where: str


#: ``read(path, split, text_column, label_column) -> rows``
Reader = Callable[[Path, str, str, str], list[Row]]

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def _open_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8") from None


def _field(path: Path, where: str, value: Any, key: str, what: str) -> Any:
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        raise DataError(f"{where}: empty {what} (column {key!r})")
    return value


def _read_delimited(path: Path, text: str, label: str, delimiter: str) -> list[Row]:
    content = _open_text(path)
    if not content.strip():
        raise DataError(f"{path}: file is empty; it needs a header row naming the columns {text!r} and {label!r}")
    # newline="": the csv module sees the file's own line ends (a quoted field may hold one)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in (text, label) if c not in header]
        if missing:
            key = "text" if missing[0] == text else "label"
            raise DataError(
                f"{path}: no column {missing[0]!r} (task.data.{key}); its columns are: {', '.join(header)}"
            )
        ti, li = header.index(text), header.index(label)
        rows: list[Row] = []
        line = reader.line_num + 1
        for fields in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{where}: {len(fields)} fields, the header has {len(header)}")
            rows.append(Row(_field(path, where, fields[ti], text, "text"), _field(path, where, fields[li], label, "label"), where))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


def read_csv(path: Path, split: str, text: str, label: str) -> list[Row]:
    return _read_delimited(path, text, label, ",")


def read_tsv(path: Path, split: str, text: str, label: str) -> list[Row]:
    return _read_delimited(path, text, label, "\t")


def read_jsonl(path: Path, split: str, text: str, label: str) -> list[Row]:
    rows: list[Row] = []
    # split on "\n" only: a JSON string may hold U+2028 and the like, which str.splitlines splits on
    for lineno, line in enumerate(_open_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg}); a .jsonl file holds one JSON object a line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a {type(obj).__name__}, not a JSON object")
        for key, name in (("text", text), ("label", label)):
            if name not in obj:
                raise DataError(f"{where}: no key {name!r} (task.data.{key}); this line has keys: {', '.join(map(str, obj))}")
        value = obj[label]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f"{where}: label {value!r} must be a string or an integer")
        if not isinstance(obj[text], str):
            raise DataError(f"{where}: text {obj[text]!r} must be a string")
        rows.append(Row(_field(path, where, obj[text], text, "text"), _field(path, where, value, label, "label"), where))
    if not rows:
        raise DataError(f"{path}: file is empty; it needs one JSON object a line with keys {text!r} and {label!r}")
    return rows


def read_glue_sst2_format(path: Path, split: str, text: str, label: str) -> list[Row]:
    return [Row(t, y, f"{path}:{line}") for line, t, y in glue_sst2_rows(path)]


@functools.lru_cache(maxsize=1)
def _imdb(root: Path, stamp: tuple[int, int]) -> dict:
    return read_imdb(root)


def read_aclimdb(path: Path, split: str, text: str, label: str) -> list[Row]:
    """One split of the ``aclImdb`` tree or archive at ``path`` (``train`` or ``test``; the
    archive is read once for both)."""
    st = path.stat()
    examples = _imdb(path.parent, (st.st_mtime_ns, st.st_size))
    if split not in examples:
        raise ConfigError(f"{path}: aclImdb has the splits train and test, not {split!r}")
    return [Row(e.text, e.label, f"{path} ({split})") for e in examples[split]]


FORMATS: dict[str, Reader] = {
    "csv": read_csv,
    "tsv": read_tsv,
    "jsonl": read_jsonl,
    "glue_sst2": read_glue_sst2_format,
    "aclimdb": read_aclimdb,
}


def format_of(path: Path, fmt: str | None, key: str) -> str:
    """The format of ``path``: ``fmt`` when given, else from its suffix; one ConfigError line if neither."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"task.data.format={fmt!r}: unknown format; allowed: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{key}={path}: cannot tell the format from the suffix {suffix or '(none)'!r}; use a "
            f"{', '.join(SUFFIXES)} file or set task.data.format (one of: {', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def read_splits(files: dict[str, Path], fmt: str | None, text: str, label: str) -> dict[str, list[Row]]:
    """The rows of each split's file (a file shared by splits, like aclImdb's, is read once)."""
    try:
        return {split: FORMATS[format_of(path, fmt, f"task.data.{split}")](Path(path), split, text, label)
                for split, path in files.items()}
    finally:
        _imdb.cache_clear()
