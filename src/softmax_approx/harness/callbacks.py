"""Lightning callbacks that make a run resumable and its faults testable (docs/reliability.md).

* :class:`LastCheckpoint` — ``<run dir>/checkpoints/last.ckpt`` at every training-epoch end,
  every ``every_n_train_steps`` steps / ``train_time_interval`` seconds, and at the current step
  on a preemption signal (``harness/preemption.py``); written atomically and only when the
  weights are finite. A mid-epoch checkpoint resumes at the next unseen batch: the train loader's
  position travels in the checkpoint (``data/batching.py``).
* :class:`NonFiniteGradients` — NaN/inf gradients with a finite loss: skip the step or stop.
* :class:`StepSeed` — re-seeds torch's RNG (dropout) from ``(seed, epoch, batch index)`` before
  every training batch. Persisting generator states is not enough: Lightning draws from the
  global RNG whenever it creates a data-loader iterator, and a restarted run creates them at
  different moments, so the state at a given step would differ.
* :class:`FaultInjection` — a debugging/test aid (config ``fault.*``): raise a simulated CUDA
  out-of-memory error, or make the network's output NaN, at a given global step.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from softmax_approx.utils.run_record import float_metrics

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"


def _finite_weights(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class LastCheckpoint(Checkpoint):
    """Save ``dirpath/last.ckpt``: at the end of every ``every_n_epochs``-th training epoch, every
    ``every_n_train_steps`` optimizer steps or ``train_time_interval``, and at the next optimizer
    step after a preemption signal (``preempt_signals``; harness/preemption.py).

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass on purpose: Lightning calls
    checkpoint callbacks last (in their configured order) at epoch end, so when this one runs the
    best-checkpoint ``ModelCheckpoint`` has already saved and updated its state, and that state
    travels in ``last.ckpt``. ``state_dict`` also carries the metrics of the last epoch, for a
    resume that finds training already finished (e.g. a crash during testing).
    """

    def __init__(self, dirpath: str, filename: str = LAST_NAME, every_n_epochs: int = 1,
                 every_n_train_steps: int | None = None, train_time_interval: float | str | None = None,
                 preempt_signals: list[str] | None = None) -> None:
        from softmax_approx.harness.preemption import DEFAULT_SIGNALS, SignalFlag

        self.dirpath = Path(dirpath)
        self.filename = filename
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.every_n_train_steps = int(every_n_train_steps) if every_n_train_steps else None
        self.train_time_interval = _seconds(train_time_interval)
        self.signals = SignalFlag(DEFAULT_SIGNALS if preempt_signals is None else preempt_signals)
        self._owns_signals = True
        self._save_after_validation = False
        self.restored_metrics: dict[str, float] = {}
        self.skipped_nonfinite = 0
        self.saved_at_step = -1
        self._last_time = time.monotonic()
        self._trainer: L.Trainer | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    @property
    def state_key(self) -> str:
        return f"LastCheckpoint[{self.filename}]"

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        return {"callback_metrics": float_metrics(trainer.callback_metrics) if trainer is not None else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored_metrics = dict(state_dict.get("callback_metrics") or {})

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from softmax_approx.harness.preemption import active

        shared = active()
        if shared is not None:  # train(): one flag for the whole run, Lightning's handler kept out
            self.signals, self._owns_signals = shared, False
        else:
            # After Lightning registered its own SIGTERM handler (in Trainer._run): ours replaces
            # it for the training loop, so a signal checkpoints instead of raising SIGTERMException.
            self.signals.install()
            self._owns_signals = True
        self._last_time = time.monotonic()
        _restore_train_loader_position(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Mid-epoch ``last.ckpt``: on a preemption signal (then raise ``Preempted``), every
        ``every_n_train_steps`` optimizer steps, or when ``train_time_interval`` seconds passed.
        Saved here, like ModelCheckpoint's step checkpoints: Lightning resumes such a checkpoint
        at the next batch, the data loader at the next unseen batch.

        Only at an optimizer-step boundary: mid gradient-accumulation the partial gradient is not
        in the checkpoint, so a signal waits for the step to finish. A signal at a batch after
        which a validation (or the epoch end) is due waits for it too: Lightning resumes a
        checkpoint taken here past that validation, without running it."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        step = int(trainer.global_step)
        preempt = self._any_rank(trainer, self._signalled())
        if _mid_accumulation(trainer):
            return
        due = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        if self.train_time_interval is not None:
            due = due or self._any_rank(trainer, time.monotonic() - self._last_time >= self.train_time_interval)
        if _validation_or_epoch_end_next(trainer):  # save after it (on_validation_end / epoch end)
            self._save_after_validation = due and step != self.saved_at_step
            return
        if (preempt or due) and step != self.saved_at_step:
            self._save_if_finite(trainer, pl_module, f"step {step}")
        if preempt:
            self._raise_preempted(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A signal before or during a mid-epoch validation, or a step checkpoint due just before
        it: checkpoint after it (as ModelCheckpoint does), so the resumed run neither repeats nor
        skips it."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fit_loop.epoch_loop.done:
            return  # an epoch-end validation: on_train_epoch_end follows
        if _mid_accumulation(trainer):
            return
        preempt = self._any_rank(trainer, self._signalled())
        if preempt or self._save_after_validation:
            self._save_if_finite(trainer, pl_module, f"step {int(trainer.global_step)} (after validation)")
        self._save_after_validation = False
        if preempt:
            self._raise_preempted(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        """A signal during testing stops it (the rerun tests again from the saved weights)."""
        if self._signalled():
            self._raise_preempted(trainer, phase="testing")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the last validation: training is done and saved; stop before testing.
        received = self._signalled()
        self._restore_signals()
        if received:
            self._raise_preempted(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()

    def _signalled(self) -> bool:
        return self.signals.received is not None

    def _restore_signals(self) -> None:
        if getattr(self, "_owns_signals", True):
            self.signals.restore()

    def _raise_preempted(self, trainer: L.Trainer, phase: str = "training") -> None:
        from softmax_approx.harness.preemption import Preempted

        name = self.signals.received.name if self.signals.received is not None else "signal (on another rank)"
        self._restore_signals()
        raise Preempted(name, int(trainer.global_step), str(self.path) if self.path.exists() else None, phase=phase)

    @staticmethod
    def _any_rank(trainer: L.Trainer, flag: bool) -> bool:
        """True on every rank when it is true on any (a signal may reach rank 0 only)."""
        if getattr(trainer, "world_size", 1) > 1:
            return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def _save_if_finite(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        if not _finite_weights(pl_module):
            self.skipped_nonfinite += 1
            log.warning("weights are not finite at %s: %s not overwritten", when, self.path)
            return
        self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        preempt = self._any_rank(trainer, self._signalled())
        if preempt or self._save_after_validation or not (trainer.current_epoch + 1) % self.every_n_epochs:
            self._save_if_finite(trainer, pl_module, f"epoch {trainer.current_epoch}")
        self._save_after_validation = False
        if preempt:
            self._raise_preempted(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write to a temp file in the same folder, then ``os.replace``: a kill mid-write leaves
        the previous ``last.ckpt`` intact."""
        tmp = self.dirpath / f".{self.filename}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")
        self.saved_at_step = int(trainer.global_step)
        self._last_time = time.monotonic()
        return self.path


