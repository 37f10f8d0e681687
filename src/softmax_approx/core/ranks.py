"""Sort orders packed in ceil(log2 n) bits: the `paper` policy's ranks beyond n = 256.

A row's sort permutation holds values 0..n-1, so ``b = ceil(log2 n)`` bits per entry suffice.
Up to n = 256 one uint8 per entry is exactly that. Above, the low 8 bits stay one uint8 per
entry and the ``b - 8`` high bits are stored as bit planes, 8 entries per byte:
``1 + (b - 8) / 8`` bytes per entry (1.125 at n = 512, 1.25 at n = 1024, 1.5 at n = 4096)
instead of int16's 2. Unpacking gives back the very same permutation, so the rebuild from a
packed order is bit-identical to the rebuild from the unpacked one.
"""

from __future__ import annotations

import math

import torch

#: Largest row length packed this way (16 bits: low byte + up to 8 bit planes).
MAX_PACKED_N = 2**16


def rank_bits(n: int) -> int:
    """Bits per entry for indices 0..n-1 (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def pack(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n) integer permutation -> (low uint8 (..., n), planes uint8 (..., b - 8, ceil(n / 8)))."""
    n = order.shape[-1]
    high_bits = rank_bits(n) - 8
    low = (order & 255).to(torch.uint8)
    high = (order >> 8).to(torch.uint8)
    pad = (-n) % 8
    if pad:
        high = torch.nn.functional.pad(high, (0, pad))
    high = high.unflatten(-1, (-1, 8))                                   # (..., n8, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=order.device)
    planes = [((high >> j) & 1).bitwise_left_shift(shifts).sum(-1, dtype=torch.uint8) for j in range(high_bits)]
    return low, torch.stack(planes, dim=-2)


def unpack(low: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: the int64 permutation (..., n)."""
    n = low.shape[-1]
    shifts = torch.arange(8, dtype=torch.uint8, device=low.device)
    order = low.long()
    for j in range(planes.shape[-2]):
        bits = (planes[..., j, :, None] >> shifts) & 1                   # (..., n8, 8)
        order = order | (bits.flatten(-2)[..., :n].long() << (8 + j))
    return order
