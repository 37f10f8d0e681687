"""Fixture results.json files in the real schema (docs/architecture.md), written by the tests.

`write_fixture_runs(out, profile)` lays runs out exactly where `reproduce` would (OUT/runs/
<owner experiment>/<run key>/results.json) for every run of the profile's plan, with metric
values that differ per policy and seed, plus one deliberately failed run. It returns the
values it wrote so tests can recompute the expected aggregates independently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softmax_approx.plan import build_plan, load_common, load_experiments
from softmax_approx.utils.run_record import RunRecord, write_results

FAILED = ("sst2", "recompute", 0)  # (task, policy, seed) written as failed

# attention bytes per policy family (per task these get multiplied by a task factor)
BASE_BYTES = {"eager": 1_000_000, "exact": 700_000, "paper": 200_000, "topk": 300_000,
              "quant": 400_000, "recompute": 100_000, "sdpa": 90_000}
TASK_FACTOR = {"sst2": 1, "imdb": 4, "multi30k": 2, "iwslt14": 3, "iwslt14_mini": 2}
# the n x n part of the attention bytes: most of eager's, none of recompute's, so the softmax
# state and the whole-module reductions differ (as they do in real runs)
STATE_SHARE = {"eager": 0.75, "exact": 0.6, "paper": 0.25, "topk": 0.4, "quant": 0.5,
               "recompute": 0.0, "sdpa": 0.0}


def metric_value(task: str, policy: str, params: dict[str, Any], seed: int) -> float:
    """A deterministic, policy- and seed-dependent quality value."""
    bump = {"paper": 0.01 * params.get("S", 0), "topk": -0.02, "quant": 0.005}.get(policy, 0.0)
    if task in ("multi30k", "iwslt14", "iwslt14_mini"):
        return 20.0 + 100 * bump + 0.7 * seed
    return 0.80 + bump + 0.013 * seed * (1 + len(policy) % 3)


def results_json(task: str, policy: str, params: dict[str, Any], seed: int, profile: str,
                 status: str = "completed") -> dict[str, Any]:
    kind = "translation" if task in ("multi30k", "iwslt14", "iwslt14_mini") else "classification"
    attn = BASE_BYTES[policy] * TASK_FACTOR[task] // (1 + int(params.get("S", 0) > 5))
    metrics: dict[str, Any] = {}
    value = metric_value(task, policy, params, seed)
    if kind == "translation":
        metrics = {"test/bleu": value, "test/bleu_tok": value + 1.5,
                   "test/bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}
    else:
        metrics = {"test/acc": value, "val/acc_best": value - 0.01}
    fid = None
    if policy in ("paper", "topk", "quant"):
        q = float(params.get("S", 0) or params.get("keep_ratio", 0) or params.get("bits", 0))
        fid = {"layers": {f"encoder.{i}.self_attn": {"cosine": 0.9 + 0.001 * q + 0.01 * i,
                                                     "rel_err": 0.2 - 0.001 * q}
                          for i in range(2)}}
    memory = {"attention_bytes": attn, "softmax_state_bytes": int(attn * STATE_SHARE[policy]),
              "total_activation_bytes": attn * 3, "peak_step_bytes": None, "batch_shape": [8, 64]}
    if kind == "translation":  # per attention kind, as the translation task reports it
        memory["by_kind"] = {k: {"bytes": attn // d, "softmax_state_bytes": attn // (2 * d), "n_modules": 2}
                             for k, d in (("encoder_self", 3), ("decoder_self", 4), ("cross", 5))}
    return RunRecord(
        status=status,
        error="RuntimeError: fixture crash" if status == "failed" else None,
        task=task, task_kind=kind, policy=policy, policy_params=params,
        seed=seed, profile=profile, experiment=None, tags=[], run_dir="",
        job_id=f"{task}-{policy}-{seed}",
        metrics=metrics if status == "completed" else {},
        memory=memory,
        timing={"train_seconds": 1.0, "step_seconds_median": 0.1, "tokens_per_second": 100.0},
        params={"total": 1000, "trainable": 1000},
        fidelity=fid, config={"seed": seed},
        provenance={"git_commit": None, "git_dirty": False, "packages": {}, "python": "3.11",
                    "hardware": {"device": "cpu"}, "started": "2026-01-01T00:00:00",
                    "finished": "2026-01-01T00:01:00"},
    ).to_dict()


def write_fixture_runs(out: Path, profile: str = "smoke", exp_dir: Path | None = None,
                       failed: tuple[str, str, int] | None = FAILED) -> list[dict[str, Any]]:
    """Write every planned run of `profile`; returns the written results dicts."""
    exps = load_experiments(profile, exp_dir)
    plan = build_plan(exps, load_common(exp_dir))
    written = []
    for key, spec in plan.runs.items():
        status = "failed" if failed == (spec.task, spec.setting.policy, spec.seed) else "completed"
        data = results_json(spec.task, spec.setting.policy, spec.setting.params_dict, spec.seed,
                            profile, status)
        d = plan.run_dir(out, key)
        data["run_dir"] = str(d)
        write_results(d / "results.json", RunRecord.from_dict(data))  # the harness's own writer
        written.append(data)
    return written


def bench_records(exp, seq_lens=(128, 512)) -> list[dict[str, Any]]:
    """Records in the format of `python -m softmax_approx.bench --json` for `exp`'s settings."""
    eager = 12.0
    per_score = {"eager": 12.0, "exact": 4.0, "paper": 1.2, "topk": 2.0, "quant": 1.0,
                 "recompute": 0.03, "sdpa": 12.5}
    time = {"eager": 1.0, "exact": 1.1, "paper": 3.0, "topk": 2.2, "quant": 1.4,
            "recompute": 1.3, "sdpa": 0.6}
    err = {"paper": 1e-3, "topk": 3e-2, "quant": 1e-4}  # 1 - grad cosine; exact ones: 1e-7
    recs = []
    for n in seq_lens:
        for s in exp.settings:
            st = per_score[s.policy] + 0.001 * n
            knob = float(s.params_dict.get("S") or s.params_dict.get("keep_ratio")
                         or s.params_dict.get("bits") or 1)
            recs.append({"policy": s.policy, "params": s.params_dict, "seq_len": n, "batch": 2,
                         "heads": 2, "head_dim": 32, "dropout_p": 0.1, "dtype": "fp32",
                         "device": "cpu", "logits": "peaked", "state_bytes_per_score": st,
                         "attention_saved_bytes": int(st * n * n * 4),
                         "reduction_vs_eager": 1 - st / (eager + 0.001 * n),
                         "reduction_vs_exact": 1 - st / (4.0 + 0.001 * n),
                         "module_reduction_vs_eager": 0.9 * (1 - st / (eager + 0.001 * n)),
                         "time_ratio_vs_eager": time[s.policy] * (1 + 0.01 * (knob - 1)),
                         "grad_cosine": 1 - err.get(s.policy, 1e-7) / knob,
                         "grad_rel_err": 0.01})
    return recs


def write_fixture_bench(out: Path, profile: str = "smoke", exp_dir: Path | None = None) -> list:
    """Write OUT/bench/<key>.json for every bench experiment, where reproduce would."""
    written = []
    for exp in load_experiments(profile, exp_dir):
        if exp.kind == "bench":
            recs = bench_records(exp)
            path = out / "bench" / f"{exp.bench_key()}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(recs))
            written += recs
    return written
