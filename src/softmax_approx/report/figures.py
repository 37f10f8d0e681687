"""Figures (PNG + PDF via matplotlib's object API, i.e. the Agg canvas; written atomically).

No pyplot: figures never touch global state, so rendering in a loop or a server leaks nothing.
Each figure answers one question (its title says which); point labels are placed by
`place_labels` so that no two labels, and no label and marker, overlap.

Each function returns the matplotlib Figure so the notebook can show it inline, and writes
`<base>.png` and `<base>.pdf` when a path is given.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from softmax_approx.plan import Experiment, Setting
from softmax_approx.report.fidelity import fidelity_of
from softmax_approx.report.io import save_figure
from softmax_approx.report.results import Cell, stats

# one marker and colour per policy family, the same in every figure (the report reads results
# without torch, so not from the policy classes); any other policy gets its own from its name
MARKERS = {"eager": "*", "exact": "s", "paper": "o", "topk": "^", "quant": "D",
           "recompute": "P", "sdpa": "X"}
COLORS = {"eager": "black", "exact": "C0", "paper": "C1", "topk": "C2", "quant": "C3",
          "recompute": "C4", "sdpa": "C5"}
SPARE_MARKERS = ("v", "<", ">", "h", "p", "d", "H", "8")
SPARE_COLORS = ("C6", "C7", "C8", "C9")


def policy_marker(policy: str) -> str:
    """The policy's plot marker: the table's, else a spare one fixed by its name (a policy of
    your own gets the same marker in every figure and every run, with no edit here)."""
    name = str(policy)
    return MARKERS.get(name) or SPARE_MARKERS[zlib.crc32(name.encode()) % len(SPARE_MARKERS)]


def policy_color(policy: str) -> str:
    """The policy's colour, chosen as its marker."""
    name = str(policy)
    return COLORS.get(name) or SPARE_COLORS[zlib.crc32(name.encode()) % len(SPARE_COLORS)]


MARKER_SIZE = 45  # points^2
ERR_FLOOR = 1e-8  # 1 - cosine below this is float rounding: plotted at the floor


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # a renderer, so label extents can be measured before saving
    return fig


def _save(fig: Any, base: Path | str | None) -> list[Path]:
    if base is None:
        return []
    base = Path(base)
    return [save_figure(fig, base.with_suffix(".png")), save_figure(fig, base.with_suffix(".pdf"))]


