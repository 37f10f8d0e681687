"""Text classification DataModule: any labelled text described by a ``task.data`` node
(``data/datasets.py``): SST-2, IMDB and your own CSV/TSV/JSONL files (``task=text_classification``).

Classes are the sorted distinct labels of the training file (integers when every training label
is an integer, so ``"2"`` in a CSV and ``2`` in a JSONL file mean the same class); a label in the
val or test file that the training file lacks is one DataError line naming file and line. The
number of classes (``num_classes``) reaches the model's head and the accuracy metrics through
``ClassificationTask.net_kwargs``. Validation comes from ``task.data.val`` when given, else is
held out of train (``val_size`` rows, or a fraction; ``val_holdout``: ``rows`` or SST-2's
``sentences``), seeded by ``split_seed``.

Splits of the shipped datasets (say these in any table):

* **sst2**: GLUE's test labels are not public, so GLUE **dev** (872 rows) is our **test**
  split. GLUE's train file holds 6,885 whole sentences *and* their labelled sub-phrases (67,349
  rows), so validation is held out leak-free (``readers.sentence_holdout``): ``val_size`` whole
  sentences (default 872) are drawn with ``random.Random(split_seed)``, and every training row
  that is a token span of a held-out sentence is dropped (9,183 rows with the defaults); the
  remaining 57,294 rows are trained on. ``split_info`` says how many rows were dropped.
* **imdb**: official train/test (25,000 each); ``val_size`` reviews (default 1,000) are held
  out of train with the same seeded rule.

The held-out slice uses ``random.Random(split_seed)`` (default 0, independent of the run's
``seed``, so every seed of an experiment sees the same splits) and never depends on
``subset``. ``subset`` (e.g. ``{"train": 2000, "val": 200, "test": 500}``) then caps each
split with a sample seeded by ``split_seed``, for the smoke profile. ``seed`` only drives
the order of the training batches. Texts are truncated to ``max_len`` tokens (the head is kept; with
``prepend_cls`` the first token is ``<cls>`` and counts towards ``max_len``).

The WordPiece tokenizer is trained (deterministically) on the (full, un-subsetted) training part
only and cached under ``cache_dir`` (``paths.cache_dir``; default the user cache,
``~/.cache/softmax_approx`` on Linux; never the data folder), keyed by the settings and the input files' content.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from softmax_approx.data.base import BucketedDataModule
from softmax_approx.data.batching import ClassificationCollator
from softmax_approx.data.datasets import Dataset, dataset
from softmax_approx.data.files import resolve_cache_dir
from softmax_approx.data.formats import Row, read_splits
from softmax_approx.data.readers import TextExample, holdout_split, seeded_subset, sentence_holdout
from softmax_approx.data.tokenizer import load_or_train, tokenizer_sha256
from softmax_approx.data import tokenizer as tokmod
from softmax_approx.utils.errors import ConfigError, DataError

#: how the validation rows are held out of the training file (part of the tokenizer's cache key)
VAL_RULE = {
    "sentences": "whole sentences; training rows that are token spans of a held-out sentence dropped",
    "rows": "random rows",
}

log = logging.getLogger(__name__)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _is_integer(label: Any) -> bool:
    return isinstance(label, int) or re.fullmatch(r"[+-]?\d+", str(label)) is not None


def _classes(train: list[Row], train_path: Path) -> tuple[list, Any]:
    """The sorted distinct training labels, and ``row -> class index`` for any split (one
    DataError line, naming file and line, for a label the training file lacks).

    Labels are integers when every training label is one (a CSV's ``"2"`` and a JSONL's ``2``
    alike), else text; so ``0/1`` files keep their order and ``neg/neu/pos`` sort as text.
    """
    numeric = all(_is_integer(r.label) for r in train)
    norm = (lambda v: int(v) if _is_integer(v) else str(v)) if numeric else str
    classes = sorted({norm(r.label) for r in train})
    index = {c: i for i, c in enumerate(classes)}
    shown = ", ".join(map(str, classes))

    def label_of(row: Row) -> int:
        key = norm(row.label)
        if key not in index:
            raise DataError(f"{row.where}: label {row.label!r} does not occur in the training file {train_path} "
                            f"(its classes: {shown}); correct the label or add training rows with it")
        return index[key]

    if len(classes) < 2:
        raise DataError(f"{train_path}: one class only ({shown}); a classifier needs at least 2 labels")
    return classes, label_of


def _check_subset(subset: Any) -> dict[str, int | None]:
    if subset is None:
        return {"train": None, "val": None, "test": None}
    subset = dict(subset)
    bad = set(subset) - {"train", "val", "test"}
    if bad:
        raise ConfigError(f"data.subset: unknown split(s) {sorted(bad)}; allowed keys: train, val, test")
    out: dict[str, int | None] = {}
    for k in ("train", "val", "test"):
        v = subset.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"data.subset.{k}={v!r}: must be a positive integer or null")
        out[k] = v
    return out


class ClassificationDataModule(BucketedDataModule):
    """``task.data`` -> reader -> seeded splits -> WordPiece -> length-bucketed padded batches."""

    def __init__(
        self,
        task: str = "sst2",
        data: dict | None = None,
        data_dir: str = "data",
        cache_dir: str | None = None,
        max_len: int = 128,
        vocab_size: int = 16000,
        batch_size: int | None = 32,
        max_tokens: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        subset: dict | None = None,
        val_size: int | float | None = None,
        n_classes: int | None = None,
        seed: int = 0,
        split_seed: int = 0,
        prepend_cls: bool = False,
        pin_memory: bool = False,
        hf_tokenizer: str | None = None,
        test_split: str = "test",
    ) -> None:
        super().__init__()
        self.set_test_split(test_split)
        # the composed config's task.data; without one (code, tests), the shipped task's
        self.spec: Dataset = dataset(task, data_dir, data, "classification")
        if self.spec.kind != "classification":
            raise ConfigError(f"data.task={task!r}: a {self.spec.kind} dataset, not a classification one")
        if max_len < 2:
            raise ConfigError(f"data.max_len={max_len}: must be >= 2")
        if vocab_size < 100:
            raise ConfigError(f"data.vocab_size={vocab_size}: must be >= 100")
        self.task = task
        self.data_dir = Path(data_dir)
        self.cache_dir = resolve_cache_dir(self.data_dir, cache_dir)
        self.max_len = int(max_len)
        self.requested_vocab_size = int(vocab_size)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.subset = _check_subset(subset)
        self.val_size = self.spec.val_size if val_size is None else val_size
        self.seed = int(seed)
        self.split_seed = int(split_seed)
        self.prepend_cls = prepend_cls
        self.pin_memory = pin_memory
        # A Hugging Face tokenizer (local dir or hub name) instead of our WordPiece: the one a
        # pretrained model was trained with (model=hf_classifier model.pretrained=... sets it).
        self.hf_tokenizer = hf_tokenizer
        self.classes: list = []  # the sorted distinct training labels, after setup
        self.expected_classes = n_classes  # task.n_classes: null = whatever the training file has
        self.test_split_name = self.spec.test_name or f"{task} test ({self.spec.files['test'][0].name})"
        self.file_signatures: dict[str, Any] = {}
        self.tokenizer = None
        self.datasets: dict[str, _ListDataset] = {}
        self.setup_seconds: float | None = None
        self.tokenizer_path: Path | None = None
        self.tokenizer_sha256: str | None = None
        self.split_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ cheap checks
    def check_files(self) -> dict[str, Path]:
        """Raise DataError naming missing files and the download command (reads nothing)."""
        return self.spec.check_files(self.data_dir)

    # ------------------------------------------------------------------ setup
    @property
    def num_classes(self) -> int:
        """How many classes the training file has (after ``setup``)."""
        if not self.classes:
            raise RuntimeError("call setup() before asking for num_classes")
        return len(self.classes)

    def _read(self) -> tuple[dict[str, list[Row]], dict[str, Path]]:
        files = self.check_files()
        d = self.spec
        return read_splits(files, d.format, d.text, d.label), files

    def splits(self) -> tuple[dict[str, list[TextExample]], list[Path]]:
        """The full train/val/test rows (before ``subset``), labels as class indices, and the
        tokenizer's input files.

        Also sets ``classes``, ``split_sizes_full`` and ``split_info`` (the validation rule and,
        for the ``sentences`` hold-out, how many training rows were dropped because they occur
        inside a held-out sentence).
        """
        rows, files = self._read()
        self.classes, label_of = _classes(rows["train"], files["train"])
        if self.expected_classes is not None and self.expected_classes != len(self.classes):
            raise DataError(f"task.n_classes={self.expected_classes}: the training file {files['train']} has "
                            f"{len(self.classes)} classes ({', '.join(map(str, self.classes))}); set task.n_classes="
                            f"{len(self.classes)}, or null to take the data's")
        examples = {split: [TextExample(r.text, label_of(r)) for r in split_rows] for split, split_rows in rows.items()}
        train_all = examples["train"]
        what = f"{self.task} train"
        dropped = 0
        if "val" in examples:
            kept, held, rule = list(range(len(train_all))), [], f"the val file ({files['val'].name})"
        elif self.spec.val_holdout == "sentences":
            split = sentence_holdout([e.text for e in train_all], self.val_size, self.split_seed, what=what)
            kept, held, dropped, rule = split.kept, split.held, len(split.dropped), VAL_RULE["sentences"]
        else:
            kept, held = holdout_split(len(train_all), self.val_size, self.split_seed, what=what)
            rule = VAL_RULE["rows"]
        out = {"train": [train_all[i] for i in kept],
               "val": examples.get("val") or [train_all[i] for i in held],
               "test": examples["test"]}
        self.val_rule = rule
        self.split_sizes_full = {k: len(v) for k, v in out.items()}
        self.split_info = {"val_rule": rule, "train_rows_read": len(train_all),
                           "train_rows_dropped_for_val": dropped,
                           **{f"{k}_rows": v for k, v in self.split_sizes_full.items()}}
        if dropped:
            log.info("%s: %d whole sentences held out for validation; %d training rows inside them dropped "
                     "(%d of %d rows trained on)", self.task, len(held), dropped, len(kept), len(train_all))
        self._files = files
        return out, [files["train"]]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        t0 = time.perf_counter()
        splits, tok_inputs = self.splits()
        train = splits["train"]

        settings = {
            "kind": "classification",
            "task": self.task,
            "vocab_size": self.requested_vocab_size,
            "val_size": self.val_size,
            "val_rule": self.val_rule,
            "split_seed": self.split_seed,
            "inputs": self._signatures(tok_inputs),
        }
        if self.hf_tokenizer:
            self._load_hf_tokenizer()
        else:
            self.tokenizer_path = tokmod.cache_path(self.cache_dir, self.task, settings)
            self.tokenizer = load_or_train(
                "classification", self.tokenizer_path, lambda: (e.text for e in train), self.requested_vocab_size
            )
            self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
            self.vocab_size = self.tokenizer.get_vocab_size()
            self.pad_id = self.tokenizer.token_to_id("<pad>")
            self.unk_id = self.tokenizer.token_to_id("<unk>")
            self.cls_id = self.tokenizer.token_to_id("<cls>")

        for i, name in enumerate(("train", "val", "test")):
            rows = seeded_subset(splits[name], self.subset[name], self.split_seed + 1 + i)
            self.datasets[name] = _ListDataset(self._encode(rows))
        self.setup_seconds = time.perf_counter() - t0

    def data_info(self) -> dict[str, Any]:
        """Besides the tokenizer and splits: each data file (path, bytes, sha256 of its content)
        and the classes, for results.json."""
        files = self.data_files()
        sigs = self._signatures(list(files.values()))
        return {
            **super().data_info(),
            "files": {split: {"path": str(p), "bytes": size, "sha256": digest}
                      for (split, p), (_, size, digest) in zip(files.items(), sigs)},
            "classes": list(self.classes),
        }

    def _load_hf_tokenizer(self) -> None:
        """The pretrained model's own tokenizer; its special tokens ([CLS] ... [SEP]) are added
        and kept under truncation to ``max_len``."""
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(self.hf_tokenizer)
        self.tokenizer = hf.backend_tokenizer
        self.tokenizer.enable_truncation(self.max_len)
        self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        self.vocab_size = len(hf)
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
        self.unk_id = hf.unk_token_id if hf.unk_token_id is not None else self.pad_id
        if self.pad_id is None:
            raise ConfigError(f"task.datamodule.hf_tokenizer={self.hf_tokenizer!r}: the tokenizer has no pad or eos token")

    def _encode(self, rows: list[TextExample]) -> list[dict]:
        assert self.tokenizer is not None
        if self.hf_tokenizer:
            encs = self.tokenizer.encode_batch([r.text for r in rows], add_special_tokens=True)
            return [{"ids": enc.ids or [self.unk_id], "label": r.label} for r, enc in zip(rows, encs)]
        encs = self.tokenizer.encode_batch([r.text for r in rows], add_special_tokens=False)
        room = self.max_len - (1 if self.prepend_cls else 0)
        out = []
        for r, enc in zip(rows, encs):
            ids = enc.ids[:room] or [self.unk_id]
            if self.prepend_cls:
                ids = [self.cls_id, *ids]
            out.append({"ids": ids, "label": r.label})
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text exactly as the batches would hold them."""
        return self._encode([TextExample(text, 0)])[0]["ids"]

    # ------------------------------------------------------------------ loaders
    def item_length(self, item: dict) -> int:
        return len(item["ids"])

    def collator(self):
        return ClassificationCollator(self.pad_id)
