"""The profiles (smoke, cpu, paper, ...): the files of ``conf/profile/``, listed in one place.

Why read the folder: a profile is a Hydra config group option, so its yaml file is what makes it
exist; the command lines (``reproduce``, ``report``) and the experiment definitions ask this
function instead of keeping lists of their own that a new profile file would not reach.
"""

from __future__ import annotations

from pathlib import Path

PROFILE_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "profile"


def profile_names() -> tuple[str, ...]:
    """Every shipped profile, by file name (sorted)."""
    return tuple(sorted(p.stem for p in PROFILE_CONF_DIR.glob("*.yaml")))
