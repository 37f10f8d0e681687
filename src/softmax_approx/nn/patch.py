"""``patch(model, policy, **params)``: every ``torch.nn.MultiheadAttention`` runs a core policy.

The patch changes each module's class to :class:`PolicyMultiheadAttention`, a subclass whose
``forward`` does the same projections with the same parameters and then calls
``core.attention(policy=...)``. Nothing is copied or re-created: parameters, ``state_dict`` keys,
optimizer references and hooks stay as they were, so a ``state_dict`` saved before patching
loads after, and ``nn.TransformerEncoderLayer`` / ``nn.Transformer`` need no change.

Supported, as ``nn.MultiheadAttention``: ``batch_first`` both ways and unbatched inputs,
``kdim``/``vdim``, ``bias``, ``add_bias_kv``, ``add_zero_attn``, ``key_padding_mask`` and
``attn_mask`` as bool (True = not allowed) or float (added to the scores; a float mask of only
0 and -inf, as ``nn.Transformer*`` layers build, is kept as a 1-byte bool mask), ``is_causal`` (a
causal mask; with an ``attn_mask`` the hint is trusted, as PyTorch does), ``dropout`` (training
only). ``need_weights=True`` raises: the policies exist not to keep the weights.

Differences: a query row whose keys are all masked gives a zero output (PyTorch gives NaN).
In inference with autograd off (``torch.no_grad()``/eval), ``nn.TransformerEncoderLayer`` may
take PyTorch's fused fast path, which reads the same weights and bypasses ``forward``; it saves
nothing for backward, so there is nothing for a policy to change there (the output is the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Policy, attention, make_policy


class PolicyMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention is ``core.attention(policy=self.policy)``.

    Build one with :func:`patch` (on an existing module) or directly with the parent's
    arguments plus ``policy`` / ``policy_params``.
    """

    #: the activation meter counts everything saved inside modules that set this
    is_attention_module = True
    policy: Policy

    def __init__(self, *args, policy: str = "exact", policy_params: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.policy = make_policy(policy, **dict(policy_params or {}))

    def extra_repr(self) -> str:
        return f"policy={self.policy}"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError(
                "PolicyMultiheadAttention keeps no attention weights: call it with need_weights=False "
                "(nn.Transformer* layers already do)"
            )
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> one batch element
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # work in PyTorch's (L, N, E) layout, as F.multi_head_attention_forward
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out = self._attend(query, key, value, key_padding_mask, attn_mask, is_causal)  # (L, N, E)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    # ------------------------------------------------------------------ internals
    def _project(self, query, key, value):
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.split(e)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(e)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _attend(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        tgt_len, bsz, _ = query.shape
        h, dh = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)                          # (L|S, N, E)
        if self.bias_k is not None:  # add_bias_kv: one learned key/value appended to the sequence
            k = torch.cat([k, self.bias_k.expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, -1)])
            attn_mask = _pad_last(attn_mask)
            key_padding_mask = _pad_last(key_padding_mask)

        def heads(x):  # (S, N, E) -> (N, H, S, Dh)
            return x.reshape(x.shape[0], bsz, h, dh).permute(1, 2, 0, 3)

        q, k, v = heads(q), heads(k), heads(v)
        if self.add_zero_attn:  # one all-zero key/value appended after the heads split
            zeros = q.new_zeros(bsz, h, 1, dh)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            attn_mask = _pad_last(attn_mask)
            key_padding_mask = _pad_last(key_padding_mask)
        src_len = k.shape[2]
        causal = bool(is_causal)
        if causal and attn_mask is not None:  # the hint says attn_mask is the causal mask
            attn_mask = None
        mask, bias = None, None
        for m, shape in ((attn_mask, _attn_mask_shape(attn_mask, bsz, h, tgt_len, src_len)),
                         (key_padding_mask, (bsz, 1, 1, src_len))):
            if m is None:
                continue
            m = m.reshape(shape)
            if m.dtype != torch.bool and bool(((m == 0) | (m == float("-inf"))).all()):
                m = m == float("-inf")  # a 0/-inf float mask (nn.Transformer* make them) is a bool mask
            if m.dtype == torch.bool:
                mask = ~m if mask is None else mask & ~m
            else:
                m = m.to(q.dtype)
                bias = m if bias is None else bias + m
        out = attention(
            q, k, v, mask=mask, causal=causal, dropout_p=self.dropout, policy=self.policy,
            training=self.training, bias=bias,
        )                                                                   # (N, H, L, Dh)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)


def _pad_last(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more (allowed) key column, as F.multi_head_attention_forward pads its masks."""
    if mask is None:
        return None
    return F.pad(mask, (0, 1), value=False if mask.dtype == torch.bool else 0.0)


def _attn_mask_shape(attn_mask, bsz, h, tgt_len, src_len):
    if attn_mask is None:
        return None
    if attn_mask.dim() == 2:
        if tuple(attn_mask.shape) != (tgt_len, src_len):
            raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)}: expected ({tgt_len}, {src_len})")
        return (1, 1, tgt_len, src_len)
    if tuple(attn_mask.shape) != (bsz * h, tgt_len, src_len):
        raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)}: expected ({bsz * h}, {tgt_len}, {src_len})")
    return (bsz, h, tgt_len, src_len)


def patch(model: nn.Module, policy: str = "paper", **params) -> list[str]:
    """Make every ``nn.MultiheadAttention`` in ``model`` (``model`` itself included) run
    ``policy``; returns the patched modules' names (``""`` for ``model`` itself).

    Parameters are validated first (``ValueError`` naming the parameter), so a bad one changes
    nothing. Patching again switches the policy.
    """
    pol = make_policy(policy, **params)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            if not isinstance(module, PolicyMultiheadAttention):
                module.__class__ = PolicyMultiheadAttention
            module.policy = pol
            names.append(name)
    return names


def unpatch(model: nn.Module) -> list[str]:
    """Undo :func:`patch`: the modules become plain ``nn.MultiheadAttention`` again."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, PolicyMultiheadAttention):
            module.__class__ = nn.MultiheadAttention
            del module.policy
            names.append(name)
    return names
