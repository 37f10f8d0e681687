"""`python -m softmax_approx.bench hf`: activation memory of a Transformers model per attention.

One random-initialised Transformers encoder (default: BERT-base-shaped, 12 layers, hidden 768,
12 heads, from a config: no download) in training mode (its dropout on), one batch of random
token ids, and for each implementation — Transformers' own ``eager`` and ``sdpa``, and our
policies through :func:`softmax_approx.integrations.transformers.apply` — the bytes autograd
keeps for backward, measured with :class:`softmax_approx.core.ActivationMeter` (exact bytes):

* ``attention_bytes``  saved inside the attention modules (the Transformers modules that call
                       the attention function, e.g. ``BertSelfAttention``: Q/K/V projections and
                       attention; the output projection lives in ``BertSelfOutput``);
* ``total_bytes``      everything saved by the forward pass, parameters excluded;
* ``*_reduction_vs_eager``  1 - bytes / eager's bytes, same model, same batch.

``--time`` adds the median forward+backward time over eager's, ``--fidelity`` the cosine of
all parameter gradients against ``exact`` (dropout off for that comparison); both cost a
backward pass per implementation (slow at BERT-base size on a CPU).

``--peers`` adds the configurations users pick today and our whole-model modes (see
:data:`CONFIGURATIONS`): Transformers ``sdpa`` with attention dropout 0 (PyTorch's fused
kernel), activation checkpointing of every layer and of every other layer
(``torch.utils.checkpoint``), selective checkpointing (saving the outputs of every matmul),
and :func:`softmax_approx.nn.compress_activations` in ``exact`` and ``int8`` modes. Every row
runs on its own copy of the model sharing the same parameters; timed steps are interleaved
across rows (one step of each row per round), so a change in machine load hits all rows alike.
``peak_bytes`` is the peak memory of one training step above the level before it
(:mod:`._peak`: RSS on a CPU, ``max_memory_allocated`` on a GPU), which also shows what
checkpointing holds while it recomputes a layer in backward (saved bytes do not); it is
measured after the timing, because making glibc return freed memory (which the RSS reading
needs) slows every allocation, most for the rows that allocate most.
Checkpointed regions' saved bytes are their inputs (reentrant checkpointing saves them) and,
for selective checkpointing, the outputs it keeps.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time

import torch
from torch import nn

from ..core import POLICIES, ActivationMeter
from ..core.memory import storage_key, storage_nbytes
from ._common import add_output_args, median_seconds, sync, write_outputs
from ._peak import peak_bytes, return_freed_memory
from .attention import parse_policy, policy_spec

#: name -> (Transformers model_type, config keys)
PRESETS = {
    "bert-base-shaped": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072, vocab_size=30522, max_position_embeddings=512)),
    "bert-small-shaped": ("bert", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=1024, vocab_size=30522, max_position_embeddings=512)),
    "bert-long-shaped": ("bert", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=1024, vocab_size=30522, max_position_embeddings=2048)),
    "tiny": ("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, vocab_size=1000, max_position_embeddings=512)),
}
#: Transformers' own implementations first, then every other registered policy at its defaults.
DEFAULT_IMPLEMENTATIONS = tuple(policy_spec(n, {}) for n in sorted(POLICIES, key=lambda n: not POLICIES[n].native))


def build_model(preset: str, seed: int, dropout: bool = True):
    from transformers import AutoConfig, AutoModel

    model_type, keys = PRESETS[preset]
    cfg = AutoConfig.for_model(model_type, **keys)
    if not dropout:
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    return AutoModel.from_config(cfg, attn_implementation="eager").train()


def make_batch(model, batch: int, seq_len: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _loss(model, inputs) -> torch.Tensor:
    return model(**inputs).last_hidden_state.float().square().mean()


# ------------------------------------------------------------------------- configurations
class Row:
    """One configuration on its own model copy: how it is set up and what it keeps outside
    what autograd's saved-tensor hooks see (checkpointing's region inputs and cached outputs)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.held: list = []  # what checkpointing keeps, collected during a measured forward
        self.recording = False  # only then: holding it longer would change the peak it measures

    def extra_tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []

        def walk(x):
            if isinstance(x, torch.Tensor):
                out.append(x)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)
            elif hasattr(x, "val"):  # SAC's version wrapper
                walk(x.val)
            elif hasattr(x, "storage"):  # SAC's caching mode: its storage dict of kept outputs
                walk(dict(x.storage))
        walk(self.held)
        return out


