"""``compress_activations(model, ...)``: keep less for backward in the whole model, not only in
attention, with the same parameters, ``state_dict`` keys and forward values.

    from softmax_approx.nn import compress_activations
    compress_activations(model)                  # exact: same gradients, far fewer bytes
    compress_activations(model, linear="int8")   # int8 inputs of every linear: fewer still

Each part is optional (``None`` leaves those modules as they are):

* ``dropout="seed"``: every ``nn.Dropout`` keeps a seed, not its mask;
* ``gelu="fuse"``: every GELU keeps only its input; the next linear recomputes the GELU (and a
  seeded dropout between them) from it instead of keeping its own input;
* ``linear="exact" | "int8"``: linear layers (``nn.Linear``, Transformers' ``Conv1D``) keep
  their input once per tensor (q, k and v share one copy), as is or as int8 with one scale per
  row (the weight gradient then uses the dequantized input; the input gradient stays exact).
  The mode also applies to what the fused GELU keeps (int8: its derivative is taken at the
  dequantized input);
* ``layernorm="shared"``: LayerNorm keeps its output (the copy the next linear then keeps too,
  whatever its mode) and ``1/std`` per row, not its input; ``"int16"`` / ``"int8"`` keep the
  output as int16 / int8 with one scale per row (fewer bytes, but the input gradient of every
  earlier layer then passes through an approximate LayerNorm backward: a whole-gradient cosine
  of 0.99965 with int8 at BERT-base shape);
* ``attention``: ``"fastest"`` picks PyTorch's fused kernel (``sdpa``) when the model's
  attention has no dropout, and ``recompute`` otherwise; or any policy name (with
  ``attention_params``); applied through ``integrations.transformers.apply`` for Transformers
  models (import that module first: it registers itself here) and
  :func:`softmax_approx.nn.patch` for ``nn.MultiheadAttention``.

``exact`` mode's gradients equal the unmodified model's up to rounding (LayerNorm's recovered
input differs in the last bits); the dropout masks are drawn from the seeds, so they differ
from ``nn.Dropout``'s draws (same distribution; the same seed gives the same masks).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .modules import CompressedLayerNorm, CompressedLinear, FusedGELU, SeededDropout, compressed_conv1d_class, conv1d_class

__all__ = ["compress_activations", "register_attention_switch", "SeededDropout", "FusedGELU", "CompressedLinear", "CompressedLayerNorm"]

#: Transformers' GELU module classes (by name, so Transformers stays optional) -> approximation
_HF_GELUS = {"GELUActivation": "none", "NewGELUActivation": "tanh", "GELUTanh": "tanh", "PytorchGELUTanh": "tanh"}
_CHOICES = {"dropout": (None, "seed"), "gelu": (None, "fuse"), "linear": (None, "exact", "int8"),
            "layernorm": (None, "shared", "int16", "int8")}


def _gelu_approximation(obj) -> str | None:
    """The GELU approximation ``obj`` computes, or None when it is no GELU we know."""
    import torch.nn.functional as F

    if obj is F.gelu:
        return "none"
    if type(obj) is nn.GELU:
        return obj.approximate
    if isinstance(obj, FusedGELU):
        return obj.approximate
    return _HF_GELUS.get(type(obj).__name__) if isinstance(obj, nn.Module) else None


def _attention_dropout(model: nn.Module) -> float:
    """The largest attention-probability dropout the model is configured with."""
    from ..attention import MultiHeadAttention

    ps = [float(getattr(model.config, k, 0.0) or 0.0) for k in
          ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")] if hasattr(model, "config") else []
    for m in model.modules():
        if isinstance(m, (nn.MultiheadAttention, MultiHeadAttention)):
            ps.append(float(m.dropout))
    return max(ps, default=0.0)


#: (predicate, switch) pairs for model families whose attention another layer switches:
#: ``integrations.transformers`` registers Transformers models on import.
_ATTENTION_SWITCHES: list[tuple[Callable[[nn.Module], bool], Callable[..., object]]] = []


def register_attention_switch(predicate: Callable[[nn.Module], bool], switch: Callable[..., object]) -> None:
    """Let ``compress_activations`` switch the attention of models for which ``predicate`` holds
    with ``switch(model, policy, **params)`` (idempotent per predicate/switch pair)."""
    if (predicate, switch) not in _ATTENTION_SWITCHES:
        _ATTENTION_SWITCHES.append((predicate, switch))


def _apply_attention(model: nn.Module, policy: str, params: dict) -> str:
    from ..attention import MultiHeadAttention
    from ..patch import patch

    if policy == "fastest":
        policy = "sdpa" if _attention_dropout(model) == 0.0 else "recompute"
    for predicate, switch in _ATTENTION_SWITCHES:
        if predicate(model):
            switch(model, policy, **params)
            return policy
    if hasattr(model, "set_attn_implementation"):
        raise ValueError(
            f"compress_activations: {type(model).__name__} is a Transformers model; import "
            "softmax_approx.integrations.transformers first (it switches Transformers attention), "
            "or pass attention=None"
        )
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        patch(model, policy, **params)
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.set_policy(policy, params)
    return policy


def compress_activations(model: nn.Module, attention: str | None = "fastest", linear: str | None = "exact",
                         dropout: str | None = "seed", gelu: str | None = "fuse", layernorm: str | None = "shared",
                         **attention_params) -> dict:
    """Switch ``model``'s modules in place (see the module docstring); returns what changed:
    ``{"attention": policy, "dropout": n, "gelu": n, "linear": n, "layernorm": n}``.
    Calling it again with other choices switches again (``None`` leaves a part as it is)."""
    for key, value in (("dropout", dropout), ("gelu", gelu), ("linear", linear), ("layernorm", layernorm)):
        if value not in _CHOICES[key]:
            raise ValueError(f"compress_activations: {key}={value!r}; choose one of {_CHOICES[key]}")
    mode = linear or "exact"
    counts = {"attention": None, "dropout": 0, "gelu": 0, "linear": 0, "layernorm": 0}
    if attention is not None:
        counts["attention"] = _apply_attention(model, attention, attention_params)
    conv1d, compressed_conv1d = conv1d_class(), compressed_conv1d_class()
    for module in list(model.modules()):
        if dropout and isinstance(module, nn.Dropout) and type(module) in (nn.Dropout, SeededDropout):
            module.__class__ = SeededDropout
            counts["dropout"] += 1
        elif linear and type(module) in (nn.Linear, CompressedLinear, nn.modules.linear.NonDynamicallyQuantizableLinear):
            module.__class__, module.compress_mode = CompressedLinear, mode
            counts["linear"] += 1
        elif linear and conv1d is not None and type(module) in (conv1d, compressed_conv1d):
            module.__class__, module.compress_mode = compressed_conv1d, mode
            counts["linear"] += 1
        elif layernorm and type(module) in (nn.LayerNorm, CompressedLayerNorm):
            module.__class__ = CompressedLayerNorm
            module.compress_mode = "exact" if layernorm == "shared" else layernorm
            counts["layernorm"] += 1
        if gelu:
            for name, child in list(vars(module).get("_modules", {}).items()) + _function_attrs(module):
                approx = _gelu_approximation(child)
                if approx is not None:
                    setattr(module, name, FusedGELU(approx, mode))
                    counts["gelu"] += 1
    return counts


def _function_attrs(module: nn.Module) -> list[tuple[str, object]]:
    """Plain-function activations held as attributes (``nn.TransformerEncoderLayer.activation``)."""
    act = vars(module).get("activation")
    return [("activation", act)] if act is not None and not isinstance(act, nn.Module) else []
