"""`approx_softmax`: a drop-in for ``torch.softmax`` that keeps a compressed output for backward.

Used the way the authors' example uses theirs: in place of ``torch.softmax`` inside a model.
Only the softmax's own saved tensor shrinks; ops after it (dropout, the product with V) still
keep what they keep. For real savings in attention use :func:`softmax_approx.core.attention`.

One behaviour for every policy: entries masked out (``mask`` False) or equal to -inf are
masked (probability 0, gradient 0, and not counted as the row's entries by the policies that
count them);
a row with no valid entry gives zeros and a zero gradient.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .functional import first_order_only, masked_softmax
from .policies import Policy, make_policy, work_dtype


def approx_softmax(
    x: torch.Tensor,
    dim: int = -1,
    mask: torch.Tensor | None = None,
    policy: str | Policy = "paper",
    **params,
) -> torch.Tensor:
    """Exact softmax of `x` along `dim` (masked and -inf entries 0, empty rows 0); backward uses
    the probabilities rebuilt by `policy`: any policy that does not recompute from q and k
    (``eager``: PyTorch's own softmax)."""
    pol = make_policy(policy, **params)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"approx_softmax: mask must be a bool tensor (True = valid), got {mask.dtype}")
    if pol.recomputes:
        raise ValueError(
            f"approx_softmax: policy {pol.name!r} needs q and k; use softmax_approx.core.attention instead"
        )
    finite = x != float("-inf")
    valid = finite if mask is None else torch.broadcast_to(mask, x.shape) & finite
    if pol.native:
        probs = torch.softmax(x.masked_fill(~valid, torch.finfo(x.dtype).min), dim=dim)
        return probs.masked_fill(~valid.any(dim, keepdim=True), 0.0)
    xt, vt = x.movedim(dim, -1), valid.movedim(dim, -1)
    if not (torch.is_grad_enabled() and x.requires_grad):  # nothing to keep
        return masked_softmax(xt, vt)[0].to(x.dtype).movedim(-1, dim)
    return _ApproxSoftmax.apply(xt, vt, pol).movedim(-1, dim)


class _ApproxSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, valid, policy):
        probs = masked_softmax(x, valid)[0].to(x.dtype)
        state = tuple(policy.compress(probs, valid))
        ctx.save_for_backward(valid if policy.restore_needs_valid else None, *state)
        ctx.policy = policy
        return probs

    @staticmethod
    @first_order_only
    @once_differentiable
    def backward(ctx, grad):
        valid, *state = ctx.saved_tensors
        if valid is None:
            valid = torch.ones((), dtype=torch.bool, device=grad.device).expand(grad.shape)
        wd = work_dtype(grad.dtype)
        p_hat = ctx.policy.restore(tuple(state), valid).to(wd)
        g = grad.to(wd)
        return (p_hat * (g - (g * p_hat).sum(-1, keepdim=True))).to(grad.dtype), None, None