def _layers(model: nn.Module) -> nn.ModuleList:
    """The stack of Transformer layers (the first ModuleList: BERT's ``encoder.layer``)."""
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            return m
    raise ValueError(f"{type(model).__name__}: no ModuleList of layers to checkpoint")


def _checkpoint_layers(row: Row, every: int, selective: bool) -> None:
    """Checkpoint every ``every``-th layer: reentrant (it saves the region's inputs, which the
    meter counts), or non-reentrant with selective checkpointing keeping matmul outputs."""
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    def contexts():
        fwd, recompute = create_selective_checkpoint_contexts(policy)
        if row.recording:
            row.held.append(fwd)
        return fwd, recompute

    for i, layer in enumerate(_layers(row.model)):
        if i % every:
            continue
        forward = layer.forward

        def wrapped(*args, _forward=forward, **kwargs):
            fn = functools.partial(_forward, **kwargs)
            if selective and row.recording:
                row.held.append(args)
                return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)
            return checkpoint(fn, *args, use_reentrant=True)

        layer.forward = wrapped


def _no_attention_dropout(row: Row) -> None:
    from ..integrations import transformers as sa_hf

    sa_hf.apply(row.model, "sdpa")
    row.model.config.attention_probs_dropout_prob = 0.0
    for _, m in sa_hf.attention_modules(row.model):
        for name in ("dropout", "attn_dropout"):
            if isinstance(getattr(m, name, None), nn.Dropout):
                getattr(m, name).p = 0.0


def _compress(row: Row, linear: str, layernorm: str = "shared") -> None:
    from ..nn import compress_activations

    compress_activations(row.model, linear=linear, layernorm=layernorm)


#: name -> (label, setup(row)); besides these, "eager"/"sdpa" and any policy spec (parse_policy)
CONFIGURATIONS = {
    "sdpa-no-attention-dropout": ("Transformers sdpa, attention dropout 0 (PyTorch's fused kernel)", _no_attention_dropout),
    "checkpoint": ("activation checkpointing, every layer", lambda r: _checkpoint_layers(r, 1, False)),
    "checkpoint-every-other": ("activation checkpointing, every other layer", lambda r: _checkpoint_layers(r, 2, False)),
    "selective-checkpoint": ("selective checkpointing (keep matmul outputs)", lambda r: _checkpoint_layers(r, 1, True)),
    "compress-exact": ("compress_activations, exact", lambda r: _compress(r, "exact")),
    "compress-int8-ln16": ("compress_activations, int8 (LayerNorm output int16)", lambda r: _compress(r, "int8", "int16")),
    "compress-int8": ("variant: compress_activations, int8, LayerNorm shared", lambda r: _compress(r, "int8")),
    "compress-int8-ln8": ("variant: compress_activations, int8, LayerNorm output int8", lambda r: _compress(r, "int8", "int8")),
}
PEER_IMPLEMENTATIONS = ("eager", "sdpa", "sdpa-no-attention-dropout", "checkpoint", "checkpoint-every-other",
                        "selective-checkpoint", "exact", "recompute", "quant:bits=8", "topk:keep_ratio=0.125",
                        "paper:S=5", "compress-exact", "compress-int8-ln16", "compress-int8", "compress-int8-ln8")


def parse_spec(spec: str) -> tuple[str, dict]:
    """A configuration name, or ``POLICY[:key=value,...]`` (``ValueError`` when neither)."""
    return (spec, {}) if spec in CONFIGURATIONS else parse_policy(spec)


def make_row(base: nn.Module, name: str, params: dict) -> Row:
    """A copy of ``base`` sharing its parameters, set up as ``name``."""
    from ..integrations import transformers as sa_hf

    model = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})
    row = Row(model)
    if name in CONFIGURATIONS:
        CONFIGURATIONS[name][1](row)
    else:
        sa_hf.apply(model, name, **params)
    sa_hf.mark_attention_modules(model)
    return row


