"""One plain log line every N training steps and after each validation.

Lightning's tqdm bar is off by default (it floods non-interactive logs, sweeps and CI); this
callback says what a long run is doing instead: step / total, epoch, loss, speed and ETA.
"""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("softmax_approx.progress")


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLog(L.Callback):
    """Logs ``step 300/3117 (9.6%) epoch 0 train/loss 0.512 2.9 it/s eta 0:16:10``."""

    def __init__(self, every_n_steps: int = 100):
        if every_n_steps < 1:
            raise ValueError(f"callbacks.progress.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._start: float | None = None
        self._start_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        log.info("training: %s steps planned, starting at step %d", _total(trainer), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or self._start is None or not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        total = _total(trainer)
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step}/{total or '?'}"]
        if total:
            parts.append(f"({100 * step / total:.1f}%)")
        parts.append(f"epoch {trainer.current_epoch}")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} it/s")
        if total and rate > 0:
            parts.append(f"eta {_fmt_seconds((total - step) / rate)}")
        log.info(" ".join(parts))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        text = " ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
        log.info("validation at step %d (epoch %d): %s", trainer.global_step, trainer.current_epoch, text)


def _total(trainer) -> int | None:
    try:
        total = int(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - estimate unavailable (e.g. iterable datasets)
        return None
    return total if total < 2**62 else None
