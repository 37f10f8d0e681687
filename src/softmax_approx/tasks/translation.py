"""Machine translation (Multi30k, IWSLT'14 de-en): label-smoothed loss, BLEU, beam search.

Metric names:

* ``train/loss`` (label-smoothed), ``train/nll``;
* ``val/loss``, ``val/nll``, ``val/ppl`` (teacher-forced, every validation sentence);
  ``val/bleu`` — sacreBLEU of **greedy** translations of the first ``val_bleu_max_sentences``
  validation sentences in loader order, i.e. the longest sources (a fixed set: evaluation
  batches are sorted by length, not shuffled), used for
  checkpoint selection; ``val/bleu_best``;
* ``test/loss``, ``test/nll``, ``test/ppl``; ``test/bleu`` — sacreBLEU (detokenized, 13a) of
  **beam-search** translations of the whole test split from the best checkpoint, the headline
  number; ``test/bleu_tok`` — fairseq-style tokenized BLEU beside it (see ``tasks/bleu.py``).

Decoding uses the model's key/value cache unless ``decode_cache=False`` (the uncached
reference, ``models/decoding.py``); hypotheses are put back in the split's order (batches come
sorted by length) before BLEU and the samples.

What :meth:`TranslationTask.results_fields` adds to results.json (after testing): the two
sacreBLEU signatures as ``metrics["test/bleu_signature"]`` / ``metrics["test/bleu_tok_signature"]``,
``test_split`` (the DataModule's ``test_split_name``, e.g. the iwslt14_mini caveat),
``decoding`` (beam, alpha, length limits) and a few sample translations. ``memory.by_kind``
holds the activation bytes of encoder self-, decoder self- and cross-attention separately.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import MaxMetric, MeanMetric

from softmax_approx.models.decoding import decode as run_decoding
from softmax_approx.models.translator import activation_memory_by_kind
from softmax_approx.tasks.base import BaseTask
from softmax_approx.tasks.bleu import corpus_bleu
from softmax_approx.utils.errors import ConfigError

__all__ = ["TranslationTask", "label_smoothed_nll_loss"]


def label_smoothed_nll_loss(logits: torch.Tensor, target: torch.Tensor, epsilon: float,
                            ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """fairseq's ``label_smoothed_cross_entropy``, averaged over non-pad target tokens.

    The smoothed target puts 1 - epsilon on the reference token and epsilon / (V - 1) on every
    other token (torch's ``label_smoothing`` spreads epsilon over all V instead). Returns
    ``(loss, nll, n_tokens)`` with ``nll`` the plain cross-entropy, for perplexity.
    """
    lprobs = torch.log_softmax(logits.float(), dim=-1).flatten(0, -2)  # (N, V)
    target = target.reshape(-1)
    keep = target != ignore_index
    lprobs, target = lprobs[keep], target[keep]
    n = int(keep.sum())
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    denom = max(n, 1)
    return loss.sum() / denom, nll.sum() / denom, n


class TranslationTask(BaseTask):
    """Seq2seq training with teacher forcing; greedy BLEU on validation, beam BLEU on test."""

    kind = "translation"

    def __init__(self, net: torch.nn.Module, label_smoothing: float = 0.1, beam: int = 5,
                 alpha: float = 1.0, lp_style: str = "fairseq", max_len_a: float = 1.2,
                 max_len_b: int = 10, val_decoding: str = "greedy",
                 val_bleu_max_sentences: int | None = 500, n_samples: int = 8,
                 measure_by_kind: bool = True, decode_cache: bool = True, **kwargs: Any) -> None:
        super().__init__(net, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.module.label_smoothing={label_smoothing}: must be in [0, 1)")
        if beam < 1:
            raise ConfigError(f"task.module.beam={beam}: must be >= 1")
        if val_decoding not in ("greedy", "beam"):
            raise ConfigError(f"task.module.val_decoding={val_decoding!r}: allowed values: greedy, beam")
        if lp_style not in ("fairseq", "gnmt"):
            raise ConfigError(f"task.module.lp_style={lp_style!r}: allowed values: fairseq, gnmt")
        if val_bleu_max_sentences is not None and val_bleu_max_sentences < 1:
            raise ConfigError(f"task.module.val_bleu_max_sentences={val_bleu_max_sentences}: must be >= 1 or null (all)")
        for split in ("val", "test"):
            setattr(self, f"{split}_loss", MeanMetric())
            setattr(self, f"{split}_nll", MeanMetric())
        self.val_bleu_best = MaxMetric()
        self._hyps: list[str] = []
        self._refs: list[str] = []
        self._srcs: list[str] = []
        self._order: list[int] = []  # each hypothesis's position in its split
        self.test_bleu = None  # BleuResult of the last test run
        self.samples: list[dict] = []

    # ------------------------------------------------------------------ BaseTask hooks
    @classmethod
    def net_kwargs(cls, datamodule: L.LightningDataModule) -> dict:
        return {"vocab_size": datamodule.vocab_size, "pad_id": datamodule.pad_id}

    def forward(self, src_ids, src_mask, tgt_in, tgt_mask=None) -> torch.Tensor:
        return self.net(src_ids, src_mask, tgt_in, tgt_mask)

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = self.net(batch["src_ids"], batch["src_mask"], batch["tgt_in"], batch["tgt_mask"])
        loss, nll, n = label_smoothed_nll_loss(logits, batch["tgt_out"], self.hparams.label_smoothing, self._data_ids()["pad_id"])
        return loss, {"nll": nll, "n_tokens": n}

    def count_tokens(self, batch: dict) -> int:
        return int(batch["src_mask"].sum() + batch["tgt_mask"].sum())

    def batch_shape(self, batch: dict) -> list[int]:
        """[B, source length, target length] of the padded batch."""
        return [int(batch["src_ids"].size(0)), int(batch["src_ids"].size(1)), int(batch["tgt_in"].size(1))]

    def _data_ids(self) -> dict:
        dm = self.trainer.datamodule
        return {"pad_id": dm.pad_id, "bos_id": dm.bos_id, "eos_id": dm.eos_id}

    # ------------------------------------------------------------------ training
    def memory_details(self, batch: dict) -> dict:
        """``by_kind``: encoder self / decoder self / cross-attention bytes on the batch the
        memory meter keeps (an extra forward; the RNG state is restored so training is unaffected)."""
        if not self.hparams.measure_by_kind:
            return {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return {"by_kind": activation_memory_by_kind(
                self.net, batch["src_ids"], batch["src_mask"], batch["tgt_in"], batch["tgt_mask"])}

    def log_train(self, loss: torch.Tensor, out: dict, batch: dict) -> None:
        super().log_train(loss, out, batch)
        self.log("train/nll", out["nll"], on_step=True, on_epoch=False, batch_size=int(batch["src_ids"].size(0)))

    # ------------------------------------------------------------------ evaluation
    def _translate(self, batch: dict, strategy: str) -> list[str]:
        hyp = run_decoding(
            self.net, batch["src_ids"], batch["src_mask"], strategy=strategy, beam=self.hparams.beam,
            alpha=self.hparams.alpha, lp_style=self.hparams.lp_style, max_len_a=self.hparams.max_len_a,
            max_len_b=self.hparams.max_len_b, cache=self.hparams.decode_cache, **self._data_ids(),
        )
        dm = self.trainer.datamodule
        return [dm.decode(t) for t in hyp.tokens]

    def _eval_step(self, split: str, batch: dict, strategy: str, cap: int | None) -> None:
        loss, out = self.step(batch)
        n = max(out["n_tokens"], 1)
        getattr(self, f"{split}_loss").update(loss, weight=n)
        getattr(self, f"{split}_nll").update(out["nll"], weight=n)
        self.log(f"{split}/loss", getattr(self, f"{split}_loss"), on_epoch=True, prog_bar=(split == "val"), batch_size=n)
        self.log(f"{split}/nll", getattr(self, f"{split}_nll"), on_epoch=True, batch_size=n)
        room = len(batch["ref_text"]) if cap is None else min(len(batch["ref_text"]), cap - len(self._hyps))
        if room > 0:
            part = {k: (v[:room] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
            self._hyps += self._translate(part, strategy)
            self._refs += list(part["ref_text"])
            self._srcs += list(part["src_text"])
            self._order += list(part.get("index") or range(len(self._order), len(self._order) + room))

    def _gather(self) -> tuple[list[str], list[str], list[str]]:
        """All processes' sentences (DDP), in the split's order (batches come sorted by length)."""
        local = (self._hyps, self._refs, self._srcs, self._order)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, local)
            local = tuple(sum((p[i] for p in parts), []) for i in range(4))
        rows = sorted(zip(local[3], local[0], local[1], local[2]), key=lambda r: r[0])
        return tuple([r[i] for r in rows] for i in (1, 2, 3))  # type: ignore[return-value]

    def _bleu(self, split: str):
        hyps, refs, srcs = self._gather()
        self._hyps, self._refs, self._srcs, self._order = [], [], [], []
        if not hyps:
            return None, []
        res = corpus_bleu(hyps, refs, lang=getattr(self.trainer.datamodule, "tgt_lang", "en"))
        samples = [{"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(srcs, refs, hyps))[: self.hparams.n_samples]]
        self._log_samples(split, samples)
        return res, samples

    def _log_samples(self, split: str, samples: list[dict]) -> None:
        """A W&B table of sample translations (only with a WandbLogger)."""
        from lightning.pytorch.loggers import WandbLogger

        for lg in self.loggers:
            if isinstance(lg, WandbLogger) and samples:
                cols = ["step", "source", "reference", "hypothesis"]
                rows = [[int(self.global_step), s["source"], s["reference"], s["hypothesis"]] for s in samples]
                lg.log_table(key=f"{split}/samples", columns=cols, data=rows)

    def on_validation_epoch_start(self) -> None:
        self._hyps, self._refs, self._srcs, self._order = [], [], [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch, self.hparams.val_decoding, self.hparams.val_bleu_max_sentences)

    def on_validation_epoch_end(self) -> None:
        self.log("val/ppl", torch.exp(self.val_nll.compute().clamp(max=50)))
        res, _ = self._bleu("val")
        bleu = torch.tensor(res.bleu if res else 0.0)
        self.log("val/bleu", bleu, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.val_bleu_best(bleu)
            self.log("val/bleu_best", self.val_bleu_best.compute(), prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._hyps, self._refs, self._srcs, self._order = [], [], [], []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch, "beam", None)

    def on_test_epoch_end(self) -> None:
        self.log("test/ppl", torch.exp(self.test_nll.compute().clamp(max=50)))
        res, samples = self._bleu("test")
        self.test_bleu, self.samples = res, samples
        if res is not None:
            self.log("test/bleu", res.bleu)
            self.log("test/bleu_tok", res.bleu_tok)
            self.log("test/bleu_sentences", float(res.n_sentences))

    # ------------------------------------------------------------------ results.json
    def results_fields(self) -> dict:
        """String/structured fields for results.json that Lightning's numeric logging cannot carry."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        out: dict[str, Any] = {
            "test_split": getattr(dm, "test_split_name", None),
            "decoding": {"test": "beam", "val": self.hparams.val_decoding, "beam": self.hparams.beam,
                         "alpha": self.hparams.alpha, "lp_style": self.hparams.lp_style,
                         "max_len_a": self.hparams.max_len_a, "max_len_b": self.hparams.max_len_b,
                         "cache": self.hparams.decode_cache,
                         "val_bleu_max_sentences": self.hparams.val_bleu_max_sentences},
            "samples": self.samples,
            "metrics": {},
        }
        if self.test_bleu is not None:
            out["metrics"] = {"test/bleu_signature": self.test_bleu.signature,
                              "test/bleu_tok_signature": self.test_bleu.signature_tok}
        return out
