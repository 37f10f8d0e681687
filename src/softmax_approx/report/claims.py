"""The claims table: each claim of the paper beside our measured number and a plain verdict.

The rules are data (experiments/claims.yaml: measure, thresholds, which memory definition the
verdict uses and why) so a reader can see exactly why a claim is called supported; the code
only computes the numbers and applies the rule named there.

Memory claims are measured twice, once per figure we have: the softmax state (the n x n part
kept for backward, what the method approximates) and the whole attention module (everything
the module keeps, q, k, v and their projections included). Quality claims are judged on the
paired 95% intervals of report/paired.py, not on differences of means.
Only `evidence_profiles` (cpu, paper) count as evidence: a smoke run trains for a few steps.
"""

from __future__ import annotations

import math
from typing import Any

from softmax_approx.plan import Claim, Experiment, Setting
from softmax_approx.report.formats import Cells, baseline_cell, mem_stats, reduction_pct
from softmax_approx.report.paired import Paired
from softmax_approx.report.quality import quality_cells
from softmax_approx.report.table import Table

DEFINITION_LABELS = {"softmax_state": "softmax state (n×n)", "module": "whole attention module"}
TRAINING_METRICS = {"softmax_state": "softmax_state_bytes", "module": "attention_bytes"}
BENCH_METRICS = {"softmax_state": "reduction_vs_eager", "module": "module_reduction_vs_eager"}


def _wanted(setting: Setting, policy: str | None, params: dict[str, Any]) -> bool:
    """Whether `setting` is of `policy` (any policy when None) with `params` among its own."""
    if policy and setting.policy != policy:
        return False
    return Setting(setting.policy, tuple(sorted(params.items()))).matches(
        setting.policy, setting.params_dict)


def _ratio(red: float) -> str:
    return f"{1 / (1 - red / 100):.2f}×" if red < 100 else "∞×"


def _seeds(cells: Cells, claim: Claim) -> str:
    ns = sorted({len(c.completed) for (_, s), c in cells.items()
                 if _wanted(s, claim.policy, claim.params) and c.status == "completed"})
    return "n=" + "/".join(map(str, ns)) + " seeds" if ns else "no completed run"


# ----------------------------------------------------------------------------- memory
def memory_points(cells: Cells, policy: str | None, params: dict[str, Any], metric: str,
                  baseline: str = "eager") -> list[tuple[float, str, str]]:
    """(reduction %, task, setting) of every completed cell of `policy` with `params`."""
    pts = []
    for (task, setting), cell in cells.items():
        if not _wanted(setting, policy, params) or cell.status != "completed":
            continue
        base = baseline_cell(cells, task, baseline)
        if base is None or base.status != "completed":
            continue
        red = reduction_pct(mem_stats(cell, metric).mean, mem_stats(base, metric).mean)
        if not math.isnan(red):
            pts.append((red, task, setting.label))
    return pts


def bench_points(records: list[dict[str, Any]], policy: str | None, params: dict[str, Any],
                 metric: str, longest_only: bool = True) -> list[tuple[float, str, str]]:
    """(reduction %, `n=<len> <logits>`, setting) of the benchmark records, longest n only."""
    from softmax_approx.report.bench import matching

    recs = matching(records, policy, params)
    if longest_only and recs:
        longest = max(int(r.get("seq_len", 0)) for r in records)
        recs = [r for r in recs if int(r.get("seq_len", 0)) == longest]
    pts = []
    for r in recs:
        if r.get(metric) is not None:
            label = Setting(str(r["policy"]), tuple(sorted((r.get("params") or {}).items()))).label
            pts.append((100 * float(r[metric]), f"n={r.get('seq_len')} {r.get('logits')}", label))
    return pts


