"""Cached incremental decoding against the uncached reference, pruning, no policy work, eval batches.

The reference (``cache=False``) re-runs the decoder over the whole prefix at every step; the
cached path runs one token per hypothesis against per-layer key/value caches. Both must return
the same tokens and scores (within 1e-5), on random Translators and on a tiny model trained
here until it stops at eos by itself (random weights never emit eos, so only a trained model
exercises sentences finishing at different steps).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from softmax_approx.core import policies
from softmax_approx.data.translation import TranslationDataModule
from softmax_approx.models.decoding import beam_search, greedy_decode, length_penalty
from softmax_approx.models.translator import Translator
from softmax_approx.tasks.translation import TranslationTask

sys.path.insert(0, str(Path(__file__).parents[1]))
from fixtures_data import write_multi30k  # noqa: E402

PAD, BOS, EOS = 0, 1, 2
KW = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def tiny(V=23, policy="eager", seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=V, pad_id=PAD, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0,
                policy=policy, policy_params={"S": 2} if policy == "paper" else None)
    args.update(kw)
    return Translator(**args).eval()


def src_batch(V=23, B=6, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, L), generator=g)
    for i in range(1, B):  # every sentence a different length
        src[i, max(1, L - 2 * i):] = PAD
    return src, src != PAD


def copy_task(n, V, seed):
    """Source: 2..8 random symbols; target: the same symbols (a copy task, learnt in seconds)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, 9, (n,), generator=g)
    src = torch.full((n, 8), PAD)
    tgt_in = torch.full((n, 9), PAD)
    tgt_out = torch.full((n, 9), PAD)
    for i, n_i in enumerate(lens.tolist()):
        s = torch.randint(3, V, (n_i,), generator=g)
        src[i, :n_i] = s
        tgt_in[i, 0], tgt_in[i, 1 : n_i + 1] = BOS, s
        tgt_out[i, :n_i], tgt_out[i, n_i] = s, EOS
    return src, tgt_in, tgt_out


@pytest.fixture(scope="module")
def trained():
    """A 2+2-layer Translator trained for a few seconds to copy its input (stops at eos)."""
    V = 14
    model = tiny(V=V, seed=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(150):
        src, tgt_in, tgt_out = copy_task(32, V, seed=step)
        logits = model(src, src != PAD, tgt_in, tgt_in != PAD)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), V


def _same(model, src, mask, fn, **kw):
    a = fn(model, src, mask, cache=True, **kw, **KW)
    b = fn(model, src, mask, cache=False, **kw, **KW)
    assert a.tokens == b.tokens
    assert torch.allclose(a.scores.double(), b.scores.double(), atol=1e-5, rtol=0)
    return a


@pytest.mark.parametrize("policy", ["eager", "paper"])
@pytest.mark.parametrize("fn,kw", [(greedy_decode, {}), (beam_search, {"beam": 5}),
                                   (beam_search, {"beam": 3, "alpha": 0.0}),
                                   (beam_search, {"beam": 4, "lp_style": "gnmt"})])
def test_cached_equals_uncached_on_random_models(policy, fn, kw):
    model = tiny(policy=policy)
    src, mask = src_batch()
    _same(model, src, mask, fn, max_len_a=1.0, max_len_b=3, **kw)


def test_cached_equals_uncached_on_a_trained_model(trained):
    model, V = trained
    src, _, tgt_out = copy_task(40, V, seed=10_000)
    mask = src != PAD
    g = _same(model, src, mask, greedy_decode)
    b = _same(model, src, mask, beam_search, beam=5)
    # the model learned the task, so sentences end at their own eos, at different steps
    want = [[t for t in row.tolist() if t not in (PAD, EOS)] for row in tgt_out]
    assert sum(h == w for h, w in zip(b.tokens, want)) >= 20
    assert len({len(t) for t in g.tokens}) >= 5
    assert all(len(t) < int(1.2 * int(m.sum()) + 10) - 1 for t, m in zip(b.tokens, mask))


def test_cached_beam_scores_are_teacher_forced_scores(trained):
    """The cache's scores equal the full (training) forward pass's scores of the returned tokens."""
    model, V = trained
    src, _, _ = copy_task(12, V, seed=7)
    mask = src != PAD
    res = beam_search(model, src, mask, beam=4, alpha=1.0, cache=True, **KW)
    with torch.no_grad():
        for i, toks in enumerate(res.tokens):
            tgt = torch.tensor([[BOS, *toks]])
            out = torch.tensor(toks + [EOS])
            lp = torch.log_softmax(model(src[i : i + 1], mask[i : i + 1], tgt)[0].float(), -1)
            want = float(lp[torch.arange(len(out)), out].sum()) / length_penalty(len(out), 1.0)
            assert float(res.scores[i]) == pytest.approx(want, abs=1e-5)


