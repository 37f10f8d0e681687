"""The ``recompute`` fused attention run block by block on the CPU (eager mode).

On a CPU, attention's L x L intermediates (scores, probabilities, dropout mask, their
gradients) cost more in memory traffic than in arithmetic: at L=2048 one (4, L, L) float32
tensor is 64 MiB, which glibc maps fresh, and the kernel zero-fills page by page, at every
allocation. The same arithmetic on blocks of a few heads or a few query rows
(:data:`BLOCK_ELEMENTS` scores each) keeps every intermediate in cache and reuses a few small
allocations, and the out-of-place steps become in-place ones.

The unblocked path's results: the same operations in the same order on every element (softmax,
dropout and the softmax gradient are row-wise), blocks taken in C order of the (..., Lq, Lk)
scores, and the dropout draws pieces of the one seeded draw in that order
(:class:`.dropout.UniformStream`), so the dropout mask is the same bit for bit. The values agree
within float rounding: dK and dV are sums over query blocks where a head is split into row
blocks, and a matmul of a few rows may round differently from the whole tensor's.

The fused function calls :func:`forward` / :func:`backward` when :func:`applies`: CPU tensors
in eager mode (torch.compile traces the unblocked path, whose seeded draw is one opaque
custom op; CUDA generators do not split a draw into pieces) with one intra-op thread
(``torch.get_num_threads() == 1``: with more, each of the blocks' many small operations opens
a parallel region, and on a machine whose cores are busy those synchronisations cost more than
the allocations saved: measured 10x slower at L=2048 with 2 threads under load); a backward
that owes a bias gradient runs unblocked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from .dropout import UniformStream
from .policies import work_dtype

#: scores per block: 2**18 float32 = 1 MiB, a tile that stays in a core's cache with the
#: few tiles of the same shape that forward and backward make from it
BLOCK_ELEMENTS = 1 << 18


def applies(q: torch.Tensor, v: torch.Tensor, shape: torch.Size) -> bool:
    """Whether the blocked path runs: CPU, eager mode, one intra-op thread (see the module
    docstring), and an output of the scores' batch shape (v's batch dims broadcast into it).
    (A backward that owes a bias gradient runs unblocked: the bias may broadcast over blocks.)"""
    if q.device.type != "cpu" or torch.compiler.is_compiling() or torch.get_num_threads() != 1:
        return False
    batch, v_batch = tuple(shape[:-2]), tuple(v.shape[:-2])
    if q.dim() >= 3 and v.dim() >= 3 and v_batch[-1] != 1:  # GQA: v's heads repeated to q's
        v_batch = v_batch[:-1] + (q.shape[-3],)
    return torch.broadcast_shapes(v_batch, batch) == batch


def _blocks(batch: tuple[int, ...], lq: int, lk: int) -> Iterator[tuple[tuple[int, ...], slice, slice]]:
    """(index of the leading batch dims, heads, query rows) of each block, in C order."""
    *lead, heads = batch
    if lq * lk <= BLOCK_ELEMENTS:
        group = max(1, BLOCK_ELEMENTS // (lq * lk))
        inner = [(slice(h, min(h + group, heads)), slice(0, lq)) for h in range(0, heads, group)]
    else:
        rows = max(1, BLOCK_ELEMENTS // lk)
        inner = [(slice(h, h + 1), slice(r, min(r + rows, lq))) for h in range(heads) for r in range(0, lq, rows)]
    for idx in itertools.product(*(range(n) for n in lead)):
        for heads_, rows_ in inner:
            yield idx, heads_, rows_


class _Operands:
    """q (scaled), k, v, valid mask and bias as (*batch, L, ·) views, and each block's slices."""

    def __init__(self, q, k, v, valid, bias, scale, shape):
        from .functional import _repeat_kv

        self.heads = q.shape[-3] if q.dim() >= 3 else 1
        self.batch = tuple(shape[:-2]) or (1,)
        self.lq, self.lk = shape[-2], shape[-1]
        # contiguous once (L x D each): the blocks' matmuls then read plain rows, where a
        # (B, L, H, D) -> (B, H, L, D) transposed input would be gathered block by block
        view = self.view
        self.q, self.qs = view(q.contiguous()), view((q * scale).contiguous())  # scale on q, as unblocked
        self.k = view(_repeat_kv(k, self.heads).contiguous())
        self.v = view(_repeat_kv(v, self.heads).contiguous())
        self.valid = None if valid is None else view(valid, (self.lq, self.lk))
        self.bias = None if bias is None else view(bias, (self.lq, self.lk))

    def view(self, t: torch.Tensor, last: tuple[int, int] | None = None) -> torch.Tensor:
        return torch.broadcast_to(t, self.batch + (last or tuple(t.shape[-2:])))

    def blocks(self):
        return _blocks(self.batch, self.lq, self.lk)

    def scores(self, idx, hs, rs, wd) -> torch.Tensor:
        """The block's scores in ``wd``, masked entries -inf: ``_fused_scores`` then
        ``masked_softmax``'s first two steps, in place on the block's own tensor."""
        s = self.qs[idx][hs, rs] @ self.k[idx][hs].transpose(-2, -1)
        if self.bias is not None:
            s = s.add_(self.bias[idx][hs, rs].to(s.dtype))
        s = s.to(wd)
        if self.valid is not None:
            s = s.masked_fill_(self.valid[idx][hs, rs].logical_not(), float("-inf"))
        return s


