"""The library: approximate softmax, fused attention with storage policies, memory meter.

Plain PyTorch; importing it pulls in neither Lightning nor Hydra.

    from softmax_approx.core import attention
    out = attention(q, k, v, mask=key_padding, dropout_p=0.1, policy="paper", S=5)
"""

from .functional import attention, masked_softmax, valid_mask
from .memory import ActivationMeter, MemoryReport
from .policies import POLICIES, POLICY_NAMES, Policy, index_dtype, make_policy, policy_class, register_policy
from .softmax import approx_softmax

__all__ = [
    "attention",
    "approx_softmax",
    "make_policy",
    "register_policy",
    "policy_class",
    "Policy",
    "POLICIES",
    "POLICY_NAMES",
    "ActivationMeter",
    "MemoryReport",
    "masked_softmax",
    "valid_mask",
    "index_dtype",
]
