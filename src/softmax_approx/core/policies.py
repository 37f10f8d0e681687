"""Storage policies: what the attention softmax keeps for back-propagation.

A policy turns the exact probabilities of the forward pass into a *state* (the tensors kept
for backward) and turns that state back into dense probabilities for the backward formulas.

    state = policy.compress(probs, valid)       # forward, probs: (..., n), valid: bool or None
    probs_hat = policy.restore(state, valid)    # backward, dense (..., n), valid: bool tensor

`valid` is the bool mask (True = may attend) broadcast to `probs`'s shape (compress may get
None when every entry is valid; restore always gets a tensor, possibly an expanded view).
Masked entries of `probs` are exactly zero.

A policy is one class: a dataclass whose fields are its parameters (with their defaults) and
whose class attributes declare its behaviour (:class:`Policy` lists them). The fused function,
``approx_softmax``, the integrations and the benchmarks read those attributes and the registry;
nothing decides behaviour by a policy's name. Adding one (inside or outside this package)::

    @register_policy
    class HalfKeep(Policy):
        name = "halfkeep"
        keeps = "the larger half of each row, values and indices"
        ...                      # fields, compress, restore

plus, for the harness, one yaml file in a ``conf/attention/`` directory (docs/method.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import ranks as _ranks

StateT = tuple[torch.Tensor, ...]


def index_dtype(n: int) -> torch.dtype:
    """Smallest integer dtype that holds the indices 0..n-1 (no silent uint8 overflow)."""
    if n <= 256:
        return torch.uint8
    if n <= 2**15:
        return torch.int16
    if n <= 2**31:
        return torch.int32
    return torch.int64


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype rates, masses and rebuilds are computed in: float64 for float64 inputs,
    float32 otherwise (half-precision inputs would lose the small masses)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def count_valid(valid: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
    """Number of valid entries per row, shape (..., 1), int64."""
    if valid is None:
        return torch.full(probs.shape[:-1] + (1,), probs.shape[-1], dtype=torch.long, device=probs.device)
    return valid.sum(-1, keepdim=True)


class Policy:
    """Base class. Subclasses are dataclasses (:func:`register_policy` makes them one) whose
    fields are the policy's parameters; the class attributes below say how it runs."""

    #: The registry key: ``attention(policy=name)``, ``attention=<name>`` yaml, results.json.
    name: ClassVar[str]
    #: What the state holds, in words (the benchmark's ``--help`` lists it).
    keeps: ClassVar[str] = ""
    #: True when the backward rebuilds the probabilities exactly.
    exact: ClassVar[bool] = False
    #: True when PyTorch runs the policy itself (:meth:`run_native`): no fused function, no
    #: compress/restore; the Transformers integration selects Transformers' implementation of
    #: the same name.
    native: ClassVar[bool] = False
    #: True when the backward recomputes the probabilities from q and k (keeping the per-row
    #: log-sum-exp) instead of restoring a state; ``approx_softmax`` has no q, k for it.
    recomputes: ClassVar[bool] = False
    #: True when compress counts a row's valid entries, so -inf bias entries must be marked
    #: invalid in the mask it gets.
    compress_needs_valid: ClassVar[bool] = False
    #: True when restore reads the valid mask (otherwise the fused functions keep no mask).
    restore_needs_valid: ClassVar[bool] = False
    #: True when the state may be the probabilities themselves, so dropout must not run in place.
    state_aliases_probs: ClassVar[bool] = False
    #: Parameter settings the attention benchmark runs by default, each over the defaults.
    bench_settings: ClassVar[tuple[dict, ...]] = ({},)
    #: The parameters' names, filled in by :func:`register_policy` (torch.compile cannot trace
    #: dataclasses.fields).
    field_names: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:  # pragma: no cover - trivial default
        """Raise ValueError naming the parameter and the allowed values."""

    def __post_init__(self) -> None:
        if "field_names" not in type(self).__dict__:  # an unregistered class passed as an instance
            type(self).field_names = tuple(f.name for f in dataclasses.fields(self))
        self.validate()

    @property
    def params(self) -> dict:
        return {name: getattr(self, name) for name in self.field_names}

    @property
    def param(self) -> int | float | None:
        """The policy's first parameter value (None when it has none): what the built-in
        policies' static ``compress_with``/``restore_with`` get."""
        return getattr(self, self.field_names[0]) if self.field_names else None

    @staticmethod
    def compress_with(probs: torch.Tensor, valid: torch.Tensor | None, param) -> StateT:
        raise NotImplementedError

    @staticmethod
    def restore_with(state: StateT, valid: torch.Tensor, param) -> torch.Tensor:
        raise NotImplementedError

    def compress(self, probs: torch.Tensor, valid: torch.Tensor | None) -> StateT:
        """The state kept for backward (a tuple of tensors); override this or ``compress_with``."""
        return self.compress_with(probs, valid, self.param)

    def restore(self, state: StateT, valid: torch.Tensor) -> torch.Tensor:
        """Dense probabilities rebuilt from the state; override this or ``restore_with``."""
        return self.restore_with(state, valid, self.param)

    def run_native(self, q, k, v, mask, bias, causal, p, scale) -> torch.Tensor:
        """Attention as PyTorch runs it (``native`` policies only)."""
        raise NotImplementedError(f"policy {self.name!r} is not native")

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


