"""Build callbacks and loggers from named config entries; the run-id resolver.

Why named entries: any one callback/logger can be overridden or removed by name from the
command line or an experiment file (``callbacks.lr_monitor=null``), as in
lightning-hydra-template; ``null`` entries are skipped.
"""

from __future__ import annotations

import uuid
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict


def register_resolvers() -> None:
    """``${run_uid:}``: a short random id, cached per config (unique run directories)."""
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: uuid.uuid4().hex[:8], use_cache=True)


register_resolvers()


def instantiate_callbacks(cfg: DictConfig | None, has_logger: bool = True) -> list[Any]:
    """Callbacks from ``cfg.callbacks``; LearningRateMonitor is dropped when there is no
    logger (``logger=none``), since Lightning refuses it then."""
    if not cfg:
        return []
    out = [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]
    if not has_logger:
        from lightning.pytorch.callbacks import LearningRateMonitor

        out = [c for c in out if not isinstance(c, LearningRateMonitor)]
    return out


def instantiate_loggers(cfg: DictConfig | None, default_group: str | None = None, run_dir: Any = None) -> list[Any]:
    """Loggers from ``cfg.logger``; a W&B logger without a group gets ``default_group``.

    With ``run_dir``, a W&B logger without an ``id`` gets the id persisted in the run dir
    (``harness.resume.wandb_run_id``) and ``resume='allow'``: a resumed run continues the same
    W&B run instead of starting a second one.
    """
    if not cfg:
        return []
    out = []
    for name, c in cfg.items():
        if c is None or "_target_" not in c:
            continue
        c = c.copy()
        with open_dict(c):
            if "group" in c and c.group is None and default_group is not None:
                c.group = default_group
            if run_dir is not None and "wandb" in str(c._target_).lower() and not c.get("id"):
                from softmax_approx.harness.resume import wandb_run_id

                c.id = wandb_run_id(run_dir)
                c.resume = c.get("resume") or "allow"
        out.append(hydra.utils.instantiate(c, _convert_="all"))
    return out


def instantiate_model(cfg: DictConfig, **data_kwargs: Any) -> Any:
    """The model from ``cfg.model`` (minus its ``kind`` tag) plus data-derived arguments."""
    node = cfg.copy()
    with open_dict(node):
        node.pop("kind", None)
    return hydra.utils.instantiate(node, _convert_="all", **data_kwargs)
