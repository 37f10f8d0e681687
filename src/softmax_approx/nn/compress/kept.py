"""What a compressed module keeps of a tensor for backward, and how it rebuilds the tensor.

Two ideas, both attached to the tensor object itself (plain Python attributes, so nothing
changes in the models' code):

* **one kept copy per tensor** (:func:`kept`): the first module that needs a tensor for
  backward stores its kept form on it (the tensor itself in ``exact`` mode, an int8 or int16
  copy with one float32 scale per row in ``int8`` / ``int16`` mode); every later module (k and v after q, the
  LayerNorm that produced it) saves the *same* storage, so it is kept once.
* **recipes** (:class:`Recipe`): the output of a fused GELU or of a seeded dropout carries
  how to recompute it from a kept base tensor (GELU, then dropout from its seed). A linear
  layer reading such an output keeps the base and recomputes its input in backward, so the
  GELU output and the dropped-out tensor are never stored.

A recipe remembers its tensor's version counter: a tensor changed in place after it was made
has no valid recipe and is kept as is.

Under torch.compile neither applies (Dynamo cannot set attributes on the tensors it traces):
every module keeps its own copy of its input in its mode (the same values; int8 copies of one
tensor are quantized alike, so the gradients are those of eager mode, up to the int8 rounding
of a GELU output that eager mode recomputes from its kept input instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.dropout import apply_dropout

#: kept forms, most precise first; a request is served by a more precise copy already kept
MODES = ("exact", "int16", "int8")
_INT = {"int16": (torch.int16, 32767.0), "int8": (torch.int8, 127.0)}
_KEPT = "_sa_kept"
_RECIPE = "_sa_recipe"


# ------------------------------------------------------------------------- integer rows
def quantize_rows(x: torch.Tensor, mode: str = "int8") -> tuple[torch.Tensor, torch.Tensor]:
    """(integer values, float32 scale per row): x ~ q * scale, |error| <= scale / 2 per entry,
    scale = max |x| of the row / 127 (int8) or / 32767 (int16)."""
    dtype, top = _INT[mode]
    x = x.detach()
    # max |x| of a row as max(max x, -min x): two reading passes, no |x| copy (3x faster on CPU)
    amax = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_())
    scale = amax.float().div_(top).clamp_(min=1e-30)
    q = (x.float() / scale).round_().clamp_(-top, top).to(dtype)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


# ------------------------------------------------------------------------- kept forms
@dataclass(frozen=True)
class Kept:
    """The tensors saved for one kept tensor (int8 mode: values and scales; exact mode: none
    here, the tensor itself is saved, so the cache on a tensor never references it)."""

    mode: str
    dtype: torch.dtype
    tensors: tuple[torch.Tensor, ...] = ()

    def saved(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What to ``save_for_backward`` for ``x``."""
        return (x,) if self.mode == "exact" else self.tensors

    @property
    def spec(self) -> tuple[str, torch.dtype]:
        """What backward needs besides the saved tensors (holds no tensor: no reference cycle)."""
        return self.mode, self.dtype


def rebuild(spec: tuple[str, torch.dtype], saved: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The kept tensor from its saved tensors (exact: itself; int8: dequantized)."""
    mode, dtype = spec
    if mode == "exact":
        return saved[0]
    return dequantize_rows(saved[0], saved[1], dtype)


def kept(x: torch.Tensor, mode: str) -> Kept:
    """The kept form of ``x`` in ``mode``, made once per tensor and mode, then shared (an
    ``int8`` request for a tensor some module already keeps whole or as int16 gets that copy)."""
    if mode not in MODES:
        raise ValueError(f"kept mode {mode!r}: choose one of {', '.join(MODES)}")
    if torch.compiler.is_compiling():  # see the module docstring: no attribute on a traced tensor
        return Kept(mode, x.dtype, () if mode == "exact" else quantize_rows(x, mode))
    cache = getattr(x, _KEPT, None)
    if cache is not None and cache[0] == x._version:
        for finer in MODES[: MODES.index(mode) + 1]:  # a finer copy already kept: no more bytes
            if finer in cache[1]:
                return cache[1][finer]
    form = Kept(mode, x.dtype, () if mode == "exact" else quantize_rows(x, mode))
    if cache is None or cache[0] != x._version:
        cache = (x._version, {})
        setattr(x, _KEPT, cache)
    cache[1][mode] = form
    return form


# ------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """``x = ops(base)``: GELU (``("gelu", approximate)``) and dropout (``("dropout", seed, p)``)
    applied in order to ``base``; bit-identical to the forward computation."""

    base: torch.Tensor
    ops: tuple[tuple, ...]
    version: int = 0



def replay(ops: tuple[tuple, ...], base: torch.Tensor) -> torch.Tensor:
    """A recipe's ``ops`` applied to ``base`` (kept apart from the recipe's tensor, for ctx)."""
    for op in ops:
        if op[0] == "gelu":
            base = F.gelu(base, approximate=op[1])
        else:
            base = apply_dropout(base, op[1], op[2])
    return base


def recipe_of(x: torch.Tensor) -> Recipe | None:
    """``x``'s recipe, or None (none made, or ``x`` changed in place since)."""
    if torch.compiler.is_compiling():
        return None
    r = getattr(x, _RECIPE, None)
    if r is None or r.version != x._version:
        return None
    return r


def attach_recipe(out: torch.Tensor, source: torch.Tensor, op: tuple) -> None:
    """``out = op(source)``: extend ``source``'s recipe (or start one at ``source``)."""
    if torch.compiler.is_compiling():
        return
    prev = recipe_of(source)
    base, ops = (prev.base, prev.ops) if prev is not None else (source, ())
    setattr(out, _RECIPE, Recipe(base, ops + (op,), out._version))