def _memory(claim: Claim, points_of: Any, evidence: str) -> dict[str, Any]:
    """Both definitions measured; the verdict on `verdict_on`. `points_of(definition, policy,
    params)` lists the (reduction %, where, setting) measured for a definition."""
    thr, tol = claim.threshold, claim.tolerance
    basis = claim.verdict_on or "softmax_state"
    if basis not in DEFINITION_LABELS:
        return {"measured": f"verdict_on={basis!r} is not one of {', '.join(DEFINITION_LABELS)}"}
    parts, values = [], {}
    for name, label in DEFINITION_LABELS.items():
        pts = points_of(name, claim.policy, claim.params)
        if pts:
            red, where, setting = max(pts)
            values[name] = red
            parts.append(f"{label}: {red:.1f}% ({_ratio(red)}), {setting} on {where}")
        else:
            values[name] = float("nan")
            parts.append(f"{label}: not measured")
    ctx = []
    for pol in claim.context_policies:
        red = {n: max(p)[0] for n in DEFINITION_LABELS if (p := points_of(n, pol, {}))}
        if red:
            ctx.append(f"{pol}: " + " / ".join(f"{red[n]:.1f}%" for n in DEFINITION_LABELS if n in red))
    value = values[basis]
    out = {"measured": "; ".join(parts), "value": value, "verdict_on": DEFINITION_LABELS[basis],
           "value_softmax_state": values["softmax_state"], "value_module": values["module"],
           "rule": f"max reduction of the {DEFINITION_LABELS[basis]} vs eager ≥ {thr - tol:g}%",
           "context": ("state / module up to: " + "; ".join(ctx)) if ctx else "",
           "evidence": evidence}
    if not math.isnan(value):
        out["verdict"] = "supported" if value >= thr - tol else "not supported"
        other = [n for n in DEFINITION_LABELS if n != basis][0]
        if not math.isnan(values[other]):
            alt = "supported" if values[other] >= thr - tol else "not supported"
            out["verdict_other"] = f"{DEFINITION_LABELS[other]}: {alt}"
    return out


# ----------------------------------------------------------------------------- quality
def _paired_points(cells: Cells, exp: Experiment | None, kinds: dict[str, str],
                   claim: Claim) -> list[tuple[str, str, Paired]]:
    if exp is None:
        return []
    out = []
    for (task, setting), info in quality_cells(cells, exp, kinds).items():
        if claim.task_kind and info["kind"] != claim.task_kind:
            continue
        if _wanted(setting, claim.policy, claim.params) and info["paired"].n:
            out.append((task, setting.label, info["paired"]))
    return out


def _noninferior(pts: list[tuple[str, str, Paired]], margin: float) -> dict[str, Any]:
    """Comparable = non-inferior: the 95% interval of every task's difference lies above -margin."""
    rule = (f"comparable if, on every task, the 95% interval of the paired difference lies above "
            f"-{margin:g} (lower bound ≥ -{margin:g}); worse if an interval lies wholly below "
            f"-{margin:g}; otherwise inconclusive (also n=1: no interval)")
    out: dict[str, Any] = {"rule": rule, "verdict_on": "paired 95% CI"}
    if not pts:
        return out
    verdicts = []
    for _, _, p in pts:
        if p.n < 2:
            verdicts.append("inconclusive")
        elif p.low >= -margin:
            verdicts.append("supported")
        elif p.high < -margin:
            verdicts.append("not supported")
        else:
            verdicts.append("inconclusive")
    worst = min(pts, key=lambda t: t[2].mean)
    out |= {"measured": "; ".join(f"{t}: {p.fmt()}" for t, _, p in pts),
            "value": worst[2].mean, "ci_low": worst[2].low, "ci_high": worst[2].high,
            "n": min(p.n for _, _, p in pts),
            "verdict": ("not supported" if "not supported" in verdicts else
                        "supported" if set(verdicts) == {"supported"} else "inconclusive")}
    return out


def _max_gain(pts: list[tuple[str, str, Paired]], thr: float, tol: float) -> dict[str, Any]:
    """An 'up to +X' claim: established when some interval lies at or above X - tol."""
    bar = thr - tol
    rule = (f"supported if some setting's 95% interval lies at or above {bar:+g} (lower bound); "
            f"not supported if every interval lies below {bar:+g} (upper bound); otherwise "
            "inconclusive (also n=1: no interval)")
    out: dict[str, Any] = {"rule": rule, "verdict_on": "paired 95% CI"}
    if not pts:
        return out
    task, label, best = max(pts, key=lambda t: t[2].mean)
    with_ci = [p for _, _, p in pts if p.n >= 2]
    if any(p.low >= bar for p in with_ci):
        verdict = "supported"
    elif with_ci and len(with_ci) == len(pts) and all(p.high < bar for p in with_ci):
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    others = sorted(pts, key=lambda t: -t[2].mean)[1:4]
    return out | {"measured": f"best {best.fmt()}, {label} on {task}",
                  "context": "; ".join(f"{lb} on {t}: {p.fmt()}" for t, lb, p in others),
                  "value": best.mean, "ci_low": best.low, "ci_high": best.high, "n": best.n,
                  "verdict": verdict}


