"""Modules built on the core: a MultiHeadAttention with a storage policy."""

from .attention import MultiHeadAttention, set_attention_policy

__all__ = ["MultiHeadAttention", "set_attention_policy"]
