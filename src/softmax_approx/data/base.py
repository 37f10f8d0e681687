"""What every DataModule here shares: length-bucketed loaders over in-memory splits.

The train loader is a :class:`~softmax_approx.data.batching.ResumableDataLoader`: Lightning's
fit loop saves its position in every checkpoint and restores it on resume, so a run resumed
mid-epoch continues with the next unseen batch (no harness code involved).

A subclass fills ``self.datasets`` (split -> dataset with ``.items``) in ``setup`` and says how
long an item is (:meth:`item_length`, what the bucketing sorts by) and how a batch is padded
(:meth:`collator`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning as L
from torch.utils.data import DataLoader

from softmax_approx.data.batching import BucketBatchSampler, ResumableDataLoader
from softmax_approx.utils.errors import ConfigError

#: the in-memory splits ``test_split`` may name
SPLITS = ("train", "val", "test")


class BucketedDataModule(L.LightningDataModule):
    """Train batches reshuffled per (seed, epoch); eval batches in a fixed length order."""

    datasets: dict
    batch_size: int | None
    eval_batch_size: int | None
    max_tokens: int | None
    seed: int
    num_workers: int
    pin_memory: bool
    #: the split ``trainer.test`` reads: ``test``, or ``val``/``train`` to evaluate a checkpoint on
    #: another of the run's splits (``python -m softmax_approx.eval ... task.datamodule.test_split=val``)
    test_split: str = "test"
    _test_split_name: str | None = None

    def set_test_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ConfigError(f"task.datamodule.test_split={split!r}: allowed values: {', '.join(SPLITS)}")
        self.test_split = split

    @property
    def test_split_name(self) -> str | None:
        """What the test metrics were computed on, for results.json and the tables (a subclass
        sets the description of its real test split; another ``test_split`` says so)."""
        if self.test_split == "test":
            return self._test_split_name
        return f"{getattr(self, 'task', '?')} {self.test_split} split (task.datamodule.test_split={self.test_split})"

    @test_split_name.setter
    def test_split_name(self, value: str | None) -> None:
        self._test_split_name = value

    def item_length(self, item: dict) -> int:
        raise NotImplementedError

    def collator(self) -> Callable[[list], Any]:
        raise NotImplementedError

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        ds = self.datasets[split]
        bs = self.batch_size if train else self.eval_batch_size
        sampler = BucketBatchSampler(
            [self.item_length(e) for e in ds.items],
            batch_size=bs if self.max_tokens is None else None,
            max_tokens=self.max_tokens,
            shuffle=train,
            seed=self.seed,
        )
        if train and self.trainer is not None:
            sampler.set_epoch(self.trainer.current_epoch)
        # train: resumable mid-epoch (Lightning checkpoints the loader's position)
        return (ResumableDataLoader if train else DataLoader)(
            ds,
            batch_sampler=sampler,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def data_files(self) -> dict[str, Path]:
        """Logical file (``train``, ``test``, ``train.de`` ...) -> the path ``setup`` read."""
        return dict(getattr(self, "_files", None) or {})

    def data_sha256(self) -> dict[str, str]:
        """Logical file -> sha256 of its content (a folder: of its sorted tree). The run's
        fingerprint holds these, not the paths, so a moved copy of the data resumes and changed
        content is refused (``harness/resume.py``)."""
        files = self.data_files()
        return {k: digest for k, (_, _, digest) in zip(files, self._signatures(list(files.values())))}

    def _signatures(self, paths: list[Path]) -> list[tuple[str, int, str]]:
        """``content_signature`` (name, bytes, sha256) of ``paths``, each hashed once per
        DataModule: the tokenizer's cache key, the fingerprint and results.json share them."""
        from softmax_approx.data.tokenizer import content_signature

        cache = self.__dict__.setdefault("file_signatures", {})
        for p in paths:
            if str(p) not in cache:
                cache[str(p)] = content_signature([p])[0]
        return [cache[str(p)] for p in paths]

    def data_info(self) -> dict[str, Any]:
        """What a run record should say about its data (after ``setup``): the tokenizer's sha256
        (a resume with another tokenizer must be refused), the split sizes and split rule."""
        path = getattr(self, "tokenizer_path", None)
        return {
            "tokenizer_sha256": getattr(self, "tokenizer_sha256", None),
            "tokenizer_cache": str(path) if path else None,
            "test_split": getattr(self, "test_split_name", None),
            "split_sizes_full": dict(getattr(self, "split_sizes_full", {}) or {}),
            "split": dict(getattr(self, "split_info", {}) or {}),
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, False)
