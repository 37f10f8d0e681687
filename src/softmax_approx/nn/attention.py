"""MultiHeadAttention whose softmax storage is chosen by a core policy.

One module for all three attention kinds of a Transformer: self-attention (``key=None``),
causal self-attention (``causal=True``) and cross-attention (``key``/``value`` given).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import attention, make_policy


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
        out = attention(
            q, k, v, mask=mask, causal=causal, dropout_p=self.dropout,
            policy=self.policy, training=self.training,
        )                                                            # (B, H, Lq, Dh)
        b, _, lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model))


def set_attention_policy(model: nn.Module, policy: str, policy_params: dict | None = None) -> list[str]:
    """Set the policy of every MultiHeadAttention in `model`; returns the modules' names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            module.set_policy(policy, policy_params)
            names.append(name)
    return names
