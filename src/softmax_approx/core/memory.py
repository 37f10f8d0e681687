"""Exact activation-memory accounting: the bytes autograd keeps for backward.

:class:`ActivationMeter` wraps a forward pass in ``torch.autograd.graph.saved_tensors_hooks``
and records every tensor autograd saves, keyed by its storage so that a storage saved several
times (or viewed, or expanded) counts once. Three figures come out:

* ``total_bytes``          every storage saved for backward, parameters (and buffers) excluded;
* ``attention_bytes``      the storages saved while inside an attention module (any module
                           whose class sets ``is_attention_module = True``, e.g.
                           :class:`softmax_approx.nn.MultiHeadAttention`) or inside a
                           :func:`softmax_approx.core.attention` call;
* ``softmax_state_bytes``  the storages saved inside a ``core.attention`` call other than its
                           q, k, v and mask: the policy's state, plus (``eager``) the
                           probabilities, the dropout mask and the dropped probabilities.

What is counted is what autograd holds: a storage's full size (``untyped_storage().nbytes()``),
on any device. Dropout masks are float on CPU (4 bytes per element; PyTorch's CPU dropout is
composite) and bool on CUDA (1 byte). Not seen: tensors hidden by activation checkpointing,
tensors a custom Function stores as plain ``ctx`` attributes instead of ``save_for_backward``,
and workspace memory that is freed before backward (the training measurement, harness/measure.py,
and the attention benchmark report the CUDA peak). Storages saved both inside and outside attention count in both attention and total
figures; ``other_bytes = total_bytes - attention_bytes``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

class _MeterState(threading.local):
    """Per-thread meter state, set up on first use in each thread. Every attribute always
    exists, so torch.compile reads it without tracing an AttributeError (which it refuses
    inside activation-checkpointed regions)."""

    def __init__(self) -> None:
        self.meters: list = []
        self.core_io: list = []     # storage keys of q, k, v, mask of the innermost attention call
        self.module_depth = 0


_LOCAL = _MeterState()


def _stack() -> list:
    return _LOCAL.meters


def storage_key(t: torch.Tensor) -> tuple:
    try:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without a storage (rare subclasses)
        return ("id", id(t))


def storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


@contextmanager
def attention_scope(*tensors: torch.Tensor | None):
    """Marks a core attention call so that the active meters attribute what it saves.

    Costs nothing when no meter is active.
    """
    meters = _stack()
    if not meters:
        yield
        return
    _LOCAL.core_io.append({storage_key(t) for t in tensors if t is not None})
    try:
        yield
    finally:
        _LOCAL.core_io.pop()


@dataclass
class SavedRecord:
    nbytes: int
    shape: tuple
    dtype: torch.dtype
    attention: bool
    state: bool


@dataclass
class MemoryReport:
    """Bytes kept for backward, by category (see the module docstring for definitions)."""

    total_bytes: int
    attention_bytes: int
    softmax_state_bytes: int
    n_tensors: int
    records: dict = field(default_factory=dict, repr=False)

    @property
    def other_bytes(self) -> int:
        return self.total_bytes - self.attention_bytes


class ActivationMeter:
    """Context manager measuring the bytes saved for backward during its body.

    >>> with ActivationMeter(model) as meter:
    ...     loss = model(x).sum()
    >>> meter.report().attention_bytes
    """

    def __init__(self, model: torch.nn.Module | None = None):
        self.model = model
        self._records: dict[tuple, SavedRecord] = {}
        self._excluded: set[tuple] = set()
        self._handles: list = []
        self._hooks = None

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "ActivationMeter":
        self._records.clear()
        if self.model is not None:
            for t in list(self.model.parameters()) + list(self.model.buffers()):
                self._excluded.add(storage_key(t))
            for module in self.model.modules():
                if getattr(type(module), "is_attention_module", False):
                    self._handles.append(module.register_forward_pre_hook(self._enter_module))
                    self._handles.append(module.register_forward_hook(self._exit_module))
        _stack().append(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        _stack().remove(self)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        _LOCAL.module_depth = 0

    # -- hooks ------------------------------------------------------------------------------
    @staticmethod
    def _enter_module(module, args):
        _stack()
        _LOCAL.module_depth += 1

    @staticmethod
    def _exit_module(module, args, output):
        _LOCAL.module_depth = max(0, _LOCAL.module_depth - 1)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.nn.Parameter):
            return t
        key = storage_key(t)
        if key in self._excluded:
            return t
        in_core = bool(_LOCAL.core_io)
        attention = in_core or _LOCAL.module_depth > 0
        state = in_core and key not in _LOCAL.core_io[-1]
        rec = self._records.get(key)
        if rec is None:
            self._records[key] = SavedRecord(storage_nbytes(t), tuple(t.shape), t.dtype, attention, state)
        else:  # seen before: it belongs to every category it was saved in
            rec.attention |= attention
            rec.state |= state
        return t

    # -- results ----------------------------------------------------------------------------
    def report(self) -> MemoryReport:
        recs = self._records.values()
        return MemoryReport(
            total_bytes=sum(r.nbytes for r in recs),
            attention_bytes=sum(r.nbytes for r in recs if r.attention),
            softmax_state_bytes=sum(r.nbytes for r in recs if r.state),
            n_tensors=len(self._records),
            records=dict(self._records),
        )
