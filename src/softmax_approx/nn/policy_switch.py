"""``use_policy(model, policy, **params)``: run a model under another storage policy for a while.

Why one context manager: the gradient-fidelity probe (the same batch under ``exact``) and the
per-kind memory meter (every kind under the same policy) both need "this policy now, the old
ones back afterwards, whatever happens". A model's own policy is set once, by its constructor
(``policy=`` / ``policy_params=``) or by :func:`softmax_approx.nn.patch`; everything temporary
goes through here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ..core import Policy, make_policy


def policy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module of ``model`` (itself included) that carries a core policy:
    :class:`~softmax_approx.nn.MultiHeadAttention` and patched ``nn.MultiheadAttention`` layers."""
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "policy", None), Policy)]


@contextmanager
def use_policy(model: nn.Module, policy: str | Policy | None, **params) -> Iterator[list[str]]:
    """Inside the block every policy-carrying module of ``model`` runs ``policy`` (a name with
    its parameters, or a :class:`~softmax_approx.core.Policy`); on exit each module gets its
    own policy object back, also after an exception. ``policy=None`` changes nothing (callers
    with an optional override need no second code path). Yields the switched modules' names.

    The policy is validated before anything changes (``ValueError`` naming the parameter).
    """
    mods = policy_modules(model)
    if policy is None:
        yield [name for name, _ in mods]
        return
    if isinstance(policy, Policy):
        if params:
            raise TypeError("use_policy: give parameters with a policy name, not with a Policy object")
        new = policy
    else:
        new = make_policy(policy, **params)
    saved = [(m, m.policy) for _, m in mods]
    try:
        for m, _ in saved:
            m.policy = new
        yield [name for name, _ in mods]
    finally:
        for m, old in saved:
            m.policy = old
