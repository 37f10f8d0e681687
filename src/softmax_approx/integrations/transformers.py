"""Hugging Face Transformers (5.x): our storage policies as an attention implementation.

Importing this module (or calling :func:`softmax_approx.integrations.register_transformers`,
the same thing) registers, in Transformers' ``AttentionInterface`` (the registry behind
``attn_implementation=``) and ``AttentionMaskInterface``:

* ``"softmax_approx"``: the policy and its parameters come from the model config's
  ``softmax_approx`` attribute, a dict such as ``{"policy": "paper", "S": 5}``; without it,
  ``paper`` with its defaults. ``config.json`` keeps both the dict and the implementation
  name, so a plain ``from_pretrained(dir)`` of a saved model runs its policy again (and, in a
  process that has not imported this module, fails with Transformers' "not supported" error
  instead of silently running ``sdpa``).
* ``"softmax_approx_<policy>"`` for every fused policy (``exact``, ``paper``, ``topk``,
  ``quant``, ``recompute``): the name fixes the policy; parameters, if any, come from
  ``config.softmax_approx`` (whose ``"policy"`` key, if present, must agree).

So, as with Transformers' own implementations::

    import softmax_approx.integrations.transformers as sa_hf
    model = AutoModel.from_pretrained(name, attn_implementation="softmax_approx",
                                      softmax_approx={"policy": "paper", "S": 5})
    sa_hf.apply(model, "topk", keep_ratio=0.125)     # or switch a built model in place

The ``softmax_approx=`` keyword works on any checkpoint: the import gives Transformers' config
base class a ``softmax_approx`` attribute (default None), and Transformers forwards a keyword
to the config exactly when the config has that attribute. The policy is resolved from the
config without a graph break, so ``torch.compile(model, fullgraph=True)`` traces whole models.

Masks are built as for ``sdpa`` (bool, True = may attend, or None with ``is_causal``), which
the core takes as is; a float 4-D mask a user passes directly, T5's relative position bias
(with its gradient) and any other additive bias go to ``core.attention(bias=...)``. Models with
fewer key/value heads than query heads (GQA/MQA) pass their K/V heads unrepeated.

Not supported (a clear error, never silent wrong data): ``output_attentions=True`` (the point
is not to keep the probabilities; use ``attn_implementation="eager"`` to inspect them),
``softcap`` and attention sinks (``s_aux``). A query row with no valid key (e.g. a left-padding
position under a causal mask) gives a zero output row, where ``eager`` gives a uniform average:
such rows are padding and never reach a real position.

The attention module (the Transformers module that calls the attention function, e.g.
``BertSelfAttention``, ``GPT2Attention``, ``T5Attention``) is marked ``is_attention_module`` so
that :class:`softmax_approx.core.ActivationMeter` counts what it saves as attention bytes,
whatever implementation runs it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..core import POLICIES, POLICY_NAMES, Policy, attention, make_policy, policy_class, register_policy
from ..nn.compress import register_attention_switch

#: The generic implementation name (policy from ``config.softmax_approx``).
NAME = "softmax_approx"
#: The config attribute carrying ``{"policy": ..., **params}``.
CONFIG_KEY = "softmax_approx"
#: The built-in policies with a named variant ``softmax_approx_<policy>`` (a policy registered
#: later runs through the generic ``softmax_approx`` implementation).
VARIANTS = tuple(p for p in POLICY_NAMES if not POLICIES[p].native)
DEFAULT_POLICY = "paper"


def implementation_names() -> list[str]:
    """Every ``attn_implementation`` value this module registers."""
    return [NAME, *(f"{NAME}_{p}" for p in VARIANTS)]


# ------------------------------------------------------------------------- policy lookup
def _resolve(implementation: str, spec: Any) -> Policy:
    """The policy ``implementation`` runs for ``config.softmax_approx == spec``: plain dict
    reads and :func:`make_policy`, which torch.compile traces (no ``json``, no cache lookup)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"config.{CONFIG_KEY} must be a dict like {{'policy': 'paper', 'S': 5}}, got {spec!r}")
    named = spec.get("policy")
    params = {k: v for k, v in spec.items() if k != "policy"}
    if implementation == NAME:
        policy = named or DEFAULT_POLICY
    else:
        policy = implementation[len(NAME) + 1:]
        if named is not None and named != policy:
            raise ValueError(
                f"attn_implementation={implementation!r} but config.{CONFIG_KEY}['policy']={named!r}; "
                f"use attn_implementation={NAME!r} to take the policy from the config"
            )
    if policy_class(policy).native:
        raise ValueError(
            f"config.{CONFIG_KEY}['policy']={policy!r}: use attn_implementation={policy!r} "
            "(Transformers' own) for that baseline"
        )
    return make_policy(policy, **params)


