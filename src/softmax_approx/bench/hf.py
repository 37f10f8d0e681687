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
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..core import POLICIES, ActivationMeter
from ._common import add_output_args, median_seconds, write_outputs
from .attention import parse_policy, policy_spec

#: name -> (Transformers model_type, config keys)
PRESETS = {
    "bert-base-shaped": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072, vocab_size=30522, max_position_embeddings=512)),
    "bert-small-shaped": ("bert", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=1024, vocab_size=30522, max_position_embeddings=512)),
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


def measure(model, inputs) -> dict:
    with ActivationMeter(model) as meter:
        loss = _loss(model, inputs)
    report = meter.report()
    del loss
    return {"attention_bytes": report.attention_bytes, "total_bytes": report.total_bytes,
            "softmax_state_bytes": report.softmax_state_bytes}


def time_fwd_bwd(model, inputs, repeats: int) -> float:
    def step():
        _loss(model, inputs).backward()
        model.zero_grad(set_to_none=True)

    return median_seconds(step, repeats, torch.device("cpu"))


def param_grads(model, inputs) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    _loss(model, inputs).backward()
    g = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def run(args) -> list[dict]:
    from ..integrations import transformers as sa_hf

    specs = [parse_policy(s) for s in (args.implementation or DEFAULT_IMPLEMENTATIONS)]
    if specs[0] != ("eager", {}):
        specs = [("eager", {})] + [s for s in specs if s != ("eager", {})]
    model = build_model(args.model, args.seed)
    inputs = make_batch(model, args.batch, args.seq_len, args.seed)
    reference = None
    if args.fidelity:
        quiet = build_model(args.model, args.seed, dropout=False)
        sa_hf.apply(quiet, "exact")
        reference = param_grads(quiet, inputs)
    records = []
    for name, params in specs:
        layers = sa_hf.apply(model, name, **params)
        rec = {"model": args.model, "implementation": name, "params": params, "batch": args.batch,
               "seq_len": args.seq_len, "attention_layers": layers, **measure(model, inputs)}
        if args.time:
            rec["seconds_fwd_bwd"] = time_fwd_bwd(model, inputs, args.repeats)
        if reference is not None:
            quiet = build_model(args.model, args.seed, dropout=False)
            sa_hf.apply(quiet, name, **params)
            rec["grad_cosine"] = torch.nn.functional.cosine_similarity(param_grads(quiet, inputs), reference, dim=0).item()
            del quiet
        base = records[0] if records else rec
        rec["attention_reduction_vs_eager"] = 1 - rec["attention_bytes"] / base["attention_bytes"]
        rec["total_reduction_vs_eager"] = 1 - rec["total_bytes"] / base["total_bytes"]
        if args.time:
            rec["time_ratio_vs_eager"] = rec["seconds_fwd_bwd"] / base["seconds_fwd_bwd"]
        records.append(rec)
        print(format_row(rec), flush=True)
    return records


def _label(r: dict) -> str:
    cls = POLICIES.get(r["implementation"])
    own = " (Transformers)" if cls is not None and cls.native else ""
    params = ",".join(f"{k}={v}" for k, v in r["params"].items())
    return r["implementation"] + (f"({params})" if params else "") + own


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def format_row(r: dict) -> str:
    extra = ""
    if "time_ratio_vs_eager" in r:
        extra += f" time x{r['time_ratio_vs_eager']:.2f}"
    if "grad_cosine" in r:
        extra += f" cos {r['grad_cosine']:.5f}"
    return (f"{_label(r):32} attention {_mib(r['attention_bytes']):>9} MiB ({r['attention_reduction_vs_eager']:+.3f}) "
            f"total {_mib(r['total_bytes']):>9} MiB ({r['total_reduction_vs_eager']:+.3f}){extra}")


def markdown_table(records: list[dict]) -> str:
    timed = all("time_ratio_vs_eager" in r for r in records)
    fid = all("grad_cosine" in r for r in records)
    cols = ["implementation", "attention MiB", "attention reduction vs eager", "whole-model MiB",
            "whole-model reduction vs eager"] + (["time / eager"] if timed else []) + (["grad cosine vs exact"] if fid else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        row = [_label(r), _mib(r["attention_bytes"]), f"{r['attention_reduction_vs_eager'] * 100:.1f}%",
               _mib(r["total_bytes"]), f"{r['total_reduction_vs_eager'] * 100:.1f}%"]
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
                   help="eager | sdpa (Transformers' own) or POLICY[:key=value,...]; repeatable (default: all)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--time", action="store_true", help="also time forward+backward (median of --repeats)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fidelity", action="store_true", help="also the parameter-gradient cosine against exact")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for spec in args.implementation or []:
            parse_policy(spec)
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
          f"threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)
    records = run(args)
    write_outputs(args, records, markdown_table(records) + "\n")
    return 0


if __name__ == "__main__":  # python -m softmax_approx.bench.hf
    sys.exit(main())
