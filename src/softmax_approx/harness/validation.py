"""Check a composed config before anything is built or read.

Why: a bad key should cost the user one line and no waiting — not a traceback after the
tokenizer has been trained. Every check raises :class:`ConfigError` / :class:`DataError` with
one line naming the key, its value and the allowed values (or the file and the fetch command).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from softmax_approx.utils.errors import ConfigError

from softmax_approx.conf import CONF_DIR  # noqa: E402  (the one place that says where the tree is)


def _options(group: str) -> list[str]:
    """Option names of a config group (yaml files under conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _models_of_kind(kind: str) -> list[str]:
    out = []
    for name in _options("model"):
        try:
            if OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").get("kind") == kind:
                out.append(name)
        except Exception:  # a broken file elsewhere must not hide this message
            continue
    return out


def _int(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}")
    return value


def _optional_int(cfg: DictConfig, key: str, minimum: int) -> None:
    if OmegaConf.select(cfg, key) is not None:
        _int(cfg, key, minimum)


def _number(cfg: DictConfig, key: str, low: float, *, low_inclusive: bool, high: float | None = None) -> None:
    """A number (not a bool) in ``[low, high]`` / ``(low, high]``; a missing key is not checked."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        lo = f"[{low}" if low_inclusive else f"({low}"
        hi = f"{high}]" if high is not None else "inf)"
        raise ConfigError(f"{key}={value!r}: must be a number in {lo}, {hi}")


def _check_training_knobs(cfg: DictConfig) -> None:
    """Optimizer, batch sizes, trainer limits and the fault-injection aid."""
    if cfg.get("optimizer") is not None:
        if OmegaConf.select(cfg, "optimizer.lr") is None:
            raise ConfigError("optimizer.lr=None: must be a number > 0")
        _number(cfg, "optimizer.lr", 0.0, low_inclusive=False)
        lr = OmegaConf.select(cfg, "optimizer.lr")
        if isinstance(lr, float) and not math.isfinite(lr):
            raise ConfigError(f"optimizer.lr={lr!r}: must be a finite number > 0")
        _number(cfg, "optimizer.weight_decay", 0.0, low_inclusive=True)
    if cfg.get("scheduler") is not None:
        _optional_int(cfg, "scheduler.warmup_steps", 0)
    for key in ("task.datamodule.batch_size", "task.datamodule.eval_batch_size", "task.datamodule.max_tokens"):
        _optional_int(cfg, key, 1)
    dm = cfg.task.get("datamodule") or {}
    if "batch_size" in dm and "max_tokens" in dm and dm.get("batch_size") is None and dm.get("max_tokens") is None:
        raise ConfigError("task.datamodule.batch_size and task.datamodule.max_tokens are both null: set one to an integer >= 1")
    _optional_int(cfg, "task.datamodule.num_workers", 0)
    _check_data_sizes(cfg)
    _check_val_interval(cfg)
    split = OmegaConf.select(cfg, "task.datamodule.test_split")
    if split is not None:
        from softmax_approx.data.base import SPLITS

        if split not in SPLITS:
            raise ConfigError(f"task.datamodule.test_split={split!r}: allowed values: {', '.join(SPLITS)}")
    max_steps = OmegaConf.select(cfg, "trainer.max_steps")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1):
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be -1 (no step limit) or an integer >= 1")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_steps in (None, -1) and not OmegaConf.select(cfg, "trainer.fast_dev_run", default=False):
        if max_epochs is None or isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ConfigError(
                f"trainer.max_epochs={max_epochs!r}: must be an integer >= 1 when trainer.max_steps=-1 "
                "(or set trainer.max_steps to an integer >= 1)"
            )
    elif max_epochs is not None and max_epochs != -1:
        _int(cfg, "trainer.max_epochs", 1)
    _number(cfg, "trainer.gradient_clip_val", 0.0, low_inclusive=True)
    _optional_int(cfg, "trainer.check_val_every_n_epoch", 1)
    _optional_int(cfg, "trainer.log_every_n_steps", 1)
    _optional_int(cfg, "trainer.accumulate_grad_batches", 1)
    for key in ("fault.fail_at_step", "fault.nan_at_step", "fault.nan_grad_at_step", "fault.signal_at_step"):
        _optional_int(cfg, key, 0)
    phase = OmegaConf.select(cfg, "fault.signal_phase", default="train")
    if phase not in (None, "train", "setup", "validation", "between", "test"):
        raise ConfigError(f"fault.signal_phase={phase!r}: allowed values: train, setup, validation, between, test")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(str(ckpt)).is_file():
        raise ConfigError(f"ckpt_path={ckpt!r}: no such checkpoint file; give an existing .ckpt or ckpt_path=null")


#: The smallest vocabulary the DataModules accept (data/classification.py, data/translation.py).
MIN_VOCAB = 100


def _check_data_sizes(cfg: DictConfig) -> None:
    """vocab_size and subset name their config key here (the DataModule's own check would be
    wrapped by Hydra's instantiate error, and translation reads vocab_size 0 as "default")."""
    vocab = OmegaConf.select(cfg, "task.datamodule.vocab_size")
    if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < MIN_VOCAB):
        raise ConfigError(f"task.datamodule.vocab_size={vocab!r}: must be an integer >= {MIN_VOCAB} (or null: the task's default)")
    subset = OmegaConf.select(cfg, "task.datamodule.subset")
    if subset is None:
        return
    if not OmegaConf.is_dict(subset):
        raise ConfigError(f"task.datamodule.subset={subset!r}: must be null or a mapping, e.g. {{train: 2000, val: 256, test: 512}}")
    for key, value in subset.items():
        if key not in ("train", "val", "test"):
            raise ConfigError(f"task.datamodule.subset.{key}: unknown split; allowed keys: train, val, test")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"task.datamodule.subset.{key}={value!r}: must be an integer >= 1 or null (the whole split)")


