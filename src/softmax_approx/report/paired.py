"""Paired differences to the baseline: per seed, their mean and a 95% t-interval over seeds.

Why paired: a run of a policy and the baseline run of the same seed share the initial
weights and the data order (both come from the seed), so most of the seed-to-seed noise
cancels in their difference; an interval on the differences says how sure "comparable" is
with far fewer seeds than comparing two independent means would need.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from softmax_approx.report.results import Cell, Record

# Two-sided 95% quantiles t_{0.975, df} of Student's t distribution, df = 1..30 (standard
# tables, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2; equal to scipy.stats.t.ppf(0.975, df) to
# the digits shown). scipy is not a dependency for 30 numbers; larger df use the
# Cornish-Fisher expansion below (error < 1e-5 for df > 30).
T975 = (
    12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243, 2.3060041,
    2.2621572, 2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495, 2.1199053,
    2.1098156, 2.1009220, 2.0930241, 2.0859634, 2.0796138, 2.0738731, 2.0686576, 2.0638986,
    2.0595386, 2.0555294, 2.0518305, 2.0484071, 2.0452296, 2.0422725,
)
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, Cornish-Fisher (Abramowitz & Stegun 26.7.5) above."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Paired:
    """Per-seed differences (policy - baseline, scaled) and their mean with a 95% t-interval.

    `low`/`high` are NaN when n < 2: one difference has no spread to build an interval from.
    """

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs) if self.diffs else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.diffs) if self.n > 1 else float("nan")

    @property
    def half_width(self) -> float:
        if self.n < 2:
            return float("nan")
        return t_quantile_975(self.n - 1) * self.std / math.sqrt(self.n)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def fmt(self, digits: int = 2) -> str:
        """`+0.52 [-0.31, +1.35] (n=3)`; `+0.52 (n=1, no interval)`; `n/a` without pairs."""
        if self.n == 0:
            return "n/a"
        m = signed(self.mean, digits)
        if self.n == 1:
            return f"{m} (n=1, no interval)"
        return f"{m} [{signed(self.low, digits)}, {signed(self.high, digits)}] (n={self.n})"

    def as_row(self, prefix: str = "paired") -> dict[str, Any]:
        return {f"{prefix}_n": self.n, f"{prefix}_mean": self.mean,
                f"{prefix}_ci95_low": self.low, f"{prefix}_ci95_high": self.high,
                f"{prefix}_seeds": list(self.seeds), f"{prefix}_diffs": list(self.diffs)}


def signed(x: float, digits: int = 2) -> str:
    """`+0.52`; a value that rounds to zero prints `+0.00`, never `-0.00`."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def paired(cell: Cell, base: Cell | None, value: Callable[[Record], Any],
           scale: float = 1.0) -> Paired:
    """Differences `value(policy run) - value(baseline run)` over the seeds both completed."""
    if base is None:
        return Paired((), ())
    mine = {r.run.seed: _num(value(r)) for r in cell.completed}
    theirs = {r.run.seed: _num(value(r)) for r in base.completed}
    seeds = sorted(s for s in mine if s in theirs and s is not None
                   and mine[s] is not None and theirs[s] is not None)
    return Paired(tuple(seeds), tuple((mine[s] - theirs[s]) * scale for s in seeds))  # type: ignore[operator]


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def unpaired_note(cell: Cell, base: Cell | None, p: Paired) -> str:
    """Why fewer pairs than seeds, e.g. `seed 0: eager failed`; empty when all seeds pair."""
    if base is None:
        return ""
    lost = sorted({r.run.seed for r in cell.completed} - set(p.seeds), key=lambda s: (s is None, s))
    return ", ".join(f"seed {s}: baseline missing" for s in lost)
