"""`python -m softmax_approx.bench`: memory, speed and gradient fidelity of every policy.

One attention call (B, H, n, head_dim) per policy and sequence length, all in one process:

* ``state_bytes_per_score``   bytes of the n x n part kept for backward (the policy's state plus
                              any dropout mask / dropped probabilities), per score element,
                              measured with :class:`softmax_approx.core.ActivationMeter`;
* ``attention_saved_bytes``   everything the attention call keeps (q, k, v included);
* ``reduction_vs_eager``      1 - state bytes / eager's state bytes (same for ``_vs_exact``);
* ``module_reduction_vs_eager`` the same on ``attention_saved_bytes``;
* ``time_ratio_vs_eager``     median forward+backward time over eager's, timed interleaved
                              call by call (same process);
                              ``time_ratio_vs_sdpa``: median over sdpa's (timed separately; null without sdpa);
* ``infer_time_ratio_vs_eager`` median gradient-free forward time (``torch.no_grad()``, inputs
                              not requiring grad, ``training=False``: validation, testing,
                              decoding) over eager's, timed interleaved call by call (eager: 1.0);
* ``peak_bytes_fwd_bwd``      CUDA only (null elsewhere): ``torch.cuda.max_memory_allocated``
                              during one forward+backward, minus what was allocated before it
                              (inputs), so the gradients of q, k, v are included;
* ``compiled_time_ratio``     with ``--compile``: forward+backward of
                              ``torch.compile(fn, fullgraph=True)`` (fn calls ``attention`` with
                              the policy and dropout; warmed up first; ``--compile-backend``,
                              default inductor) over the uncompiled
                              forward+backward of the same policy; ``compile_error`` holds the
                              one-line error instead when the policy does not compile (null
                              without ``--compile``);
* ``grad_cosine``, ``grad_rel_err``  the concatenated q, k, v gradients against a float64
                              exact reference (measured with dropout off: dropout is exact in
                              every fused policy, and eager/sdpa draw masks we cannot replay).

``--amp bf16`` runs every call under ``torch.autocast`` with fp32 inputs (mixed precision, as
training with ``precision=bf16-mixed`` does); ``--dtype`` instead casts the inputs.

Logits generators (q, k ~ N(0, sigma^2), scores = q.k / sqrt(head_dim) have std sigma^2):
``random`` sigma = 1 (flat rows, std 1), ``peaked`` sigma = 2 (std 4: a few keys dominate,
as in trained attention).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch

from ..core import POLICIES, ActivationMeter, attention, make_policy
from ..utils.errors import one_line
from ._common import add_output_args, median_seconds, sync, write_outputs

#: The rows every ratio is taken against: ``*_vs_eager``, ``*_vs_exact``, ``time_ratio_vs_sdpa``.
BASELINE, REFERENCE, FUSED_REFERENCE = "eager", "exact", "sdpa"


def policy_spec(name: str, setting: dict) -> str:
    """``--policy`` spelling of policy `name` with `setting` over its defaults, every parameter
    spelled out (``paper:S=5``), so that its records carry the values."""
    params = {**make_policy(name).params, **setting}
    return name + (":" + ",".join(f"{k}={json.dumps(v)}" for k, v in params.items()) if params else "")


def default_policies() -> tuple[str, ...]:
    """Every registered policy at each of its ``bench_settings``."""
    return tuple(policy_spec(name, setting) for name, cls in POLICIES.items() for setting in cls.bench_settings)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_SIGMA = {"random": 1.0, "peaked": 2.0}


def parse_policy(spec: str) -> tuple[str, dict]:
    """'topk:keep_ratio=0.25' -> ('topk', {'keep_ratio': 0.25}); validated by make_policy. A
    policy class outside the package is named by its import path (``my_module.HalfKeep:keep=0.5``)
    and recorded under its ``name``."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--policy {spec!r}: expected NAME:key=value[,key=value]")
        params[key] = json.loads(value)
    return make_policy(name, **params).name, params


def make_qkv(batch, heads, n, head_dim, logits, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    sigma = LOGIT_SIGMA[logits]
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g) for _ in range(3))
    return q * sigma, k * sigma, v


def autocast(device: torch.device, amp: str | None):
    """`torch.autocast` to the `amp` dtype on `device`, or nothing when amp is None."""
    return torch.autocast(device.type, dtype=DTYPES[amp]) if amp else contextlib.nullcontext()


def _leaves(q, k, v):
    return [t.detach().clone().requires_grad_() for t in (q, k, v)]


def saved_bytes(q, k, v, dropout_p, name, params, amp=None):
    ins = _leaves(q, k, v)
    with ActivationMeter() as meter, autocast(q.device, amp):
        out = attention(*ins, dropout_p=dropout_p, policy=name, **params)
    report = meter.report()
    del out
    return report.softmax_state_bytes, report.attention_bytes


