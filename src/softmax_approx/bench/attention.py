"""`python -m softmax_approx.bench`: memory, speed and gradient fidelity of every policy.

One attention call (B, H, n, head_dim) per policy and sequence length, all in one process:

* ``state_bytes_per_score``   bytes of the n x n part kept for backward (the policy's state plus
                              any dropout mask / dropped probabilities), per score element,
                              measured with :class:`softmax_approx.core.ActivationMeter`;
* ``attention_saved_bytes``   everything the attention call keeps (q, k, v included);
* ``reduction_vs_eager``      1 - state bytes / eager's state bytes (same for ``_vs_exact``);
* ``module_reduction_vs_eager`` the same on ``attention_saved_bytes``;
* ``time_ratio_vs_eager``     median forward+backward time over eager's (same process);
* ``grad_cosine``, ``grad_rel_err``  the concatenated q, k, v gradients against a float64
                              exact reference (measured with dropout off: dropout is exact in
                              every fused policy, and eager/sdpa draw masks we cannot replay).

Logits generators (q, k ~ N(0, sigma^2), scores = q.k / sqrt(head_dim) have std sigma^2):
``random`` sigma = 1 (flat rows, std 1), ``peaked`` sigma = 2 (std 4: a few keys dominate,
as in trained attention).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ..core import ActivationMeter, attention, make_policy
from ..utils.atomic import write_text

DEFAULT_POLICIES = ("eager", "exact", "paper:S=5", "topk:keep_ratio=0.125", "quant:bits=8", "quant:bits=4", "recompute", "sdpa")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_SIGMA = {"random": 1.0, "peaked": 2.0}


def parse_policy(spec: str) -> tuple[str, dict]:
    """'topk:keep_ratio=0.25' -> ('topk', {'keep_ratio': 0.25}); validated by make_policy."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--policy {spec!r}: expected NAME:key=value[,key=value]")
        params[key] = json.loads(value)
    make_policy(name, **params)
    return name, params


def make_qkv(batch, heads, n, head_dim, logits, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    sigma = LOGIT_SIGMA[logits]
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g) for _ in range(3))
    return q * sigma, k * sigma, v


def saved_bytes(q, k, v, dropout_p, name, params):
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    with ActivationMeter() as meter:
        out = attention(*ins, dropout_p=dropout_p, policy=name, **params)
    report = meter.report()
    del out
    return report.softmax_state_bytes, report.attention_bytes


def time_fwd_bwd(q, k, v, dropout_p, name, params, repeats):
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q)
    times = []
    for i in range(repeats + 1):
        if q.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = attention(*ins, dropout_p=dropout_p, policy=name, **params)
        out.backward(grad)
        if q.is_cuda:
            torch.cuda.synchronize()
        if i:                                                   # first call is warm-up
            times.append(time.perf_counter() - start)
        for t in ins:
            t.grad = None
    return statistics.median(times)


