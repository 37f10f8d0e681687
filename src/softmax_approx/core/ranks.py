"""Row sort orders, and their packing in about ceil(log2 n) bits (the `paper` policy's ranks).

:func:`descending_order` is the one place a row is sorted: descending, ties broken by index,
invalid entries last, so the permutation is fully determined and CPU, CUDA and compiled code
agree on it. Non-negative floats order like their bit patterns read as integers, so each
entry gets one unique integer key, ``index - bits * 2**ceil(log2 n)``, and any sort of the
keys gives that permutation. On CPU the keys are sorted with NumPy's argsort, whose SIMD
quicksort (x86-simd-sort) is about ten times faster than ``torch.sort`` on rows of a few hundred
entries (a custom op, so compiled code uses it too); elsewhere with ``torch.sort``.

Packing: a row's sort permutation holds values 0..n-1, so ``b = ceil(log2 n)`` bits per entry suffice.
Up to n = 256 one uint8 per entry is exactly that. Above, the low 8 bits stay one uint8 per
entry and the high ``b - 8`` bits are packed into a second uint8 tensor at a width of 1, 2, 4
or 8 bits (the smallest that holds them; several entries per byte): ``1 + width / 8`` bytes
per entry: 1.125 at n = 512, 1.25 at n = 1024, 1.5 at n = 2048 and 4096, 2 up to 65,536,
instead of int16's 2. Unpacking is one table lookup and gives back the very same
permutation, so the rebuild from a packed order is bit-identical to the unpacked one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Largest row length packed this way (16 bits: low byte + up to 8 high bits).
MAX_PACKED_N = 2**16


def rank_bits(n: int) -> int:
    """Bits per entry for indices 0..n-1 (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


_BITS_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def descending_order(probs: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The int64 permutation (sorted position -> index) sorting each row of the non-negative
    `probs` descending; ties by index; entries where `valid` is False after every valid one."""
    n = probs.shape[-1]
    probs = probs.detach()
    idx = torch.arange(n, device=probs.device)
    if probs.dtype not in _BITS_VIEW:  # float64: 63-bit patterns leave no room for the index
        key = probs.view(torch.int64).neg()
        if valid is not None:
            key = key.masked_fill(~valid, 1)
        return key.sort(dim=-1, stable=True).indices
    shift = rank_bits(n)
    key = torch.sub(idx, probs.view(_BITS_VIEW[probs.dtype]), alpha=1 << shift)  # int64, unique
    if valid is not None:
        key = torch.where(valid, key, idx + (1 << shift))
    return argsort_rows(key)


@torch.library.custom_op("softmax_approx::argsort_rows", mutates_args=())
def argsort_rows(key: torch.Tensor) -> torch.Tensor:
    """Ascending argsort of each row of an integer tensor with unique keys per row (so every
    sort gives the same answer): NumPy's SIMD quicksort on CPU, ``torch.sort`` elsewhere. A
    custom op, so torch.compile keeps it as one opaque call (no graph break) and compiled
    code gets the same fast CPU sort."""
    if key.device.type == "cpu":
        return torch.from_numpy(np.argsort(key.numpy(), axis=-1))
    return key.sort(dim=-1).indices


@argsort_rows.register_fake
def _argsort_rows_shape(key: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(key, dtype=torch.long)


def high_width(n: int) -> int:
    """Bits each entry's high part takes in the packed tensor: 1, 2, 4 or 8."""
    need = rank_bits(n) - 8
    return next(w for w in (1, 2, 4, 8) if w >= need)


def _small_int(n: int) -> torch.dtype:
    return torch.int16 if n <= 2**15 else torch.int32


def pack(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., n) integer permutation -> (low uint8 (..., n), high uint8 (..., ceil(n * width / 8)))."""
    n = order.shape[-1]
    width = high_width(n)
    per = 8 // width
    small = order.to(_small_int(n))
    low = (small & 255).to(torch.uint8)
    high = (small >> 8).to(torch.uint8)
    pad = (-n) % per
    if pad:
        high = torch.nn.functional.pad(high, (0, pad))
    high = high.unflatten(-1, (-1, per))
    packed = high[..., 0].clone()
    for i in range(1, per):
        packed |= high[..., i] << (i * width)
    return low, packed


def unpack(low: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: the int64 permutation (..., n)."""
    n = low.shape[-1]
    width = high_width(n)
    per = 8 // width
    shifts = torch.arange(per, device=low.device) * width
    table = ((torch.arange(256, device=low.device)[:, None] >> shifts) & (2**width - 1)).to(_small_int(n))
    high = table[packed.long()].flatten(-2)[..., :n]                     # (..., n), one lookup
    return ((high << 8) | low.to(high.dtype)).long()
