"""`python -m softmax_approx.bench decode`: translation decoding speed, cached vs uncached.

For each model preset (``transformer_iwslt``, ``transformer_multi30k``: the sizes of
``conf/model/<preset>.yaml``, random weights), beam size (1 = greedy, 5) and decoder
(``cached``: incremental key/value cache; uncached: the whole prefix re-run every step), the
same sentences are decoded in one process and one record is written:

* ``sentences_per_second``, ``tokens_per_second`` (output tokens, eos excluded), from the wall
  time ``seconds`` of one run; ``cpu_seconds``, the process's CPU time over the same run;
* ``speedup_vs_uncached`` (wall time) and ``cpu_speedup_vs_uncached`` (CPU time) on cached rows
  (same preset, beam and sentences). On a machine shared with other jobs the wall time of a
  one-thread run includes waiting for a core; the CPU-time ratio does not.

Random weights never emit eos, so each sentence's output length is **forced** (eos blocked
until the limit, then forced): the source and output lengths of sentence i are pair i of a
stratified sample of the real test set's lengths, in BPE tokens (:data:`LENGTHS`). Batches are
cut like evaluation batches (sorted by source length, ``--max-tokens`` padded source tokens).
``--ckpt`` decodes with a trained checkpoint's model instead (lengths still forced, so the
numbers compare with the random-weight ones).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from softmax_approx.utils.extras import require

require("harness")  # first: without the extra, one line naming it instead of an ImportError

import torch

from ._common import add_output_args, write_outputs

#: Source/target lengths in BPE tokens of the official test sets, one (src, tgt) pair per
#: percentile: the pairs sorted by (src, tgt) and the one at rank floor((i + 0.5) * N / 100)
#: kept, i = 0..99. Computed once with the project's 8,000-piece joint BPE (data/tokenizer.py)
#: trained on each task's training split, from
#: * IWSLT'14 de-en ``test`` (6,750 pairs; fairseq ``examples/translation/prepare-iwslt14.sh``
#:   output: dev2010 + tst2010-2012 + TEDx dev2012 from https://wit3.fbk.eu): mean 27.2 / 27.7
#:   tokens, longest 278 / 248 (BPE trained on the iwslt14_mini split of fairseq ``valid``);
#: * Multi30k task 1 ``test_2016_flickr`` (1,000 pairs; https://github.com/multi30k/dataset):
#:   mean 14.3 / 14.2 tokens, longest 39 / 34.
LENGTHS = {
    "iwslt14": [
        (3, 4), (5, 5), (6, 6), (7, 6), (7, 8), (7, 14), (8, 8), (8, 11), (9, 8), (9, 10), (9, 14), (10, 9),
        (10, 12), (10, 17), (11, 10), (11, 12), (11, 15), (12, 10), (12, 12), (12, 15), (13, 9), (13, 12),
        (13, 14), (13, 18), (14, 12), (14, 15), (14, 19), (15, 12), (15, 15), (15, 19), (16, 11), (16, 15),
        (16, 19), (16, 33), (17, 15), (17, 18), (17, 23), (18, 16), (18, 19), (18, 24), (19, 17), (19, 21),
        (19, 29), (20, 19), (20, 22), (21, 16), (21, 22), (21, 27), (22, 20), (22, 24), (23, 10), (23, 23),
        (23, 31), (24, 22), (24, 27), (25, 21), (25, 27), (26, 20), (26, 27), (26, 40), (27, 24), (27, 31),
        (28, 25), (28, 33), (29, 27), (29, 37), (30, 30), (30, 43), (31, 32), (32, 25), (32, 35), (33, 30),
        (33, 42), (34, 36), (35, 34), (36, 26), (36, 40), (37, 38), (38, 35), (39, 30), (40, 23), (40, 48),
        (42, 33), (42, 52), (44, 36), (45, 38), (46, 42), (47, 49), (48, 54), (50, 56), (53, 39), (55, 48),
        (57, 48), (59, 69), (63, 56), (66, 65), (70, 83), (77, 67), (86, 75), (108, 113),
    ],
    "multi30k": [
        (6, 8), (7, 7), (7, 8), (7, 10), (8, 7), (8, 8), (8, 9), (8, 10), (8, 12), (9, 9), (9, 9), (9, 9),
        (9, 10), (9, 11), (9, 11), (9, 14), (10, 9), (10, 9), (10, 10), (10, 10), (10, 11), (10, 11), (10, 11),
        (10, 12), (11, 10), (11, 11), (11, 11), (11, 11), (11, 12), (11, 12), (11, 13), (11, 13), (11, 15),
        (12, 9), (12, 10), (12, 11), (12, 12), (12, 12), (12, 12), (12, 13), (12, 13), (12, 14), (12, 15),
        (13, 10), (13, 11), (13, 12), (13, 13), (13, 13), (13, 14), (13, 14), (13, 15), (13, 19), (14, 12),
        (14, 13), (14, 13), (14, 14), (14, 14), (14, 15), (14, 17), (15, 12), (15, 13), (15, 14), (15, 15),
        (15, 16), (15, 16), (15, 17), (15, 19), (16, 13), (16, 15), (16, 15), (16, 16), (16, 16), (16, 17),
        (16, 20), (17, 13), (17, 15), (17, 16), (17, 18), (17, 21), (18, 15), (18, 16), (18, 18), (18, 21),
        (19, 15), (19, 18), (19, 19), (20, 15), (20, 19), (20, 27), (21, 19), (21, 21), (22, 17), (22, 21),
        (23, 22), (24, 20), (26, 18), (27, 19), (29, 23), (31, 28), (35, 33),
    ],
}
#: preset -> the task whose test lengths and vocabulary size it is benchmarked with
PRESET_TASK = {"transformer_iwslt": "iwslt14", "transformer_multi30k": "multi30k"}
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the translation tokenizer's specials (data/tokenizer.py)


def sample_lengths(task: str, n: int) -> list[tuple[int, int]]:
    """n (source, target) pairs spread evenly over the percentile table (cycled past 100)."""
    table = LENGTHS[task]
    return [table[(i * len(table)) // n] if n <= len(table) else table[i % len(table)] for i in range(n)]


def preset_model(preset: str, vocab_size: int, overrides: dict) -> torch.nn.Module:
    """Random-weight Translator with the preset's sizes (``overrides`` for tests / what-ifs)."""
    from omegaconf import OmegaConf

    from ..conf import CONF_DIR
    from ..models.translator import Translator

    node = OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml")
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=False).items()
              if k not in ("_target_", "kind", "policy", "policy_params")}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return Translator(vocab_size=vocab_size, pad_id=PAD, **kwargs).eval()


