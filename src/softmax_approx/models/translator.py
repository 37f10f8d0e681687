"""Encoder-decoder Transformer for translation (Vaswani et al. 2017), readable in one sitting.

All three attention kinds go through ``softmax_approx.nn.MultiHeadAttention``, so the softmax
policy under study (``eager``, ``paper``, ...) applies to every one of them:

* encoder self-attention    — ``key_padding_mask = src_mask``;
* decoder self-attention    — ``causal=True`` and ``key_padding_mask = tgt_mask``;
* decoder cross-attention   — queries from the decoder, keys/values from the encoder output,
  ``key_padding_mask = src_mask``.

Masks are bool with **True = real token**, as everywhere in this project.

Layers: the project's shared pre-norm ``models.layers.Encoder``/``Decoder`` (LayerNorm before
each sub-layer, one final LayerNorm per stack, GELU feed-forward), the same blocks as the
classifier's. Pre-norm is fairseq's ``--encoder/decoder-normalize-before``; it trains stably
without careful warm-up, which the Multi30k reference recipe does not have. fairseq's
``transformer_iwslt_de_en`` itself is post-norm with a ReLU feed-forward: our IWSLT preset
matches its sizes and optimisation, not that layout (see docs/translation.md).

Embeddings: one shared vocabulary (joint BPE). Token embeddings are scaled by sqrt(d_model)
and summed with fixed sinusoidal positions (fairseq's layout: position 0 is the first token).
``tie_decoder_embeddings`` ties the decoder input embedding with the output projection
(fairseq ``--share-decoder-input-output-embed``); ``share_encoder_embeddings`` additionally
uses the same table for the encoder (``--share-all-embeddings``).

Incremental decoding (fairseq's ``incremental_state``, used by ``models.decoding``):
``start_decoding`` computes every layer's cross-attention keys/values once per sentence;
``decode_step`` runs one new token per hypothesis, each decoder self-attention appending its
keys/values to its cache; ``reorder_incremental_state(state, new_order)`` follows beam search's
reordering and drops finished sentences, in one call per step. ``decode`` (the whole prefix,
no cache) stays as the reference: tests check both give the same tokens and scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from softmax_approx.models.layers import Decoder, Encoder, PositionalEmbedding
from softmax_approx.nn.attention import reorder_cache

__all__ = ["Translator", "DecoderState", "activation_memory_by_kind", "attention_modules_by_kind"]


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps for one batch.

    ``caches``: per decoder layer ``{"self": {"k", "v"}, "cross": {"k", "v", "mask"}}``;
    self-attention rows are hypotheses (R of them), cross-attention rows are sentences
    (``n_sentences``), each sentence owning ``group`` consecutive hypothesis rows (its beam).
    ``steps``: target positions decoded so far (the position of the next token).
    """

    caches: list[dict]
    group: int
    n_sentences: int
    steps: int = 0