def _mid_accumulation(trainer: L.Trainer) -> bool:
    """True after a batch whose gradient is accumulated, not yet applied (no optimizer step)."""
    return bool(trainer.fit_loop.epoch_loop._should_accumulate())


def _validation_or_epoch_end_next(trainer: L.Trainer) -> bool:
    """Whether Lightning runs a validation or ends the epoch right after this training batch."""
    loop = trainer.fit_loop.epoch_loop
    return bool(loop.done or loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


def _restore_train_loader_position(trainer: L.Trainer) -> None:
    """Give the train loader its checkpointed position (``data/batching.py``) if Lightning did not.

    Lightning restores it in ``FitLoop.setup_data`` only when that runs after the checkpoint was
    loaded; a scheduler that reads ``trainer.estimated_stepping_batches`` in
    ``configure_optimizers`` (ours) sets the data up earlier, so the restored position would be
    dropped and a mid-epoch resume would restart the epoch's order. Called before the first batch
    is drawn (the sampler reads its position then)."""
    loop = trainer.fit_loop
    states = getattr(loop, "_combined_loader_states_to_load", None)
    loader = getattr(loop, "_combined_loader", None)
    if states and loader is not None:
        loader._load_state_dicts(states)
        loop._combined_loader_states_to_load = []


def _seconds(value: float | str | None) -> float | None:
    """``train_time_interval``: seconds (number) or ``"HH:MM:SS"``; None/0 = off."""
    if value in (None, "", 0):
        return None
    if isinstance(value, str) and ":" in value:
        parts = [float(p) for p in value.split(":")]
        return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return float(value)


class StepSeed(L.Callback):
    """Seed torch's RNG from ``(seed, epoch, batch index)`` before each training batch, so the
    dropout masks of a step do not depend on how the run got there (fresh or resumed)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.current_epoch, batch_idx))


def step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 100_003 + int(batch_idx)) % (2**63 - 1)


class NonFiniteGradientError(RuntimeError):
    """A gradient was NaN/inf with a finite loss and ``nonfinite_grads.action=stop``."""


class NonFiniteGradients(L.Callback):
    """Catch NaN/inf gradients that a finite loss produced, before the optimizer applies them.

    Cheap: one fused ``torch._foreach_norm`` over the gradients and one total norm (what
    ``gradient_clip_val`` computes next) per optimizer step, one host sync.
    ``action="skip"`` (default): the gradients are dropped (``grad = None``: the optimizer leaves
    every weight and its moments as they were; the LR schedule still advances, as with AMP's
    skipped steps), the step is counted (``skipped_steps``, in results.json
    ``nonfinite_grad_steps``) and logged; after ``max_consecutive`` skips in a row the run stops
    (a diverged run, not a rare overflow). ``action="stop"``: raise at once, naming the step.
    """

    def __init__(self, action: str = "skip", max_consecutive: int = 10) -> None:
        if action not in ("skip", "stop"):
            raise ValueError(f"nonfinite_grads action={action!r}: use skip or stop")
        self.action = action
        self.max_consecutive = max(1, int(max_consecutive))
        self.skipped_steps: list[int] = []
        self._consecutive = 0

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = list(state_dict.get("skipped_steps") or [])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if trainer.world_size > 1:  # DDP gradients are already all-reduced; agree anyway
            finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(total)), all=True)
        else:
            finite = bool(torch.isfinite(total))
        if finite:
            self._consecutive = 0
            return
        step = int(trainer.global_step)
        where = f"global step {step} (epoch {trainer.current_epoch}, batch index {trainer.fit_loop.epoch_loop.batch_idx})"
        self._consecutive += 1
        if self.action == "stop" or self._consecutive >= self.max_consecutive:
            why = "" if self.action == "stop" else f" ({self._consecutive} steps in a row)"
            raise NonFiniteGradientError(
                f"non-finite gradient (norm {float(total)}) with a finite loss at {where}{why}; "
                + _last_good_note(trainer))
        self.skipped_steps.append(step)
        log.warning("non-finite gradient (norm %s) at %s: step skipped (%d so far)", float(total), where,
                    len(self.skipped_steps))
        for p in pl_module.parameters():
            p.grad = None


def _last_good_note(trainer: L.Trainer) -> str:
    """What a rerun can resume from: a checkpoint is promised only when one is on disk."""
    kept = [cb.path for cb in trainer.callbacks if isinstance(cb, LastCheckpoint) and cb.path.is_file()]
    if kept:
        return (f"the last good checkpoint {kept[0]} is kept; lower optimizer.lr or gradient_clip_val, "
                "or rerun the same command to resume from it")
    return ("no checkpoint was written before it (the first is written at the end of epoch 0): lower "
            "optimizer.lr or set trainer.gradient_clip_val, then rerun")


class SimulatedOutOfMemory(torch.OutOfMemoryError):
    """What ``fault.fail_at_step`` raises: the error type a real CUDA OOM has."""


class FaultInjection(L.Callback):
    """Debugging/test aid (``fault.fail_at_step``, ``fault.nan_at_step``; off by default).

    ``fail_at_step=N``: raise a simulated CUDA out-of-memory error before training step N.
    ``nan_at_step=N``: the network's floating-point outputs are multiplied by NaN on step N, so
    the loss is NaN the way a real divergence makes it.
    ``nan_grad_at_step=N``: one gradient entry is NaN on step N while the loss stays finite.
    ``signal_at_step=N``: the process sends itself ``signal_name`` (SIGTERM) before step N, as a
    scheduler's preemption would (the real handler path, at a known step).
    ``signal_phase``: where that signal is sent: ``train`` (before step N), ``validation`` (the
    first validation batch of the first validation from step N on), ``test`` (the first test
    batch); ``setup`` and ``between`` (fit and test) are sent by ``train`` (:func:`fault_signal`).
    """

    def __init__(self, fail_at_step: int | None = None, nan_at_step: int | None = None,
                 nan_grad_at_step: int | None = None, signal_at_step: int | None = None,
                 signal_name: str = "SIGTERM", signal_phase: str = "train") -> None:
        self.fail_at_step = fail_at_step
        self.nan_at_step = nan_at_step
        self.nan_grad_at_step = nan_grad_at_step
        self.signal_at_step = signal_at_step
        self.signal_name = signal_name
        self.signal_phase = signal_phase
        self._handle = None
        self._signalled = False

    def _send_signal(self, trainer: L.Trainer) -> None:
        if not self._signalled and trainer.is_global_zero:
            self._signalled = True
            _send(self.signal_name)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signal_phase == "validation" and not trainer.sanity_checking and trainer.state.fn == "fit" \
                and int(trainer.global_step) >= int(self.signal_at_step or 0):
            self._send_signal(trainer)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.signal_phase == "test":
            self._send_signal(trainer)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.nan_grad_at_step is not None and int(trainer.global_step) == int(self.nan_grad_at_step):
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("nan")  # the loss stays finite

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.fail_at_step is not None and step == int(self.fail_at_step):
            raise SimulatedOutOfMemory(
                f"CUDA out of memory (simulated by fault.fail_at_step={self.fail_at_step}, batch index {batch_idx})"
            )
        if self.nan_at_step is not None and step == int(self.nan_at_step):
            net = getattr(pl_module, "net", pl_module)
            self._handle = net.register_forward_hook(lambda mod, args, out: _times_nan(out))
        if self.signal_phase == "train" and self.signal_at_step is not None and step == int(self.signal_at_step):
            self._send_signal(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._remove()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _send(signal_name: str) -> None:
    import signal

    os.kill(os.getpid(), getattr(signal, signal_name))  # delivered as from outside


def fault_signal(cfg: Any, phase: str) -> None:
    """``fault.signal_phase`` = ``setup`` / ``between``: ``train`` sends the signal there."""
    fault = cfg.get("fault") or {}
    if fault.get("signal_phase") == phase:
        _send(fault.get("signal_name") or "SIGTERM")


def _times_nan(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out * float("nan") if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_times_nan(o) for o in out)
    if isinstance(out, dict):
        return {k: _times_nan(v) for k, v in out.items()}
    return out
