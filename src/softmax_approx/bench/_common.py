"""What every benchmark module shares: median timing and the ``--json`` / ``--markdown`` outputs.

The leading underscore keeps it out of ``bench.subcommands()`` (it is not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..utils.atomic import write_text


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of `step()` over `repeats` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """The ``--json`` / ``--markdown`` options that :func:`write_outputs` honours."""
    p.add_argument("--json", help="write the records to this JSON file (atomically)")
    p.add_argument("--markdown", help="write a markdown table to this file")


def write_outputs(args: argparse.Namespace, records: list[dict], table: str) -> None:
    """Write `records` to ``args.json`` and the markdown `table` text to ``args.markdown`` (each if set)."""
    if args.json:
        write_text(args.json, json.dumps(records, indent=1) + "\n")
    if args.markdown:
        write_text(args.markdown, table)
