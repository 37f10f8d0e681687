"""Adapters that put the core's storage policies into other libraries' models.

* :mod:`softmax_approx.integrations.transformers`: Hugging Face Transformers (5.x), through its
  attention-function registry (``attn_implementation="softmax_approx"``) and ``apply(model, ...)``.

Each adapter imports its library only when it is imported itself, so ``softmax_approx.core``
stays torch-only. For ``torch.nn.MultiheadAttention`` see :func:`softmax_approx.nn.patch`.
"""
