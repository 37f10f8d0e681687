"""Encoder-decoder Transformer for translation (Vaswani et al. 2017), readable in one sitting.

All three attention kinds go through ``softmax_approx.nn.MultiHeadAttention``, so the softmax
policy under study (``eager``, ``paper``, ...) applies to every one of them:

* encoder self-attention    — ``key_padding_mask = src_mask``;
* decoder self-attention    — ``causal=True`` and ``key_padding_mask = tgt_mask``;
* decoder cross-attention   — queries from the decoder, keys/values from the encoder output,
  ``key_padding_mask = src_mask``.

Masks are bool with **True = real token**, as everywhere in this project.

Normalisation: ``pre_norm=True`` (the default) puts LayerNorm before each sub-layer and one
final LayerNorm after each stack (fairseq's ``--encoder/decoder-normalize-before``). We default
to it because it trains stably without careful warm-up on both presets, including the Multi30k
recipe whose reference has no warm-up; fairseq's ``transformer_iwslt_de_en`` is post-norm
(``pre_norm=False`` reproduces that layout; see docs/translation.md).

Embeddings: one shared vocabulary (joint BPE). Token embeddings are scaled by sqrt(d_model)
and summed with fixed sinusoidal positions (fairseq's layout: position 0 is the first token).
``tie_decoder_embeddings`` ties the decoder input embedding with the output projection
(fairseq ``--share-decoder-input-output-embed``); ``share_encoder_embeddings`` additionally
uses the same table for the encoder (``--share-all-embeddings``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softmax_approx.nn import MultiHeadAttention

__all__ = ["Translator", "sinusoidal_positions"]


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """(n_positions, d_model) table: sin on even, cos on odd dimensions (Vaswani et al.)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return table


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> ReLU -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class _Residual(nn.Module):
    """x + dropout(f(norm(x))) when pre-norm; norm(x + dropout(f(x))) when post-norm."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout, attn_dropout, activation_dropout,
                 pre_norm, policy, policy_params):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout,
                                            policy=policy, policy_params=policy_params)
        self.ffn = FeedForward(d_model, d_ff, activation_dropout)
        self.res_attn = _Residual(d_model, dropout, pre_norm)
        self.res_ffn = _Residual(d_model, dropout, pre_norm)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.res_attn(x, lambda h: self.self_attn(h, key_padding_mask=src_mask))
        return self.res_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout, attn_dropout, activation_dropout,
                 pre_norm, policy, policy_params):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout,
                                            policy=policy, policy_params=policy_params)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout,
                                             policy=policy, policy_params=policy_params)
        self.ffn = FeedForward(d_model, d_ff, activation_dropout)
        self.res_self = _Residual(d_model, dropout, pre_norm)
        self.res_cross = _Residual(d_model, dropout, pre_norm)
        self.res_ffn = _Residual(d_model, dropout, pre_norm)

    def forward(self, y, memory, src_mask, tgt_mask):
        y = self.res_self(y, lambda h: self.self_attn(h, key_padding_mask=tgt_mask, causal=True))
        y = self.res_cross(y, lambda h: self.cross_attn(h, memory, memory, key_padding_mask=src_mask))
        return self.res_ffn(y, self.ffn)


class Stack(nn.Module):
    """Embedding + positions + N layers (+ final LayerNorm when pre-norm)."""

    def __init__(self, layers: list[nn.Module], d_model: int, pre_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()


class Translator(nn.Module):
    """``forward(src_ids, src_mask, tgt_in, tgt_mask) -> logits (B, Lt, V)``.

    ``n_layers`` is the depth of both stacks unless ``n_decoder_layers`` is given; ``dropout``
    acts on embeddings and residual branches, ``attn_dropout`` on the attention probabilities
    (inside ``core.attention``, so the policy decides what is kept for it), and
    ``activation_dropout`` after the FFN's ReLU (fairseq's three dropouts).
    """

    def __init__(self, vocab_size: int, pad_id: int, d_model: int = 512, n_heads: int = 4,
                 d_ff: int = 1024, n_layers: int = 6, n_decoder_layers: int | None = None,
                 dropout: float = 0.3, attn_dropout: float = 0.0, activation_dropout: float = 0.0,
                 pre_norm: bool = True, tie_decoder_embeddings: bool = True,
                 share_encoder_embeddings: bool = False, max_positions: int = 1024,
                 policy: str = "eager", policy_params: dict | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.d_model={d_model} must be divisible by model.n_heads={n_heads}")
        self.pad_id, self.d_model, self.max_positions = pad_id, d_model, max_positions
        n_decoder_layers = n_layers if n_decoder_layers is None else n_decoder_layers
        layer_args = dict(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout,
                          attn_dropout=attn_dropout, activation_dropout=activation_dropout,
                          pre_norm=pre_norm, policy=policy, policy_params=policy_params)
        self.tgt_embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.src_embed = self.tgt_embed if share_encoder_embeddings else nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, mean=0.0, std=d_model**-0.5)  # fairseq's init
            nn.init.zeros_(emb.weight[pad_id])
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)
        self.embed_dropout = nn.Dropout(dropout)
        self.encoder = Stack([EncoderLayer(**layer_args) for _ in range(n_layers)], d_model, pre_norm)
        self.decoder = Stack([DecoderLayer(**layer_args) for _ in range(n_decoder_layers)], d_model, pre_norm)
        self.output = nn.Linear(d_model, vocab_size, bias=False)
        if tie_decoder_embeddings:
            self.output.weight = self.tgt_embed.weight
        else:
            nn.init.normal_(self.output.weight, mean=0.0, std=d_model**-0.5)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        L = ids.size(1)
        if L > self.max_positions:
            raise ValueError(f"sequence of {L} tokens exceeds model.max_positions={self.max_positions}; raise it or cut sentences shorter")
        x = table(ids) * math.sqrt(self.d_model) + self.positions[:L]
        return self.embed_dropout(x)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """(B, Ls) ids -> (B, Ls, d) memory."""
        x = self._embed(self.src_embed, src_ids)
        for layer in self.encoder.layers:
            x = layer(x, src_mask)
        return self.encoder.final_norm(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Lt) target prefix -> (B, Lt, V) next-token logits."""
        if tgt_mask is None:
            tgt_mask = torch.ones_like(tgt_in, dtype=torch.bool)
        y = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder.layers:
            y = layer(y, memory, src_mask, tgt_mask)
        return self.output(self.decoder.final_norm(y))

    def forward(self, src_ids, src_mask, tgt_in, tgt_mask=None) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask, tgt_mask)