def fwd_bwd_step(fn, q, k, v, amp=None):
    """A callable running one forward+backward of `fn(q, k, v)` on fresh leaves' copies."""
    ins = _leaves(q, k, v)
    grad = torch.randn(q.shape[:-1] + v.shape[-1:], generator=torch.Generator().manual_seed(2)).to(q)

    def step():
        with autocast(q.device, amp):
            out = fn(*ins)
        out.backward(grad if out.dtype == grad.dtype else grad.to(out.dtype))
        for t in ins:
            t.grad = None
    return step


def _interleaved(mine, eager, repeats: int, device) -> tuple[float, float]:
    """(median seconds of `mine`, that over eager's median), the two steps called alternately:
    on a shared machine the load drifts between separately timed blocks, so only an
    interleaved ratio is stable enough to compare with a target like 1.2 or 2.5."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(median_seconds(mine, 1, device))
        theirs.append(median_seconds(eager, 1, device))
    return statistics.median(ours), statistics.median(ours) / statistics.median(theirs)


def time_fwd_bwd(q, k, v, dropout_p, name, params, repeats, amp=None) -> tuple[float, float]:
    """(median forward+backward seconds, the same over eager's), timed interleaved with eager."""
    def step_of(policy, kw):
        fn = lambda *t: attention(*t, dropout_p=dropout_p, policy=policy, **kw)  # noqa: E731
        return fwd_bwd_step(fn, q, k, v, amp)
    return _interleaved(step_of(name, params), step_of(BASELINE, {}), repeats, q.device)


def _infer_step(q, k, v, dropout_p, name, params, amp=None):
    """One gradient-free forward: no_grad, inputs not requiring grad, training=False."""
    ins = [t.detach() for t in (q, k, v)]

    def step():
        with torch.no_grad(), autocast(q.device, amp):
            attention(*ins, dropout_p=dropout_p, policy=name, training=False, **params)
    return step


def time_infer(q, k, v, dropout_p, name, params, repeats, amp=None) -> tuple[float, float]:
    """(median gradient-free forward seconds, the same over eager's), timed interleaved with eager."""
    return _interleaved(_infer_step(q, k, v, dropout_p, name, params, amp),
                        _infer_step(q, k, v, dropout_p, BASELINE, {}, amp), repeats, q.device)


def peak_bytes(q, k, v, dropout_p, name, params, amp=None) -> int | None:
    """CUDA peak allocated during one forward+backward above the baseline; None off CUDA."""
    if q.device.type != "cuda":
        return None
    fn = lambda *t: attention(*t, dropout_p=dropout_p, policy=name, **params)  # noqa: E731
    step = fwd_bwd_step(fn, q, k, v, amp)
    step()                                                      # warm-up: workspaces, autotuning
    sync(q.device)
    torch.cuda.reset_peak_memory_stats(q.device)
    base = torch.cuda.memory_allocated(q.device)
    step()
    sync(q.device)
    return torch.cuda.max_memory_allocated(q.device) - base


# All policies share the benchmark's one compiled lambda (one code object), so each policy, shape
# and precision is one entry of dynamo's cache: at the default limit (8) later ones would
# silently fall back to eager mode.
RECOMPILE_LIMIT = 256


def time_compiled(q, k, v, dropout_p, name, params, repeats, amp=None, backend: str = "inductor",
                  cache: dict | None = None) -> tuple[float | None, float | None, str | None]:
    """(median compiled fwd+bwd seconds, seconds of the first, compiling call, one-line error).

    The compiled function of a (policy, shape, precision) is kept in `cache` and reused for the
    other logits generator: compiling is slow on CPU and its result does not depend on values.
    """
    cache = {} if cache is None else cache
    key = (name, json.dumps(params, sort_keys=True), tuple(q.shape), q.dtype, q.device.type, amp, dropout_p, backend)
    if key in cache and cache[key][2] is not None:              # failed before: same error
        return cache[key]
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            if key not in cache:
                fn = torch.compile(lambda *t: attention(*t, dropout_p=dropout_p, policy=name, **params),
                                   fullgraph=True, dynamic=False, backend=backend)
                first = median_seconds(fwd_bwd_step(fn, q, k, v, amp), 1, q.device, warmup=0)
                cache[key] = (fn, first, None)                  # compiled forward and backward
            fn, first, _ = cache[key]
            return median_seconds(fwd_bwd_step(fn, q, k, v, amp), repeats, q.device), first, None
    except Exception as err:                                    # noqa: BLE001 - recorded per row
        cache[key] = (None, None, one_line(err)[:500])
        return cache[key]


def grad_fidelity(q, k, v, name, params, amp=None):
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(attention(*ref, policy=REFERENCE), ref, grad.double())
    ins = _leaves(q, k, v)
    with autocast(q.device, amp):
        out = attention(*ins, policy=name, **params)
    got = torch.autograd.grad(out, ins, grad.to(out.dtype))
    g = torch.cat([t.double().flatten() for t in got])
    w = torch.cat([t.flatten() for t in want])
    cosine = torch.nn.functional.cosine_similarity(g, w, dim=0).item()
    rel_err = ((g - w).norm() / w.norm()).item()
    return cosine, rel_err


def measure(q, k, v, name: str, params: dict, args, compiled_cache: dict | None = None) -> dict:
    """Every figure of one policy on one input (the derived ratios are added by `run`)."""
    amp, p, reps = args.amp, args.dropout, args.repeats
    state, module = saved_bytes(q, k, v, p, name, params, amp)
    seconds, ratio = time_fwd_bwd(q, k, v, p, name, params, reps, amp)
    cosine, rel_err = grad_fidelity(q, k, v, name, params, amp)
    rec = {
        "state_bytes": state, "attention_saved_bytes": module, "seconds_fwd_bwd": seconds,
        "time_ratio_vs_eager": ratio,
        **dict(zip(("seconds_infer", "infer_time_ratio_vs_eager"), time_infer(q, k, v, p, name, params, reps, amp))),
        "peak_bytes_fwd_bwd": peak_bytes(q, k, v, p, name, params, amp),
        "grad_cosine": cosine, "grad_rel_err": rel_err,
        "compiled_seconds_fwd_bwd": None, "compile_seconds_first_call": None,
        "compiled_time_ratio": None, "compile_error": None,
    }
    if args.compile:
        compiled, first, error = time_compiled(q, k, v, p, name, params, reps, amp, args.compile_backend, compiled_cache)
        rec.update(compiled_seconds_fwd_bwd=compiled, compile_seconds_first_call=first, compile_error=error,
                   compiled_time_ratio=None if compiled is None else compiled / seconds)
    return rec


def _base(records: list[dict], rec: dict, policy: str) -> dict | None:
    """The unparameterised `policy` record measured on the same input as `rec`."""
    same = ("seq_len", "logits", "dtype", "amp", "device")
    return next((r for r in records if r["policy"] == policy and not r["params"]
                 and all(r[key] == rec[key] for key in same)), None)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    policies = [parse_policy(p) for p in (args.policy or default_policies())]
    if not any(name == BASELINE and not params for name, params in policies):
        policies.insert(0, (BASELINE, {}))
    if not any(name == REFERENCE and not params for name, params in policies):
        policies.insert(1, (REFERENCE, {}))
    records, compiled_cache = [], {}
    for logits in args.logits:
        for n in args.seq_len:
            q, k, v = (t.to(device, dtype) for t in make_qkv(args.batch, args.heads, n, args.head_dim, logits, dtype, device, args.seed))
            scores = args.batch * args.heads * n * n
            for name, params in policies:
                rec = {
                    "policy": name, "params": params, "seq_len": n, "batch": args.batch,
                    "heads": args.heads, "head_dim": args.head_dim, "dropout_p": args.dropout,
                    "dtype": args.dtype, "amp": args.amp, "device": device.type, "logits": logits,
                    **measure(q, k, v, name, params, args, compiled_cache),
                }
                rec["state_bytes_per_score"] = rec["state_bytes"] / scores
                eager = _base(records, rec, BASELINE) or rec             # eager is measured first
                rec["reduction_vs_eager"] = 1 - rec["state_bytes"] / eager["state_bytes"]
                rec["module_reduction_vs_eager"] = 1 - rec["attention_saved_bytes"] / eager["attention_saved_bytes"]
                if name == BASELINE:  # by definition (its interleaved ratios are noise around 1)
                    rec["time_ratio_vs_eager"] = rec["infer_time_ratio_vs_eager"] = 1.0
                exact = _base(records, rec, REFERENCE) or (rec if name == REFERENCE and not params else None)
                rec["reduction_vs_exact"] = None if exact is None else 1 - rec["state_bytes"] / exact["state_bytes"]
                records.append(rec)
                print(format_row(rec), flush=True)
    for rec in records:                       # exact and sdpa may come after a policy: fill in
        exact, sdpa = _base(records, rec, REFERENCE), _base(records, rec, FUSED_REFERENCE)
        rec["reduction_vs_exact"] = 1 - rec["state_bytes"] / exact["state_bytes"]
        rec["time_ratio_vs_sdpa"] = None if sdpa is None else rec["seconds_fwd_bwd"] / sdpa["seconds_fwd_bwd"]
    return records


def _label(r: dict) -> str:
    return r["policy"] + ("(" + ",".join(f"{k}={v}" for k, v in r["params"].items()) + ")" if r["params"] else "")


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _compiled(r: dict) -> str:
    """The compiled ratio, 'failed' when compilation failed, '' when --compile was not given."""
    if r.get("compile_error"):
        return "failed"
    return "" if r.get("compiled_time_ratio") is None else f"{r['compiled_time_ratio']:.2f}"


HEADER = (f"{'logits':7} {'n':>5} {'policy':24} {'B/score':>8} {'red.eager':>9} {'red.exact':>9} {'mod.red':>8} "
          f"{'time x':>7} {'infer x':>7} {'compiled':>8} {'cos':>8} {'rel.err':>8}")


def format_row(r: dict) -> str:
    """One progress line (the ratio vs exact is final only after `run` fills it in)."""
    return (
        f"{r['logits']:7} {r['seq_len']:>5} {_label(r):24} {r['state_bytes_per_score']:8.3f} "
        f"{r['reduction_vs_eager']:9.3f} {_num(r['reduction_vs_exact'], '.3f'):>9} {r['module_reduction_vs_eager']:8.3f} "
        f"{r['time_ratio_vs_eager']:7.2f} {r['infer_time_ratio_vs_eager']:7.2f} {_compiled(r):>8} "
        f"{r['grad_cosine']:8.5f} {r['grad_rel_err']:8.4f}"
    )


def markdown_table(records: list[dict]) -> str:
    """The records as one markdown table; compile errors listed below it, one line each."""
    compiled = any(r.get("compile_error") or r.get("compiled_time_ratio") is not None for r in records)
    cols = ["logits", "seq_len", "policy", "state B/score", "reduction vs eager", "reduction vs exact",
            "module reduction vs eager", "time / eager", "infer time / eager",
            *(["compiled / uncompiled"] if compiled else []), "grad cosine", "grad rel. err"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = [r["logits"], r["seq_len"], _label(r), f"{r['state_bytes_per_score']:.3f}",
                 f"{r['reduction_vs_eager']:.3f}", _num(r["reduction_vs_exact"], ".3f"),
                 f"{r['module_reduction_vs_eager']:.3f}", f"{r['time_ratio_vs_eager']:.2f}",
                 f"{r['infer_time_ratio_vs_eager']:.2f}", *([_compiled(r)] if compiled else []),
                 f"{r['grad_cosine']:.5f}", f"{r['grad_rel_err']:.4f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines + compile_errors(records))


def compile_errors(records: list[dict]) -> list[str]:
    """Markdown lines listing each policy's compile error once (none: no lines)."""
    errors = sorted({(_label(r), r["compile_error"]) for r in records if r.get("compile_error")})
    if not errors:
        return []
    return ["", "Compile errors (`torch.compile(fullgraph=True)`):", "", *(f"- {label}: `{error}`" for label, error in errors)]


def build_parser() -> argparse.ArgumentParser:
    kept = "\n".join(f"  {name:10} keeps {cls.keeps}" for name, cls in POLICIES.items())
    p = argparse.ArgumentParser(prog="python -m softmax_approx.bench", description=__doc__,
                                epilog=f"policies (--policy NAME, or a class of your own as module.Class):\n{kept}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", action="append", help="NAME[:key=value,...], repeatable (default: every "
                   "registered policy at its bench_settings)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype the inputs are cast to")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="run every call under torch.autocast to this dtype (fp32 inputs; needs --dtype fp32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--logits", nargs="+", choices=sorted(LOGIT_SIGMA), default=["random", "peaked"])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(fullgraph=True) forward+backward per policy (compiled_time_ratio)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for --compile (aot_eager: tracing only, no code generation)")
    add_output_args(p)
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
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        if args.amp and args.dtype != "fp32":
            raise ValueError(f"--amp {args.amp} autocasts fp32 inputs: drop --dtype {args.dtype} (or --amp)")
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
        for spec in args.policy or []:
            parse_policy(spec)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    torch.manual_seed(args.seed)
    print(f"# {args.device} {args.dtype}{' autocast ' + args.amp if args.amp else ''} batch={args.batch} heads={args.heads} head_dim={args.head_dim} "
          f"dropout={args.dropout} threads={torch.get_num_threads()} torch={torch.__version__}"
          f"{' compile' if args.compile else ''}", flush=True)
    print(HEADER, flush=True)
    records = run(args)
    write_outputs(args, records, markdown_table(records) + "\n")
    return 0


if __name__ == "__main__":  # python -m softmax_approx.bench.attention
    sys.exit(main())
