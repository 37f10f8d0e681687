"""No path of a development machine in the repository: the project cites only its own files
(docs/method.md ...) and public sources, and runs from any checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Written split, so this file does not match itself.
PATTERNS = ["/wo" + "rk/", "../sha" + "red", "/ro" + "ot/", "/ho" + "me/"]
# .ci/run may name the sibling data folder CI provides; no other file may.
ALLOWED = {".ci/run"}
SKIP_DIRS = {".git", ".venv", "outputs", "__pycache__", ".pytest_cache", "build", "dist"}


def _files() -> list[Path]:
    """The tracked files (git), else every file outside build/cache folders (a source tarball)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=30)
        names = [n for n in out.stdout.decode().split("\0") if n]
        if names:
            return [ROOT / n for n in names]
    except (OSError, subprocess.SubprocessError):
        pass
    return [p for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)]


def test_no_machine_path_in_any_file():
    hits = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (figures, notebooks' images) are not text to cite from
        for n, line in enumerate(text.splitlines(), 1):
            hits += [f"{rel}:{n}: {line.strip()[:100]}" for p in PATTERNS if p in line]
    assert not hits, "machine paths (cite the repository's own files or public sources):\n" + "\n".join(hits)


def test_the_patterns_would_match():
    assert any(p in "see " + "/wo" + "rk/shared/METHOD.md" for p in PATTERNS)
    assert any(p in "DATA_DIR ?= " + "../sha" + "red/data" for p in PATTERNS)
