"""Shared LightningModule machinery for every task kind.

Why a base class: memory, timing, the gradient-fidelity probe and the optimizer wiring are the
same for classification and translation, and the reproduction compares them across tasks, so
they must be measured the same way. A subclass only says how to compute the loss of a batch
(:meth:`BaseTask.step`), how many tokens a batch holds, and which metrics it logs.

What ends up in results.json (``run_stats``):

* ``memory``: bytes saved for backward by one forward+loss, measured with
  ``core.ActivationMeter`` — attention, softmax-state and total activation bytes — plus, on
  CUDA, the peak allocated during that whole step minus what was allocated before it. Batches
  are length-bucketed, so a single batch may be tiny (SST-2 has 2-token phrases): the training
  steps ``memory_warmup_steps .. memory_warmup_steps + memory_measure_steps - 1`` are all
  measured and the largest batch (most padded tokens, B x L) is kept. With the same seed the
  batch order is the same, so every policy is measured on the same batch.
* ``timing``: median wall time of a training step (forward, backward, optimizer; CUDA
  synchronised) after ``timing_skip_steps`` steps, and tokens (real, unpadded) per second.
* ``fidelity``: the last gradient-fidelity probe, or None when it is off.

Reliability (docs/reliability.md): a non-finite training loss stops the run before backward
(:class:`~softmax_approx.utils.errors.NonFiniteLossError`, naming the step and batch index), and
the state a resumed run needs beyond Lightning's own (the measurements above and the
``*_best`` metrics, which torchmetrics does not put in ``state_dict``) travels in checkpoints.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, ClassVar

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from softmax_approx.core import ActivationMeter
from softmax_approx.nn import MultiHeadAttention, use_policy
from softmax_approx.harness.distributed import gather_memory
from softmax_approx.utils.errors import NonFiniteLossError


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up to the base learning rate over ``warmup_steps``, then linear decay to 0."""
    warmup_steps = max(0, min(int(warmup_steps), max(int(total_steps) - 1, 0)))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - (step - warmup_steps) / remaining)

    return LambdaLR(optimizer, factor)


