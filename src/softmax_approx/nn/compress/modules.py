"""Drop-in module classes: same parameters, buffers and ``state_dict`` keys as the modules
they replace (``__class__`` is switched in place, or a parameter-free module is swapped), and
the same values in forward; only what is kept for backward changes.

With autograd off (``torch.no_grad()``, inference, the first pass of reentrant checkpointing)
each computes the plain result, and the seeded dropout still draws its seed from the global
generator, so a checkpointed layer replays the same mask when it is recomputed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ...core.dropout import apply_dropout, draw_seed
from .functions import GeluFn, LayerNormFn, LinearFn, SeededDropoutFn
from .kept import MODES, attach_recipe, kept, recipe_of


def _records_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    return mode


class SeededDropout(nn.Dropout):
    """``nn.Dropout`` that keeps a seed, not a mask (``core.dropout``'s seeded masks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        seed = draw_seed()  # on every path: checkpoint's RNG restore replays it
        if not _records_graph(x):
            return apply_dropout(x, seed, self.p)
        out = SeededDropoutFn.apply(x, seed, self.p)
        attach_recipe(out, x, ("dropout", seed, self.p))
        return out


class FusedGELU(nn.Module):
    """GELU whose output is never kept: the next compressed linear recomputes it from the
    input, which this module keeps once (in ``mode``) for its own backward."""

    def __init__(self, approximate: str = "none", mode: str = "exact") -> None:
        super().__init__()
        self.approximate, self.mode = approximate, _check_mode(mode)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, mode={self.mode}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not _records_graph(h):
            return F.gelu(h, approximate=self.approximate)
        form = kept(h, self.mode)
        out = GeluFn.apply(h, self.approximate, form.spec, *form.tensors)  # exact: h itself
        attach_recipe(out, h, ("gelu", self.approximate))
        return out


def compressed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> torch.Tensor:
    """``F.linear`` keeping the input in ``mode`` (or its recipe's base), once per tensor."""
    if not _records_graph(x, weight, bias):
        return F.linear(x, weight, bias)
    recipe = recipe_of(x)
    if recipe is None and mode == "exact":
        return F.linear(x, weight, bias)  # PyTorch keeps x itself: nothing to gain
    base, ops = (recipe.base, recipe.ops) if recipe is not None else (x, ())
    form = kept(base, mode)
    return LinearFn.apply(x, weight, bias, form.spec, ops, *form.saved(base))


class CompressedLinear(nn.Linear):
    """``nn.Linear`` keeping its input as ``compress_mode`` (``exact`` | ``int8``)."""

    compress_mode: str = "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compressed_linear(x, self.weight, self.bias, self.compress_mode)


_ZERO_WEIGHT_UNDER_COMPILE = (
    "CompressedLayerNorm: a LayerNorm weight entry is 0, so its input cannot be recovered from its "
    "output; under torch.compile there is no fallback: compress with layernorm=None"
)


class CompressedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` keeping its output (shared with the next layer that keeps it) and
    ``1/std`` per row instead of its input. Falls back to PyTorch's own when the affine weight
    is absent or has a zero (the input cannot be recovered) or the shape is not 1-D."""

    compress_mode: str = "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if len(self.normalized_shape) != 1 or w is None or not _records_graph(x, w, self.bias):
            return super().forward(x)
        if torch.compiler.is_compiling():  # no data-dependent branch in a graph: a check in it
            torch._assert_async((w != 0).all(), _ZERO_WEIGHT_UNDER_COMPILE)
        elif bool((w == 0).any()):
            return super().forward(x)
        return LayerNormFn.apply(x, w, self.bias, self.eps, self.compress_mode)


def conv1d_class() -> type | None:
    """Transformers' ``Conv1D`` (GPT-2's linear layer, weight stored (in, out)), if installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - Transformers is optional
        return None
    return Conv1D


@functools.lru_cache(maxsize=None)
def compressed_conv1d_class() -> type | None:
    base = conv1d_class()
    if base is None:  # pragma: no cover
        return None

    class CompressedConv1D(base):
        """Transformers' ``Conv1D`` keeping its input as ``compress_mode``."""

        compress_mode: str = "exact"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return compressed_linear(x, self.weight.t(), self.bias, self.compress_mode)

    CompressedConv1D.__qualname__ = CompressedConv1D.__name__ = "CompressedConv1D"
    return CompressedConv1D
