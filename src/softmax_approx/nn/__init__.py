"""Modules built on the core: a MultiHeadAttention with a storage policy, and ``patch`` for the
``torch.nn.MultiheadAttention`` layers of existing models."""

from .attention import MultiHeadAttention
from .compress import compress_activations
from .patch import PolicyMultiheadAttention, patch, unpatch
from .policy_switch import policy_modules, use_policy

__all__ = ["MultiHeadAttention", "compress_activations", "PolicyMultiheadAttention", "patch", "unpatch",
           "use_policy", "policy_modules"]
