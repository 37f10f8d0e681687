"""Low-level helpers every layer may import: one-line user errors, atomic file
writes, and the one-line stop of a command whose optional extra is not installed.

Run-lifecycle code (validation, resume, results, sweeps, callbacks) lives in
:mod:`softmax_approx.harness`, above ``tasks/``.
"""
