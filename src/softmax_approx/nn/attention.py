"""MultiHeadAttention whose softmax storage is chosen by a core policy.

One module for all three attention kinds of a Transformer: self-attention (``key=None``),
causal self-attention (``causal=True``) and cross-attention (``key``/``value`` given).

The policy only decides what is *kept for backward*; the forward value is the exact softmax
under every policy. So when autograd will keep nothing (``torch.no_grad()``/inference mode, or
no input needs a gradient: evaluation, beam search) the module calls one exact kernel
(:data:`INFERENCE_POLICY`, PyTorch's fused SDPA) whatever the policy: evaluation and decoding of
an ``eager`` and a ``paper`` model run the same code. ``core.attention`` itself also skips the
policy's work without gradients; this choice is only about using one, fast, kernel.

Incremental decoding (fairseq's ``incremental_state``): :meth:`MultiHeadAttention.step` runs
one new target position against a per-layer ``cache`` dict. Self-attention appends this
position's keys and values (one step per call); cross-attention projects the encoder output
to keys and values on its first call only and lets the ``G`` hypotheses of a sentence (beam
rows, kept together) attend to that one copy. :func:`reorder_cache` follows beam search's
reordering and drops finished sentences.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import attention, make_policy

#: The exact kernel used whenever autograd keeps nothing (PyTorch's fused SDPA via the core).
INFERENCE_POLICY = "sdpa"


def needs_backward(*tensors: torch.Tensor) -> bool:
    """True when autograd will keep tensors for a backward pass through this call."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class MultiHeadAttention(nn.Module):
    """Project -> split heads -> ``core.attention(policy=...)`` -> merge heads -> project."""

    #: the activation meter counts everything saved inside modules that set this
    is_attention_module = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        policy: str = "eager",
        policy_params: dict | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MultiHeadAttention: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.set_policy(policy, policy_params)

    def set_policy(self, policy: str, policy_params: dict | None = None) -> None:
        """Swap the storage policy (validated now, so a bad parameter fails at build time)."""
        self.policy = make_policy(policy, **dict(policy_params or {}))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape                                          # (B, L, d_model)
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def _attend(self, q, k, v, mask, causal) -> torch.Tensor:
        """core.attention with this module's policy, or the exact kernel when nothing is kept."""
        policy = self.policy if needs_backward(q, k, v) else INFERENCE_POLICY
        return attention(q, k, v, mask=mask, causal=causal, dropout_p=self.dropout,
                         policy=policy, training=self.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query: (B, Lq, d); key/value: (B, Lk, d) or None for self-attention.

        key_padding_mask: bool (B, Lk), True = real token (may be attended).
        attn_mask: optional bool mask broadcastable to (B, H, Lq, Lk), True = may attend.
        """
        key = query if key is None else key
        value = key if value is None else value
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]                # (B, 1, 1, Lk)
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask
        out = self._attend(q, k, v, mask, causal)                   # (B, H, Lq, Dh)
        b, _, lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model))

    # ------------------------------------------------------------------ incremental decoding
    def cross_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> dict:
        """Keys and values of the encoder output (S, Ls, d), computed once per sentence."""
        return {"k": self._split(self.k_proj(memory)), "v": self._split(self.v_proj(memory)),   # (S, H, Ls, Dh)
                "mask": None if memory_mask is None else memory_mask[:, None, None, :]}       # (S, 1, 1, Ls)

    def step(self, query: torch.Tensor, cache: dict, cross: bool = False) -> torch.Tensor:
        """One new position per row: query (R, 1, d) -> (R, 1, d).

        Self-attention (``cross=False``): this position's keys/values are appended to
        ``cache["k"]``/``cache["v"]`` (R, H, t, Dh) and the query attends to all t of them (the
        prefix never holds padding: finished rows leave the batch). Cross-attention: ``cache``
        comes from :meth:`cross_cache` with S rows; the R = S * G queries, G consecutive rows per
        sentence (its beam), attend to their sentence's keys together as G query positions.
        """
        r = query.size(0)
        if not cross:
            q = self._split(self.q_proj(query))                     # (R, H, 1, Dh)
            k, v = self._split(self.k_proj(query)), self._split(self.v_proj(query))
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            out = self._attend(q, k, v, None, False)                # (R, H, 1, Dh)
            return self.out_proj(out.transpose(1, 2).reshape(r, 1, self.d_model))
        s = cache["k"].size(0)
        if r % s:
            raise ValueError(f"MultiHeadAttention.step: {r} query rows for {s} cached sentences")
        g = r // s
        q = self.q_proj(query).view(s, g, self.n_heads, self.head_dim).transpose(1, 2)  # (S, H, G, Dh)
        out = self._attend(q, cache["k"], cache["v"], cache["mask"], False)              # (S, H, G, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(r, 1, self.d_model))


def reorder_cache(cache: dict, order: torch.Tensor) -> None:
    """Keep rows ``order`` (a LongTensor of row indices) of every cached tensor, in place."""
    for name, t in cache.items():
        if isinstance(t, torch.Tensor):
            cache[name] = t.index_select(0, order)
