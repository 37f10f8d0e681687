"""notebooks/analysis.ipynb: stored without outputs, and runs top to bottom on fixture results."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from fixtures_results import write_fixture_bench, write_fixture_runs

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def test_notebook_executes_on_fixture_results(tmp_path, monkeypatch):
    out = tmp_path / "smoke"
    runs = write_fixture_runs(out, "smoke")  # every planned run of the profile; one failed
    write_fixture_bench(out, "smoke")
    monkeypatch.setenv("SOFTMAX_APPROX_RESULTS", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" resolves to the running interpreter's ipykernel (jupyter_client swaps the
    # kernelspec's "python" for sys.executable), so the venv's packages are what runs.
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"profile: smoke; {len(runs)} runs" in text
    assert "failed    sst2-recompute-s0-" in text  # the fixture's failed run is listed
    assert "# Paper claims vs our measurements" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # trade-off, which policy, fidelity, one per-layer plot per task
    assert "paired differences to eager" in text
    assert "lowest cosine" in text
    assert not (out / "tables").exists()  # the notebook renders in memory only
