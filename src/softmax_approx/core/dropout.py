"""Dropout whose mask is regenerated from a saved seed instead of being kept for backward.

The fused attention draws one 63-bit seed from the global RNG per call (so `torch.manual_seed`
makes runs reproducible), builds the mask from a private generator seeded with it, and in
backward rebuilds the bit-identical mask from the same seed. Only the seed is kept.
"""

from __future__ import annotations

import torch


def draw_seed(device: torch.device) -> int:
    """One seed from the global RNG of `device` (CPU RNG for CPU tensors)."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    return int(torch.randint(0, 2**62, (), device=gen_device).item())


def keep_mask(seed: int, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True = kept, each entry kept with probability 1 - p, fully determined by seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.rand(shape, generator=gen, device=device) >= p


def apply_dropout(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """x * mask / (1 - p) with the mask of `keep_mask(seed, ...)`."""
    mask = keep_mask(seed, x.shape, p, x.device)
    return x.mul(mask).mul_(1.0 / (1.0 - p))
