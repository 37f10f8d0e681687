"""softmax-approx: softmax output approximation for activation-memory-efficient attention.

The library lives in :mod:`softmax_approx.core` (plain PyTorch); the harness (Hydra +
Lightning + W&B) and the reproduction build on it.
"""

__version__ = "0.1.0"
