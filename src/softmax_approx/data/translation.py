"""Translation DataModule for Multi30k (task 1) and IWSLT'14, German -> English.

Splits (say these in any table):

* **multi30k**: the official ``train`` / ``val`` / ``test_2016_flickr`` (29,000 / 1,014 /
  1,000) of ``data/task1/raw``; the text is raw (detokenized, cased), so the references given
  to sacreBLEU are the raw English lines and ``decode`` returns plain text.
* **iwslt14**: fairseq's ``prepare-iwslt14.sh`` output ``train`` / ``valid`` / ``test``
  (160,239 / 7,283 / 6,750; ``test`` = dev2010 + tst2010-2012 + TEDx dev2012).
* **iwslt14_mini** (the reduced offline stand-in, **not** the paper's setting): only fairseq's
  ``valid`` and ``test`` are available offline, so it **trains on 6,283 lines of ``valid``**,
  validates on the other 1,000 (held out with ``random.Random(split_seed)``, default 0), and
  tests on the official ``test``. Its BLEU is not comparable with full-data IWSLT'14 numbers.

IWSLT'14 text is Moses-tokenized and lowercased. The model trains on that text; for BLEU,
both hypotheses (``decode``) and references (``ref_text``) are Moses-**detokenized** with
sacremoses, so sacreBLEU sees detokenized **lowercase** text on both sides.

A joint BPE (``vocab_size``; defaults 8,000 Multi30k, 10,000 IWSLT) is trained on both
languages of the training split only and cached (see ``tokenizer.py``). Sources are
truncated to ``max_len`` tokens and targets to ``max_len - 1`` so that ``tgt_in = <bos> + y``
and ``tgt_out = y + <eos>`` never exceed ``max_len``. ``subset`` caps each split with a
seeded sample (smoke profile); the held-out splits never depend on it.

Evaluation batches (validation, test: teacher-forced loss and decoding) are cut by a budget of
``eval_max_tokens`` padded **source** tokens (sentences x longest source, fairseq's
``--max-tokens`` for generation), after sorting the split by source length, longest first: long
IWSLT sentences never share a batch with short ones, and the first batch shows the peak
memory. ``eval_max_tokens=None`` uses the training batching (``eval_batch_size`` /
``max_tokens``) instead. Every batch carries ``index`` (each example's position in its split),
so the task restores the split's order after decoding.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from softmax_approx.data import tokenizer as tokmod
from softmax_approx.data.base import BucketedDataModule
from softmax_approx.data.batching import BucketBatchSampler, TranslationCollator
from softmax_approx.data.classification import _check_subset, _ListDataset
from softmax_approx.data.files import check_files, resolve_cache_dir
from softmax_approx.data.readers import holdout_split, iter_text, read_parallel, seeded_subset
from softmax_approx.utils.errors import ConfigError

TRANSLATION_TASKS = ("multi30k", "iwslt14", "iwslt14_mini")
DEFAULT_VOCAB = {"multi30k": 8000, "iwslt14": 10000, "iwslt14_mini": 8000}
MINI_VAL_SIZE = 1000


@lru_cache(maxsize=4)
def _moses_detok(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def moses_detokenize(text: str, lang: str = "en") -> str:
    """Moses-detokenize (and unescape ``&apos;`` etc.) one tokenized line."""
    return _moses_detok(lang).detokenize(text.split())


class TranslationDataModule(BucketedDataModule):
    """Multi30k / IWSLT'14 de->en: reader -> joint BPE -> bucketed (src, tgt) batches."""

    def __init__(
        self,
        task: str = "multi30k",
        data_dir: str = "data",
        cache_dir: str | None = None,
        vocab_size: int | None = None,
        max_len: int = 128,
        batch_size: int | None = 64,
        max_tokens: int | None = None,
        eval_batch_size: int | None = None,
        eval_max_tokens: int | None = 2048,
        num_workers: int = 0,
        subset: dict | None = None,
        seed: int = 0,
        split_seed: int = 0,
        mini_val_size: int = MINI_VAL_SIZE,
        src_lang: str = "de",
        tgt_lang: str = "en",
        pin_memory: bool = False,
        test_split: str = "test",
    ) -> None:
        super().__init__()
        self.set_test_split(test_split)
        if task not in TRANSLATION_TASKS:
            raise ConfigError(f"data.task={task!r}: allowed translation tasks: {', '.join(TRANSLATION_TASKS)}")
        if (src_lang, tgt_lang) not in (("de", "en"), ("en", "de")):
            raise ConfigError(f"data.src_lang/tgt_lang={src_lang}/{tgt_lang}: only de<->en is available")
        if max_len < 2:
            raise ConfigError(f"data.max_len={max_len}: must be >= 2")
        self.task = task
        self.data_dir = Path(data_dir)
        self.cache_dir = resolve_cache_dir(self.data_dir, cache_dir)
        self.requested_vocab_size = int(vocab_size or DEFAULT_VOCAB[task])
        if self.requested_vocab_size < 100:
            raise ConfigError(f"data.vocab_size={vocab_size}: must be >= 100")
        self.max_len = int(max_len)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.eval_batch_size = eval_batch_size or batch_size
        if eval_max_tokens is not None and int(eval_max_tokens) < 1:
            raise ConfigError(f"data.eval_max_tokens={eval_max_tokens}: must be >= 1 (source tokens per batch) or null")
        self.eval_max_tokens = None if eval_max_tokens is None else int(eval_max_tokens)
        self.num_workers = num_workers
        self.subset = _check_subset(subset)
        self.seed = int(seed)
        self.split_seed = int(split_seed)
        self.mini_val_size = int(mini_val_size)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.pin_memory = pin_memory
        self.tokenized_text = task != "multi30k"  # IWSLT is Moses-tokenized
        self.tokenizer = None
        self.datasets: dict[str, _ListDataset] = {}
        self.setup_seconds: float | None = None
        self.tokenizer_path: Path | None = None
        self.tokenizer_sha256: str | None = None
        self.test_split_name = self._describe_test()

    def _describe_test(self) -> str:
        if self.task == "multi30k":
            return "multi30k test_2016_flickr (1,000 pairs)"
        name = "iwslt14 test (dev2010+tst2010-2012+TEDx dev2012; sacreBLEU on detokenized lowercase)"
        if self.task == "iwslt14_mini":
            name += f"; trained on a split of fairseq valid, {self.mini_val_size:,} lines held out (reduced offline setting)"
        return name

    def check_files(self) -> dict[str, Path]:
        """Raise DataError naming missing files and the fetch command (reads nothing)."""
        return check_files(self.task, self.data_dir)

    # ------------------------------------------------------------------ setup
    def _pairs(self, files: dict[str, Path], split: str) -> list[tuple[str, str]]:
        return read_parallel(files[f"{split}.{self.src_lang}"], files[f"{split}.{self.tgt_lang}"], task=self.task)

    def _read(self, files: dict[str, Path]) -> tuple[dict[str, list[tuple[str, str]]], list[Path]]:
        if self.task == "multi30k":
            names = {"train": "train", "val": "val", "test": "test_2016_flickr"}
            splits = {k: self._pairs(files, v) for k, v in names.items()}
            return splits, [files[f"train.{lang}"] for lang in ("de", "en")]
        if self.task == "iwslt14":
            splits = {k: self._pairs(files, v) for k, v in {"train": "train", "val": "valid", "test": "test"}.items()}
            return splits, [files[f"train.{lang}"] for lang in ("de", "en")]
        valid = self._pairs(files, "valid")
        kept, held = holdout_split(len(valid), self.mini_val_size, self.split_seed, what="iwslt14 valid")
        splits = {"train": [valid[i] for i in kept], "val": [valid[i] for i in held], "test": self._pairs(files, "test")}
        return splits, [files[f"valid.{lang}"] for lang in ("de", "en")]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        t0 = time.perf_counter()
        files = self.check_files()
        splits, tok_inputs = self._read(files)
        self._files = files
        self.split_sizes_full = {k: len(v) for k, v in splits.items()}
        if self.task == "iwslt14_mini":
            self.test_split_name = (
                "iwslt14 test (dev2010+tst2010-2012+TEDx dev2012; sacreBLEU on detokenized lowercase), "
                f"trained on a {len(splits['train']):,}-line split of fairseq valid (reduced offline setting)"
            )
        settings = {
            "kind": "translation",
            "task": self.task,
            "vocab_size": self.requested_vocab_size,
            "split_seed": self.split_seed,
            "mini_val_size": self.mini_val_size if self.task == "iwslt14_mini" else None,
            "inputs": self._signatures(tok_inputs),
        }
        self.tokenizer_path = tokmod.cache_path(self.cache_dir, self.task, settings)
        train = splits["train"]
        self.tokenizer = tokmod.load_or_train(
            "translation", self.tokenizer_path, lambda: iter_text(train), self.requested_vocab_size
        )
        self.tokenizer_sha256 = tokmod.tokenizer_sha256(self.tokenizer)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.pad_id = self.tokenizer.token_to_id("<pad>")
        self.unk_id = self.tokenizer.token_to_id("<unk>")
        self.bos_id = self.tokenizer.token_to_id("<bos>")
        self.eos_id = self.tokenizer.token_to_id("<eos>")
        for i, name in enumerate(("train", "val", "test")):
            rows = seeded_subset(splits[name], self.subset[name], self.split_seed + 1 + i)
            self.datasets[name] = _ListDataset(self._encode(rows))
        self.setup_seconds = time.perf_counter() - t0

    def _reference(self, text: str) -> str:
        return moses_detokenize(text, self.tgt_lang) if self.tokenized_text else text

    def _encode(self, pairs: list[tuple[str, str]]) -> list[dict]:
        assert self.tokenizer is not None
        src = self.tokenizer.encode_batch([p[0] for p in pairs], add_special_tokens=False)
        tgt = self.tokenizer.encode_batch([p[1] for p in pairs], add_special_tokens=False)
        out = []
        for i, ((s_text, t_text), s, t) in enumerate(zip(pairs, src, tgt)):
            out.append(
                {
                    "index": i,
                    "src": s.ids[: self.max_len] or [self.unk_id],
                    "tgt": t.ids[: self.max_len - 1],
                    "src_text": s_text,
                    "ref_text": self._reference(t_text),
                }
            )
        return out

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        """Source-side ids of one sentence (as in ``src_ids``, truncated to ``max_len``)."""
        assert self.tokenizer is not None, "call setup() first"
        return self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_len]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> detokenized text: stops at ``<eos>``, drops ``<bos>``/``<pad>``/``<unk>``."""
        assert self.tokenizer is not None, "call setup() first"
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        kept = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(int(i))
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return self._reference(text)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]

    # ------------------------------------------------------------------ loaders
    def item_length(self, item: dict) -> int:
        return max(len(item["src"]), len(item["tgt"]) + 1)

    def collator(self):
        return _IndexedCollator(self.pad_id, self.bos_id, self.eos_id)

    def _loader(self, split: str, train: bool) -> torch.utils.data.DataLoader:
        if train or self.eval_max_tokens is None or not self.datasets:
            return super()._loader(split, train)
        items = self.datasets[split].items
        sampler = BucketBatchSampler([len(e["src"]) for e in items], max_tokens=self.eval_max_tokens,
                                     shuffle=False, seed=self.seed)  # unshuffled: longest source first
        return torch.utils.data.DataLoader(self.datasets[split], batch_sampler=sampler, collate_fn=self.collator(),
                                           num_workers=self.num_workers, pin_memory=self.pin_memory)


class _IndexedCollator(TranslationCollator):
    """The translation batch plus ``index``: each example's position in its split."""

    def __call__(self, examples: list[dict]) -> dict:
        batch = super().__call__(examples)
        batch["index"] = [e["index"] for e in examples]
        return batch

