"""Transformer building blocks shared by the classifier and the translator.

Pre-norm layers (LayerNorm before each sub-block, residual around it), as in nanoGPT: they
train stably without warm-up tricks at these small scales. Every attention is
:class:`softmax_approx.nn.MultiHeadAttention`, so the storage policy reaches every layer, and
padding masks (bool, True = real token) are passed through to ``core.attention``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softmax_approx.nn import MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> d_model with GELU."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PositionalEmbedding(nn.Module):
    """Learned table or fixed sinusoids (Vaswani et al. 2017) for positions 0..max_len-1."""

    def __init__(self, max_len: int, d_model: int, kind: str = "learned") -> None:
        super().__init__()
        if kind not in ("learned", "sinusoidal"):
            raise ValueError(f"pos={kind!r}: allowed values: learned, sinusoidal")
        self.kind = kind
        self.max_len = max_len
        if kind == "learned":
            self.table = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.table.weight, std=0.02)
        else:
            pos = torch.arange(max_len).unsqueeze(1)
            div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
            pe = torch.zeros(max_len, d_model)
            pe[:, 0::2] = torch.sin(pos * div)
            pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
            self.register_buffer("table_fixed", pe, persistent=False)

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """(length, d_model) embeddings of positions offset..offset+length-1."""
        if offset + length > self.max_len:
            raise ValueError(f"sequence of length {offset + length} exceeds the model's max_len={self.max_len}")
        if self.kind == "learned":
            idx = torch.arange(offset, offset + length, device=self.table.weight.device)
            return self.table(idx)
        return self.table_fixed[offset : offset + length]


class EncoderLayer(nn.Module):
    """x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        policy: str = "eager",
        policy_params: dict | None = None,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout, policy=policy, policy_params=policy_params)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, L, d_model); pad_mask: (B, L) bool, True = real token
        x = x + self.drop(self.self_attn(self.ln1(x), key_padding_mask=pad_mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class DecoderLayer(nn.Module):
    """x + CausalSelfAttn(LN(x)), x + CrossAttn(LN(x), memory), x + FFN(LN(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        policy: str = "eager",
        policy_params: dict | None = None,
    ) -> None:
        super().__init__()
        mha = lambda: MultiHeadAttention(d_model, n_heads, dropout=attn_dropout, policy=policy, policy_params=policy_params)  # noqa: E731
        self.ln1 = nn.LayerNorm(d_model)
        self.self_attn = mha()
        self.ln2 = nn.LayerNorm(d_model)
        self.cross_attn = mha()
        self.ln3 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x: (B, Lt, d); memory: (B, Ls, d); tgt_mask (B, Lt) / memory_mask (B, Ls): True = real
        x = x + self.drop(self.self_attn(self.ln1(x), key_padding_mask=tgt_mask, causal=True))
        h = self.ln2(x)
        x = x + self.drop(self.cross_attn(h, memory, memory, key_padding_mask=memory_mask))
        return x + self.drop(self.ffn(self.ln3(x)))

    def step(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """``forward`` for the newest position only: x (R, 1, d); ``cache`` holds this layer's
        ``"self"`` (grows one position per call) and ``"cross"`` (from ``cross_cache``) dicts."""
        x = x + self.drop(self.self_attn.step(self.ln1(x), cache["self"]))
        x = x + self.drop(self.cross_attn.step(self.ln2(x), cache["cross"], cross=True))
        return x + self.drop(self.ffn(self.ln3(x)))


class Encoder(nn.Module):
    """A stack of EncoderLayers with a final LayerNorm (pre-norm needs one at the top)."""

    def __init__(self, n_layers: int, d_model: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, **layer_kwargs) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pad_mask)
        return self.ln_f(x)


class Decoder(nn.Module):
    """A stack of DecoderLayers with a final LayerNorm."""

    def __init__(self, n_layers: int, d_model: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, **layer_kwargs) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask)
        return self.ln_f(x)

    def new_caches(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> list[dict]:
        """Per-layer incremental state: an empty self-attention cache and the cross-attention
        keys/values of ``memory`` (S, Ls, d), computed here once per sentence."""
        return [{"self": {}, "cross": layer.cross_attn.cross_cache(memory, memory_mask)} for layer in self.layers]

    def step(self, x: torch.Tensor, caches: list[dict]) -> torch.Tensor:
        """The newest position through every layer: x (R, 1, d) -> (R, 1, d)."""
        for layer, cache in zip(self.layers, caches):
            x = layer.step(x, cache)
        return self.ln_f(x)