# ------------------------------------------------------------------------- measurements
def measure(row: Row, inputs, peak: bool = False) -> dict:
    """Saved bytes of one training step (and, with ``peak``, the step's peak memory)."""
    model = row.model
    out: dict = {}

    def step():
        row.held.clear()
        row.recording = True
        with ActivationMeter(model) as meter:
            loss = _loss(model, inputs)
        row.recording = False
        report = meter.report()
        seen, params = set(report.records), {storage_key(p) for p in model.parameters()}
        extra = 0
        for t in row.extra_tensors():
            key = storage_key(t)
            if key not in seen and key not in params:
                seen.add(key)
                extra += storage_nbytes(t)
        row.held.clear()  # counted: let backward free them as it goes
        loss.backward()
        model.zero_grad(set_to_none=True)
        out.update(attention_bytes=report.attention_bytes, total_bytes=report.total_bytes + extra,
                   softmax_state_bytes=report.softmax_state_bytes)

    if peak:
        out["peak_bytes"] = peak_bytes(step, torch.device("cpu"))
    else:
        step()
    return out


def _step(row: Row, inputs) -> None:
    _loss(row.model, inputs).backward()
    row.model.zero_grad(set_to_none=True)
    row.held.clear()


def time_fwd_bwd(model, inputs, repeats: int) -> float:
    row = model if isinstance(model, Row) else Row(model)
    return median_seconds(lambda: _step(row, inputs), repeats, torch.device("cpu"))


#: ``--clock``: wall time, or the CPU time of this process (all its threads), which other
#: processes on a shared machine disturb far less (with one thread: no OpenMP spin-waiting in it)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_seconds(rows: list[Row], inputs, repeats: int, warmup: int = 1, clock: str = "wall") -> list[float]:
    """Median training-step seconds per row, one step of every row per round."""
    times: list[list[float]] = [[] for _ in rows]
    device = torch.device("cpu")
    now = CLOCKS[clock]
    for i in range(warmup + repeats):
        for k, row in enumerate(rows):
            sync(device)
            start = now()
            _step(row, inputs)
            sync(device)
            if i >= warmup:
                times[k].append(now() - start)
    return [statistics.median(t) for t in times]


def param_grads(model, inputs) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    _loss(model, inputs).backward()
    g = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def run(args) -> list[dict]:
    from ..integrations import transformers as sa_hf

    default = PEER_IMPLEMENTATIONS if args.peers else DEFAULT_IMPLEMENTATIONS
    specs = [parse_spec(s) for s in (args.implementation or default)]
    if specs[0] != ("eager", {}):
        specs = [("eager", {})] + [s for s in specs if s != ("eager", {})]
    base = build_model(args.model, args.seed)
    inputs = make_batch(base, args.batch, args.seq_len, args.seed)
    reference = None
    if args.fidelity:
        quiet = build_model(args.model, args.seed, dropout=False)
        reference = param_grads(make_row(quiet, "exact", {}).model, inputs)
    rows, records = [], []
    for name, params in specs:
        row = make_row(base, name, params)
        layers = len(sa_hf.attention_modules(row.model))
        torch.manual_seed(args.seed)
        rec = {"model": args.model, "implementation": name, "params": params, "batch": args.batch,
               "seq_len": args.seq_len, "attention_layers": layers, **measure(row, inputs)}
        if reference is not None:
            quiet = make_row(build_model(args.model, args.seed, dropout=False), name, params)
            rec["grad_cosine"] = torch.nn.functional.cosine_similarity(param_grads(quiet.model, inputs), reference, dim=0).item()
            del quiet
        first = records[0] if records else rec
        rec["attention_reduction_vs_eager"] = 1 - rec["attention_bytes"] / first["attention_bytes"] if first["attention_bytes"] else 0.0
        rec["total_reduction_vs_eager"] = 1 - rec["total_bytes"] / first["total_bytes"]
        records.append(rec)
        rows.append(row)
        print(format_row(rec), flush=True)
    if args.time:
        seconds = interleaved_seconds(rows, inputs, args.repeats, warmup=args.warmup, clock=args.clock)
        for rec, sec in zip(records, seconds):
            rec["seconds_fwd_bwd"] = sec
            rec["time_ratio_vs_eager"] = sec / seconds[0]
        print(f"# step {args.clock} time / eager (interleaved, median of {args.repeats}): "
              + ", ".join(f"{_label(r)} {r['time_ratio_vs_eager']:.2f}" for r in records), flush=True)
    if args.peak:  # last: returning freed memory to the system makes allocation slower
        return_freed_memory()
        for rec, row in zip(records, rows):
            rec["peak_bytes"] = measure(row, inputs, peak=True)["peak_bytes"]
        print("# peak MiB of a step: " + ", ".join(f"{_label(r)} {_mib(r['peak_bytes'])}" for r in records), flush=True)
    return records


