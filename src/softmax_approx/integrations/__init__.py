"""Adapters that put the core's storage policies into other libraries' models.

* :mod:`softmax_approx.integrations.transformers`: Hugging Face Transformers (5.x), through its
  attention-function registry (``attn_implementation="softmax_approx"``) and ``apply(model, ...)``.
  Importing it registers the implementations; :func:`register_transformers` is the same hook
  as a call, for code (or a framework's plugin list) that wants it explicit.

Each adapter imports its library only when it is imported itself, so ``softmax_approx.core``
stays torch-only. For ``torch.nn.MultiheadAttention`` see :func:`softmax_approx.nn.patch`.
"""


def register_transformers() -> list[str]:
    """Register the ``attn_implementation="softmax_approx*"`` names with Hugging Face
    Transformers (idempotent; once per process, before building or loading such a model) and
    return them. Equivalent to ``import softmax_approx.integrations.transformers``."""
    from .transformers import register

    return register()