def test_a_sentence_decodes_the_same_alone_and_in_a_batch(trained):
    """Pruning and reordering never mix sentences: batch output == one-by-one output."""
    model, V = trained
    src, _, _ = copy_task(10, V, seed=3)
    mask = src != PAD
    together = beam_search(model, src, mask, beam=5, **KW)
    for i in range(src.size(0)):
        n = int(mask[i].sum())
        alone = beam_search(model, src[i : i + 1, :n], mask[i : i + 1, :n], beam=5, **KW)
        assert alone.tokens[0] == together.tokens[i]
        assert float(alone.scores[0]) == pytest.approx(float(together.scores[i]), abs=1e-5)


def test_finished_sentences_leave_and_one_reorder_per_step(trained, monkeypatch):
    model, V = trained
    src, _, _ = copy_task(16, V, seed=5)
    mask = src != PAD
    rows, steps = [], []
    reorder, step = model.reorder_incremental_state, model.decode_step
    monkeypatch.setattr(model, "reorder_incremental_state", lambda s, order: (rows.append(order.numel()), reorder(s, order)))
    monkeypatch.setattr(model, "decode_step", lambda tok, s: (steps.append(tok.numel()), step(tok, s))[1])
    beam_search(model, src, mask, beam=5, **KW)
    assert steps[0] == 16 * 5 and len(rows) == len(steps) - 1  # one reorder between two steps
    assert steps[1:] == rows  # each step decodes exactly the rows the reorder kept
    assert rows == sorted(rows, reverse=True) and rows[-1] < 16 * 5  # the batch only shrinks
    assert all(r % 5 == 0 for r in rows)  # whole sentences (their 5 hypotheses) leave


def test_cross_attention_keys_are_computed_once_per_sentence(trained, monkeypatch):
    model, V = trained
    src, _, _ = copy_task(6, V, seed=2)
    calls = []
    for layer in model.decoder.layers:
        proj = layer.cross_attn.k_proj
        orig = proj.forward
        monkeypatch.setattr(proj, "forward", lambda x, orig=orig: (calls.append(x.shape[0]), orig(x))[1])
    beam_search(model, src, src != PAD, beam=5, **KW)
    assert calls == [6] * len(model.decoder.layers)  # one call per layer, one row per sentence


def test_self_attention_cache_grows_one_position_per_step():
    model = tiny()
    src, mask = src_batch(B=3)
    state = model.start_decoding(model.encode(src, mask), mask, group=2)
    tok = torch.full((6,), BOS)
    for t in range(1, 4):
        model.decode_step(tok, state)
        for cache in state.caches:
            assert cache["self"]["k"].shape == (6, 4, t, 8)
            assert cache["cross"]["k"].shape == (3, 4, src.size(1), 8)
    model.reorder_incremental_state(state, torch.tensor([2, 3, 4, 5]))  # sentence 0 leaves
    assert state.caches[0]["self"]["k"].shape[0] == 4 and state.caches[0]["cross"]["k"].shape[0] == 2
    assert torch.equal(state.caches[0]["cross"]["mask"], mask[1:, None, None, :])


@pytest.mark.parametrize("cache", [True, False])
def test_no_policy_compresses_or_sorts_while_decoding(cache, monkeypatch):
    """Decoding keeps nothing for backward, so the approximation's compress must never run."""
    def boom(*args, **kwargs):
        raise AssertionError("a policy's compress ran during decoding")

    for cls in (policies.Paper, policies.TopK, policies.Quant, policies.Exact):
        for name in ("compress", "compress_with"):  # the method and the core's static form
            if hasattr(cls, name):
                monkeypatch.setattr(cls, name, staticmethod(boom))
    for policy, params in (("paper", {"S": 2}), ("topk", {"keep_ratio": 0.5}), ("quant", {"bits": 8})):
        model = tiny(policy="eager")
        for m in model.modules():
            if hasattr(m, "set_policy"):
                m.set_policy(policy, params)
        src, mask = src_batch(B=3)
        beam_search(model, src, mask, beam=3, max_len_a=0.0, max_len_b=4, cache=cache, **KW)
        greedy_decode(model, src, mask, max_len_a=0.0, max_len_b=4, cache=cache, **KW)
    with pytest.raises(AssertionError, match="compress ran"):  # the patch does bite in training
        model.train()(src, mask, torch.full((3, 2), BOS))


def test_limits_force_output_lengths():
    model = tiny()
    src, mask = src_batch(B=4)
    limits = torch.tensor([3, 7, 1, 5])
    for fn, kw in ((greedy_decode, {}), (beam_search, {"beam": 3})):
        res = fn(model, src, mask, limits=limits, min_len=10**6, **kw, **KW)
        assert [len(t) for t in res.tokens] == [2, 6, 0, 4]