#: The registry: policy name -> class. Filled by :func:`register_policy`.
POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Register a Policy subclass under its ``name`` (a class decorator; makes the class a
    dataclass when it is not one yet). Registering the same class again is a no-op; another
    class under a taken name raises ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"register_policy: expected a Policy subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_policy: {cls.__qualname__} must set a class attribute name = '<policy name>'")
    if "__dataclass_fields__" not in cls.__dict__:
        cls = dataclass(cls)
    taken = POLICIES.get(name)
    if taken is not None and f"{taken.__module__}.{taken.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
        raise ValueError(f"register_policy: name {name!r} is taken by {taken.__module__}.{taken.__qualname__}")
    cls.field_names = tuple(f.name for f in dataclasses.fields(cls))
    POLICIES[name] = cls
    return cls


def policy_class(name: str) -> type[Policy]:
    """The registered class of policy ``name``, or of a class given by its import path
    (``my_module.HalfKeep``: imported and registered); ValueError listing the registered names."""
    if isinstance(name, str) and name not in POLICIES and "." in name:
        return register_policy(_import_class(name))
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)} "
                         "(or register your own with softmax_approx.core.register_policy)") from None


def _import_class(path: str) -> type:
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"policy class {path!r} cannot be imported ({e}); is its module on the Python path?") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ValueError(f"{path!r} is not a softmax_approx.core.Policy subclass")
    return cls


@register_policy
@dataclass
class Eager(Policy):
    """PyTorch's unfused composition: softmax -> dropout -> @V, each op saving its own input.

    The baseline users run today: keeps the probabilities, the dropout mask and the dropped
    probabilities (about 12 bytes per score on CPU, 9 on CUDA, 4 without dropout).
    """

    name: ClassVar[str] = "eager"
    keeps: ClassVar[str] = "what PyTorch's ops keep: probabilities, dropout mask, dropped probabilities"
    exact: ClassVar[bool] = True
    native: ClassVar[bool] = True

    def run_native(self, q, k, v, mask, bias, causal, p, scale):
        from .functional import eager_attention

        return eager_attention(q, k, v, mask, bias, causal, p, scale)


@register_policy
@dataclass
class Exact(Policy):
    """The fused function keeping the full probabilities (4 bytes per score in fp32)."""

    name: ClassVar[str] = "exact"
    keeps: ClassVar[str] = "the probabilities"
    exact: ClassVar[bool] = True
    state_aliases_probs: ClassVar[bool] = True

    @staticmethod
    def compress_with(probs, valid, param):
        return (probs,)

    @staticmethod
    def restore_with(state, valid, param):
        return state[0]