def constant_lr(optimizer: torch.optim.Optimizer, total_steps: int | None = None, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` (0: none), then the base learning rate unchanged.

    With ``warmup_steps=0`` it equals no scheduler; it exists so a task file can pick "no
    schedule" for one profile from a table column (a column cannot remove the node).
    """
    warmup_steps = max(0, int(warmup_steps))
    return LambdaLR(optimizer, lambda step: (step + 1) / warmup_steps if step < warmup_steps else 1.0)


def _numel(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


class BaseTask(L.LightningModule):
    """Optimizer/scheduler from ``_partial_`` configs, memory/timing measurement, probe."""

    #: The task kind this module serves; the model config must declare the same ``kind``.
    kind: ClassVar[str] = ""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        memory_warmup_steps: int = 2,
        memory_measure_steps: int = 10,
        timing_skip_steps: int = 2,
        probe_every_n_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.memory: dict | None = None
        self.fidelity: dict | None = None
        self._step_seconds: list[float] = []
        self._step_tokens: list[int] = []
        self._t0: float | None = None
        self._cuda_base: int | None = None
        self._measure_this_step = False
        self._kept_this_step = False
        self._restored_best: dict[str, float] = {}

    # ---------------------------------------------------------------- to override
    @classmethod
    def net_kwargs(cls, datamodule: L.LightningDataModule) -> dict:
        """Constructor arguments of the model that come from the data (vocab sizes, pad id)."""
        raise NotImplementedError

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Loss of a batch and whatever the metrics need (e.g. predictions)."""
        raise NotImplementedError

    def count_tokens(self, batch: dict) -> int:
        """Real (unpadded) tokens in a batch, for tokens/second."""
        raise NotImplementedError

    def batch_shape(self, batch: dict) -> list[int]:
        """The padded shape recorded beside the memory figures."""
        raise NotImplementedError

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_counts(self) -> dict:
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }

    # ---------------------------------------------------------------- timing + CUDA peak
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        first = self.hparams.memory_warmup_steps
        self._measure_this_step = first <= self.global_step < first + max(1, self.hparams.memory_measure_steps)
        self._kept_this_step = False
        self._sync()
        if self._measure_this_step and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync()
        if self._t0 is not None and self.global_step > self.hparams.timing_skip_steps:
            self._step_seconds.append(time.perf_counter() - self._t0)
            self._step_tokens.append(self.count_tokens(batch))
        if self._measure_this_step and self._kept_this_step and self.memory is not None:
            if self.device.type == "cuda" and self._cuda_base is not None:
                self.memory["peak_step_bytes"] = int(torch.cuda.max_memory_allocated(self.device) - self._cuda_base)
        self._measure_this_step = False

    def timing(self) -> dict:
        """Median step seconds and tokens/second over the timed steps (None before any)."""
        if not self._step_seconds:
            return {"step_seconds_median": None, "tokens_per_second": None, "timed_steps": 0}
        return {
            "step_seconds_median": statistics.median(self._step_seconds),
            "tokens_per_second": sum(self._step_tokens) / sum(self._step_seconds),
            "timed_steps": len(self._step_seconds),
        }

    # ---------------------------------------------------------------- training step
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        every = self.hparams.probe_every_n_steps
        if every and self.global_step % every == 0:
            self.fidelity = self.probe(batch)
            for layer, vals in self.fidelity["layers"].items():
                for k, v in vals.items():
                    self.log(f"probe/{layer}/{k}", v, on_step=True, on_epoch=False)
        if self._measure_this_step:
            with ActivationMeter(self.net) as meter:
                loss, out = self.step(batch)
            shape = self.batch_shape(batch)
            if self.memory is None or _numel(shape) > _numel(self.memory["batch_shape"]):
                self.memory = {**self._memory_fields(meter.report()), "batch_shape": shape,
                               "peak_step_bytes": None, "measured_at_step": int(self.global_step)}
                self._kept_this_step = True
        else:
            loss, out = self.step(batch)
        self.check_finite(loss, batch_idx)
        self.log_train(loss, out, batch)
        return loss

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop before backward on a NaN/inf loss: no NaN gradient reaches the weights, and no
        later checkpoint is written, so ``last.ckpt`` stays the last good state."""
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.detach().float().mean().item()}) at global step "
                f"{int(self.global_step)} (epoch {int(self.current_epoch)}, batch index {batch_idx}); "
                "the last good checkpoint is kept; lower optimizer.lr or gradient clipping, or rerun "
                "the same command to resume from it"
            )

    @staticmethod
    def _memory_fields(report: Any) -> dict:
        return {
            "attention_bytes": int(report.attention_bytes),
            "softmax_state_bytes": int(report.softmax_state_bytes),
            "total_activation_bytes": int(report.total_bytes),
        }

    def log_train(self, loss: torch.Tensor, out: dict, batch: dict) -> None:
        """Log the training loss/metrics (subclasses add theirs)."""
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=self.batch_shape(batch)[0])

    # ---------------------------------------------------------------- fidelity probe
    def _attention_input_grads(self, batch: dict) -> dict[str, torch.Tensor]:
        """d loss / d (query input) of every MultiHeadAttention, without touching .grad."""
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, mod in self.net.named_modules():
            if isinstance(mod, MultiHeadAttention):
                def hook(module, args, kwargs, _name=name):
                    q = args[0] if args else kwargs["query"]
                    captured[_name] = q
                handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            with torch.enable_grad():
                loss, _ = self.step(batch)
                names = [n for n, t in captured.items() if t.requires_grad]
                grads = torch.autograd.grad(loss, [captured[n] for n in names], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        return {n: g for n, g in zip(names, grads) if g is not None}

    def probe(self, batch: dict) -> dict:
        """Per attention layer: cosine and relative error of the configured policy's input
        gradient against the ``exact`` policy's, on the same batch.

        Dropout is disabled during the probe (the net is put in eval mode), so both passes see
        the same function and the difference is the policy's alone; parameter gradients and
        the training RNG stream are left untouched.
        """
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                approx = self._attention_input_grads(batch)
                with use_policy(self.net, "exact"):
                    exact = self._attention_input_grads(batch)
        finally:
            self.net.train(was_training)
        layers = {}
        for name, g in approx.items():
            e = exact[name].flatten().double()
            a = g.flatten().double()
            cos = torch.nn.functional.cosine_similarity(a, e, dim=0).item()
            rel = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
            layers[name] = {"cosine": cos, "rel_err": rel}
        return {"layers": layers, "step": int(self.global_step), "dropout": "disabled (eval mode)"}

    # ---------------------------------------------------------------- resume
    def _best_metrics(self) -> dict[str, Any]:
        from torchmetrics import MaxMetric, MinMetric

        return {n: m for n, m in self.named_children() if isinstance(m, (MaxMetric, MinMetric))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Measurements and running bests, so a resumed run reports what an uninterrupted one would."""
        checkpoint["softmax_approx"] = {
            "memory": self.memory,
            "fidelity": self.fidelity,
            "step_seconds": list(self._step_seconds),
            "step_tokens": list(self._step_tokens),
            "best_metrics": {n: float(m.compute()) for n, m in self._best_metrics().items() if m.update_count},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("softmax_approx")
        if not state:
            return
        self.memory, self.fidelity = state["memory"], state["fidelity"]
        self._step_seconds, self._step_tokens = list(state["step_seconds"]), list(state["step_tokens"])
        self._restored_best = dict(state["best_metrics"])

    def on_train_epoch_start(self) -> None:
        # Subclasses reset their *_best metrics in on_train_start (which also runs on resume);
        # put the checkpoint's values back once, after that.
        for name, value in self._restored_best.items():
            metric = self._best_metrics().get(name)
            if metric is not None:
                metric.update(torch.tensor(value, device=self.device))
        self._restored_best = {}

    def on_train_end(self) -> None:
        """DDP: each rank measured its own batch; combine them (max per device, sum and each
        rank's record in ``memory.ranks``; ``harness.distributed.reduce_memory``). A collective."""
        self.memory = gather_memory(self.memory)

    def run_stats(self) -> dict:
        """Memory, timing, fidelity and parameter counts for results.json."""
        return {"memory": self.memory, "timing": self.timing(), "fidelity": self.fidelity, "params": self.param_counts()}
