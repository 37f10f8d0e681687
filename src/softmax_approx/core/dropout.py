"""Dropout whose mask is regenerated from a saved seed instead of being kept for backward.

The fused attention draws one seed per call from the global CPU RNG (so `torch.manual_seed`
makes runs reproducible) as a small CPU tensor, saved for backward like FlashAttention's RNG
state; backward rebuilds the bit-identical mask from it. Reading a CPU tensor is no device
sync, so CUDA calls do not wait on the GPU.

One function of the seed on every path: ``torch.rand`` from a private ``torch.Generator``
seeded with the seed's value, wrapped in a custom operator (``softmax_approx::seeded_uniform``)
that ``torch.compile`` keeps as one opaque call, so eager mode, compiled graphs and a
recomputation that runs outside the compiled graph (reentrant activation checkpointing)
all draw the same mask from the same seed. An entry is kept when u >= p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def draw_seed(device: torch.device | None = None) -> torch.Tensor:
    """One seed from the global CPU RNG: an int64 CPU tensor of shape (2,), two 31-bit halves.
    (`device` is accepted for symmetry; the seed always lives on the CPU.)"""
    return torch.randint(0, 2**31, (2,), dtype=torch.long)


@torch.library.custom_op("softmax_approx::seeded_uniform", mutates_args=())
def _seeded_uniform(seed: torch.Tensor, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed[0]) << 31) | int(seed[1]))
    return torch.rand(shape, generator=gen, device=device)


@_seeded_uniform.register_fake
def _(seed, shape, device):
    return torch.empty(shape, device=device)


def _uniform(seed: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """float32 u in [0, 1) per entry, fully determined by seed (see the module docstring)."""
    return _seeded_uniform(seed, list(shape), torch.device(device))


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
    return _scaled(x, keep_scale(seed, x.shape, p, x.device, _wide(x.dtype)), inplace)


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(x: torch.Tensor, scale: torch.Tensor, inplace: bool) -> torch.Tensor:
    if x.dtype != scale.dtype:
        return scale.mul_(x).to(x.dtype)
    return x.mul_(scale) if inplace else scale.mul_(x)


class UniformStream:
    """The draws of one seed's ``_uniform(seed, shape)`` taken piece by piece: pieces of
    sizes n1, n2, ... drawn in turn are the first n1, the next n2, ... entries of the whole
    draw in C order. CPU only (a CUDA generator rounds its offset up at each call, so its
    pieces would not join into the whole draw); eager mode only (a generator object does not
    trace; torch.compile uses the whole draw, one custom op)."""

    def __init__(self, seed: torch.Tensor) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed((int(seed[0]) << 31) | int(seed[1]))

    def keep_scale(self, shape: torch.Size, p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The next piece of :func:`keep_scale`'s values."""
        u = torch.empty(shape).uniform_(generator=self.generator)  # torch.rand's own draw
        return u.ge_(p).to(dtype).mul_(1.0 / (1.0 - p))

    def apply_dropout(self, x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
        """:func:`apply_dropout` with the next piece of the mask."""
        return _scaled(x, self.keep_scale(x.shape, p, _wide(x.dtype)), inplace)