def grad_fidelity(q, k, v, name, params):
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(attention(*ref, policy="exact"), ref, grad.double())
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(attention(*ins, policy=name, **params), ins, grad)
    g = torch.cat([t.double().flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    cosine = torch.nn.functional.cosine_similarity(g, w, dim=0).item()
    rel_err = ((g - w).norm() / w.norm()).item()
    return cosine, rel_err


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    policies = [parse_policy(p) for p in (args.policy or DEFAULT_POLICIES)]
    if not any(name == "eager" for name, _ in policies):
        policies.insert(0, ("eager", {}))
    if not any(name == "exact" for name, _ in policies):
        policies.insert(1, ("exact", {}))
    records = []
    for logits in args.logits:
        for n in args.seq_len:
            q, k, v = (t.to(device, dtype) for t in make_qkv(args.batch, args.heads, n, args.head_dim, logits, dtype, device, args.seed))
            scores = args.batch * args.heads * n * n
            base = {}
            for name, params in policies:
                state, module = saved_bytes(q, k, v, args.dropout, name, params)
                seconds = time_fwd_bwd(q, k, v, args.dropout, name, params, args.repeats)
                cosine, rel_err = grad_fidelity(q, k, v, name, params)
                rec = {
                    "policy": name, "params": params, "seq_len": n, "batch": args.batch,
                    "heads": args.heads, "head_dim": args.head_dim, "dropout_p": args.dropout,
                    "dtype": args.dtype, "device": device.type, "logits": logits,
                    "state_bytes": state, "state_bytes_per_score": state / scores,
                    "attention_saved_bytes": module, "seconds_fwd_bwd": seconds,
                    "grad_cosine": cosine, "grad_rel_err": rel_err,
                }
                if name in ("eager", "exact") and not params:
                    base.setdefault(name, rec)
                rec["reduction_vs_eager"] = 1 - state / base["eager"]["state_bytes"]
                rec["reduction_vs_exact"] = 1 - state / base["exact"]["state_bytes"] if "exact" in base else None
                rec["module_reduction_vs_eager"] = 1 - module / base["eager"]["attention_saved_bytes"]
                rec["time_ratio_vs_eager"] = seconds / base["eager"]["seconds_fwd_bwd"]
                records.append(rec)
                print(format_row(rec), flush=True)
    for rec in records:                                          # exact was measured after eager
        exact = next(r for r in records if r["policy"] == "exact" and r["seq_len"] == rec["seq_len"] and r["logits"] == rec["logits"])
        rec["reduction_vs_exact"] = 1 - rec["state_bytes"] / exact["state_bytes"]
    return records


HEADER = f"{'logits':7} {'n':>5} {'policy':24} {'B/score':>8} {'red.eager':>9} {'red.exact':>9} {'mod.red':>8} {'time x':>7} {'cos':>8} {'rel.err':>8}"


def format_row(r: dict) -> str:
    label = r["policy"] + ("(" + ",".join(f"{k}={v}" for k, v in r["params"].items()) + ")" if r["params"] else "")
    red_exact = "" if r["reduction_vs_exact"] is None else f"{r['reduction_vs_exact']:.3f}"
    return (
        f"{r['logits']:7} {r['seq_len']:>5} {label:24} {r['state_bytes_per_score']:8.3f} "
        f"{r['reduction_vs_eager']:9.3f} {red_exact:>9} {r['module_reduction_vs_eager']:8.3f} "
        f"{r['time_ratio_vs_eager']:7.2f} {r['grad_cosine']:8.5f} {r['grad_rel_err']:8.4f}"
    )


def markdown_table(records: list[dict]) -> str:
    cols = ["logits", "seq_len", "policy", "state B/score", "reduction vs eager", "reduction vs exact",
            "module reduction vs eager", "time / eager", "grad cosine", "grad rel. err"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        label = r["policy"] + ("(" + ",".join(f"{k}={v}" for k, v in r["params"].items()) + ")" if r["params"] else "")
        lines.append(
            f"| {r['logits']} | {r['seq_len']} | {label} | {r['state_bytes_per_score']:.3f} | "
            f"{r['reduction_vs_eager']:.3f} | {r['reduction_vs_exact']:.3f} | {r['module_reduction_vs_eager']:.3f} | "
            f"{r['time_ratio_vs_eager']:.2f} | {r['grad_cosine']:.5f} | {r['grad_rel_err']:.4f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m softmax_approx.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", action="append", help="NAME[:key=value,...], repeatable (default: all policies)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--logits", nargs="+", choices=sorted(LOGIT_SIGMA), default=["random", "peaked"])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the records to this JSON file (atomically)")
    p.add_argument("--markdown", help="write a markdown table to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for n in args.seq_len:
            if n < 1:
                raise ValueError(f"--seq-len must be >= 1, got {n}")
        if not 0 <= args.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
        for spec in args.policy or []:
            parse_policy(spec)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    torch.manual_seed(args.seed)
    print(f"# {args.device} {args.dtype} batch={args.batch} heads={args.heads} head_dim={args.head_dim} "
          f"dropout={args.dropout} threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)
    print(HEADER, flush=True)
    records = run(args)
    if args.json:
        write_text(args.json, json.dumps(records, indent=1))
    if args.markdown:
        write_text(args.markdown, markdown_table(records) + "\n")
    return 0


if __name__ == "__main__":  # python -m softmax_approx.bench.attention
    sys.exit(main())