#: Largest decay rate kept: exp(-r) underflows long before, and a finite bound keeps
#: exp(-r * 0) = 1 (an infinite rate would make it NaN when the top value rounds to 1).
MAX_RATE = 1e4


@register_policy
@dataclass
class Paper(Policy):
    """Lee & Lee (NeurIPS 2023): ranks (as the sort permutation) + S largest + S smallest values + one decay rate per row.

    Rows with at most 2S valid entries are kept exactly. The middle of the sorted row is
    refilled with u_j = h exp(-r j) and rescaled to the row's missing mass; we use
    N = L - 2S + 1 for every row (the reference code uses N = n for unmasked rows, which only
    changes the decay's shape before the rescale). The sort permutation is kept in
    ceil(log2 n) bits (:mod:`softmax_approx.core.ranks`: one byte up to n = 256, packed bit
    planes above). The rate is float32 (float64 for float64 inputs) and is computed in that
    dtype; a row whose top value rounds to 1 gets a finite rate and an empty middle.
    """

    S: int = 5
    name: ClassVar[str] = "paper"
    keeps: ClassVar[str] = "ranks, the S largest and S smallest values and one decay rate per row"
    compress_needs_valid: ClassVar[bool] = True

    def validate(self):
        if isinstance(self.S, bool) or not isinstance(self.S, int) or self.S < 1:
            raise ValueError(f"policy 'paper': parameter S must be an integer >= 1, got {self.S!r}")

    @staticmethod
    def compress_with(probs, valid, param):
        n, k = probs.shape[-1], min(param, probs.shape[-1])
        wd = work_dtype(probs.dtype)
        L = count_valid(valid, probs)                                        # (..., 1)
        order = _ranks.descending_order(probs, valid)                       # sorted pos -> index
        top = probs.gather(-1, order[..., :k])                               # s_1..s_S
        bottom_pos = (L - k + torch.arange(k, device=probs.device)).clamp(0, n - 1)
        bottom = probs.gather(-1, order.gather(-1, bottom_pos))              # s_{L-S+1}..s_L
        h, low = top[..., k - 1 :].to(wd), bottom[..., :1].to(wd)
        e = probs.gather(-1, order[..., min(k, n - 1) : min(k, n - 1) + 1]).to(wd)  # s_{S+1}
        N = (L - 2 * k + 1).clamp(min=1).to(wd)
        tiny = torch.finfo(wd).tiny
        rate = (torch.log(h.clamp(min=tiny) / low.clamp(min=tiny)) + 2 * (h - e)) / (
            N * (1 - h).clamp(min=tiny)
        )
        rate = torch.nan_to_num(rate, nan=0.0, posinf=MAX_RATE).clamp(0.0, MAX_RATE)
        # The sort permutation is the ranks' inverse: same information, same bytes, and
        # restoring with it is one scatter instead of an extra scatter in forward.
        ranks = (order.to(torch.uint8),) if n <= 256 else (
            _ranks.pack(order) if n <= _ranks.MAX_PACKED_N else (order.to(index_dtype(n)), None)
        )
        return (*ranks, top, bottom, rate, L.to(index_dtype(n + 1)))

    @staticmethod
    def sort_order(state: StateT) -> torch.Tensor:
        """The int64 sort permutation (sorted position -> index) held by a `paper` state."""
        ranks = state[:-4]
        return ranks[0].long() if len(ranks) == 1 or ranks[1] is None else _ranks.unpack(*ranks)

    @staticmethod
    def restore_with(state, valid, param):
        top, bottom, rate, L = state[-4:]
        order = Paper.sort_order(state)
        n, k = order.shape[-1], top.shape[-1]
        wd = rate.dtype
        L = L.long()
        pos = torch.arange(n, device=top.device)                             # sorted position
        # middle j = 1..M (M = L - 2S): h exp(-r j) rescaled to the missing mass, i.e.
        # mass * exp(-r (j - 1)) / G with G = sum_{j=1..M} exp(-r (j - 1)) = expm1(-r M) / expm1(-r)
        missing = (1.0 - top.to(wd).sum(-1, keepdim=True) - bottom.to(wd).sum(-1, keepdim=True)).clamp(min=0.0)
        M = (L - 2 * k).clamp(min=0).to(wd)
        tiny_rate = rate < 1e-6
        safe_rate = torch.where(tiny_rate, torch.ones_like(rate), rate)
        G = torch.where(tiny_rate, M, torch.expm1(-safe_rate * M) / torch.expm1(-safe_rate))
        step = (pos - k).clamp(min=0).to(wd).neg_()                          # -j, (n,)
        sorted_hat = torch.exp_(rate * step).mul_(missing / G.clamp(min=1.0))
        sorted_hat.masked_fill_(pos >= L - k, 0.0)                           # past the middle
        sorted_hat = sorted_hat.to(top.dtype)
        sorted_hat[..., :k] = top                                            # before it; invalid tops are 0
        bottom_pos = (L - k + torch.arange(k, device=top.device)).clamp(0, n - 1)
        sorted_hat.scatter_(-1, bottom_pos, bottom)
        return torch.empty_like(sorted_hat).scatter_(-1, order, sorted_hat)


