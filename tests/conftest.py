"""Shared fixtures: W&B off by default, tiny real-format datasets, composed Hydra configs.

Configs are composed once per test with ``return_hydra_config=True`` (so ``${hydra:...}``
interpolations resolve), pointed at the test's ``tmp_path``, and ``GlobalHydra`` is cleared
afterwards (lightning-hydra-template's pattern).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"  # the W&B offline test unsets it for itself only
# Tokenizer caches go to the user cache dir (platformdirs): one of the test session's own, so
# tests neither read the user's caches nor leave files in them.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="softmax-approx-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
os.environ.setdefault("WANDB_SILENT", "true")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import softmax_approx.harness.instantiate  # noqa: E402,F401  (registers ${run_uid:})
from softmax_approx.harness.validation import CONF_DIR  # noqa: E402
# Tests are laid out by package (tests/core, tests/harness, ...); a few import helpers from a
# test module of another folder by its name (module names are unique), so every folder is on
# the path, as the one flat folder was.
import sys  # noqa: E402

_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS)] + sorted(str(d) for d in _TESTS.iterdir() if d.is_dir() and d.name.isidentifier() and not d.name.startswith("_"))

from fixtures_data import write_imdb_tgz, write_sst2  # noqa: E402

# A few steps of a tiny model on the fixtures: enough to validate, checkpoint and test.
TINY = [
    "profile=smoke",
    "logger=none",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=32",
    "trainer.max_epochs=1",
    "trainer.max_steps=-1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.val_check_interval=null",
    "trainer.log_every_n_steps=1",
    "task.datamodule.subset=null",
    "task.datamodule.vocab_size=200",
    "task.datamodule.batch_size=8",
    "task.datamodule.max_len=32",
    "task.datamodule.val_size=16",
    "memory.warmup_steps=1",
    "memory.measure_steps=2",
    "timing.skip_steps=0",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """GLUE SST-2 TSVs and an aclImdb tarball, tiny, in the real layouts."""
    d = tmp_path_factory.mktemp("data")
    write_sst2(d, n_train=96, n_dev=16)
    write_imdb_tgz(d, n_per_class=24)
    return d


def compose_cfg(overrides: list[str], run_dir: Path, data_dir: Path | None = None, tiny: bool = True,
                config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml with overrides; output/log dirs under ``run_dir``."""
    GlobalHydra.instance().clear()
    extra = [f"paths.data_dir={data_dir}"] if data_dir is not None else []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[*(TINY if tiny else []), *extra, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(run_dir)
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir / "logs")
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """``make_cfg(["task=imdb", ...])`` -> a composed config writing under this test's tmp_path."""

    def _make(overrides: list[str] = (), tiny: bool = True) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path, data_dir, tiny)

    yield _make
    GlobalHydra.instance().clear()
