"""softmax-approx: softmax output approximation for activation-memory-efficient attention.

The library lives in :mod:`softmax_approx.core` and :mod:`softmax_approx.nn` (torch and NumPy
only: the base install) and :mod:`softmax_approx.integrations.transformers` (the ``hf`` extra);
the harness (Hydra + Lightning + W&B) and the reproduction build on it (the ``harness`` extra).
"""

#: the one source of the version: pyproject.toml reads it (``[tool.setuptools.dynamic]``)
__version__ = "0.1.0"
