"""`attention(q, k, v, ..., policy=...)`: one call, the storage policy hidden behind it.

Forward is exact for every policy. What differs is what is kept for backward, as the policy's
class attributes declare (:class:`softmax_approx.core.policies.Policy`):

* ``native``    PyTorch runs it (``policy.run_native``): ``eager``, PyTorch's unfused ops, each
                keeping its own input (probabilities, dropout mask, dropped probabilities), and
                ``sdpa``, ``torch.nn.functional.scaled_dot_product_attention``.
* all others    one fused autograd function (:class:`_FusedAttention`) that keeps only q, k, v,
                the mask as given, the policy's state and a dropout seed. Its backward rebuilds the
                probabilities (``policy.restore``; ``recomputes`` policies recompute them from q
                and k and a per-row log-sum-exp), regenerates the dropout mask from the seed,
                and uses the rebuilt probabilities for dV as well as for the softmax gradient.
                Backward memory is O(n^2) per head: no per-row n x n Jacobian.

Masks: bool, True = may attend, broadcastable to (..., Lq, Lk); a float mask is refused (an
additive float term goes to ``bias=``, a 0/1 keep-mask is ``mask=m.bool()``). ``causal=True`` adds
a top-left-aligned lower-triangular mask (query i sees keys 0..i), as PyTorch's ``is_causal``.
A row with no valid key gives a zero output and zero gradients; so does every row when there is
no key at all (Lk = 0). q, k, v must be floating point.

Dropout is one function of one seed on every path: the fused policies draw the seed from the
global CPU RNG whether or not gradients are needed, so the no-grad first pass of a reentrant
activation checkpoint and its recomputation (torch restores the RNG state in between) drop the
same entries. The native policies use PyTorch's own dropout (global RNG, also restored).

Non-finite logits: -inf acts as a mask. A row with NaN or +inf logits gives a NaN output row
under every policy (as ``torch.softmax`` does); other rows are unaffected. Training loops are
expected to stop on a non-finite loss.

Gradients are first order: the fused functions' backward raises when it runs with grad mode on
(``create_graph=True``, ``gradgradcheck``), rather than return a gradient without a graph;
``eager`` (PyTorch's own ops) supports double backward.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import blocked as _blocked
from . import dropout as _dropout
from .memory import attention_scope
from .policies import Policy, Recompute, make_policy, work_dtype


def valid_mask(
    mask: torch.Tensor | None, causal: bool, lq: int, lk: int, device: torch.device
) -> torch.Tensor | None:
    """Combine a bool user mask and the causal mask into one bool mask (True = may attend)."""
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention: mask must be a bool tensor (True = may attend), got {mask.dtype}")
    if not causal:
        return mask
    tri = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    return tri if mask is None else mask & tri


def _valid_with_bias(valid: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`valid` with the bias's -inf entries masked too (-inf in a bias acts as a mask)."""
    if bias is None:
        return valid
    finite = bias != float("-inf")
    return finite if valid is None else valid & finite


