"""Length-bucketed batch sampler: coverage, determinism per (seed, epoch), bucketing, padding."""

from __future__ import annotations

import random

import pytest
import torch

from softmax_approx.data.batching import BucketBatchSampler, pad_2d
from softmax_approx.utils.errors import ConfigError

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(1, 60) for _ in range(1000)]


def _flat(batches):
    return [i for b in batches for i in b]


def test_every_index_once_and_batch_size_respected():
    s = BucketBatchSampler(LENGTHS, batch_size=16, seed=3, chunk_batches=10)
    batches = list(s)
    assert sorted(_flat(batches)) == list(range(1000))
    assert all(len(b) <= 16 for b in batches) and len(batches) == len(s)


def test_deterministic_per_seed_and_epoch():
    a = BucketBatchSampler(LENGTHS, batch_size=16, seed=3)
    b = BucketBatchSampler(LENGTHS, batch_size=16, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    e2 = list(a)
    a.set_epoch(3)
    assert list(a) != e2
    a.set_epoch(2)
    assert list(a) == e2  # back to epoch 2: same batches (resume-friendly)
    c = BucketBatchSampler(LENGTHS, batch_size=16, seed=4)
    c.set_epoch(2)
    assert list(c) != e2


def test_bucketing_reduces_padding():
    s = BucketBatchSampler(LENGTHS, batch_size=16, seed=0, chunk_batches=50)
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in s)
    rng = random.Random(0)
    order = list(range(1000))
    rng.shuffle(order)
    naive = sum(len(order[k:k + 16]) * max(LENGTHS[i] for i in order[k:k + 16]) for k in range(0, 1000, 16))
    assert padded < 0.7 * naive


def test_max_tokens_budget():
    s = BucketBatchSampler(LENGTHS, max_tokens=200, seed=1)
    for b in s:
        assert len(b) * max(LENGTHS[i] for i in b) <= 200
    assert sorted(_flat(list(s))) == list(range(1000))


def test_eval_order_is_fixed_and_longest_first():
    s = BucketBatchSampler(LENGTHS, batch_size=10, shuffle=False)
    first = list(s)
    s.set_epoch(5)
    assert list(s) == first
    assert max(LENGTHS[i] for i in first[0]) == max(LENGTHS)


def test_bad_settings():
    with pytest.raises(ConfigError, match="exactly one"):
        BucketBatchSampler(LENGTHS, batch_size=4, max_tokens=100)
    with pytest.raises(ConfigError, match="batch_size=0"):
        BucketBatchSampler(LENGTHS, batch_size=0)