# ----------------------------------------------------------------------------- labels
def _candidates() -> list[tuple[float, float]]:
    """Offsets (points) to try, nearest first: 8 directions at growing distances."""
    dirs = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    return [(dx * r, dy * r) for r in (4, 9, 16, 26, 38, 52) for dx, dy in dirs]


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 obstacles: Sequence[Bbox] = (), fontsize: float = 7) -> list[Any]:
    """Annotate each point with its text at the nearest offset where the label overlaps no
    other label, no marker and no obstacle (display-space boxes) and stays inside the axes;
    far labels get a thin leader line. Call after the layout is final (axes do not move).

    Greedy, like adjustText's first pass, without the dependency: tens of points suffice.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    r = math.sqrt(MARKER_SIZE) / 2 * fig.dpi / 72 + 1
    pts = ax.transData.transform(list(zip(xs, ys))) if len(xs) else []
    blocked = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in pts]
    blocked += list(obstacles)
    frame = ax.get_window_extent(renderer)
    out = []
    for x, y, text in zip(xs, ys, texts):
        chosen = None
        for dx, dy in _candidates():
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            far = abs(dx) + abs(dy) > 12
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, fontsize=fontsize,
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.45",
                                          "shrinkA": 0, "shrinkB": 3} if far else None)
            b = text_box(ann, renderer)  # a gap of about one character between labels
            box = Bbox.from_extents(b.x0 - 6, b.y0 - 2, b.x1 + 6, b.y1 + 2)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1
                      and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(b) for b in blocked):
                chosen = ann
                blocked.append(box)
                break
            ann.remove()
        if chosen is None:  # nowhere free: place it at the first offset rather than drop it
            chosen = ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points",
                                 fontsize=fontsize)
            blocked.append(text_box(chosen, renderer))
        out.append(chosen)
    return out


def text_box(ann: Any, renderer: Any) -> Bbox:
    """The display box of an annotation's text alone (its leader line excluded)."""
    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def label_overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of annotation texts whose boxes overlap, over every axes of `fig` (for tests)."""
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        anns = [t for t in ax.texts if hasattr(t, "xyann")]
        boxes = [(a.get_text(), text_box(a, renderer)) for a in anns]
        for i, (ta, ba) in enumerate(boxes):
            for tb, bb in boxes[i + 1:]:
                if ba.overlaps(bb):
                    found.append((ta, tb))
    return found


def _short(setting: str, policy: str) -> str:
    """`paper S=5` -> `S=5` where the marker already says the family."""
    rest = setting[len(policy):].strip()
    return rest or policy


def _family_handles(policies: Sequence[str], colored: bool = True) -> list[Line2D]:
    return [Line2D([], [], color=policy_color(p) if colored else "white",
                   marker=policy_marker(p), ls="", markeredgecolor="black",
                   markeredgewidth=0.5, label=p) for p in policies]


# ----------------------------------------------------------------------------- trade-off
def plot_tradeoff(points: list[dict[str, Any]], base: Path | str | None = None,
                  title: str = "", profile: str = "") -> Any:
    """What each setting costs in quality for the memory it saves: one panel per task (the
    units differ: accuracy points, BLEU), x = attention memory reduction vs eager, y = paired
    quality Δ vs eager with its 95% interval; marker/colour = policy family, label = setting."""
    shown = [p for p in points if p["status"] == "completed" and not p.get("is_baseline")
             and not math.isnan(p["memory_reduction_pct"]) and not math.isnan(p["quality_delta"])]
    tasks = list(dict.fromkeys(p["task"] for p in points)) or [""]
    ncol = min(2, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig = _new_figure((5.2 * ncol + 1.4, 3.9 * nrow + 0.5))
    axs = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axs[len(tasks):]:
        ax.set_visible(False)
    per_ax = []
    for ax, task in zip(axs, tasks):
        pts = [p for p in shown if p["task"] == task]
        for p in pts:
            lo, hi = p.get("quality_ci95_low", math.nan), p.get("quality_ci95_high", math.nan)
            yerr = None
            if not (math.isnan(lo) or math.isnan(hi)):
                yerr = [[p["quality_delta"] - lo], [hi - p["quality_delta"]]]
            ax.errorbar([p["memory_reduction_pct"]], [p["quality_delta"]], yerr=yerr,
                        fmt=policy_marker(p["policy"]), color=policy_color(p["policy"]),
                        ms=math.sqrt(MARKER_SIZE), mec="black", mew=0.4, elinewidth=0.8,
                        capsize=2, zorder=3)
        ax.axhline(0, color="grey", lw=0.8, ls="--", zorder=1)
        ax.axvline(0, color="grey", lw=0.5, ls=":", zorder=1)
        metric = pts[0]["metric_label"] if pts and pts[0].get("metric_label") else "quality"
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("attention activation memory saved vs eager (%)", fontsize=8)
        ax.set_ylabel(f"Δ {metric} vs eager (paired)", fontsize=8)
        ax.grid(alpha=0.3)
        if pts:
            _pad_limits(ax, [p["memory_reduction_pct"] for p in pts],
                        [v for p in pts for v in (p["quality_delta"], p.get("quality_ci95_low"),
                                                  p.get("quality_ci95_high")) if v is not None])
        else:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        per_ax.append((ax, pts))
    families = list(dict.fromkeys(p["policy"] for p in shown))
    head = title or "Memory saved vs quality change"
    fig.suptitle(f"{head}: right = less memory, up = better quality; bars = 95% interval over "
                 f"seeds (none for n=1)" + (f" [{profile}]" if profile else ""), fontsize=9)
    if families:
        fig.legend(handles=_family_handles(families), fontsize=7, loc="upper right",
                   bbox_to_anchor=(1.0, 0.93), title="policy", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / (5.2 * ncol + 1.4), 1))
    for ax, pts in per_ax:  # layout is final: now labels can be placed without moving
        bars = _errorbar_boxes(ax, pts)
        place_labels(ax, [p["memory_reduction_pct"] for p in pts],
                     [p["quality_delta"] for p in pts],
                     [_short(p["setting"], p["policy"]) for p in pts], obstacles=bars)
    _save(fig, base)
    return fig


def _pad_limits(ax: Any, xs: list[float], ys: list[float]) -> None:
    """Room around the points for their labels (labels must stay inside the axes)."""
    ys = [y for y in ys if not math.isnan(y)]
    x0, x1 = min(xs + [0.0]), max(xs + [0.0])
    y0, y1 = min(ys + [0.0]), max(ys + [0.0])
    dx, dy = max(x1 - x0, 1.0), max(y1 - y0, 0.1)
    ax.set_xlim(x0 - 0.15 * dx, x1 + 0.25 * dx)
    ax.set_ylim(y0 - 0.25 * dy, y1 + 0.25 * dy)


def _errorbar_boxes(ax: Any, pts: list[dict[str, Any]]) -> list[Bbox]:
    boxes = []
    for p in pts:
        lo, hi = p.get("quality_ci95_low", math.nan), p.get("quality_ci95_high", math.nan)
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            continue
        (x, y0), (_, y1) = ax.transData.transform([(p["memory_reduction_pct"], lo),
                                                   (p["memory_reduction_pct"], hi)])
        boxes.append(Bbox.from_extents(x - 3, y0, x + 3, y1))
    return boxes


# ----------------------------------------------------------------------------- which policy
def which_policy_points(records: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    """The benchmark records the figure shows: the longest n, one logits kind (peaked first)."""
    from softmax_approx.report.bench import at_longest

    return at_longest(records)


def plot_which_policy(records: list[dict[str, Any]], base: Path | str | None = None,
                      profile: str = "", title: str = "Which policy should I use?") -> Any:
    """Memory saved by the whole attention call vs its forward+backward time (both relative to
    eager) at the benchmark's longest n; colour = gradient error 1 - cosine vs a float64
    exact gradient (log); marker = policy family; label = setting."""
    n, logits, recs = which_policy_points(records)
    recs = [r for r in recs if r.get("time_ratio_vs_eager") is not None
            and r.get("module_reduction_vs_eager") is not None]
    fig = _new_figure((7.4, 5.0))
    ax = fig.subplots()
    xs = [float(r["time_ratio_vs_eager"]) for r in recs]
    ys = [100 * float(r["module_reduction_vs_eager"]) for r in recs]
    errs = [max(1 - float(r["grad_cosine"]), ERR_FLOOR) if r.get("grad_cosine") is not None
            else math.nan for r in recs]
    finite = [e for e in errs if not math.isnan(e)]
    norm = LogNorm(vmin=min(finite + [ERR_FLOOR]), vmax=max(finite + [1e-2]))
    for r, x, y, e in zip(recs, xs, ys, errs):
        style = {"c": [e], "cmap": "viridis", "norm": norm} if not math.isnan(e) else {"color": "white"}
        ax.scatter([x], [y], marker=policy_marker(r["policy"]), s=MARKER_SIZE,
                   edgecolors="black", linewidths=0.5, zorder=3, **style)
    ax.axvline(1, color="grey", lw=0.8, ls="--", zorder=1)
    ax.axhline(0, color="grey", lw=0.8, ls="--", zorder=1)
    if xs:
        ax.set_xscale("log", base=2)
        lo, hi = min(xs + [1.0]), max(xs + [1.0])
        ax.set_xlim(lo / 1.6, hi * 1.9)
        y0, y1 = min(ys + [0.0]), max(ys + [0.0])
        dy = max(y1 - y0, 1.0)
        ax.set_ylim(y0 - 0.12 * dy, y1 + 0.15 * dy)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    else:
        ax.text(0.5, 0.5, "no benchmark records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("forward+backward time ÷ eager's (log; left = faster)")
    ax.set_ylabel("attention call memory saved vs eager (%; up = less memory)")
    ax.grid(alpha=0.3)
    shape = (f"n={n}, {logits} logits, B={recs[0].get('batch')}, H={recs[0].get('heads')}, "
             f"head_dim={recs[0].get('head_dim')}, {recs[0].get('dtype')} on "
             f"{recs[0].get('device')}" if recs else "no records")
    ax.set_title(f"{title} Up-left is better; dark = gradient closest to exact\n{shape}"
                 + (f" [{profile}]" if profile else ""), fontsize=9)
    if finite:
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, pad=0.02)
        cb.set_label("gradient error 1 − cosine vs float64 exact (log)", fontsize=8)
    families = list(dict.fromkeys(str(r["policy"]) for r in recs))
    if families:
        ax.legend(handles=_family_handles(families, colored=False), fontsize=7,
                  loc="lower right", title="policy", title_fontsize=7)
    fig.tight_layout()
    legend = ax.get_legend()
    obstacles = [legend.get_window_extent(fig.canvas.get_renderer())] if legend else []
    labels = [Setting(str(r["policy"]), tuple(sorted((r.get("params") or {}).items()))).label
              for r in recs]
    place_labels(ax, xs, ys, labels, obstacles=obstacles)
    _save(fig, base)
    return fig


# ----------------------------------------------------------------------------- fidelity
def plot_fidelity(exp: Experiment, cells: dict[tuple[str, Setting], Cell],
                  base: Path | str | None = None) -> Any:
    """How far each approximation's gradient is from the exact one, against its parameter
    (S, keep_ratio, bits): y = 1 - cosine (log, shared by the panels; lower = closer), one
    line per task, error bars = sample std over seeds; one panel per policy."""
    axes_of = dict(exp.x_axis)
    policies = [p for p in axes_of if any(s.policy == p for s in exp.settings)]
    fig = _new_figure((3.8 * max(1, len(policies)), 3.6))
    axs = fig.subplots(1, max(1, len(policies)), squeeze=False, sharey=True)
    for ax, pol in zip(axs[0], policies):
        param = axes_of[pol]
        ticks: set[float] = set()
        for i, task in enumerate(exp.tasks):
            xs, ys, lo, hi = [], [], [], []
            for s in exp.settings:
                if s.policy != pol or param not in s.params_dict:
                    continue
                st = cells[(task, s)].values(lambda r: _err(fidelity_of(r)))
                if st.n:
                    sd = 0.0 if math.isnan(st.std) else st.std
                    xs.append(float(s.params_dict[param]))
                    ys.append(max(st.mean, ERR_FLOOR))
                    lo.append(ys[-1] - max(st.mean - sd, ERR_FLOOR))
                    hi.append(sd)
            if xs:
                order = sorted(range(len(xs)), key=xs.__getitem__)
                ax.errorbar([xs[j] for j in order], [ys[j] for j in order],
                            yerr=[[lo[j] for j in order], [hi[j] for j in order]], marker="o",
                            color=f"C{i}", label=task, capsize=2)
                ticks |= set(xs)
        if ticks and min(ticks) > 0 and max(ticks) <= 1 and min(ticks) < 1:  # a fraction (keep_ratio)
            ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks), [_fmt_tick(pol, param, t) for t in sorted(ticks)])
            ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(f"{pol}: {param}", fontsize=8)
        ax.set_title(pol, fontsize=9)
        ax.grid(alpha=0.3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    axs[0][0].set_ylabel(f"gradient error 1 − cosine vs exact\n(log; lower = closer; "
                         f"≤ {ERR_FLOOR:.0e} drawn at {ERR_FLOOR:.0e})", fontsize=8)
    handles, labels = [], []
    for ax in axs[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        axs[0][-1].legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(f"{exp.title}: how close the approximate gradient is [{exp.profile}]", fontsize=9)
    fig.tight_layout()
    _save(fig, base)
    return fig


def _err(cos: float | None) -> float | None:
    return None if cos is None else 1.0 - cos


def _fmt_tick(policy: str, param: str, v: float) -> str:
    if 0 < v < 1:  # a fraction as the settings' labels write it (keep_ratio=1/8)
        return Setting(policy, ((param, v),)).label.split("=")[1]
    return f"{v:g}"


def plot_fidelity_layers(rows: list[dict[str, Any]], task: str, base: Path | str | None = None) -> Any:
    """Per-layer gradient cosine of one task: one line per setting over the layers."""
    rows = [r for r in rows if r["task"] == task and r.get("cosine") is not None]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = _new_figure((max(5, 0.6 * len(layers) + 2), 3.5))
    ax = fig.subplots()
    for i, setting in enumerate(dict.fromkeys(r["setting"] for r in rows)):
        ys = [max(1 - stats(r["cosine"] for r in rows
                            if r["setting"] == setting and r["layer"] == lay).mean, ERR_FLOOR)
              for lay in layers]
        ax.plot(range(len(layers)), ys, marker="o", label=setting, color=f"C{i % 10}")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("gradient error 1 − cosine (log)")
    ax.set_title(f"Per-layer gradient fidelity: {task}")
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, base)
    return fig
