"""Golden tables: the report renders fixture runs to exactly the Markdown kept in tests/report/golden/.

Why: a refactor of the report must not change a number, a label, a note or the order of rows; a
byte comparison with tables rendered before says so at once, where the other report tests check
chosen values. The memory tables come from the shipped smoke definitions (what `make reproduce
PROFILE=smoke` lays out); the whole report.md from the small definitions of test_report.py.

After an intended change of the output, regenerate the files and review their diff:
    PYTHONPATH=src python tests/report/test_report_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures_results import write_fixture_runs
from softmax_approx.report import render_report

GOLDEN = Path(__file__).resolve().parent / "golden"
SMOKE_TABLES = ("memory", "memory_by_kind", "activations_memory")


def render_smoke(tmp: Path) -> dict[str, str]:
    """The smoke memory tables (shipped definitions, fixture runs with one failed run)."""
    out = tmp / "smoke"
    write_fixture_runs(out, "smoke")
    render_report(out, profile="smoke", only=["memory", "activations_memory"])
    return {f"smoke_{name}.md": (out / "tables" / f"{name}.md").read_text() for name in SMOKE_TABLES}


def render_small(tmp: Path) -> dict[str, str]:
    """report.md of every kind but bench (test_report.py's definitions, cpu profile)."""
    from test_report import write_defs

    defs = write_defs(tmp / "experiments")
    out = tmp / "small"
    write_fixture_runs(out, "cpu", defs)
    render_report(out, profile="cpu", exp_dir=defs)
    return {"small_cpu_report.md": (out / "report.md").read_text()}


@pytest.mark.parametrize("render", [render_smoke, render_small])
def test_tables_match_the_golden_files(render, tmp_path):
    for name, text in render(tmp_path).items():
        want = (GOLDEN / name).read_text()
        assert text == want, f"{name} differs from tests/report/golden/{name}; if intended, regenerate (see the module docstring)"


def test_golden_memory_table_has_every_smoke_row():
    """The golden file itself is the full smoke grid: 2 tasks x 9 settings, the failed run shown."""
    rows = [line for line in (GOLDEN / "smoke_memory.md").read_text().splitlines()
            if line.startswith("| sst2 ") or line.startswith("| multi30k ")]
    assert len(rows) == 18
    assert "| sst2 | recompute | failed |" in "\n".join(rows)


if __name__ == "__main__":  # regenerate the golden files
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        for render in (render_smoke, render_small):
            for name, text in render(Path(tmp)).items():
                (GOLDEN / name).write_text(text)
                print(f"wrote tests/report/golden/{name}")