ATTENTION_KINDS = ("encoder_self", "decoder_self", "cross")


def attention_modules_by_kind(model: Translator) -> dict[str, list[nn.Module]]:
    """The model's MultiHeadAttention modules, grouped by the three kinds."""
    return {
        "encoder_self": [layer.self_attn for layer in model.encoder.layers],
        "decoder_self": [layer.self_attn for layer in model.decoder.layers],
        "cross": [layer.cross_attn for layer in model.decoder.layers],
    }


def activation_memory_by_kind(model: Translator, src_ids, src_mask, tgt_in, tgt_mask=None,
                              policy: str | None = None, policy_params: dict | None = None) -> dict:
    """Bytes saved for backward inside each attention kind during one training forward pass.

    Each attention module's forward runs under its own ``core.ActivationMeter`` (the innermost
    saved-tensor hooks win, so what a module saves is seen by that module's meter only); the
    saved storages are then united per kind, so a storage shared by several layers of a kind
    (the encoder output read by every cross-attention) counts once. ``bytes`` is everything the
    kind's modules keep (projection inputs included); ``softmax_state_bytes`` the n x n part.
    ``policy`` temporarily overrides the modules' policy (None = keep theirs). Runs in training
    mode (dropout on, as in training) and restores the previous mode and policies.
    """
    from softmax_approx.core import ActivationMeter, make_policy

    groups = attention_modules_by_kind(model)
    records: dict[str, dict] = {kind: {} for kind in groups}
    saved_policies, was_training = {}, model.training

    def metered(module, kind):
        inner = module.forward

        def forward(*args, **kwargs):
            with ActivationMeter(model) as meter:
                out = inner(*args, **kwargs)
            records[kind].update(meter.report().records)
            return out

        return forward

    try:
        for kind, modules in groups.items():
            for m in modules:
                saved_policies[m] = m.policy
                if policy is not None:
                    m.policy = make_policy(policy, **dict(policy_params or {}))
                m.forward = metered(m, kind)
        model.train()
        with torch.enable_grad():
            model(src_ids, src_mask, tgt_in, tgt_mask)  # the graph is dropped on return
    finally:
        for m, p in saved_policies.items():
            m.policy = p
            del m.forward  # back to the class's forward
        model.train(was_training)
    return {
        kind: {"bytes": sum(r.nbytes for r in recs.values()),
               "softmax_state_bytes": sum(r.nbytes for r in recs.values() if r.state),
               "n_modules": len(groups[kind])}
        for kind, recs in records.items()
    }
