"""model=hf_classifier: a Transformers sequence classifier through the classification task.

End to end through ``train(cfg)`` on the tiny SST-2 fixture: random init with our tokenizer
(Transformers' eager vs our paper policy), and a "pretrained" local directory (a tiny BERT and
its own WordPiece tokenizer, saved here) that must be tokenized with its own tokenizer.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast  # noqa: E402

from softmax_approx.train import train  # noqa: E402

HF = ["model=hf_classifier"]


def _check_run(metrics: dict, tmp_path, policy: str) -> dict:
    for key in ("train/loss", "val/acc", "test/acc"):
        assert key in metrics and math.isfinite(metrics[key]), key
    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["status"] == "completed" and rec["policy"] == policy
    mem = rec["memory"]
    # the Transformers attention modules are scoped as attention under every implementation
    assert 0 < mem["attention_bytes"] < mem["total_activation_bytes"]
    return rec


@pytest.mark.parametrize("task,policy", [("sst2", "eager"), ("sst2", "paper"), ("imdb", "paper")])
def test_random_init_bert_trains(task, policy, make_cfg, tmp_path):
    cfg = make_cfg([*HF, f"task={task}", f"attention={policy}"])
    metrics, objects = train(cfg)
    rec = _check_run(metrics, tmp_path, policy)
    net = objects["model"].net
    hf_model = net.model
    assert hf_model.config.model_type == "bert" and hf_model.config.hidden_size == 16  # TINY's d_model
    assert net.n_attention_layers == 1
    if policy == "eager":
        assert hf_model.config._attn_implementation == "eager"
        assert rec["memory"]["softmax_state_bytes"] == 0  # no core.attention call
    else:
        assert hf_model.config._attn_implementation == "softmax_approx"
        assert hf_model.config.softmax_approx == {"policy": "paper", "S": 5}
        assert rec["memory"]["softmax_state_bytes"] > 0
    # our tokenizer: the model's vocabulary is the DataModule's
    assert hf_model.config.vocab_size == objects["datamodule"].vocab_size


def _pretrained_dir(path, texts):
    """A tiny 'pretrained' BERT and its own WordPiece tokenizer, as save_pretrained writes them."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(path)
    return cls_id, sep_id, fast.pad_token_id


def test_pretrained_dir_uses_its_own_tokenizer(make_cfg, tmp_path, data_dir):
    texts = [line.split("\t")[0] for line in (data_dir / "sst2" / "train.tsv").read_text().splitlines()[1:]]
    model_dir = tmp_path / "tiny-bert"
    cls_id, sep_id, pad_id = _pretrained_dir(model_dir, texts)
    cfg = make_cfg([*HF, "task=sst2", "attention=topk", f"model.pretrained={model_dir}"])
    assert cfg.task.datamodule.hf_tokenizer == str(model_dir)
    metrics, objects = train(cfg)
    _check_run(metrics, tmp_path, "topk")
    dm = objects["datamodule"]
    assert dm.pad_id == pad_id
    items = dm.datasets["train"].items
    assert all(it["ids"][0] == cls_id and it["ids"][-1] == sep_id for it in items)
    assert max(len(it["ids"]) for it in items) <= cfg.task.datamodule.max_len
    hf_model = objects["model"].net.model
    assert hf_model.config.hidden_size == 16 and hf_model.config._attn_implementation == "softmax_approx"