def test_pad_2d_masks_match_padding():
    ids, mask = pad_2d([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


# ---------------------------------------------------------------- resumable position
def _resume_from(sampler_kw: dict, epoch: int, k: int):
    """Iterate ``k`` batches of ``epoch``, save, restore into a fresh sampler, iterate the rest."""
    a = BucketBatchSampler(LENGTHS, **sampler_kw)
    a.set_epoch(epoch)
    it = iter(a)
    head = [next(it) for _ in range(k)]
    state = a.state_dict()
    b = BucketBatchSampler(LENGTHS, **sampler_kw)
    b.load_state_dict(state)
    b.set_epoch(epoch)
    return head, list(b), state


@pytest.mark.parametrize("kw", [dict(batch_size=16, seed=3), dict(max_tokens=300, seed=5)])
@pytest.mark.parametrize("k", [0, 1, 17, 62])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(kw, k):
    full = BucketBatchSampler(LENGTHS, **kw)
    full.set_epoch(2)
    expected = list(full)
    k = min(k, len(expected) - 1)
    head, tail, state = _resume_from(kw, 2, k)
    assert state["epoch"] == 2 and state["next_batch"] == k and state["seed"] == kw["seed"]
    assert head + tail == expected  # none twice, none skipped, same order


def test_epoch_boundary_and_one_shot_skip():
    kw = dict(batch_size=16, seed=3)
    a = BucketBatchSampler(LENGTHS, **kw)
    a.set_epoch(4)
    n = len(list(a))
    assert a.state_dict() == {**a.state_at(5, 0)}  # a finished epoch resumes at the next one
    assert a.state_dict()["epoch"] == 5 and a.state_dict()["next_batch"] == 0
    b = BucketBatchSampler(LENGTHS, **kw)
    b.load_state_dict(a.state_at(4, 10))
    assert b.state_dict()["next_batch"] == 10  # a restored position survives a re-save
    b.set_epoch(5)  # the loop moved on to another epoch: the stale skip is dropped
    e5 = list(b)
    ref = BucketBatchSampler(LENGTHS, **kw)
    ref.set_epoch(5)
    assert e5 == list(ref)
    c = BucketBatchSampler(LENGTHS, **kw)
    c.load_state_dict(a.state_at(4, 10))
    c.set_epoch(4)
    assert len(list(c)) == n - 10
    assert len(list(c)) == n  # applied once: the next pass over the epoch is whole
    assert len(c) == n  # the length is the epoch's (Lightning counts from its restored index)


def test_state_refuses_other_seed_or_data():
    a = BucketBatchSampler(LENGTHS, batch_size=16, seed=3)
    state = a.state_at(0, 5)
    with pytest.raises(ConfigError, match="seed=3 but this run has 4"):
        BucketBatchSampler(LENGTHS, batch_size=16, seed=4).load_state_dict(state)
    with pytest.raises(ConfigError, match="num_items=1000 but this run has 999"):
        BucketBatchSampler(LENGTHS[:-1], batch_size=16, seed=3).load_state_dict(state)


def test_ddp_ranks_resume_their_own_shards(monkeypatch):
    from softmax_approx.data import batching

    world, k = 3, 7
    per_rank = {}
    for rank in range(world):
        monkeypatch.setattr(batching, "_dist", lambda rank=rank: (rank, world))
        full = BucketBatchSampler(LENGTHS, batch_size=16, seed=1)
        full.set_epoch(1)
        expected = list(full)
        head, tail, state = _resume_from(dict(batch_size=16, seed=1), 1, k)
        assert head + tail == expected and state["world_size"] == world
        per_rank[rank] = expected
    monkeypatch.setattr(batching, "_dist", lambda: (0, 1))
    whole = BucketBatchSampler(LENGTHS, batch_size=16, seed=1)
    whole.set_epoch(1)
    batches = whole.batches()
    # every batch of the epoch on exactly one rank (plus the repeats that pad the last round)
    got = [b for r in range(world) for b in per_rank[r]]
    assert sorted(map(tuple, batches)) == sorted(set(map(tuple, got)))
    assert len({len(v) for v in per_rank.values()}) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_state_counts_delivered_batches_not_prefetched(workers):
    from softmax_approx.data.batching import ResumableDataLoader

    data = list(range(len(LENGTHS)))

    def make():
        s = BucketBatchSampler(LENGTHS, batch_size=16, seed=2)
        s.set_epoch(1)
        return ResumableDataLoader(data, batch_sampler=s, num_workers=workers, collate_fn=list)

    expected = list(make())
    dl = make()
    it = iter(dl)
    head = [next(it) for _ in range(5)]  # workers have prefetched further by now
    state = dl.state_dict()
    assert state["epoch"] == 1 and state["next_batch"] == 5
    del it
    dl2 = make()
    dl2.load_state_dict(state)
    assert len(dl2) == len(expected)
    assert head + list(dl2) == expected


# ---------------------------------------------------------------- through a real Lightning Trainer
class _Recorder:
    """A tiny LightningModule (built lazily: lightning is heavy) that records each train batch."""

    @staticmethod
    def make(vocab_size: int):
        import lightning as L

        class Rec(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.emb = torch.nn.EmbeddingBag(vocab_size, 4)
                self.out = torch.nn.Linear(4, 2)
                self.seen: list[tuple] = []

            def training_step(self, batch, batch_idx):
                self.seen.append((self.current_epoch, batch_idx, tuple(batch["input_ids"].flatten().tolist())))
                logits = self.out(self.emb(batch["input_ids"]))
                return torch.nn.functional.cross_entropy(logits, batch["labels"])

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Rec()


def _fit(tmp_path, data_dir, ckpt_path=None, ckpt_dir=None):
    import sys
    from pathlib import Path

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from softmax_approx.data.classification import ClassificationDataModule

    dm = ClassificationDataModule(task="sst2", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"),
                                  max_len=16, vocab_size=120, batch_size=4, val_size=6, seed=7)
    dm.setup("fit")
    model = _Recorder.make(dm.vocab_size)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1, filename="{step}")] if ckpt_dir else []
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=callbacks, enable_checkpointing=bool(ckpt_dir), deterministic=True)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_lightning_resume_mid_epoch_continues_with_the_next_unseen_batch(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from fixtures_data import write_sst2

    write_sst2(tmp_path, n_train=46, n_dev=4)  # 40 training rows -> 10 batches per epoch
    full = _fit(tmp_path, tmp_path, ckpt_dir=tmp_path / "ckpt")
    n = len(full) // 2
    assert n == 10 and [e for e, _, _ in full] == [0] * n + [1] * n
    assert [b for _, _, b in full[:n]] != [b for _, _, b in full[n:]]  # epochs are reshuffled
    ckpt = torch.load(tmp_path / "ckpt" / "step=13.ckpt", weights_only=False)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["next_batch"] == 3
    for step in (4, 10, 13):  # mid epoch 0, the epoch boundary, mid epoch 1
        resumed = _fit(tmp_path, tmp_path, ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
        assert resumed == full[step:], f"resume from step {step}"  # same epoch, batch_idx and batch


def test_resume_property_random_data_positions_and_ranks(monkeypatch):
    """200 random cases: any data, batching, epoch, rank and position resume exactly."""
    from softmax_approx.data import batching

    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 120))]
        kw = dict(max_tokens=rng.randint(50, 250)) if rng.random() < 0.5 else dict(batch_size=rng.randint(1, 20))
        kw.update(seed=rng.randint(0, 3), chunk_batches=rng.randint(1, 5))
        world = rng.randint(1, 3)
        monkeypatch.setattr(batching, "_dist", lambda r=rng.randrange(world), w=world: (r, w))
        epoch = rng.randint(0, 5)

        def sampler(e):
            s = BucketBatchSampler(lengths, **kw)
            s.set_epoch(e)
            return s

        expected = list(sampler(epoch))
        k = rng.randint(0, len(expected))
        a = sampler(epoch)
        it = iter(a)
        head = [next(it) for _ in range(k)]
        b = BucketBatchSampler(lengths, **kw)
        b.load_state_dict(a.state_dict())
        if k < len(expected):
            b.set_epoch(epoch)
            assert head + list(b) == expected
        else:  # a finished epoch resumes with the whole next one
            b.set_epoch(epoch + 1)
            assert head == expected and list(b) == list(sampler(epoch + 1))
