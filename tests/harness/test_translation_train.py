"""Translation end to end through the harness's ``train(cfg)``, on tiny real-format corpora.

The fixtures are written here in the published layouts: gzip'd Multi30k task-1 raw files and
fairseq's prepared IWSLT'14 folder (Moses-tokenized, lowercased, ``&apos;`` escapes).
"""

import gzip
import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from softmax_approx.tasks.schedules import inverse_sqrt
from softmax_approx.tasks.translation import label_smoothed_nll_loss
from softmax_approx.train import train
from softmax_approx.utils.errors import DataError

WORDS = [("ein", "a"), ("hund", "dog"), ("läuft", "runs"), ("im", "in the"), ("park", "park"),
         ("zwei", "two"), ("männer", "men"), ("spielen", "play"), ("fußball", "football"),
         ("eine", "a"), ("frau", "woman"), ("liest", "reads"), ("buch", "book")]


def _pairs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        idx = [rng.randrange(len(WORDS)) for _ in range(rng.randint(2, 7))]
        out.append((" ".join(WORDS[i][0] for i in idx), " ".join(WORDS[i][1] for i in idx)))
    return out


def write_multi30k(root: Path, sizes=(48, 12, 12), mismatch: bool = False) -> None:
    d = root / "multi30k"
    d.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(zip(("train", "val", "test_2016_flickr"), sizes)):
        pairs = [(de.capitalize() + ".", en.capitalize() + ".") for de, en in _pairs(n, seed)]
        for lang, col in (("de", 0), ("en", 1)):
            lines = [p[col] for p in pairs]
            if mismatch and split == "train" and lang == "en":
                lines = lines[:-3]
            with gzip.open(d / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")


def write_iwslt(root: Path, sizes=None) -> None:
    d = root / "iwslt14" / "iwslt14.tokenized.de-en"
    d.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate((sizes or {"valid": 60, "test": 12}).items()):
        pairs = [(de + " .", en + " &apos;s .") for de, en in _pairs(n, seed + 10)]
        for lang, col in (("de", 0), ("en", 1)):
            (d / f"{split}.{lang}").write_text("\n".join(p[col] for p in pairs) + "\n", encoding="utf-8")


TINY_MT = [
    "profile=smoke", "logger=none", "model.d_model=16", "model.n_heads=2", "model.n_layers=1",
    "model.d_ff=32", "trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2", "trainer.limit_test_batches=1", "trainer.val_check_interval=null",
    "trainer.log_every_n_steps=1", "task.datamodule.subset=null", "task.datamodule.vocab_size=120",
    "task.datamodule.batch_size=8", "task.datamodule.max_tokens=null", "task.datamodule.max_len=16",
    "task.module.beam=2", "task.module.val_bleu_max_sentences=6", "task.module.n_samples=2",
    "memory.warmup_steps=1", "timing.skip_steps=0",
]


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mtdata")
    write_multi30k(d)
    write_iwslt(d)
    return d


def _run(tmp_path, data_dir, overrides):
    cfg = compose_cfg([*TINY_MT, f"paths.data_dir={data_dir}", *overrides], tmp_path, None, tiny=False)
    metrics, objects = train(cfg)
    return metrics, objects, json.loads((tmp_path / "results.json").read_text())


def _check_translation_record(rec, objects, policy):
    assert rec["status"] == "completed" and rec["task_kind"] == "translation"
    assert rec["config"]["model"]["_target_"].endswith("Translator")  # picked by the task file
    m = rec["metrics"]
    for key in ("test/bleu", "test/bleu_tok", "val/bleu", "val/bleu_best", "test/loss", "test/ppl"):
        assert key in m and math.isfinite(m[key]), key
    assert 0.0 <= m["test/bleu"] <= 100.0
    assert m["test/bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "tok:none" in m["test/bleu_tok_signature"]
    assert rec["test_split"].startswith("multi30k test_2016_flickr")
    assert rec["test_weights"].endswith(".ckpt")  # tested from the best (val/bleu) checkpoint
    assert len(rec["samples"]) == 2 and set(rec["samples"][0]) == {"source", "reference", "hypothesis"}
    assert rec["decoding"]["beam"] == 2
    mem = rec["memory"]
    assert mem["softmax_state_bytes"] > 0 and len(mem["batch_shape"]) == 3
    assert set(mem["by_kind"]) == {"encoder_self", "decoder_self", "cross"}
    assert all(v["softmax_state_bytes"] > 0 for v in mem["by_kind"].values())
    assert rec["timing"]["train_seconds"] > 0 and rec["params"]["total"] > 0
    # every attention module of the net runs the configured policy
    net = objects["model"].net
    assert {layer.self_attn.policy.name for layer in net.encoder.layers} == {policy}
    assert {layer.cross_attn.policy.name for layer in net.decoder.layers} == {policy}


def test_multi30k_trains_and_tests_under_eager_and_paper(tmp_path, mt_data):
    """Both policies train, pick the best val/bleu checkpoint, beam-test and write BLEU fields;
    on the same batch the paper policy keeps less softmax state than eager (S=1, rows > 2S)."""
    _, obj_e, eager = _run(tmp_path / "e", mt_data, ["task=multi30k", "attention=eager"])
    _, obj_p, paper = _run(tmp_path / "p", mt_data, ["task=multi30k", "attention=paper", "attention.params.S=1"])
    _check_translation_record(eager, obj_e, "eager")
    _check_translation_record(paper, obj_p, "paper")
    assert paper["memory"]["batch_shape"] == eager["memory"]["batch_shape"]
    assert paper["memory"]["softmax_state_bytes"] < eager["memory"]["softmax_state_bytes"]
    for kind in ("encoder_self", "decoder_self", "cross"):
        assert paper["memory"]["by_kind"][kind]["softmax_state_bytes"] < eager["memory"]["by_kind"][kind]["softmax_state_bytes"]


def test_iwslt14_mini_fast_dev_run_names_the_reduced_split(tmp_path, mt_data):
    metrics, _, rec = _run(tmp_path, mt_data, ["task=iwslt14_mini", "debug=fdr", "task.datamodule.mini_val_size=10"])
    assert rec["status"] == "completed"
    assert "reduced offline setting" in rec["test_split"]
    assert "test/bleu" in rec["metrics"] and "test/bleu_signature" in rec["metrics"]
    # IWSLT references are detokenized (no Moses escapes) before sacreBLEU sees them
    assert all("&apos;" not in s["reference"] for s in rec["samples"])


def test_mismatched_parallel_files_fail_with_one_line_error(tmp_path):
    bad = tmp_path / "bad"
    write_multi30k(bad, mismatch=True)
    with pytest.raises(DataError) as err:
        _run(tmp_path / "run", bad, ["task=multi30k"])
    msg = str(err.value)
    assert "\n" not in msg and "train" in msg
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("DataError")


def test_inverse_sqrt_matches_fairseq_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    sched = inverse_sqrt(opt, total_steps=123, warmup_steps=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [5e-4 * min(n / 4, math.sqrt(4 / n)) for n in range(1, 9)]
    assert lrs == pytest.approx(expected)


def test_label_smoothed_loss_matches_fairseq_definition_and_ignores_pad():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[1, 2, 0], [4, 0, 0]])  # 0 = pad
    loss, nll, n = label_smoothed_nll_loss(logits, target, epsilon=0.1, ignore_index=0)
    lp = torch.log_softmax(logits, -1)
    rows = [(0, 0), (0, 1), (1, 0)]
    want_nll = sum(-lp[b, t, target[b, t]] for b, t in rows) / 3
    q = torch.full((5,), 0.1 / 4)
    want = 0.0
    for b, t in rows:
        qq = q.clone()
        qq[target[b, t]] = 0.9
        want += -(qq * lp[b, t]).sum()
    assert n == 3
    assert nll.item() == pytest.approx(want_nll.item(), rel=1e-5)
    assert loss.item() == pytest.approx((want / 3).item(), rel=1e-5)
    plain, plain_nll, _ = label_smoothed_nll_loss(logits, target, epsilon=0.0, ignore_index=0)
    assert plain.item() == pytest.approx(plain_nll.item())


def test_wandb_offline_run_gets_the_sample_table(tmp_path, mt_data, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    from lightning.pytorch.loggers import WandbLogger

    original = WandbLogger.log_table

    def spy(self, key, columns=None, data=None, **kw):
        logged.append((key, columns, data))
        return original(self, key=key, columns=columns, data=data, **kw)

    monkeypatch.setattr(WandbLogger, "log_table", spy)
    _, _, rec = _run(tmp_path, mt_data, ["task=multi30k", "logger=wandb", "trainer.limit_train_batches=2"])
    assert rec["status"] == "completed"
    keys = {k for k, _, _ in logged}
    assert {"val/samples", "test/samples"} <= keys
    _, cols, rows = next(x for x in logged if x[0] == "test/samples")
    assert cols == ["step", "source", "reference", "hypothesis"] and len(rows) == 2
    assert list((tmp_path / "wandb").glob("offline-run-*"))