@functools.lru_cache(maxsize=256)
def _resolve_once(implementation: str, frozen: tuple) -> Policy:
    return _resolve(implementation, dict(frozen))


def policy_of(config: Any, implementation: str = NAME) -> Policy:
    """The validated policy that ``implementation`` runs for a model with this config.

    Resolved once per distinct ``config.softmax_approx`` in eager mode (a cached lookup);
    under torch.compile the resolution is traced once, guarded on the config's values, and
    leaves nothing in the graph (no graph break at the attention calls)."""
    spec = getattr(config, CONFIG_KEY, None)
    if torch.compiler.is_compiling() or not isinstance(spec, dict):
        return _resolve(implementation, spec)
    try:
        return _resolve_once(implementation, tuple(sorted(spec.items())))
    except TypeError as e:  # an unhashable or unorderable parameter (a bad value anyway)
        raise ValueError(f"config.{CONFIG_KEY}={spec!r}: values must be numbers or strings ({e})") from None


# ------------------------------------------------------------------------- the attention function
def _unsupported(module: nn.Module, kwargs: dict) -> None:
    config = getattr(module, "config", None)
    if kwargs.get("output_attentions") or getattr(config, "output_attentions", False):
        raise ValueError(
            "softmax_approx attention keeps no attention probabilities, so output_attentions=True "
            "is not supported; load or switch the model with attn_implementation='eager' to inspect them"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("softmax_approx attention: logit soft-capping (softcap) is not supported")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("softmax_approx attention: attention sinks (s_aux) are not supported")


def _make_forward(implementation: str):
    def softmax_approx_attention_forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """Transformers' attention-function signature: (B, H, L, D) in, (B, Lq, H, D) out."""
        _unsupported(module, kwargs)
        policy = policy_of(getattr(module, "config", None), implementation)
        q_len, kv_len = query.shape[-2], key.shape[-2]
        # The rule of Transformers' sdpa_attention_forward: the mask builder returns None when
        # `is_causal` alone describes the pattern (no padding), and a mask otherwise.
        is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(q_len > 1 and attention_mask is None and is_causal)
        if causal and kv_len > q_len:  # prefill into an empty static cache (as sdpa does)
            key, value = key[..., :q_len, :], value[..., :q_len, :]
            if position_bias is not None:
                position_bias = position_bias[..., :q_len]
        mask, bias = attention_mask, position_bias
        if mask is not None and mask.dtype != torch.bool:  # a float 4-D mask: additive
            bias = mask if bias is None else bias + mask
            mask = None
        out = attention(
            query, key, value, mask=mask, causal=causal, dropout_p=dropout, policy=policy,
            training=module.training, scale=scaling, bias=bias,
        )
        return out.transpose(1, 2).contiguous(), None

    softmax_approx_attention_forward.__qualname__ = f"{implementation}_attention_forward"
    return softmax_approx_attention_forward


def _saves_implementation(to_dict):
    """Wrap ``PreTrainedConfig.to_dict`` so that ``config.json`` records the attention
    implementation of a config that runs one of ours or carries ``softmax_approx``: a plain
    ``from_pretrained(dir)`` then loads it (Transformers reads ``attn_implementation`` from the
    config), and without this module imported it fails loudly instead of running ``sdpa``."""

    @functools.wraps(to_dict)
    def to_dict_with_implementation(self):
        out = to_dict(self)
        impl = self.__dict__.get("_attn_implementation_internal")
        if isinstance(impl, str) and (impl in implementation_names() or CONFIG_KEY in self.__dict__):
            out["attn_implementation"] = impl
        return out

    to_dict_with_implementation.softmax_approx_hook = True
    return to_dict_with_implementation


def _install_config_hooks() -> None:
    """Two class-level additions to Transformers' config base class (idempotent):

    * ``softmax_approx = None``: Transformers forwards a ``from_pretrained`` keyword to the config
      only when the config has that attribute, so ``from_pretrained(name,
      softmax_approx={...})`` works on checkpoints that have never seen this library;
    * ``to_dict`` records the attention implementation (see :func:`_saves_implementation`)."""
    if not hasattr(PreTrainedConfig, CONFIG_KEY):
        setattr(PreTrainedConfig, CONFIG_KEY, None)
    if not getattr(PreTrainedConfig.to_dict, "softmax_approx_hook", False):
        PreTrainedConfig.to_dict = _saves_implementation(PreTrainedConfig.to_dict)


def register() -> list[str]:
    """Register every implementation name with Transformers (idempotent); returns the names.

    Runs when this module is imported; :func:`softmax_approx.integrations.register_transformers`
    is the same call for code that wants it explicit. Needed once per process, before a model
    with ``attn_implementation="softmax_approx*"`` is built or loaded."""
    names = implementation_names()
    for name in names:
        AttentionInterface.register(name, _make_forward(name))
        AttentionMaskInterface.register(name, sdpa_mask)
    _install_config_hooks()
    return names


# ------------------------------------------------------------------------- attention modules
@functools.lru_cache(maxsize=None)
def _calls_attention_interface(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS.get_interface(" in source


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose forward dispatches through Transformers'
    attention interface: the layers an ``attn_implementation`` switches."""
    return [(n, m) for n, m in model.named_modules() if _calls_attention_interface(type(m))]


def mark_attention_modules(model: nn.Module) -> int:
    """Set ``is_attention_module = True`` on the classes of the model's attention modules, so
    :class:`~softmax_approx.core.ActivationMeter` counts their saved tensors as attention
    bytes under every implementation; returns the number of modules."""
    mods = attention_modules(model)
    for _, m in mods:
        if not getattr(type(m), "is_attention_module", False):
            type(m).is_attention_module = True
    return len(mods)


def _configs(model: PreTrainedModel) -> list[Any]:
    """The model's config and every config of a sub-model or sub-config, once each."""
    seen, out = set(), []

    def visit(cfg):
        if cfg is None or id(cfg) in seen:
            return
        seen.add(id(cfg))
        out.append(cfg)
        for key in getattr(cfg, "sub_configs", {}) or {}:
            visit(getattr(cfg, key, None))

    visit(model.config)
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            visit(m.config)
    for _, m in attention_modules(model):
        visit(getattr(m, "config", None))
    return out


def apply(model: nn.Module, policy: str = DEFAULT_POLICY, **params) -> int:
    """Switch a built Transformers model to ``policy`` in place; returns the number of attention
    layers switched.

    ``policy`` is any core policy; parameters are validated as ``core.attention`` does
    (``ValueError`` naming the parameter). ``eager`` and ``sdpa`` select Transformers' own
    implementations of those names. The choice is written to ``config.softmax_approx`` and
    ``config._attn_implementation`` (for ``eager``/``sdpa``, ``config.softmax_approx = None``);
    ``save_pretrained`` writes both to ``config.json`` and a plain ``from_pretrained(dir)`` loads
    the model with the same implementation and policy.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"apply(model, ...): expected a transformers PreTrainedModel, got {type(model).__name__}")
    pol = make_policy(policy, **params)
    if POLICIES.get(pol.name) is not type(pol):  # config.json names it; from_pretrained looks it up
        register_policy(type(pol))
    layers = attention_modules(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no attention layer that uses Transformers' AttentionInterface; "
            "it cannot be switched (only models whose attention calls ALL_ATTENTION_FUNCTIONS can)"
        )
    implementation = pol.name if pol.native else NAME
    spec = None if pol.native else {"policy": pol.name, **pol.params}
    for cfg in _configs(model):  # an entry, even None, makes config.json keep the implementation
        setattr(cfg, CONFIG_KEY, spec)
    model.set_attn_implementation(implementation)
    wrong = [n for n, m in layers if getattr(getattr(m, "config", None), "_attn_implementation", implementation) != implementation]
    if wrong:
        raise RuntimeError(f"apply: {len(wrong)} attention layer(s) did not switch to {implementation!r}, e.g. {wrong[0]}")
    mark_attention_modules(model)
    return len(layers)



def _is_transformers_model(model: nn.Module) -> bool:
    return isinstance(model, PreTrainedModel)


register()
# compress_activations(model, attention=...) on a Transformers model switches it with apply
register_attention_switch(_is_transformers_model, apply)