def checkpoint_model(path: Path) -> tuple[torch.nn.Module, str]:
    """The Translator of a training run's checkpoint (config from the run's results.json)."""
    from omegaconf import OmegaConf

    from ..harness.instantiate import instantiate_model
    from ..utils.run_record import FILENAME

    run_dir = path.resolve().parent.parent  # <run>/checkpoints/<name>.ckpt
    record = json.loads((run_dir / FILENAME).read_text())
    state = {k[len("net."):]: v for k, v in torch.load(path, map_location="cpu", weights_only=False)["state_dict"].items()
             if k.startswith("net.")}
    cfg = OmegaConf.create(record["config"])
    net = instantiate_model(cfg.model, vocab_size=state["tgt_embed.weight"].shape[0], pad_id=PAD)
    net.load_state_dict(state)
    task = "multi30k" if record["config"]["task"]["name"] == "multi30k" else "iwslt14"
    return net.eval(), task


def make_batches(lengths: list[tuple[int, int]], vocab_size: int, max_tokens: int, seed: int):
    """Evaluation-style batches of random source ids: (src_ids, src_mask, output limits)."""
    from ..data.batching import BucketBatchSampler

    g = torch.Generator().manual_seed(seed)
    sampler = BucketBatchSampler([s for s, _ in lengths], max_tokens=max_tokens, shuffle=False)
    out = []
    for idx in sampler:
        longest = max(lengths[i][0] for i in idx)
        src = torch.full((len(idx), longest), PAD)
        for r, i in enumerate(idx):
            src[r, : lengths[i][0]] = torch.randint(4, vocab_size, (lengths[i][0],), generator=g)
        limits = torch.tensor([lengths[i][1] + 1 for i in idx])  # output tokens + eos
        out.append((src, src != PAD, limits))
    return out


