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


def _uniform(seed: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """float32 u in [0, 1) per entry, fully determined by seed (see the module docstring)."""
    if not torch.compiler.is_compiling():
        gen = torch.Generator(device=device)
        gen.manual_seed((int(seed[0]) << 31) | int(seed[1]))
        return torch.rand(shape, generator=gen, device=device)
    seed = seed.to(device)
    numel = 1
    for s in shape:
        numel *= s
    idx = torch.arange(numel, device=device, dtype=torch.long)
    x = _mix((idx ^ seed[0]) & _M32)
    x = _mix(x ^ seed[1])
    return ((x >> 8).to(torch.float32) * (1.0 / 2**24)).view(shape)


def keep_mask(seed: torch.Tensor, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask, True = kept, each entry kept with probability 1 - p, fully determined by seed."""
    return _uniform(seed, shape, device) >= p


def keep_scale(seed: torch.Tensor, shape: torch.Size, p: float, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The mask of :func:`keep_mask` as `dtype` values 1 / (1 - p) (kept) and 0 (dropped):
    what dropout multiplies by, built in place from the uniform draws (no bool -> float copy)."""
    return _uniform(seed, shape, device).ge_(p).to(dtype).mul_(1.0 / (1.0 - p))


def apply_dropout(x: torch.Tensor, seed: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """x * mask / (1 - p) with the mask of `keep_mask(seed, ...)`; into `x` when `inplace`.
    The product is formed in float32 (float64 for float64 x) and rounded once to x's dtype."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = keep_scale(seed, x.shape, p, x.device, wide)
    if x.dtype != wide:
        return scale.mul_(x).to(x.dtype)
    return x.mul_(scale) if inplace else scale.mul_(x)