def masked_softmax(scores: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim with masked (and -inf) entries exactly 0 and empty rows all 0.

    Computed in float32 for half-precision scores (float64 for float64). Returns (probs,
    log-sum-exp per row), both in that dtype; the lse of an empty row is +inf, so that
    ``exp(scores - lse)`` rebuilds it as zeros. No autograd.
    """
    scores = scores.to(work_dtype(scores.dtype))
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)
    empty = row_max == float("-inf")
    row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    exp = (scores - row_max).exp_()
    denom = exp.sum(-1, keepdim=True)
    probs = exp.div_(torch.where(denom == 0, torch.ones_like(denom), denom))
    lse = torch.where(empty, torch.full_like(row_max, float("inf")), row_max + denom.log())
    return probs, lse


def softmax_rows_(scores: torch.Tensor) -> torch.Tensor:
    """:func:`masked_softmax`'s steps after the masking, in place on scores the caller owns
    (masked entries already -inf, work dtype): they become the probabilities; returns the
    per-row log-sum-exp. The same operations as :func:`masked_softmax`, the same values, without
    its L x L copy."""
    row_max = scores.amax(-1, keepdim=True)
    empty = row_max == float("-inf")
    row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    denom = scores.sub_(row_max).exp_().sum(-1, keepdim=True)
    scores.div_(torch.where(denom == 0, torch.ones_like(denom), denom))
    return torch.where(empty, torch.full_like(row_max, float("inf")), row_max + denom.log())


def _check_inputs(q, k, v, mask, bias, dropout_p) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise TypeError(f"attention: {name} must be a floating-point tensor, got {t.dtype}")
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"attention: q, k, v must have the same rank >= 2, got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dim() >= 3:
        hq = q.shape[-3]
        for name, t in (("k", k), ("v", v)):
            h = t.shape[-3]
            if h not in (hq, 1) and (h > hq or hq % h):
                raise ValueError(
                    f"attention: q has {hq} heads but {name} has {h}; grouped-query attention needs "
                    f"the query heads to be a multiple of the key/value heads"
                )
    if not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p!r}")
    if bias is not None and not bias.is_floating_point():
        raise TypeError(f"attention: bias must be a float tensor (additive, -inf = masked), got {bias.dtype}")
    for name, t in (("mask", mask), ("bias", bias)):
        if t is not None and t.dim() < 2:
            raise ValueError(f"attention: {name} must broadcast to (..., Lq, Lk), got shape {tuple(t.shape)}")


def _repeat_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA: (..., Hkv, L, D) -> (..., heads, L, D), query head h using kv head h // groups.
    A view + reshape: transient in forward and backward, never saved."""
    if t.dim() < 3 or t.shape[-3] in (heads, 1):
        return t
    groups = heads // t.shape[-3]
    return t.unsqueeze(-3).expand(*t.shape[:-2], groups, *t.shape[-2:]).flatten(-4, -3)


def _reduce_to(grad: torch.Tensor, t: torch.Tensor, heads: int) -> torch.Tensor:
    """Sum a gradient of `_repeat_kv(t, heads)` (possibly broadcast further) back to t's shape."""
    if t.dim() >= 3 and t.shape[-3] not in (heads, 1):
        grad = grad.sum_to_size(*t.shape[:-3], heads, *t.shape[-2:])
        grad = grad.unflatten(-3, (t.shape[-3], heads // t.shape[-3])).sum(-3)
    return grad.sum_to_size(t.shape)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    policy: str | Policy = "exact",
    training: bool = True,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    **params,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias, masked) -> dropout -> @ v, keeping what `policy` says for backward.

    q: (..., Hq, Lq, D), k: (..., Hkv, Lk, D), v: (..., Hkv, Lk, Dv); returns (..., Hq, Lq, Dv).
    Hq a multiple of Hkv (grouped-/multi-query attention); batch dims broadcast.
    `mask`: bool, True = may attend (a float mask raises TypeError). `bias`: float, additive,
    broadcastable to (..., Lq, Lk), -inf = masked; its gradient is returned when it requires grad.
    `scale` defaults to 1/sqrt(D). Dropout only when `training`. `params` are the policy's
    parameters (``S`` for ``paper``, ``keep_ratio`` for ``topk``, ``bits`` for ``quant``);
    invalid ones raise ValueError.
    """
    pol = make_policy(policy, **params)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(
            f"attention: mask must be a bool tensor (True = may attend), got {mask.dtype}; "
            "pass an additive float mask as bias=, a 0/1 keep-mask as mask=m.bool()"
        )
    _check_inputs(q, k, v, mask, bias, dropout_p)
    p = float(dropout_p) if training else 0.0
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.shape[-2] == 0 or k.shape[-2] == 0:  # no query or no key: zero rows, zero gradients
        return eager_attention(q, k, v, mask, bias, causal, 0.0, scale)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    fused = not pol.native and needs_grad
    # One seed per call for every non-native policy, gradients or not, drawn the same way on
    # every path (see the module docstring). 16 bytes, an input of the fused function like q.
    seed = _dropout.draw_seed(q.device) if not pol.native and p > 0 else None
    with attention_scope(q, k, v, mask, bias, seed):
        if pol.native:
            return pol.run_native(q, k, v, mask, bias, causal, p, scale)
        if not fused and not training:  # inference: PyTorch's softmax, nothing kept
            return _inference(q, k, v, mask, bias, causal, scale)
        if not fused:  # training without gradients (a checkpoint's first pass): nothing kept
            return _plain(q, k, v, mask, bias, causal, p, scale, seed, blocked=pol.recomputes)
        return _FusedAttention.apply(q, k, v, mask, bias, seed, causal, p, scale, pol if training else _EVAL_POLICY)


#: What the fused function keeps when gradients are needed outside training (nothing to save
#: memory for in a gradient-carrying evaluation; exact and small).
_EVAL_POLICY = Recompute()


def _scores(q, k, bias, scale):
    scores = (q @ _repeat_kv(k, q.shape[-3] if q.dim() >= 3 else 1).transpose(-2, -1)) * scale
    return scores if bias is None else scores + bias.to(scores.dtype)


def _fused_scores(q, k, bias, scale):
    """The fused function's scores: the scale applied to q (Lq x D) instead of the Lq x Lk
    product, one n x n pass fewer. Forward and the `recompute` backward both use this, so the
    saved log-sum-exp matches the recomputed scores bit for bit."""
    scores = (q * scale) @ _repeat_kv(k, q.shape[-3] if q.dim() >= 3 else 1).transpose(-2, -1)
    return scores if bias is None else scores + bias.to(scores.dtype)


def _inference(q, k, v, mask, bias, causal, scale):
    """Exact attention for gradient-free calls with ``training=False`` (eval, inference)."""
    heads = q.shape[-3] if q.dim() >= 3 else 1
    scores = _scores(q, k, bias, scale)
    valid = valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=work_dtype(scores.dtype)).to(q.dtype)
    out = probs @ _repeat_kv(v, heads)
    if valid is not None or bias is not None:  # rows with no valid key: zero, not NaN
        out = out.masked_fill(scores.amax(-1, keepdim=True) == float("-inf"), 0.0)
    return out


def _plain(q, k, v, mask, bias, causal, p, scale, seed, blocked=False):
    """Gradient-free attention in training (``torch.no_grad()``, the first pass of a reentrant
    activation checkpoint): the fused forward's own arithmetic and seeded dropout, keeping
    nothing, so that pass and its recomputation agree bit for bit (``blocked``: the policy's
    fused forward runs blocked where :func:`.blocked.applies`)."""
    heads = q.shape[-3] if q.dim() >= 3 else 1
    valid = valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    shape = _score_shape(q, k, mask, bias)
    if blocked and _blocked.applies(q, v, shape):
        return _blocked.forward(q, k, v, valid, bias, seed, p, scale, shape, keep_lse=False)
    scores = _fused_scores(q, k, bias, scale).expand(shape)
    probs = masked_softmax(scores, valid)[0].to(q.dtype)
    if p > 0:
        probs = _dropout.apply_dropout(probs, seed, p, inplace=True)
    return probs @ _repeat_kv(v, heads)


def eager_attention(q, k, v, mask, bias, causal, p, scale):
    """The unfused composition users write today (and what PyTorch keeps for it)."""
    heads = q.shape[-3] if q.dim() >= 3 else 1
    scores = _scores(q, k, bias, scale)
    valid = _valid_with_bias(valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device), bias)
    if valid is not None:
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if p > 0:
        probs = F.dropout(probs, p=p, training=True)
    out = probs @ _repeat_kv(v, heads)
    if valid is not None:  # rows with no valid key: zero output (and so zero gradients)
        out = out.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return out


def sdpa_attention(q, k, v, mask, bias, causal, p, scale):
    """PyTorch's fused kernel; empty rows are opened up for the kernel, then zeroed."""
    gqa = q.dim() >= 3 and k.shape[-3] != q.shape[-3] and k.shape[-3] != 1
    if gqa:  # the kernel's own GQA needs equal k/v head counts; repeat otherwise
        if v.shape[-3] != k.shape[-3]:
            k, v, gqa = _repeat_kv(k, q.shape[-3]), _repeat_kv(v, q.shape[-3]), False
    kw = {"enable_gqa": True} if gqa else {}
    if mask is None and bias is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal, scale=scale, **kw)
        return out.masked_fill(_non_finite_rows(q, k), float("nan"))
    valid = _valid_with_bias(valid_mask(mask, causal, q.shape[-2], k.shape[-2], q.device), bias)
    row_any = valid.any(-1, keepdim=True)
    if bias is None:
        attn_mask = valid | ~row_any
    else:
        attn_mask = bias.to(q.dtype)
        if mask is not None or causal:
            attn_mask = attn_mask.masked_fill(~valid, float("-inf"))
        attn_mask = attn_mask.masked_fill(~row_any, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=scale, **kw)
    return out.masked_fill(~row_any, 0.0)


def _non_finite_rows(q, k) -> torch.Tensor:
    """(..., Hq, Lq, 1) True where a row's logits are not all finite because its query or a key
    is not (no mask: every key counts). PyTorch's unmasked CPU kernel returns zeros for such a
    row; every other policy returns NaN, as ``torch.softmax`` does. O(L * D), no n x n pass."""
    bad_q = ~torch.isfinite(q).all(-1, keepdim=True)
    bad_k = ~torch.isfinite(k).flatten(-2).all(-1)[..., None, None]     # (..., Hkv, 1, 1)
    return bad_q | _repeat_kv(bad_k, q.shape[-3] if q.dim() >= 3 else 1)


def first_order_only(backward):
    """Refuse a backward run with grad mode on (``create_graph=True``): the fused backward is
    not differentiable, and a gradient without a graph would make second-order terms silently
    zero."""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            raise RuntimeError(
                "softmax_approx: second-order gradients (create_graph=True, gradgradcheck) are not "
                "supported by the fused policies; use policy='eager' for them"
            )
        return backward(ctx, *grads)

    return checked


def _score_shape(q, k, mask, bias) -> torch.Size:
    batch = [q.shape[:-2], k.shape[:-3] + (q.shape[-3],) if q.dim() >= 3 else k.shape[:-2]]
    batch += [t.shape[:-2] for t in (mask, bias) if t is not None]
    return torch.Size(torch.broadcast_shapes(*batch)) + (q.shape[-2], k.shape[-2])


class _FusedAttention(torch.autograd.Function):
    """Fused attention whose backward needs only q, k, v, mask, bias, the policy state and a
    seed. What it keeps and how it rebuilds is the policy's (its class attributes, compress,
    restore)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, seed, causal, p, scale, policy):
        lq, lk = q.shape[-2], k.shape[-2]
        heads = q.shape[-3] if q.dim() >= 3 else 1
        shape = _score_shape(q, k, mask, bias)
        valid = valid_mask(mask, causal, lq, lk, q.device)
        if policy.compress_needs_valid:  # it counts valid entries: -inf bias entries are masked
            valid = _valid_with_bias(valid, bias)
        ctx.causal, ctx.p, ctx.scale, ctx.policy, ctx.shape = causal, p, scale, policy, shape
        if policy.recomputes and _blocked.applies(q, v, shape):
            out, lse = _blocked.forward(q, k, v, valid, bias, seed, p, scale, shape)
            ctx.save_for_backward(q, k, v, mask, bias, seed, lse)
            return out
        scores = _fused_scores(q, k, bias, scale)
        if scores.shape == shape:  # a tensor of our own: masked and normalised in place
            probs_w = scores.to(work_dtype(q.dtype))
            if valid is not None:
                probs_w.masked_fill_(~valid, float("-inf"))
            lse = softmax_rows_(probs_w)
        else:
            probs_w, lse = masked_softmax(scores.expand(shape), valid)
        del scores
        probs = probs_w.to(q.dtype)
        del probs_w
        if policy.recomputes:
            state = (lse,)
        else:
            state = tuple(policy.compress(probs, None if valid is None else valid.expand(shape)))
        if p > 0:  # in place unless the state may be the probabilities themselves
            probs = _dropout.apply_dropout(probs, seed, p, inplace=not policy.state_aliases_probs)
        out = probs @ _repeat_kv(v, heads)
        ctx.save_for_backward(q, k, v, mask, bias, seed, *state)
        return out

    @staticmethod
    @first_order_only
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, mask, bias, seed, *state = ctx.saved_tensors
        shape, heads = ctx.shape, (q.shape[-3] if q.dim() >= 3 else 1)
        wd = work_dtype(q.dtype)
        valid = valid_mask(mask, ctx.causal, q.shape[-2], k.shape[-2], q.device)
        if ctx.policy.recomputes and _blocked.applies(q, v, shape) and not (
                bias is not None and ctx.needs_input_grad[4]):
            grads = _blocked.backward(grad_out, q, k, v, valid, bias, seed, state[0], ctx.p, ctx.scale,
                                      shape, ctx.needs_input_grad)
            return (*grads, None, None, None, None, None, None, None)
        if ctx.policy.recomputes:
            scores = _fused_scores(q, k, bias, ctx.scale).to(wd)  # a tensor of our own
            if scores.shape != shape:
                scores = scores.expand(shape).clone()
            if valid is not None:
                scores.masked_fill_(~valid, float("-inf"))
            probs = scores.sub_(state[0]).exp_()                   # empty rows: lse = +inf -> 0
            del scores
        else:
            if ctx.policy.restore_needs_valid:
                valid = _valid_with_bias(valid, bias)
            full = torch.ones((), dtype=torch.bool, device=q.device) if valid is None else valid
            probs = ctx.policy.restore(tuple(state), full.expand(shape)).to(wd)
        grad_out = grad_out.to(q.dtype)
        v_rep = _repeat_kv(v, heads)
        if ctx.p > 0:  # the forward's mask, regenerated from its seed, scaled once: D / (1 - p)
            keep = _dropout.keep_scale(seed, shape, ctx.p, q.device, wd)
        grad_v = None
        if ctx.needs_input_grad[2]:
            dropped = (probs * keep if ctx.p > 0 else probs).to(q.dtype)
            grad_v = _reduce_to(dropped.transpose(-2, -1) @ grad_out, v, heads)
            del dropped
        grad_probs = (grad_out @ v_rep.transpose(-2, -1)).sum_to_size(shape).to(wd)
        if ctx.p > 0:
            grad_probs.mul_(keep)
            del keep
        # softmax Jacobian at the rebuilt row: p * (g - sum(g * p))
        row_dot = torch.linalg.vecdot(grad_probs, probs).unsqueeze(-1)
        grad_scores = grad_probs.sub_(row_dot).mul_(probs)
        del probs
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[4]:
            grad_bias = grad_scores.sum_to_size(bias.shape).to(bias.dtype)
        # fp32/fp64: the scale goes on the Lq x D and Lk x D products, one Lq x Lk pass fewer;
        # half precision: on the float32 matrix, before its one rounding to the input dtype
        late = 1.0 if wd != q.dtype else ctx.scale
        grad_scores = (grad_scores if late != 1.0 else grad_scores.mul_(ctx.scale)).to(q.dtype)
        grad_q = (grad_scores @ _repeat_kv(k, heads)).sum_to_size(q.shape).mul_(late) if ctx.needs_input_grad[0] else None
        grad_k = _reduce_to((grad_scores.transpose(-2, -1) @ q).mul_(late), k, heads) if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, grad_v, None, grad_bias, None, None, None, None, None
