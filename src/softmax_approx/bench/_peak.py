"""Peak memory of one call: ``torch.cuda.max_memory_allocated`` on a GPU, the resident set
size sampled by a thread on a CPU (there is no CPU allocator statistic).

On the CPU the reading is the peak RSS during the call minus the RSS before it. glibc's malloc
keeps freed blocks for reuse and raises its mmap threshold as it goes, which would hide the
freed-and-reused part; :func:`return_freed_memory` fixes the threshold so every large block is
mmapped and handed back when freed. The sampling period (1 ms) can miss a peak shorter than that.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading

import torch

_M_MMAP_THRESHOLD = -3
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def return_freed_memory(threshold: int = 1 << 16) -> bool:
    """Make glibc mmap (and so return on free) every allocation of ``threshold`` bytes or more;
    False where that is not possible (not glibc)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_bytes(fn, device: torch.device, period_s: float = 0.001) -> int:
    """Peak memory above the level before ``fn()`` while it runs (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            done.wait(period_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], rss_bytes()) - base
