"""Transformer encoder classifier, readable in one sitting.

    ids (B, L) -> token emb + positions -> N pre-norm encoder layers -> pool -> linear -> (B, C)

Self-attention is ``nn.MultiHeadAttention`` with the configured storage policy; the padding
mask (True = real token) reaches ``core.attention`` so padded keys get zero probability.
"""

from __future__ import annotations

import torch
from torch import nn

from softmax_approx.models.layers import Encoder, PositionalEmbedding


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        n_classes: int = 2,
        pad_id: int = 0,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        max_len: int = 512,
        pos: str = "learned",
        pool: str = "mean",
        policy: str = "eager",
        policy_params: dict | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool={pool!r}: allowed values: mean, cls")
        self.pad_id, self.pool = pad_id, pool
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = PositionalEmbedding(max_len, d_model, pos)
        self.drop = nn.Dropout(dropout)
        self.encoder = Encoder(
            n_layers, d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
            attn_dropout=attn_dropout, policy=policy, policy_params=dict(policy_params or {}),
        )
        self.head = nn.Linear(d_model, n_classes)
        self.n_classes = n_classes  # read by ClassificationTask (sizes its metrics)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (B, L); attention_mask: (B, L) bool, True = real token
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        x = self.drop(self.tok(input_ids) + self.pos(input_ids.shape[1]))  # (B, L, d)
        h = self.encoder(x, attention_mask)  # (B, L, d)
        if self.pool == "cls":
            pooled = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)  # (B, n_classes)
