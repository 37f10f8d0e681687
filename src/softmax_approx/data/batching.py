"""Length-bucketed batches and padding collators.

Why bucketing: attention cost grows with the padded length, so batching sentences of similar
length saves most of the padding. The order is deterministic given ``(seed, epoch)`` only:
the indices are shuffled with ``random.Random(seed + epoch)``, cut into large chunks, each
chunk is sorted by length and cut into batches, and the batches are shuffled. Resuming a run
at epoch ``e`` therefore sees exactly the batches it would have seen. Lightning sets the epoch
at every epoch start, but only on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
(``lightning.fabric.utilities.data._set_sampler_epoch``), never on the batch sampler itself; so
``BucketBatchSampler.sampler`` is a small hook that forwards ``set_epoch`` (without it every
epoch of a fit repeated the first epoch's order).

Batches are cut either by sentence count (``batch_size``) or by a token budget
(``max_tokens``: padded tokens, i.e. ``len(batch) * longest``).

Distributed: when ``torch.distributed`` is initialised, each rank takes every world-th batch
(the batch list is padded by repetition to a multiple of the world size); run Lightning with
``use_distributed_sampler=False`` so it does not try to wrap this sampler.

Mid-epoch resume: the position in the epoch is state (``state_dict`` / ``load_state_dict``:
epoch, index of the next batch of this rank, and what the order depends on). A restored
sampler skips the batches already handed out, once, when it next iterates *that* epoch, so a
run resumed mid-epoch sees exactly the batches an uninterrupted run would: none twice, none
skipped. The batches are drawn when iteration starts (not when ``iter`` is called), so the
epoch Lightning sets with ``set_epoch`` just before is the one used. :class:`ResumableDataLoader`
counts the batches it has *delivered* (workers prefetch ahead of the training step) and is
what Lightning checkpoints: its fit loop saves and restores every train DataLoader that has
``state_dict``/``load_state_dict`` (``CombinedLoader._state_dicts``, key ``combined_loader``
of the fit loop's state in the checkpoint).
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import torch

from softmax_approx.utils.errors import ConfigError


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _EpochHook:
    """``batch_sampler.sampler``: where Lightning's ``_set_sampler_epoch`` calls ``set_epoch``."""

    def __init__(self, owner: "BucketBatchSampler") -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of dataset indices, bucketed by ``lengths``."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int | None = None,
        max_tokens: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        chunk_batches: int = 100,
        drop_last: bool = False,
    ) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ConfigError("batch_size / max_tokens: set exactly one of them")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be >= 1")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens}: must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.chunk_batches = chunk_batches
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler = _EpochHook(self)
        self._cache: tuple[int, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, next batch) restored, not yet applied
        self._pos: tuple[int, int] | None = None  # (epoch, next batch) of the running iteration
        self._start: tuple[int, int] = (0, 0)  # (epoch, first batch) of the running iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Cut an ordered index list into consecutive batches."""
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0
        for i in order:
            if self.batch_size is not None:
                if len(cur) == self.batch_size:
                    batches.append(cur)
                    cur = []
            else:
                new_longest = max(longest, self.lengths[i])
                if cur and new_longest * (len(cur) + 1) > self.max_tokens:
                    batches.append(cur)
                    cur, new_longest = [], self.lengths[i]
                longest = new_longest
            cur.append(i)
        if cur and not (self.drop_last and self.batch_size is not None and len(cur) < self.batch_size):
            batches.append(cur)
        return batches

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch (before the per-rank slice)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.lengths)
        if not self.shuffle:
            # evaluation: longest first, stable, so the first batch shows the peak memory
            order = sorted(range(n), key=lambda i: -self.lengths[i])
            out = self._cut(order)
        else:
            rng = random.Random(self.seed * 1_000_003 + self.epoch)
            order = list(range(n))
            rng.shuffle(order)
            chunk = self.chunk_batches * (self.batch_size or max(1, self.max_tokens // max(1, max(self.lengths, default=1))))
            out = []
            for start in range(0, n, chunk):
                part = sorted(order[start : start + chunk], key=lambda i: self.lengths[i])
                out.extend(self._cut(part))
            rng.shuffle(out)
        self._cache = (self.epoch, out)
        return out

    def _local(self) -> list[list[int]]:
        rank, world = _dist()
        out = self.batches()
        if world == 1 or not out:
            return out
        pad = (-len(out)) % world
        out = out + out[:pad]
        return out[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the epoch (and a pending resume) is read at the first batch
        local = self._local()
        start = 0
        if self._resume is not None:
            epoch, start = self._resume
            self._resume = None
            start = min(start, len(local)) if epoch == self.epoch else 0
        self._pos = self._start = (self.epoch, start)
        for i in range(start, len(local)):
            self._pos = (self.epoch, i + 1)
            yield local[i]

    def __len__(self) -> int:
        """Batches of this rank in the whole epoch (also while resuming: Lightning counts from its
        restored batch index up to this length)."""
        return len(self._local())

    # ------------------------------------------------------------------ resumable position
    def state_at(self, epoch: int, next_batch: int) -> dict[str, Any]:
        """The state that resumes at batch ``next_batch`` of ``epoch`` (a finished epoch -> the next one)."""
        saved = self.epoch
        self.epoch = epoch
        try:
            n = len(self._local())
        finally:
            self.epoch = saved
        if next_batch >= n:
            epoch, next_batch = epoch + 1, 0
        return {"epoch": int(epoch), "next_batch": int(next_batch), "seed": self.seed,
                "world_size": _dist()[1], "num_items": len(self.lengths)}

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from: the running iteration's position, else a restored one."""
        if self._resume is not None:
            return self.state_at(*self._resume)
        if self._pos is not None:
            return self.state_at(*self._pos)
        return self.state_at(self.epoch, 0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Skip ``next_batch`` batches the next time epoch ``epoch`` is iterated (once)."""
        if not self.shuffle:
            return  # evaluation order has no position worth keeping
        expect = {"seed": self.seed, "world_size": _dist()[1], "num_items": len(self.lengths)}
        for key, value in expect.items():
            if state.get(key) != value:
                raise ConfigError(
                    f"train data order in the checkpoint has {key}={state.get(key)!r} but this run has "
                    f"{value!r}; resume with the same data, seed and number of processes, or start a new run"
                )
        self._resume = (int(state["epoch"]), int(state["next_batch"]))
        self._pos = None


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader over a :class:`BucketBatchSampler` whose state is the position of the next
    batch it will *deliver*; Lightning saves and restores it with every checkpoint."""

    _delivered: tuple[int, int] | None = None  # (epoch, next batch) after the last delivered batch

    def __iter__(self) -> Iterator[Any]:
        return self._counting(super().__iter__())

    def _counting(self, batches: Iterator[Any]) -> Iterator[Any]:
        sampler = self.batch_sampler
        assert isinstance(sampler, BucketBatchSampler)
        first = True
        for batch in batches:
            if first:  # the sampler's first position is set once its first batch is drawn
                first = False
                self._delivered = sampler._start
            self._delivered = (self._delivered[0], self._delivered[1] + 1)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batch_sampler
        assert isinstance(sampler, BucketBatchSampler)
        if sampler._resume is None and self._delivered is not None:
            return sampler.state_at(*self._delivered)
        return sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.batch_sampler
        assert isinstance(sampler, BucketBatchSampler)
        sampler.load_state_dict(state)
        self._delivered = None


def pad_2d(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (ids LongTensor (B, L), mask BoolTensor, True = real)."""
    longest = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), max(longest, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[r, : len(s)] = True
    return ids, mask


class ClassificationCollator:
    """Examples ``{"ids": list[int], "label": int}`` -> the classification batch contract."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_2d([e["ids"] for e in examples], self.pad_id)
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TranslationCollator:
    """Examples ``{"src": ids, "tgt": ids, "src_text", "ref_text"}`` -> translation contract.

    ``tgt_in = <bos> + y`` and ``tgt_out = y + <eos>`` (same length); ``tgt_mask`` is True on
    the real positions of both.
    """

    def __init__(self, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def __call__(self, examples: list[dict]) -> dict:
        src_ids, src_mask = pad_2d([e["src"] for e in examples], self.pad_id)
        tgt_in, tgt_mask = pad_2d([[self.bos_id, *e["tgt"]] for e in examples], self.pad_id)
        tgt_out, _ = pad_2d([[*e["tgt"], self.eos_id] for e in examples], self.pad_id)
        return {
            "src_ids": src_ids,
            "src_mask": src_mask,
            "tgt_in": tgt_in,
            "tgt_out": tgt_out,
            "tgt_mask": tgt_mask,
            "src_text": [e["src_text"] for e in examples],
            "ref_text": [e["ref_text"] for e in examples],
        }
