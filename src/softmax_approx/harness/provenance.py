"""Where a result came from: git commit, package versions, Python, hardware, times.

Why: a results.json without the code version and machine cannot be compared or reproduced
(lightning-hydra-template records none of this).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from softmax_approx.utils.run_record import now_iso  # one clock format

PACKAGES = (
    "softmax-approx", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "wandb",
    "tokenizers", "sacrebleu", "numpy",
)
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_state() -> tuple[str | None, bool]:
    """(commit hash or None outside a git checkout, whether tracked files differ from it)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, False
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), bool(status and status.strip())


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance(started: str | None = None) -> dict:
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(),
        "python": platform.python_version(),
        "hardware": hardware(),
        "started": started or now_iso(),
        "finished": None,
    }
