"""Dropout whose mask is regenerated from a saved seed instead of being kept for backward.

The fused attention draws one seed per call from the global CPU RNG (so `torch.manual_seed`
makes runs reproducible) as a small CPU tensor, saved for backward like FlashAttention's RNG
state; backward rebuilds the bit-identical mask from it. Reading a CPU tensor is no device
sync, so CUDA calls do not wait on the GPU.

Two generators, one per execution mode (forward and backward always run in the same one):

* eager: ``torch.rand`` from a private ``torch.Generator`` seeded with the seed's value (fast,
  vectorised);
* under ``torch.compile``: a counter-based hash of (seed, element index), plain tensor ops that
  trace without a graph break and fuse into one kernel: three xorshift-multiply rounds on
  32-bit values held in int64 (multipliers below 2**31, so products never overflow and every
  backend computes the same bits); the top 24 bits give u in [0, 1).

An entry is kept when u >= p. The two modes draw different (equally distributed) masks.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_ROUNDS = ((16, 0x7FEB352D), (15, 0x2C1B3C6D), (16, 0x297A2D39))


def draw_seed(device: torch.device | None = None) -> torch.Tensor:
    """One seed from the global CPU RNG: an int64 CPU tensor of shape (2,), two 31-bit halves.
    (`device` is accepted for symmetry; the seed always lives on the CPU.)"""
    return torch.randint(0, 2**31, (2,), dtype=torch.long)


def _mix(x: torch.Tensor) -> torch.Tensor:
    for shift, mult in _ROUNDS:
        x = ((x ^ (x >> shift)) * mult) & _M32
    return x ^ (x >> 16)


def keep_mask(seed: torch.Tensor, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True = kept, each entry kept with probability 1 - p, fully determined by seed."""
    if not torch.compiler.is_compiling():
        gen = torch.Generator(device=device)
        gen.manual_seed((int(seed[0]) << 31) | int(seed[1]))
        return torch.rand(shape, generator=gen, device=device) >= p
    seed = seed.to(device)
    numel = 1
    for s in shape:
        numel *= s
    idx = torch.arange(numel, device=device, dtype=torch.long)
    x = _mix((idx ^ seed[0]) & _M32)
    x = _mix(x ^ seed[1])
    u = (x >> 8).to(torch.float32) * (1.0 / 2**24)
    return (u >= p).view(shape)


def apply_dropout(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """x * mask / (1 - p) with the mask of `keep_mask(seed, ...)`."""
    mask = keep_mask(seed, x.shape, p, x.device)
    return x.mul(mask).mul_(1.0 / (1.0 - p))