# ---------------------------------------------------------------- evaluation batches and order
def _dm(tmp_path, **kw):
    write_multi30k(tmp_path, sizes=(40, 8, 30))
    dm = TranslationDataModule(task="multi30k", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                               vocab_size=150, max_len=12, batch_size=4, **kw)
    dm.setup()
    return dm


def test_eval_batches_follow_the_source_token_budget(tmp_path):
    dm = _dm(tmp_path, eval_max_tokens=24)
    items = dm.datasets["test"].items
    seen, prev_longest = [], None
    for b in dm.test_dataloader():
        n = [len(items[i]["src"]) for i in b["index"]]
        assert len(n) * max(n) <= 24 or len(n) == 1  # the budget, on padded source tokens
        assert b["src_ids"].shape[1] == max(n)
        assert prev_longest is None or max(n) <= min(prev_longest)  # sorted by source length
        prev_longest = n
        seen += b["index"]
    assert sorted(seen) == list(range(len(items)))
    assert len(seen) > len(list(dm.test_dataloader())) > 1


def test_test_outputs_come_back_in_the_split_order(tmp_path):
    dm = _dm(tmp_path, eval_max_tokens=24)
    net = Translator(dm.vocab_size, dm.pad_id, d_model=16, n_heads=2, d_ff=32, n_layers=1, dropout=0.0)
    task = TranslationTask(net, optimizer=functools.partial(torch.optim.Adam), beam=2, n_samples=100,
                           max_len_a=0.0, max_len_b=3)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(task, datamodule=dm, verbose=False)
    order = [s["source"] for s in task.samples]
    assert order == [e["src_text"] for e in dm.datasets["test"].items]
    assert order != [dm.datasets["test"].items[i]["src_text"] for b in dm.test_dataloader() for i in b["index"]]


def test_bad_eval_max_tokens_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="eval_max_tokens"):
        TranslationDataModule(task="multi30k", data_dir=str(tmp_path), eval_max_tokens=0)


# ---------------------------------------------------------------- the decoding benchmark
TINY_BENCH = ["--override", "d_model=16", "--override", "n_heads=2", "--override", "d_ff=32",
              "--override", "n_layers=1", "--vocab", "64", "--sentences", "6", "--max-tokens", "64"]


def test_decode_benchmark_records_and_forced_lengths(tmp_path):
    from softmax_approx.bench import main
    from softmax_approx.bench.decode import LENGTHS, sample_lengths

    out, md = tmp_path / "d.json", tmp_path / "d.md"
    assert main(["decode", *TINY_BENCH, "--json", str(out), "--markdown", str(md)]) == 0
    recs = __import__("json").loads(out.read_text())
    assert {(r["preset"], r["beam"], r["cached"]) for r in recs} == {
        (p, b, c) for p in ("transformer_iwslt", "transformer_multi30k") for b in (1, 5) for c in (True, False)}
    for r in recs:
        want = sum(t for _, t in sample_lengths(r["lengths"], 6))  # every output has its forced length
        assert r["tokens"] == want and r["sentences"] == 6
        assert r["sentences_per_second"] > 0 and r["tokens_per_second"] == pytest.approx(want / r["seconds"])
        assert (r["speedup_vs_uncached"] is not None) == r["cached"]
    assert md.read_text().count("\n") == len(recs) + 2
    for table in LENGTHS.values():  # the committed percentile tables are sorted samples of 100 pairs
        assert len(table) == 100 and table == sorted(table)


def test_decode_benchmark_reads_a_checkpoint(tmp_path):
    import json

    from softmax_approx.bench import main

    net = tiny(V=40)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "checkpoints" / "best.ckpt")
    model_cfg = dict(_target_="softmax_approx.models.translator.Translator", kind="translation", d_model=32, n_heads=4,
                     d_ff=64, n_layers=2, dropout=0.0, policy="eager", policy_params=None)
    (tmp_path / "results.json").write_text(json.dumps({"config": {"model": model_cfg, "task": {"name": "iwslt14_mini"}}}))
    out = tmp_path / "d.json"
    assert main(["decode", "--ckpt", str(tmp_path / "checkpoints" / "best.ckpt"), "--beam", "2", "--decoder", "cached",
                 "--sentences", "4", "--json", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert [(r["preset"], r["cached"]) for r in recs] == [("checkpoint", True)] and recs[0]["lengths"] == "iwslt14"


def test_decode_benchmark_usage_errors_exit_2():
    from softmax_approx.bench import main

    with pytest.raises(SystemExit) as e:
        main(["decode", "--sentences", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["decode", "--override", "d_model"])
    assert e.value.code == 2
