"""Figures (PNG + PDF via matplotlib's object API, i.e. the Agg canvas; written atomically).

No pyplot: figures never touch global state, so rendering in a loop or a server leaks nothing.

Each function returns the matplotlib Figure so the notebook can show it inline, and writes
`<base>.png` and `<base>.pdf` when a path is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from softmax_approx.report.definitions import Experiment, Setting
from softmax_approx.report.io import save_figure
from softmax_approx.report.results import Cell, stats
from softmax_approx.report.tables import fidelity_of

MARKERS = {"exact": "s", "paper": "o", "topk": "^", "quant": "D", "recompute": "P", "sdpa": "X"}


def _save(fig: Any, base: Path | str | None) -> list[Path]:
    if base is None:
        return []
    base = Path(base)
    return [save_figure(fig, base.with_suffix(".png")), save_figure(fig, base.with_suffix(".pdf"))]


def plot_tradeoff(points: list[dict[str, Any]], base: Path | str | None = None,
                  title: str = "", profile: str = "") -> Any:
    """x: attention memory reduction vs eager (%); y: quality change vs eager; one marker per
    policy family, one colour per task, one point per (task, setting)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    tasks = sorted({p["task"] for p in points})
    colors = {t: f"C{i}" for i, t in enumerate(tasks)}
    shown = 0
    for p in points:
        x, y = p["memory_reduction_pct"], p["quality_delta"]
        if p["status"] != "completed" or p.get("is_baseline") or math.isnan(x) or math.isnan(y):
            continue
        ax.scatter(x, y, color=colors[p["task"]], marker=MARKERS.get(p["policy"], "o"),
                   s=40, edgecolors="black", linewidths=0.4)
        ax.annotate(p["setting"].replace(p["policy"] + " ", ""), (x, y), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
        shown += 1
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("attention activation memory reduction vs eager (%)")
    ax.set_ylabel("quality change vs eager (acc. points / BLEU)")
    ax.set_title(f"{title or 'Memory vs quality'} [{profile}]" if profile else title)
    handles = [Line2D([], [], color=colors[t], marker="o", ls="", label=t) for t in tasks]
    pols = sorted({p["policy"] for p in points if not p.get("is_baseline")})
    handles += [Line2D([], [], color="black", marker=MARKERS.get(q, "o"), ls="", label=q)
                for q in pols]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")
    if not shown:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    _save(fig, base)
    return fig


def plot_fidelity(exp: Experiment, cells: dict[tuple[str, Setting], Cell],
                  base: Path | str | None = None) -> Any:
    """Mean-over-layers gradient cosine vs the policy's parameter (S, keep_ratio, bits), one
    line per task, error bars = sample std over seeds; one panel per policy."""
    axes_of = dict(exp.raw.get("x_axis") or {"paper": "S", "topk": "keep_ratio"})
    policies = [p for p in axes_of if any(s.policy == p for s in exp.settings)]
    fig = Figure(figsize=(4 * max(1, len(policies)), 3.5))
    axs = fig.subplots(1, max(1, len(policies)), squeeze=False)
    for ax, pol in zip(axs[0], policies):
        param = axes_of[pol]
        for i, task in enumerate(exp.tasks):
            xs, ys, es = [], [], []
            for s in exp.settings:
                if s.policy != pol or param not in s.params_dict:
                    continue
                st = cells[(task, s)].values(fidelity_of)
                if st.n:
                    xs.append(float(s.params_dict[param]))
                    ys.append(st.mean)
                    es.append(0.0 if math.isnan(st.std) else st.std)
            if xs:
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.errorbar([xs[j] for j in order], [ys[j] for j in order],
                            yerr=[es[j] for j in order], marker="o", color=f"C{i}",
                            label=task, capsize=2)
        if pol == "topk":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{pol}: {param}")
        ax.set_ylabel("gradient cosine vs exact")
        ax.set_title(pol)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{exp.title} [{exp.profile}]")
    fig.tight_layout()
    _save(fig, base)
    return fig


def plot_fidelity_layers(rows: list[dict[str, Any]], task: str, base: Path | str | None = None) -> Any:
    """Per-layer gradient cosine of one task: one line per setting over the layers."""
    rows = [r for r in rows if r["task"] == task and r.get("cosine") is not None]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = Figure(figsize=(max(5, 0.6 * len(layers) + 2), 3.5))
    ax = fig.subplots()
    for i, setting in enumerate(dict.fromkeys(r["setting"] for r in rows)):
        ys = [stats(r["cosine"] for r in rows if r["setting"] == setting and r["layer"] == lay).mean
              for lay in layers]
        ax.plot(range(len(layers)), ys, marker="o", label=setting, color=f"C{i % 10}")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("gradient cosine vs exact")
    ax.set_title(f"Per-layer gradient fidelity: {task}")
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize=7)
    _save(fig, base)
    return fig
