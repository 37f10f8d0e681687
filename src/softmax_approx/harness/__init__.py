"""The run lifecycle above ``tasks/``: config checks, resume, results.json, sweeps, callbacks.

Only the entry points (``train``, ``eval``, ``reproduce``) import this package; nothing below it
(core, nn, models, data, tasks) may (``tests/repo/test_import_graph.py``).
"""
