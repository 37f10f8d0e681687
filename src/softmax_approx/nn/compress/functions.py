"""The autograd functions of the compressed modules (see :mod:`.kept` for what they keep).

Each keeps less than PyTorch's own backward would and computes the same gradients from it:

* :class:`SeededDropoutFn`: keeps the dropout seed (16 bytes), not the mask;
* :class:`GeluFn`: keeps its input in the module's mode (exact: the derivative is PyTorch's
  ``gelu_backward``; int8: the same formula on the dequantized input);
* :class:`LinearFn`: keeps its input in the module's mode, or the base of the input's recipe;
  the input gradient needs only the weight (exact in both modes), the weight gradient uses the
  rebuilt input;
* :class:`LayerNormFn`: keeps its *output* (shared with the next linear that keeps it) and
  ``1/std`` per row, and recovers the normalised input as ``(y - bias) / weight``.
"""

from __future__ import annotations

import torch

from ...core.dropout import apply_dropout, keep_scale
from .kept import kept, rebuild, replay


class SeededDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seed, p):
        ctx.p = p
        ctx.save_for_backward(seed)
        return apply_dropout(x, seed, p)

    @staticmethod
    def backward(ctx, g):
        (seed,) = ctx.saved_tensors
        wide = torch.float64 if g.dtype == torch.float64 else torch.float32
        scale = keep_scale(seed, g.shape, ctx.p, g.device, wide)
        return scale.mul_(g).to(g.dtype), None, None


class GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, approximate, spec, *saved):
        """``saved``: the kept form's tensors, none in exact mode (``h`` is saved itself, not
        passed twice: torch.compile does not trace a tensor given to two inputs)."""
        ctx.approximate, ctx.spec = approximate, spec
        ctx.n_inputs_saved = len(saved)
        ctx.save_for_backward(*(saved or (h,)))
        return torch.nn.functional.gelu(h, approximate=approximate)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors  # read once (non-reentrant checkpointing unpacks each once)
        h = rebuild(ctx.spec, saved)
        grad = torch.ops.aten.gelu_backward(g, h, approximate=ctx.approximate)
        return (grad, None, None) + (None,) * ctx.n_inputs_saved


class LinearFn(torch.autograd.Function):
    """y = x W^T + b, keeping ``saved`` (x's kept form, or that of the base its recipe ``ops``
    start from; ``spec`` says how to rebuild it)."""

    @staticmethod
    def forward(ctx, x, weight, bias, spec, ops, *saved):
        ctx.spec, ctx.ops, ctx.n_saved = spec, ops, len(saved)
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        ctx.save_for_backward(weight, *saved)
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        weight, *saved = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g.matmul(weight.to(g.dtype))
        if ctx.needs_input_grad[1]:
            x = replay(ctx.ops, rebuild(ctx.spec, tuple(saved)))
            gw = g.reshape(-1, g.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]).to(g.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(-1, g.shape[-1]).sum(0)
        return (gx, gw, gb, None, None) + (None,) * ctx.n_saved


class LayerNormFn(torch.autograd.Function):
    """LayerNorm over the last dimension with an affine weight that has no zero."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, mode):
        y, _, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        form = kept(y, mode)  # cached on y: the next linear that keeps y keeps this copy
        ctx.spec, ctx.has_bias = form.spec, bias is not None
        ctx.save_for_backward(weight, bias if bias is not None else weight, rstd, *form.saved(y))
        return y

    @staticmethod
    def backward(ctx, gy):
        weight, bias, rstd, *saved = ctx.saved_tensors
        y = rebuild(ctx.spec, tuple(saved))
        xhat = (y - bias) / weight if ctx.has_bias else y / weight
        gxhat = gy * weight
        n = gy.shape[-1]
        gx = rstd * (gxhat - gxhat.sum(-1, keepdim=True) / n - xhat * (gxhat * xhat).sum(-1, keepdim=True) / n)
        dims = tuple(range(gy.dim() - 1))
        gw = (gy * xhat).sum(dims)
        gb = gy.sum(dims) if ctx.has_bias else None
        return gx, gw, gb, None, None