# ----------------------------------------------------------------------------- table
def evaluate(claim: Claim, cells_by_exp: dict[str, Cells],
             exps: dict[str, Experiment], kinds: dict[str, str],
             bench: dict[str, tuple] | None = None) -> dict[str, Any]:
    """Measured numbers, the rule and the verdict for one claim (the profile is the caller's)."""
    source = claim.source
    cells = cells_by_exp.get(source, {})
    measure = claim.measure
    out: dict[str, Any] = {"id": claim.id, "claim": claim.claim,
                           "measured": "not measured", "value": float("nan"), "context": "",
                           "verdict": "not measured", "verdict_other": "", "rule": "",
                           "verdict_on": "", "why": claim.why,
                           "source": source, "evidence": ""}
    if measure == "max_memory_reduction":
        def pts(name: str, policy: str | None, params: dict[str, Any]) -> list:
            return memory_points(cells, policy, params, TRAINING_METRICS[name])

        exp = exps.get(source)
        ev = f"training runs ({source} table, {_seeds(cells, claim)}" + (
            f", tasks {', '.join(exp.tasks)})" if exp else ")")
        out |= _memory(claim, pts, ev)
    elif measure == "bench_max_reduction":
        status, records, _ = (bench or {}).get(source, ("not run", [], ""))

        def pts(name: str, policy: str | None, params: dict[str, Any]) -> list:
            return bench_points(records, policy, params, BENCH_METRICS[name])

        longest = max((int(r.get("seq_len", 0)) for r in records), default=0)
        ev = (f"benchmark, one attention call at its longest n={longest}" if records
              else f"benchmark {status}")
        out |= _memory(claim, pts, ev)
    elif measure == "paired_noninferior":
        p = _paired_points(cells, exps.get(source), kinds, claim)
        out |= _noninferior(p, claim.margin)
        out["evidence"] = f"training runs ({source} table, paired by seed)"
    elif measure == "paired_max_gain":
        p = _paired_points(cells, exps.get(source), kinds, claim)
        out |= _max_gain(p, claim.threshold, claim.tolerance)
        out["evidence"] = f"training runs ({source} table, paired by seed)"
    return out


def claims_table(exp: Experiment, cells_by_exp: dict[str, Cells],
                 exps: dict[str, Experiment], kinds: dict[str, str],
                 bench: dict[str, tuple] | None = None) -> Table:
    evidence_profiles = exp.evidence_profiles
    is_evidence = exp.profile in evidence_profiles
    rows, csv_rows = [], []
    for claim in exp.claims:
        ev = evaluate(claim, cells_by_exp, exps, kinds, bench)
        verdict = ev["verdict"] + (f" ({ev['verdict_other']})" if ev.get("verdict_other") else "")
        evidence = ev["evidence"]
        if not is_evidence:
            evidence = f"NOT EVIDENCE (profile {exp.profile}): " + evidence
            verdict = f"not evidence (profile {exp.profile}); would read: {verdict}"
        rows.append([ev["claim"], evidence, ev["measured"], ev["verdict_on"] or "-", ev["rule"],
                     verdict, ev["context"] or "-"])
        csv_rows.append(ev | {"profile": exp.profile, "is_evidence": is_evidence})
    notes = ["Paper: Lee & Lee, Softmax Output Approximation for Activation Memory-Efficient "
             "Training of Attention-based Networks, NeurIPS 2023.",
             "Memory: both figures we measure are shown. softmax state (n×n) = the part of the "
             "attention's saved tensors that is n×n (the policy's kept state plus a dropout mask "
             "if one is kept); whole attention module = everything the attention modules keep "
             "for backward, the q, k, v projections and their inputs included (benchmark: the "
             "whole attention call, q, k, v included). Reductions are 1 - bytes(policy) / "
             "bytes(eager) of the same task or input, ratio in brackets. The verdict in brackets "
             "is what the other definition would give."]
    notes += [f"Why `{c.id}` judges the {DEFINITION_LABELS.get(str(c.verdict_on), '?')}: " + c.why
              for c in exp.claims if c.why]
    notes.append("Quality: per-seed differences to eager (same seed, same data order), their "
                 "mean and 95% t-interval (see the quality_paired table); the rule column says "
                 "how an interval is read.")
    if is_evidence:
        notes.append(f"Profile `{exp.profile}` counts as evidence; n = seeds per cell.")
    else:
        notes.append(f"NOT EVIDENCE: profile `{exp.profile}` trains tiny models for a few steps, "
                     "so its verdicts only show that the pipeline runs (memory numbers are real "
                     "but at short sequence lengths). Evidence profiles: "
                     f"{', '.join(evidence_profiles)}.")
    header = ["claim", "evidence", "measured (ours)", "verdict uses", "rule", "verdict", "context"]
    return Table(exp.name, exp.title, exp.profile, header, rows, notes, csv_rows)
