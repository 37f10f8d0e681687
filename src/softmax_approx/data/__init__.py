"""Data layer: readers of the real formats, tokenizers, bucketed batches, DataModules, download.

Import the DataModules from their modules (``softmax_approx.data.classification``,
``softmax_approx.data.translation``) so that this package stays cheap to import.
"""

from softmax_approx.data.files import TASKS, check_files, expected_files, fetch_command

__all__ = ["TASKS", "check_files", "expected_files", "fetch_command"]
