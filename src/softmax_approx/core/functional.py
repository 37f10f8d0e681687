"""`attention(q, k, v, ..., policy=...)`: one call, the storage policy hidden behind it.

Forward is exact for every policy. What differs is what is kept for backward:

* ``eager``     PyTorch's unfused ops; each keeps its own input (probabilities, dropout mask,
                dropped probabilities).
* ``sdpa``      ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels).
* all others    one fused autograd function (:class:`_FusedAttention`) that keeps only q, k, v,
                the mask as given, the policy's state and a dropout seed. Its backward rebuilds the
                probabilities (``policy.restore``), regenerates the dropout mask from the seed,
                and uses the rebuilt probabilities for dV as well as for the softmax gradient.
                Backward memory is O(n^2) per head: no per-row n x n Jacobian.

Masks: bool, True = may attend, broadcastable to (..., Lq, Lk). ``causal=True`` adds a
top-left-aligned lower-triangular mask (query i sees keys 0..i), as PyTorch's ``is_causal``.
A row with no valid key gives a zero output and zero gradients.

Non-finite logits: -inf acts as a mask. A row with NaN or +inf logits gives a NaN output row
under every policy (as ``torch.softmax`` does); other rows are unaffected. Training loops are
expected to stop on a non-finite loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import dropout as _dropout
from .memory import attention_scope
from .policies import Policy, make_policy


def valid_mask(
    mask: torch.Tensor | None, causal: bool, lq: int, lk: int, device: torch.device
) -> torch.Tensor | None:
    """Combine a user mask and the causal mask into one bool mask (True = may attend)."""
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention: mask must be a bool tensor (True = may attend), got {mask.dtype}")
    if not causal:
        return mask
    tri = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    return tri if mask is None else mask & tri


def masked_softmax(scores: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim with masked entries exactly 0 and empty rows all 0.

    Returns (probs, log-sum-exp per row); the lse of an empty row is -inf. No autograd.
    """
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    exp = (scores - row_max).exp_()
    denom = exp.sum(-1, keepdim=True)
    probs = exp.div_(torch.where(denom == 0, torch.ones_like(denom), denom))
    lse = row_max.float() + denom.float().log()
    return probs, lse


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> None:
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"attention: q, k, v must have the same rank >= 2, got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p!r}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    policy: str | Policy = "paper",
    training: bool = True,
    scale: float | None = None,
    **params,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) -> dropout -> @ v, keeping what `policy` says for backward.

    q: (..., Lq, D), k: (..., Lk, D), v: (..., Lk, Dv); returns (..., Lq, Dv).
    `params` are the policy's parameters (e.g. ``S=5`` for ``paper``, ``keep_ratio`` for
    ``topk``, ``bits`` for ``quant``); invalid ones raise ValueError.
    """
    pol = make_policy(policy, **params)
    _check_inputs(q, k, v, dropout_p)
    p = float(dropout_p) if training else 0.0
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    with attention_scope(q, k, v, mask):
        if pol.name == "eager":
            return _eager(q, k, v, mask, causal, p, scale)
        if pol.name == "sdpa":
            return _sdpa(q, k, v, mask, causal, p, scale)
        return _FusedAttention.apply(q, k, v, mask, causal, p, scale, pol)


def _eager(q, k, v, mask, causal, p, scale):
    """The unfused composition users write today (and what PyTorch keeps for it)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    valid = valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if valid is not None:
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if p > 0:
        probs = F.dropout(probs, p=p, training=True)
    out = probs @ v
    if valid is not None:  # rows with no valid key: zero output (and so zero gradients)
        out = out.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return out


def _sdpa(q, k, v, mask, causal, p, scale):
    """PyTorch's fused kernel; empty rows are opened up for the kernel, then zeroed."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal, scale=scale)
    valid = valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    row_any = valid.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid | ~row_any, dropout_p=p, scale=scale)
    return out.masked_fill(~row_any, 0.0)


class _FusedAttention(torch.autograd.Function):
    """Fused attention whose backward needs only q, k, v, the policy state and a seed."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, p, scale, policy):
        lq, lk = q.shape[-2], k.shape[-2]
        valid = valid_mask(mask, causal, lq, lk, q.device)
        scores = (q @ k.transpose(-2, -1)).mul_(scale)
        probs, lse = masked_softmax(scores, valid)
        del scores
        if policy.name == "recompute":
            state = (lse,)
        else:
            full_valid = None if valid is None else valid.expand(probs.shape)
            state = tuple(policy.compress(probs, full_valid))
        seed = None
        if p > 0:
            seed = _dropout.draw_seed(q.device)
            probs = _dropout.apply_dropout(probs, seed, p)
        out = probs @ v
        ctx.save_for_backward(q, k, v, *state, *(() if mask is None else (mask,)))
        ctx.n_state, ctx.has_mask = len(state), mask is not None
        ctx.causal, ctx.p, ctx.scale, ctx.policy, ctx.seed = causal, p, scale, policy, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *rest = ctx.saved_tensors
        state, mask = tuple(rest[: ctx.n_state]), (rest[ctx.n_state] if ctx.has_mask else None)
        lq, lk = q.shape[-2], k.shape[-2]
        shape = q.shape[:-2] + (lq, lk)
        valid = valid_mask(mask, ctx.causal, lq, lk, q.device)
        if ctx.policy.name == "recompute":
            scores = (q @ k.transpose(-2, -1)).mul_(ctx.scale)
            if valid is not None:
                scores = scores.masked_fill_(~valid.expand(shape), float("-inf"))
            probs = scores.sub_(state[0].to(scores.dtype)).exp_()  # empty rows: exp(-inf - -inf)=nan
            if valid is not None:
                probs = probs.masked_fill_(~valid.expand(shape), 0.0)
        else:
            full_valid = torch.ones((), dtype=torch.bool, device=q.device).expand(shape) if valid is None else valid.expand(shape)
            probs = ctx.policy.restore(state, full_valid).to(q.dtype)
        grad_out = grad_out.to(q.dtype)
        if ctx.p > 0:  # the forward's mask, regenerated from its seed, scaled once: D / (1 - p)
            keep = _dropout.keep_mask(ctx.seed, shape, ctx.p, q.device).to(q.dtype).mul_(1.0 / (1.0 - ctx.p))
        grad_v = None
        if ctx.needs_input_grad[2]:
            dropped = probs * keep if ctx.p > 0 else probs
            grad_v = dropped.transpose(-2, -1) @ grad_out
            del dropped
        grad_probs = grad_out @ v.transpose(-2, -1)
        if ctx.p > 0:
            grad_probs.mul_(keep)
            del keep
        # softmax Jacobian at the rebuilt row: p * (g - sum(g * p))
        row_dot = (grad_probs * probs).sum(-1, keepdim=True)
        grad_scores = grad_probs.sub_(row_dot).mul_(probs).mul_(ctx.scale)
        del probs
        grad_q = grad_scores @ k if ctx.needs_input_grad[0] else None
        grad_k = grad_scores.transpose(-2, -1) @ q if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, grad_v, None, None, None, None, None