def _product(a: torch.Tensor, b: torch.Tensor, wd: torch.dtype) -> torch.Tensor:
    """a @ b for a sum over blocks: in the work dtype for half-precision inputs, so that the
    partial sums are not each rounded to half precision."""
    return a @ b if a.dtype == wd else a.to(wd) @ b.to(wd)


def forward(q, k, v, valid, bias, seed, p, scale, shape, keep_lse: bool = True):
    """The fused forward's output and (``keep_lse``) per-row log-sum-exp, (*shape[:-2], Lq, 1)."""
    from .functional import softmax_rows_

    ops = _Operands(q, k, v, valid, bias, scale, shape)
    wd = work_dtype(q.dtype)
    stream = UniformStream(seed) if p > 0 else None
    out = None
    lse = torch.empty(ops.batch + (ops.lq, 1), dtype=wd) if keep_lse else None
    for idx, hs, rs in ops.blocks():
        s = ops.scores(idx, hs, rs, wd)
        row_lse = softmax_rows_(s)
        probs = s.to(q.dtype)
        if p > 0:
            probs = stream.apply_dropout(probs, p, inplace=True)
        block_out = probs @ ops.v[idx][hs]
        if out is None:
            out = torch.empty(ops.batch + (ops.lq, block_out.shape[-1]), dtype=block_out.dtype)
        out[idx][hs, rs] = block_out
        if keep_lse:
            lse[idx][hs, rs] = row_lse
    batch = tuple(shape[:-2])
    out = out.reshape(batch + out.shape[-2:])
    return (out, lse.reshape(batch + lse.shape[-2:])) if keep_lse else out


def backward(grad_out, q, k, v, valid, bias, seed, lse, p, scale, shape, needs_input_grad):
    """(dQ, dK, dV) of the fused ``recompute`` backward (None where not needed)."""
    from .functional import _reduce_to

    ops = _Operands(q, k, v, valid, bias, scale, shape)
    wd = work_dtype(q.dtype)
    need_q, need_k, need_v = needs_input_grad[:3]
    stream = UniformStream(seed) if p > 0 else None
    grad_out = ops.view(grad_out.to(q.dtype).contiguous())
    lse = ops.view(lse, (ops.lq, 1))
    # dQ is written block by block; dK and dV sum over query blocks, in the work dtype
    grad_q = torch.empty(ops.batch + (ops.lq, q.shape[-1]), dtype=q.dtype) if need_q else None
    grad_k = torch.zeros(ops.batch + (ops.lk, k.shape[-1]), dtype=wd) if need_k else None
    grad_v = torch.zeros(ops.batch + (ops.lk, v.shape[-1]), dtype=wd) if need_v else None
    # fp32/fp64: the scale goes on dQ and dK, not the scores' gradient (as the unblocked path)
    late = 1.0 if wd != q.dtype else scale
    for idx, hs, rs in ops.blocks():
        probs = ops.scores(idx, hs, rs, wd).sub_(lse[idx][hs, rs]).exp_()  # empty rows -> 0
        keep = stream.keep_scale(probs.shape, p, wd) if p > 0 else None
        g = grad_out[idx][hs, rs]
        if need_v:
            dropped = (probs * keep if p > 0 else probs).to(q.dtype)
            grad_v[idx][hs] += _product(dropped.transpose(-2, -1), g, wd)
            del dropped
        grad_probs = (g @ ops.v[idx][hs].transpose(-2, -1)).to(wd)
        if p > 0:
            grad_probs.mul_(keep)
        row_dot = torch.linalg.vecdot(grad_probs, probs).unsqueeze(-1)
        grad_scores = grad_probs.sub_(row_dot).mul_(probs)
        grad_scores = (grad_scores if late != 1.0 else grad_scores.mul_(scale)).to(q.dtype)
        if need_q:
            grad_q[idx][hs, rs] = grad_scores @ ops.k[idx][hs]
        if need_k:
            grad_k[idx][hs] += _product(grad_scores.transpose(-2, -1), ops.q[idx][hs, rs], wd)
    heads = ops.heads
    if need_q:
        grad_q = grad_q.reshape(tuple(shape[:-2]) + grad_q.shape[-2:]).sum_to_size(q.shape).mul_(late)
    if need_k:
        grad_k = _reduce_to(grad_k.reshape(tuple(shape[:-2]) + grad_k.shape[-2:]).mul_(late).to(k.dtype), k, heads)
    if need_v:
        grad_v = _reduce_to(grad_v.reshape(tuple(shape[:-2]) + grad_v.shape[-2:]).to(v.dtype), v, heads)
    return grad_q, grad_k, grad_v