def _label(r: dict) -> str:
    if r["implementation"] in CONFIGURATIONS:
        return CONFIGURATIONS[r["implementation"]][0]
    cls = POLICIES.get(r["implementation"])
    own = " (Transformers)" if cls is not None and cls.native else ""
    params = ",".join(f"{k}={v}" for k, v in r["params"].items())
    return r["implementation"] + (f"({params})" if params else "") + own


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def format_row(r: dict) -> str:
    extra = ""
    if "peak_bytes" in r:
        extra += f" peak {_mib(r['peak_bytes'])} MiB"
    if "time_ratio_vs_eager" in r:
        extra += f" time x{r['time_ratio_vs_eager']:.2f}"
    if "grad_cosine" in r:
        extra += f" cos {r['grad_cosine']:.5f}"
    return (f"{_label(r):32} attention {_mib(r['attention_bytes']):>9} MiB ({r['attention_reduction_vs_eager']:+.3f}) "
            f"total {_mib(r['total_bytes']):>9} MiB ({r['total_reduction_vs_eager']:+.3f}){extra}")


def markdown_table(records: list[dict]) -> str:
    timed = all("time_ratio_vs_eager" in r for r in records)
    fid = all("grad_cosine" in r for r in records)
    peak = all("peak_bytes" in r for r in records)
    cols = (["implementation", "attention MiB", "attention reduction vs eager", "whole-model MiB",
             "whole-model reduction vs eager"] + (["peak MiB of a step"] if peak else [])
            + (["time / eager"] if timed else []) + (["grad cosine vs exact"] if fid else []))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        row = [_label(r), _mib(r["attention_bytes"]), f"{r['attention_reduction_vs_eager'] * 100:.1f}%",
               _mib(r["total_bytes"]), f"{r['total_reduction_vs_eager'] * 100:.1f}%"]
        if peak:
            row.append(_mib(r["peak_bytes"]))
        if timed:
            row.append(f"{r['time_ratio_vs_eager']:.2f}")
        if fid:
            row.append(f"{r['grad_cosine']:.5f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m softmax_approx.bench hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(PRESETS), default="bert-base-shaped")
    p.add_argument("--implementation", action="append",
                   help="eager | sdpa (Transformers' own), a configuration (" + " | ".join(CONFIGURATIONS)
                   + ") or POLICY[:key=value,...]; repeatable (default: all attention policies)")
    p.add_argument("--peers", action="store_true",
                   help="default rows: the peers' configurations and our whole-model modes too")
    p.add_argument("--peak", action="store_true", help="also the peak memory of one training step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--time", action="store_true", help="also time forward+backward (median of --repeats)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="time steps by wall clock or by this process's CPU time (for a loaded machine)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds before the timed ones (each row has already run one step to be measured)")
    p.add_argument("--fidelity", action="store_true", help="also the parameter-gradient cosine against exact")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p)
    return p


def _load() -> str:
    """The 1-minute load average (other processes' share of the CPU), where known."""
    try:
        import os

        return f"{os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for spec in args.implementation or []:
            parse_spec(spec)
        if args.seq_len < 1 or args.batch < 1:
            raise ValueError(f"--seq-len and --batch must be >= 1, got {args.seq_len}, {args.batch}")
        limit = PRESETS[args.model][1]["max_position_embeddings"]
        if args.seq_len > limit:
            raise ValueError(f"--seq-len {args.seq_len} exceeds the model's {limit} positions")
        import transformers  # noqa: F401
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    except ImportError:
        parser.exit(2, "error: this benchmark needs Transformers: pip install 'softmax-approx[hf]'\n")
    print(f"# {args.model} batch={args.batch} seq_len={args.seq_len} train mode (dropout on) cpu fp32 "
          f"threads={torch.get_num_threads()} torch={torch.__version__} load={_load()}", flush=True)
    records = run(args)
    write_outputs(args, records, markdown_table(records) + "\n")
    return 0


if __name__ == "__main__":  # python -m softmax_approx.bench.hf
    sys.exit(main())
