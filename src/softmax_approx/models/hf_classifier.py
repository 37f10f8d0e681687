"""A Hugging Face Transformers sequence classifier for the classification task.

    ids (B, L), mask (B, L) -> AutoModelForSequenceClassification -> logits (B, C)

Two ways to build it (``conf/model/hf_classifier.yaml``):

* ``pretrained=<local dir or hub name>``: ``from_pretrained`` (with ``num_labels``); the
  DataModule then tokenizes with that model's own tokenizer (``task.datamodule.hf_tokenizer``
  follows ``model.pretrained``). The shape keys below are ignored.
* ``pretrained=null``: a random-initialised ``arch`` (default ``bert``) from a config whose
  shape comes from the shared model keys (``d_model`` -> ``hidden_size``, ``n_heads``,
  ``n_layers``, ``d_ff`` -> ``intermediate_size``, ``dropout``, ``attn_dropout``, ``max_len``),
  so profiles size it like our own classifier; the vocabulary is our tokenizer's.

``config`` adds or overrides any Transformers config key in both cases (e.g.
``{"classifier_dropout": 0.2}``). The attention policy is applied with
:func:`softmax_approx.integrations.transformers.apply`: ``eager`` and ``sdpa`` are Transformers'
own implementations, every other policy runs ``core.attention``; the attention modules are
marked so the activation meter counts their bytes as attention either way.
"""

from __future__ import annotations

import torch
from torch import nn

#: Model types whose position table is offset by ``pad_token_id + 1`` (RoBERTa's convention).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


class HFClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        n_classes: int = 2,
        pad_id: int = 0,
        pretrained: str | None = None,
        arch: str = "bert",
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        max_len: int = 512,
        config: dict | None = None,
        policy: str = "eager",
        policy_params: dict | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from softmax_approx.integrations import transformers as hf

        self.n_classes = n_classes  # read by ClassificationTask (sizes its metrics)
        extra = dict(config or {})
        if pretrained:
            self.model = AutoModelForSequenceClassification.from_pretrained(pretrained, num_labels=n_classes, **extra)
            self.model.train()  # from_pretrained returns eval mode; Lightning does not switch it back
            if self.model.get_input_embeddings().num_embeddings < vocab_size:
                self.model.resize_token_embeddings(vocab_size)
        else:
            positions = max_len + (pad_id + 1 if arch in _OFFSET_POSITIONS else 0)
            shape = dict(
                vocab_size=vocab_size, hidden_size=d_model, num_attention_heads=n_heads,
                num_hidden_layers=n_layers, intermediate_size=d_ff, hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=attn_dropout, max_position_embeddings=positions,
                pad_token_id=pad_id, num_labels=n_classes,
            )
            cfg = AutoConfig.for_model(arch, **{**shape, **extra})
            self.model = AutoModelForSequenceClassification.from_config(cfg)
        self.n_attention_layers = hf.apply(self.model, policy, **dict(policy_params or {}))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # attention_mask: (B, L) bool, True = real token (Transformers' 1/0 convention)
        mask = None if attention_mask is None else attention_mask.long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits  # (B, n_classes)
