"""The integration's differential matrix (see ``tests/hf_matrix.py``): every model family x every
policy of the package's registry x dropout 0 / 0.1 x no / non-reentrant / reentrant activation
checkpointing x eager mode / ``torch.compile(fullgraph=True, backend="eager")``.

The default suite runs every eager-mode cell and a few compiled ones; the remaining compiled
cells are marked slow.
``python tests/hf_matrix.py`` prints the whole table.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import hf_matrix as M  # noqa: E402

# BERT and GPT-2 compile in the default suite in tests/integrations/test_integrations_routes.py too
DEFAULT_COMPILED = {
    ("bert", "paper", 0.1, "none"), ("t5", "recompute", 0.0, "none"), ("llama_gqa", "quant", 0.0, "reentrant"),
}


def _params():
    for family, policy, p, ckpt, mode in M.all_cells():
        slow = mode == "compile" and (family, policy, p, ckpt) not in DEFAULT_COMPILED
        yield pytest.param(family, policy, p, ckpt, mode, id=f"{family}-{policy}-p{p}-{ckpt}-{mode}",
                           marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("family,policy,p,checkpointing,mode", list(_params()))
def test_matrix_cell(family, policy, p, checkpointing, mode):
    cell = M.run_cell(family, policy, p, checkpointing, mode)
    if cell.not_applicable:
        pytest.skip(cell.not_applicable)
    assert cell.finite, cell
    assert cell.out_diff <= M.OUT_TOL, cell           # the forward is exact under every policy
    if cell.exact:
        assert cell.grad_diff <= M.GRAD_TOL, cell
    else:  # approximate policies without dropout: same direction as the exact gradient
        assert cell.cosine > 0.5, cell


def test_matrix_reads_the_policy_registry():
    from softmax_approx.core import POLICY_NAMES

    assert M.POLICIES == POLICY_NAMES and len({c[1] for c in M.all_cells()}) == len(POLICY_NAMES)