def kept_count(L, keep_ratio: float):
    """`topk`'s one rounding rule: ceil(keep_ratio * L) (L an int or an int tensor), with a
    1e-9 slack so that e.g. 0.07 * 100 keeps 7, not 8."""
    if isinstance(L, torch.Tensor):
        return torch.ceil(L.double() * keep_ratio - 1e-9).long().clamp(min=0)
    return max(0, math.ceil(L * keep_ratio - 1e-9))


@register_policy
@dataclass
class TopK(Policy):
    """Keep the k = ceil(keep_ratio * L) largest probabilities and their indices; refill the
    evicted valid entries uniformly with the row's missing mass. O(k) memory per row (k from
    the row length n, so the state's shape does not depend on the data)."""

    keep_ratio: float = 0.125
    name: ClassVar[str] = "topk"
    keeps: ClassVar[str] = "the ceil(keep_ratio * L) largest values per row and their indices"
    compress_needs_valid: ClassVar[bool] = True
    restore_needs_valid: ClassVar[bool] = True

    def validate(self):
        r = self.keep_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < float(r) <= 1.0):
            raise ValueError(f"policy 'topk': parameter keep_ratio must be in (0, 1], got {r!r}")
        self.keep_ratio = float(r)

    @staticmethod
    def compress_with(probs, valid, param):
        n = probs.shape[-1]
        L = count_valid(valid, probs)
        k_row = kept_count(L, param).clamp(max=n)                                 # (..., 1)
        k_max = min(n, max(1, kept_count(n, param)))
        # rows that keep fewer than k_max (masked rows) need the sorted order; full rows do not
        values, indices = probs.topk(k_max, dim=-1, sorted=valid is not None)
        keep = torch.arange(k_max, device=probs.device) < k_row
        values = values * keep                                                # drop beyond own k
        return values.contiguous(), indices.to(index_dtype(n)), L.to(index_dtype(n + 1))

    @staticmethod
    def restore_with(state, valid, param):
        values, indices, L = state
        n = valid.shape[-1]
        wd = work_dtype(values.dtype)
        L = L.long()
        k_row = kept_count(L, param).clamp(max=n)
        kept = torch.arange(values.shape[-1], device=values.device) < k_row
        missing = (1.0 - values.to(wd).sum(-1, keepdim=True)).clamp(min=0.0)
        fill = (missing / (L - k_row).clamp(min=1)).to(values.dtype)           # uniform refill
        out = fill.expand(*valid.shape[:-1], n).masked_fill(~valid, 0.0)
        idx = indices.long()
        return out.scatter(-1, idx, torch.where(kept, values, out.gather(-1, idx)))


