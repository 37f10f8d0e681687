"""What a run measures, as Lightning callbacks: step time, activation memory, gradient fidelity.

Why callbacks: the measurements are the same for every task (the reproduction compares them
across tasks), so they sit beside the training loop, not inside each LightningModule. A task
only says how many tokens a batch holds and its padded shape (``BaseTask.count_tokens``,
``batch_shape``), and may add details to a memory record (``BaseTask.memory_details``, e.g.
translation's bytes per attention kind). Each callback's figures travel in checkpoints
(``state_dict``), so a resumed run reports what an uninterrupted one would.

What ends up in results.json (:func:`run_stats`, a :class:`RunStats`):

* ``memory``: bytes saved for backward by one forward+loss, measured with
  ``core.ActivationMeter`` — attention, softmax-state and total activation bytes — plus, on
  CUDA, the peak allocated during that whole step minus what was allocated before it. Batches
  are length-bucketed, so a single batch may be tiny (SST-2 has 2-token phrases): the training
  steps ``warmup_steps .. warmup_steps + measure_steps - 1`` are all measured and the largest
  batch (most padded tokens, B x L) is kept. With the same seed the batch order is the same, so
  every policy is measured on the same batch.
* ``timing``: median wall time of a training step (forward, backward, optimizer; CUDA
  synchronised) after ``skip_steps`` steps, and tokens (real, unpadded) per second.
* ``fidelity``: the last gradient-fidelity probe, or None when it is off.

Order matters (:func:`measurement_callbacks`): the timer starts first (a probe step's time
includes the probe, as it always did), the probe runs before the memory meter opens (its extra
passes are not counted), and the meter is open from the batch start until ``on_before_backward``
(the training step's forward and loss; Lightning's ``log`` detaches what it logs).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from softmax_approx.core import ActivationMeter
from softmax_approx.harness.callbacks import NonFiniteGradients
from softmax_approx.harness.distributed import gather_memory
from softmax_approx.nn import MultiHeadAttention, use_policy


def _numel(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


def _sync(pl_module: L.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


def _in_step_context(trainer: L.Trainer):
    """The precision context Lightning runs ``training_step`` in (autocast under mixed precision),
    so an extra pass measures what the training step does."""
    return trainer.strategy.precision_plugin.train_step_context()


class StepTimer(L.Callback):
    """Median training-step wall time and tokens/second after ``skip_steps`` steps."""

    def __init__(self, skip_steps: int = 2) -> None:
        self.skip_steps = int(skip_steps)
        self.step_seconds: list[float] = []
        self.step_tokens: list[int] = []
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module)
        if self._t0 is not None and trainer.global_step > self.skip_steps:
            self.step_seconds.append(time.perf_counter() - self._t0)
            self.step_tokens.append(pl_module.count_tokens(batch))

    def timing(self) -> dict:
        """Median step seconds and tokens/second over the timed steps (None before any)."""
        if not self.step_seconds:
            return {"step_seconds_median": None, "tokens_per_second": None, "timed_steps": 0}
        return {
            "step_seconds_median": statistics.median(self.step_seconds),
            "tokens_per_second": sum(self.step_tokens) / sum(self.step_seconds),
            "timed_steps": len(self.step_seconds),
        }

    def state_dict(self) -> dict:
        return {"step_seconds": list(self.step_seconds), "step_tokens": list(self.step_tokens)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.step_seconds, self.step_tokens = list(state_dict["step_seconds"]), list(state_dict["step_tokens"])


class MemoryMeter(L.Callback):
    """Activation bytes of the largest batch among the measured training steps (see module doc)."""

    def __init__(self, warmup_steps: int = 2, measure_steps: int = 10) -> None:
        self.warmup_steps, self.measure_steps = int(warmup_steps), max(1, int(measure_steps))
        self.memory: dict | None = None
        self._meter: ActivationMeter | None = None
        self._batch: Any = None
        self._kept = False
        self._cuda_base: int | None = None

    def _measuring(self, trainer: L.Trainer) -> bool:
        return self.warmup_steps <= trainer.global_step < self.warmup_steps + self.measure_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._kept = False
        if not self._measuring(trainer):
            return
        if pl_module.device.type == "cuda":
            _sync(pl_module)
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            self._cuda_base = torch.cuda.memory_allocated(pl_module.device)
        self._batch = batch
        self._meter = ActivationMeter(pl_module.net).__enter__()

    def _close(self):
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.__exit__(None, None, None)
        return meter

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        meter = self._close()
        if meter is None:
            return
        batch, self._batch = self._batch, None
        shape = pl_module.batch_shape(batch)
        if self.memory is None or _numel(shape) > _numel(self.memory["batch_shape"]):
            report = meter.report()
            self.memory = {
                "attention_bytes": int(report.attention_bytes),
                "softmax_state_bytes": int(report.softmax_state_bytes),
                "total_activation_bytes": int(report.total_bytes),
                "batch_shape": shape, "peak_step_bytes": None, "measured_at_step": int(trainer.global_step),
            }
            with _in_step_context(trainer):
                self.memory.update(pl_module.memory_details(batch))
            self._kept = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._close()  # no backward this step (e.g. a skipped batch): never leave the hooks on
        self._batch = None
        if self._kept and self.memory is not None and pl_module.device.type == "cuda" and self._cuda_base is not None:
            _sync(pl_module)
            self.memory["peak_step_bytes"] = int(torch.cuda.max_memory_allocated(pl_module.device) - self._cuda_base)
        self._kept = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def on_train_end(self, trainer, pl_module) -> None:
        """DDP: each rank measured its own batch; combine them (max per device, sum and each
        rank's record in ``memory.ranks``; ``harness.distributed.reduce_memory``). A collective."""
        self.memory = gather_memory(self.memory)

    def state_dict(self) -> dict:
        return {"memory": self.memory}

    def load_state_dict(self, state_dict: dict) -> None:
        self.memory = state_dict["memory"]


class GradientProbe(L.Callback):
    """Every ``every_n_steps`` training steps (0 = off), on that step's batch: per attention
    layer, cosine and relative error of the configured policy's input gradient against the
    ``exact`` policy's (:func:`probe`). Logged as ``probe/<layer>/<cosine|rel_err>``."""

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = int(every_n_steps)
        self.fidelity: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.every_n_steps or trainer.global_step % self.every_n_steps:
            return
        with _in_step_context(trainer):
            self.fidelity = probe(pl_module, batch, step=int(trainer.global_step))
        for layer, vals in self.fidelity["layers"].items():
            for k, v in vals.items():
                pl_module.log(f"probe/{layer}/{k}", v, on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"fidelity": self.fidelity}

    def load_state_dict(self, state_dict: dict) -> None:
        self.fidelity = state_dict["fidelity"]


def _attention_input_grads(pl_module: Any, batch: dict) -> dict[str, torch.Tensor]:
    """d loss / d (query input) of every MultiHeadAttention, without touching .grad."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in pl_module.net.named_modules():
        if isinstance(mod, MultiHeadAttention):
            def hook(module, args, kwargs, _name=name):
                captured[_name] = args[0] if args else kwargs["query"]
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.enable_grad():
            loss, _ = pl_module.step(batch)
            names = [n for n, t in captured.items() if t.requires_grad]
            grads = torch.autograd.grad(loss, [captured[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {n: g for n, g in zip(names, grads) if g is not None}


def probe(pl_module: Any, batch: dict, step: int = 0) -> dict:
    """Per attention layer: cosine and relative error of the configured policy's input gradient
    against the ``exact`` policy's (``nn.use_policy``), on the same batch.

    Dropout is disabled during the probe (the net is put in eval mode), so both passes see the
    same function and the difference is the policy's alone; parameter gradients and the
    training RNG stream are left untouched. The attention modules themselves stay in training
    mode with their dropout set to 0: ``core.attention`` with ``training=False`` and gradients
    gives exact (``recompute``) gradients, which would hide the policy from the probe.
    """
    net = pl_module.net
    was_training = net.training
    net.eval()
    attn = [(m, m.dropout) for m in net.modules() if isinstance(m, MultiHeadAttention)]
    for m, _ in attn:
        m.training, m.dropout = True, 0.0
    device = pl_module.device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            approx = _attention_input_grads(pl_module, batch)
            with use_policy(net, "exact"):
                exact = _attention_input_grads(pl_module, batch)
    finally:
        for m, p in attn:
            m.dropout = p
        net.train(was_training)
    layers = {}
    for name, g in approx.items():
        e = exact[name].flatten().double()
        a = g.flatten().double()
        cos = torch.nn.functional.cosine_similarity(a, e, dim=0).item()
        rel = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
        layers[name] = {"cosine": cos, "rel_err": rel}
    return {"layers": layers, "step": step, "dropout": "disabled (eval mode)"}


def measurement_callbacks(cfg: Any) -> list[L.Callback]:
    """The three measurement callbacks for a run config (``memory``, ``timing``, ``probe``
    nodes), in the order that keeps each out of the others' figures."""
    return [
        StepTimer(skip_steps=cfg.timing.skip_steps),
        GradientProbe(every_n_steps=cfg.probe.every_n_steps),
        MemoryMeter(warmup_steps=cfg.memory.warmup_steps, measure_steps=cfg.memory.measure_steps),
    ]


@dataclass(frozen=True)
class RunStats:
    """What the measurement callbacks recorded in a run, for results.json
    (``harness.recorder.RunRecorder.trained``): typed, so a field added here is added there."""

    memory: dict | None  # MemoryMeter's record; None without the callback (or before its steps)
    timing: dict  # StepTimer's figures (None values before any timed step)
    fidelity: dict | None  # the last GradientProbe result; None when the probe is off
    nonfinite_grad_steps: int | None  # steps NonFiniteGradients skipped; None without it


def run_stats(callbacks: list) -> RunStats:
    """Memory, timing, fidelity and skipped-step count from a run's callbacks."""
    def first(kind: type) -> Any:
        return next((cb for cb in callbacks if isinstance(cb, kind)), None)

    timer, meter, prober, guard = first(StepTimer), first(MemoryMeter), first(GradientProbe), first(NonFiniteGradients)
    return RunStats(
        memory=meter.memory if meter else None,
        timing=timer.timing() if timer else StepTimer().timing(),
        fidelity=prober.fidelity if prober else None,
        nonfinite_grad_steps=len(guard.skipped_steps) if guard else None,
    )