class Translator(nn.Module):
    """``forward(src_ids, src_mask, tgt_in, tgt_mask) -> logits (B, Lt, V)``.

    ``n_layers`` is the depth of both stacks unless ``n_decoder_layers`` is given; ``dropout``
    acts on embeddings, residual branches and the feed-forward hidden layer, ``attn_dropout``
    on the attention probabilities (inside ``core.attention``, so the policy decides what is
    kept for it). ``max_len`` sizes the position table.
    """

    def __init__(self, vocab_size: int, pad_id: int, d_model: int = 512, n_heads: int = 4,
                 d_ff: int = 1024, n_layers: int = 6, n_decoder_layers: int | None = None,
                 dropout: float = 0.3, attn_dropout: float = 0.0, tie_decoder_embeddings: bool = True,
                 share_encoder_embeddings: bool = False, max_len: int = 1024,
                 policy: str = "eager", policy_params: dict | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.d_model={d_model} must be divisible by model.n_heads={n_heads}")
        self.pad_id, self.d_model = pad_id, d_model
        self.max_positions = max_len  # decoding caps output lengths at this (models.decoding)
        n_decoder_layers = n_layers if n_decoder_layers is None else n_decoder_layers
        layer_args = dict(n_heads=n_heads, d_ff=d_ff, dropout=dropout, attn_dropout=attn_dropout,
                          policy=policy, policy_params=policy_params)
        self.tgt_embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.src_embed = self.tgt_embed if share_encoder_embeddings else nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, mean=0.0, std=d_model**-0.5)  # fairseq's init
            nn.init.zeros_(emb.weight[pad_id])
        self.positions = PositionalEmbedding(max_len, d_model, kind="sinusoidal")
        self.embed_dropout = nn.Dropout(dropout)
        self.encoder = Encoder(n_layers, d_model, **layer_args)
        self.decoder = Decoder(n_decoder_layers, d_model, **layer_args)
        self.output = nn.Linear(d_model, vocab_size, bias=False)
        if tie_decoder_embeddings:
            self.output.weight = self.tgt_embed.weight
        else:
            nn.init.normal_(self.output.weight, mean=0.0, std=d_model**-0.5)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        x = table(ids) * math.sqrt(self.d_model) + self.positions(ids.size(1), offset)  # (B, L, d)
        return self.embed_dropout(x)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """(B, Ls) ids -> (B, Ls, d) memory."""
        return self.encoder(self._embed(self.src_embed, src_ids), src_mask)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Lt) target prefix -> (B, Lt, V) next-token logits."""
        if tgt_mask is None:
            tgt_mask = torch.ones_like(tgt_in, dtype=torch.bool)
        y = self.decoder(self._embed(self.tgt_embed, tgt_in), memory, tgt_mask, src_mask)
        return self.output(y)

    def forward(self, src_ids, src_mask, tgt_in, tgt_mask=None) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask, tgt_mask)

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: torch.Tensor, src_mask: torch.Tensor, group: int = 1) -> DecoderState:
        """State for decoding ``group`` hypotheses per sentence of ``memory`` (S, Ls, d)."""
        return DecoderState(self.decoder.new_caches(memory, src_mask), int(group), memory.size(0))

    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """The newest token of each hypothesis (R,) -> next-token logits (R, V); advances state."""
        y = self._embed(self.tgt_embed, tokens[:, None], offset=state.steps)  # (R, 1, d)
        state.steps += 1
        return self.output(self.decoder.step(y, state.caches))[:, 0]

    def reorder_incremental_state(self, state: DecoderState, new_order: torch.Tensor) -> None:
        """Continue with hypothesis rows ``new_order`` (old row indices, ``state.group`` per
        sentence, a sentence's rows consecutive and sentences in their old order): beam search's
        reordering and the removal of finished sentences in one call."""
        for cache in state.caches:
            reorder_cache(cache["self"], new_order)
        sentences = new_order[:: state.group] // state.group
        if not torch.equal(sentences, torch.arange(state.n_sentences, device=sentences.device)):
            for cache in state.caches:  # the same keys for every hypothesis of a sentence
                reorder_cache(cache["cross"], sentences)
            state.n_sentences = sentences.numel()


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
    ``policy`` temporarily overrides the modules' policy (``nn.use_policy``; None = keep theirs).
    Runs in training mode (dropout on, as in training) and restores the previous mode.
    """
    from softmax_approx.core import ActivationMeter
    from softmax_approx.nn import use_policy

    groups = attention_modules_by_kind(model)
    records: dict[str, dict] = {kind: {} for kind in groups}
    open_meters: dict[nn.Module, ActivationMeter] = {}
    was_training = model.training

    def enter(module, args):
        open_meters[module] = ActivationMeter(model).__enter__()

    def leave(module, args, output, kind):
        meter = open_meters.pop(module)
        meter.__exit__(None, None, None)
        records[kind].update(meter.report().records)

    handles = []
    try:
        for kind, modules in groups.items():
            for m in modules:
                handles.append(m.register_forward_pre_hook(enter))
                handles.append(m.register_forward_hook(lambda mod, a, out, _kind=kind: leave(mod, a, out, _kind)))
        model.train()
        with use_policy(model, policy, **dict(policy_params or {})), torch.enable_grad():
            model(src_ids, src_mask, tgt_in, tgt_mask)  # the graph is dropped on return
    finally:
        for h in handles:
            h.remove()
        for meter in open_meters.values():  # a forward that raised leaves its meter open
            meter.__exit__(None, None, None)
        model.train(was_training)
    return {
        kind: {"bytes": sum(r.nbytes for r in recs.values()),
               "softmax_state_bytes": sum(r.nbytes for r in recs.values() if r.state),
               "n_modules": len(groups[kind])}
        for kind, recs in records.items()
    }