def time_decoding(model, batches, beam: int, cached: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds to decode every batch (one run), and the output tokens produced."""
    from ..models.decoding import decode

    tokens = 0
    start, cpu = time.perf_counter(), time.process_time()
    for src, mask, limits in batches:
        hyp = decode(model, src, mask, strategy="greedy" if beam == 1 else "beam", beam=beam, alpha=1.0,
                     bos_id=BOS, eos_id=EOS, pad_id=PAD, min_len=10**9, limits=limits, cache=cached)
        tokens += sum(len(t) for t in hyp.tokens)
    return time.perf_counter() - start, time.process_time() - cpu, tokens


def run(args) -> list[dict]:
    from ..data.translation import DEFAULT_VOCAB

    torch.set_num_threads(args.threads)
    overrides = dict(_parse_override(o) for o in args.override or [])
    records = []
    targets = [("checkpoint", None)] if args.ckpt else [(p, None) for p in args.preset]
    for preset, _ in targets:
        if args.ckpt:
            model, task = checkpoint_model(Path(args.ckpt))
            vocab = model.output.weight.shape[0]
        else:
            task = PRESET_TASK[preset]
            vocab = args.vocab or DEFAULT_VOCAB[task]
            model = preset_model(preset, vocab, overrides)
        lengths = sample_lengths(task, args.sentences)
        batches = make_batches(lengths, vocab, args.max_tokens, args.seed)
        for beam in args.beam:
            by_cache = {}
            for cached in [c == "cached" for c in args.decoder]:
                seconds, cpu_seconds, tokens = time_decoding(model, batches, beam, cached)
                rec = {"preset": preset, "lengths": task, "beam": beam, "cached": cached,
                       "sentences": len(lengths), "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds,
                       "sentences_per_second": len(lengths) / seconds, "tokens_per_second": tokens / seconds,
                       "speedup_vs_uncached": None, "cpu_speedup_vs_uncached": None,
                       "threads": args.threads, "max_tokens": args.max_tokens,
                       "checkpoint": args.ckpt, "overrides": overrides}
                by_cache[cached] = rec
                records.append(rec)
                print(format_row(rec), flush=True)
            if len(by_cache) == 2:
                by_cache[True]["speedup_vs_uncached"] = by_cache[False]["seconds"] / by_cache[True]["seconds"]
                by_cache[True]["cpu_speedup_vs_uncached"] = by_cache[False]["cpu_seconds"] / by_cache[True]["cpu_seconds"]
                print(format_row(by_cache[True]), "(with speed-ups)", flush=True)
    return records


def _parse_override(spec: str) -> tuple[str, object]:
    key, eq, value = spec.partition("=")
    if not eq:
        raise ValueError(f"--override {spec!r}: expected KEY=VALUE (a Translator argument, e.g. d_model=64)")
    return key, json.loads(value)


def format_row(r: dict) -> str:
    speed = "" if r["speedup_vs_uncached"] is None else f"{r['speedup_vs_uncached']:.2f}"
    cpu_speed = "" if r["cpu_speedup_vs_uncached"] is None else f"{r['cpu_speedup_vs_uncached']:.2f}"
    return (f"| {r['preset']} | {r['lengths']} | {r['beam']} | {'yes' if r['cached'] else 'no'} | {r['sentences']} | "
            f"{r['tokens']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['sentences_per_second']:.2f} | "
            f"{r['tokens_per_second']:.1f} | {speed} | {cpu_speed} |")


def markdown_table(records: list[dict]) -> str:
    head = ("| preset | lengths | beam | cached | sentences | output tokens | seconds | CPU seconds | sentences/s | "
            "tokens/s | speed-up vs uncached | CPU-time speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(format_row(r) for r in records) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m softmax_approx.bench decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", choices=sorted(PRESET_TASK), default=sorted(PRESET_TASK))
    p.add_argument("--beam", type=int, nargs="+", default=[1, 5])
    p.add_argument("--decoder", nargs="+", choices=["uncached", "cached"], default=["uncached", "cached"],
                   help="which decoders to time (speed-ups need both)")
    p.add_argument("--sentences", type=int, default=16, help="sentences per preset (spread over the length table)")
    p.add_argument("--max-tokens", type=int, default=2048, help="padded source tokens per batch (eval_max_tokens)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the preset task's)")
    p.add_argument("--override", action="append", help="KEY=VALUE Translator argument over the preset, repeatable")
    p.add_argument("--ckpt", help="a training run's checkpoint (<run>/checkpoints/*.ckpt) instead of the presets")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sentences < 1 or args.max_tokens < 1 or any(b < 1 for b in args.beam):
        parser.error("--sentences, --max-tokens and --beam must be >= 1")
    if args.ckpt and not Path(args.ckpt).is_file():
        parser.error(f"--ckpt {args.ckpt}: no such file")
    try:
        records = run(args)
    except ValueError as err:
        parser.error(str(err))
    write_outputs(args, records, markdown_table(records))
    return 0
