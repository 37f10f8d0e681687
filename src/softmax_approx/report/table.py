"""The table renderer: one `Table` written as Markdown, LaTeX and CSV.

A `Table` holds display rows (strings, for md/tex) and long-format rows (numbers, for csv) so
the CSV stays machine-readable while the Markdown stays readable. Every table carries its
profile and the definition of each number it shows (its notes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softmax_approx.report.io import write_text


@dataclass
class Table:
    name: str
    title: str
    profile: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    csv_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Profile: `{self.profile}`.", ""]
        lines += [f"- {n}" for n in self.notes]
        lines += ["", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        cols = "l" * len(self.header)
        out = [
            f"% {self.title} (profile: {self.profile})",
            *[f"% {n}" for n in self.notes],
            "\\begin{tabular}{" + cols + "}",
            "\\toprule",
            " & ".join(_tex(h) for h in self.header) + " \\\\",
            "\\midrule",
            *[" & ".join(_tex(c) for c in row) + " \\\\" for row in self.rows],
            "\\bottomrule",
            "\\end{tabular}",
        ]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        rows = self.csv_rows or [dict(zip(self.header, r)) for r in self.rows]
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields or self.header, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv_value(v) for k, v in r.items()})
        return buf.getvalue()

    def write(self, tables_dir: Path | str) -> list[Path]:
        d = Path(tables_dir)
        return [
            write_text(d / f"{self.name}.md", self.to_markdown()),
            write_text(d / f"{self.name}.tex", self.to_latex()),
            write_text(d / f"{self.name}.csv", self.to_csv()),
        ]


def _tex(s: str) -> str:
    rep = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "_": "\\_", "#": "\\#",
           "$": "\\$", "{": "\\{", "}": "\\}", "±": "$\\pm$", "×": "$\\times$", "Δ": "$\\Delta$"}
    return "".join(rep.get(c, c) for c in s)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v
