"""Data layer: readers of the real formats, tokenizers, bucketed batches, DataModules, download.

Import the DataModules from their modules (``softmax_approx.data.classification``,
``softmax_approx.data.translation``) so that this package stays cheap to import. The data layer belongs to the harness (its task
yamls are read with PyYAML), so without the harness extra importing it stops with one line.
"""

from softmax_approx.utils.extras import require

require("harness", "softmax_approx.data")
