"""`approx_softmax`: a drop-in for ``torch.softmax`` that keeps a compressed output for backward.

Used the way the authors' example uses theirs: in place of ``torch.softmax`` inside a model.
Only the softmax's own saved tensor shrinks; ops after it (dropout, the product with V) still
keep what they keep. For real savings in attention use :func:`softmax_approx.core.attention`.
"""

from __future__ import annotations

import torch

from .functional import masked_softmax
from .policies import Policy, make_policy


def approx_softmax(
    x: torch.Tensor,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    policy: str | Policy = "paper",
    **params,
) -> torch.Tensor:
    """Exact softmax of `x` along `dim` (masked entries 0, empty rows 0); backward uses the
    probabilities rebuilt by `policy` (``eager``, ``exact``, ``paper``, ``topk``, ``quant``)."""
    pol = make_policy(policy, **params)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"approx_softmax: mask must be a bool tensor (True = valid), got {mask.dtype}")
    if pol.name in ("recompute", "sdpa"):
        raise ValueError(
            f"approx_softmax: policy {pol.name!r} needs q and k; use softmax_approx.core.attention instead"
        )
    if pol.name == "eager":
        if mask is None:
            return torch.softmax(x, dim=dim)
        probs = torch.softmax(x.masked_fill(~mask, torch.finfo(x.dtype).min), dim=dim)
        return probs.masked_fill(~mask.any(dim, keepdim=True), 0.0)
    if mask is not None:
        mask = torch.broadcast_to(mask, x.shape)
    xt = x.movedim(dim, -1)
    mt = None if mask is None else mask.movedim(dim, -1)
    return _ApproxSoftmax.apply(xt, mt, pol).movedim(-1, dim)


class _ApproxSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, policy):
        probs, _ = masked_softmax(x, mask)
        state = tuple(policy.compress(probs, mask))
        ctx.save_for_backward(*state, *(() if mask is None else (mask,)))
        ctx.policy, ctx.n_state, ctx.shape = policy, len(state), x.shape
        return probs

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        state = saved[: ctx.n_state]
        valid = saved[ctx.n_state] if len(saved) > ctx.n_state else None
        if valid is None:
            valid = torch.ones((), dtype=torch.bool, device=grad.device).expand(ctx.shape)
        p_hat = ctx.policy.restore(state, valid).to(grad.dtype)
        return p_hat * (grad - (grad * p_hat).sum(-1, keepdim=True)), None, None