def _check_val_interval(cfg: DictConfig) -> None:
    """Lightning's val_check_interval: an int >= 1 (batches) or a float in (0, 1] (epoch fraction)."""
    value = OmegaConf.select(cfg, "trainer.val_check_interval")
    if value is None:
        return
    ok = not isinstance(value, bool) and (
        (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0.0 < value <= 1.0))
    if not ok:
        raise ConfigError(f"trainer.val_check_interval={value!r}: must be an integer >= 1 (batches), "
                          "a number in (0, 1] (fraction of an epoch) or null")


def _check_kwargs(cfg: DictConfig, key: str, extra: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> None:
    """Every key of the ``_target_`` node at ``key`` must be a parameter of its target."""
    node = OmegaConf.select(cfg, key)
    if node is None:
        return
    target = node.get("_target_")
    try:
        obj = get_object(target)
    except Exception as e:  # noqa: BLE001 - hydra raises several types for a bad path
        raise ConfigError(f"{key}._target_={target!r}: cannot be imported ({type(e).__name__}); check the name") from None
    params = inspect.signature(obj).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # takes **kwargs: nothing to check against
    allowed = set(params) - {"self"}
    unknown = [k for k in node.keys() if not str(k).startswith("_") and k not in drop and k not in allowed]
    if unknown:
        shown = sorted(allowed - set(extra))
        raise ConfigError(f"{key}.{unknown[0]}: unknown key for {target}; allowed keys: {', '.join(shown)}")


def attention_policy(cfg: DictConfig):
    """The run's policy from ``cfg.attention`` (``name``, ``params``): a registered policy, or
    the class an ``_target_`` names (a policy defined outside the package, registered here so
    the models built from ``attention.name`` find it). ConfigError (one line) otherwise."""
    from softmax_approx.core import POLICIES, make_policy, policy_class

    name, target = cfg.attention.get("name"), cfg.attention.get("_target_")
    if target is not None:
        try:
            cls = policy_class(str(target))
        except ValueError as e:
            raise ConfigError(f"attention._target_={target}: {e}") from None
        if name != cls.name:
            raise ConfigError(f"attention.name={name!r} but {target}.name is {cls.name!r}; "
                              f"set name: {cls.name} in the attention yaml")
    elif name not in POLICIES:
        raise ConfigError(f"attention.name={name!r}: allowed values: {', '.join(POLICIES)} "
                          "(or an attention yaml with _target_: your_module.YourPolicy)")
    if "params" not in cfg.attention:
        raise ConfigError(f"attention.params: missing; the attention yaml of {name!r} needs params: (its parameters, or {{}})")
    params = OmegaConf.to_container(cfg.attention.params, resolve=True) or {}
    try:
        return make_policy(name, **params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"attention.params ({name}): {str(e).splitlines()[0]}") from None


def validate_config(cfg: DictConfig, check_data: bool = True) -> None:
    """Raise ConfigError/DataError (one line) for the first problem found; read no data."""
    from softmax_approx.conf import check_profile_columns

    problem = check_profile_columns(cfg)  # before anything reads a value through the table
    if problem:
        raise ConfigError(problem)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be an integer (0 is a valid seed)")
    if not 0 <= seed < 2**32:  # numpy's seed range (Lightning seeds numpy with it)
        raise ConfigError(f"seed={seed!r}: must be an integer in [0, 2**32 - 1]")

    attention_policy(cfg)

    # task <-> model kind
    task_kind, model_kind = cfg.task.get("kind"), cfg.model.get("kind")
    if model_kind != task_kind:
        fits = _models_of_kind(task_kind)
        raise ConfigError(
            f"model.kind={model_kind!r} does not fit task={cfg.task.name} (kind {task_kind!r}); "
            f"choose model= one of: {', '.join(fits) or '(none found)'}"
        )
    module_kind = getattr(get_class(cfg.task.module._target_), "kind", None)
    if module_kind != task_kind:
        raise ConfigError(f"task.module._target_={cfg.task.module._target_}: serves kind {module_kind!r}, task kind is {task_kind!r}")

    # model dimensions
    d_model = _int(cfg, "model.d_model", 1)
    n_heads = _int(cfg, "model.n_heads", 1)
    if d_model % n_heads:
        divisors = [h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]
        raise ConfigError(
            f"model.n_heads={n_heads} does not divide model.d_model={d_model}; "
            f"allowed n_heads: {', '.join(map(str, divisors))}"
        )
    for key in ("model.n_layers", "model.n_encoder_layers", "model.n_decoder_layers", "model.d_ff"):
        if OmegaConf.select(cfg, key) is not None:
            _int(cfg, key, 1)
    # the data's lengths first: model.max_len usually interpolates task.datamodule.max_len
    for key in ("task.datamodule.max_len", "task.datamodule.src_max_len", "task.datamodule.tgt_max_len", "model.max_len"):
        if OmegaConf.select(cfg, key) is not None:
            _int(cfg, key, 1)
    for key in ("model.dropout", "model.attn_dropout"):
        v = OmegaConf.select(cfg, key)
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
            raise ConfigError(f"{key}={v!r}: must be a number in [0, 1)")
    if cfg.model.get("pool") == "cls" and not cfg.task.datamodule.get("prepend_cls", False):
        raise ConfigError("model.pool=cls needs task.datamodule.prepend_cls=true (the <cls> token at position 0)")
    dm_len, model_len = cfg.task.datamodule.get("max_len"), cfg.model.get("max_len")
    if dm_len is not None and model_len is not None and model_len < dm_len:
        raise ConfigError(f"model.max_len={model_len} is below task.datamodule.max_len={dm_len}; set model.max_len >= {dm_len}")

    # other knobs
    _int(cfg, "probe.every_n_steps", 0)
    _int(cfg, "memory.warmup_steps", 0)
    _int(cfg, "memory.measure_steps", 1)
    _check_training_knobs(cfg)
    if cfg.get("test_weights") not in ("best", "current"):
        raise ConfigError(f"test_weights={cfg.get('test_weights')!r}: allowed values: best, current")
    accel = cfg.trainer.get("accelerator")
    if accel in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accel}: no CUDA device here; use trainer=cpu (or profile=paper trainer=cpu)")

    # unknown keys inside _target_ nodes (Hydra's struct mode catches unknown top-level keys)
    _check_kwargs(cfg, "model", drop=("kind",))
    _check_kwargs(cfg, "task.datamodule")
    _check_kwargs(cfg, "optimizer", extra=("params",))
    if cfg.get("scheduler") is not None:
        _check_kwargs(cfg, "scheduler", extra=("optimizer", "total_steps"))

    if check_data:
        from softmax_approx.data.files import check_files  # stat() calls only

        data = cfg.task.get("data")  # the dataset of this config (data/datasets.py), command-line overrides included
        check_files(cfg.task.name, cfg.task.datamodule.get("data_dir", cfg.paths.data_dir),
                    OmegaConf.to_container(data, resolve=True) if data is not None else None, cfg.task.get("kind"))
