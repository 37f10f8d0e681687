"""Low-level helpers every layer may import: one-line user errors and atomic file writes.

Run-lifecycle code (validation, resume, results, sweeps, callbacks) lives in
:mod:`softmax_approx.harness`, above ``tasks/``.
"""