@register_policy
@dataclass
class Quant(Policy):
    """Per-row `bits`-bit linear quantization of the probabilities (activation-compression
    peers' approach): codes packed 8/bits per byte plus one scale (the row max; float32,
    float64 for float64 inputs) per row."""

    bits: int = 8
    name: ClassVar[str] = "quant"
    keeps: ClassVar[str] = "bits-bit codes of the probabilities and one scale per row"
    bench_settings: ClassVar[tuple[dict, ...]] = ({}, {"bits": 4})

    def validate(self):
        if type(self.bits) is not int or self.bits not in (2, 4, 8):
            raise ValueError(f"policy 'quant': parameter bits must be one of 2, 4, 8 (an int), got {self.bits!r}")

    @staticmethod
    def compress_with(probs, valid, param):
        bits = param
        levels = 2**bits - 1
        n = probs.shape[-1]
        wd = work_dtype(probs.dtype)
        scale = probs.amax(-1, keepdim=True).to(wd)
        codes = torch.round(probs.to(wd) / scale.clamp(min=1e-30) * levels).to(torch.uint8)
        per_byte = 8 // bits
        pad = (-n) % per_byte
        if pad:
            codes = torch.nn.functional.pad(codes, (0, pad))
        codes = codes.view(*codes.shape[:-1], -1, per_byte)
        packed = torch.zeros(codes.shape[:-1], dtype=torch.uint8, device=probs.device)
        for i in range(per_byte):
            packed |= codes[..., i] << (i * bits)
        return packed, scale

    @staticmethod
    def restore_with(state, valid, param):
        bits = param
        packed, scale = state
        n = valid.shape[-1]
        levels = 2**bits - 1
        per_byte = 8 // bits
        parts = [(packed >> (i * bits)) & levels for i in range(per_byte)]
        codes = torch.stack(parts, dim=-1).flatten(-2)[..., :n]
        return codes.to(scale.dtype) * (scale / levels)


@register_policy
@dataclass
class Recompute(Policy):
    """Exact, FlashAttention-style: keep the per-row log-sum-exp, recompute probabilities."""

    name: ClassVar[str] = "recompute"
    keeps: ClassVar[str] = "one log-sum-exp per row"
    exact: ClassVar[bool] = True
    recomputes: ClassVar[bool] = True


@register_policy
@dataclass
class Sdpa(Policy):
    """`torch.nn.functional.scaled_dot_product_attention`: the fused-kernel reference."""

    name: ClassVar[str] = "sdpa"
    keeps: ClassVar[str] = "what PyTorch's fused kernel keeps"
    exact: ClassVar[bool] = True
    native: ClassVar[bool] = True
    recomputes: ClassVar[bool] = True

    def run_native(self, q, k, v, mask, bias, causal, p, scale):
        from .functional import sdpa_attention

        return sdpa_attention(q, k, v, mask, bias, causal, p, scale)


#: The built-in policies' names, in registration order (``POLICIES`` also holds those
#: registered later, e.g. from a user's module).
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def make_policy(policy: str | Policy, **params) -> Policy:
    """Build a validated policy from a name (or pass a Policy through).

    Raises ValueError naming the parameter and what is allowed.
    """
    if isinstance(policy, Policy):
        if params:
            raise ValueError(f"policy {policy.name!r} is already built; do not pass parameters {sorted(params)}")
        return policy
    cls = policy_class(policy)
    allowed = set(cls.field_names)
    unknown = set(params) - allowed
    if unknown:
        allowed_txt = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"policy {policy!r}: unknown parameter(s) {', '.join(sorted(unknown))}; allowed: {allowed_txt}"
        )
    return cls(**params)
