"""The code blocks of README.md's "The library in one call" and "Use it in your model" sections,
and the Transformers block of docs/integrations.md, executed as written: only the hub name is
replaced by a tiny local checkpoint saved here by plain Transformers (no ``softmax_approx`` in
its config), and names a snippet takes from the reader's code (``model``, ``q``, ...) are given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HUB_NAME = '"bert-base-uncased"'


def _blocks(path: Path, section: str) -> list[str]:
    text = path.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start: end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bert-tiny")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").save_pretrained(d)
    return str(d)


def _run_hf(code: str, checkpoint: str) -> dict:
    assert HUB_NAME in code, "the Transformers snippet no longer names the hub checkpoint this test replaces"
    ns: dict = {}
    exec(compile(code.replace(HUB_NAME, repr(checkpoint)), "snippet", "exec"), ns)  # noqa: S102
    ids = torch.randint(3, 99, (2, 8))
    ns["model"].train()(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    return ns


def test_library_in_one_call_runs_as_written():
    (code,) = _blocks(ROOT / "README.md", "The library in one call")
    ns: dict = {}
    exec(compile(code, "snippet", "exec"), ns)  # noqa: S102
    assert ns["out"].shape == (2, 8, 256, 64) and ns["q"].grad is not None
    assert ns["meter"].report().softmax_state_bytes > 0


def test_use_it_in_your_model_snippets_run_as_written(checkpoint):
    blocks = _blocks(ROOT / "README.md", "Use it in your model")
    seen = set()
    for code in blocks:
        if "transformers" in code:
            ns = _run_hf(code, checkpoint)
            assert ns["model"].config._attn_implementation == "softmax_approx"
            assert ns["model"].config.softmax_approx == {"policy": "topk", "keep_ratio": 0.125}
            seen.add("hf")
        elif "patch(" in code:
            model = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
            ns = {"model": model}
            exec(compile(code, "snippet", "exec"), ns)  # noqa: S102
            assert ns["names"] == ["layers.0.self_attn", "layers.1.self_attn"]
            model(torch.randn(2, 5, 16)).sum().backward()
            seen.add("nn")
        elif "from softmax_approx.core import attention" in code:
            q, k, v = (torch.randn(2, 4, 6, 8, requires_grad=True) for _ in range(3))
            ns = {"q": q, "k": k[:, :2], "v": v[:, :2], "keep": torch.rand(2, 1, 1, 6) > 0.2, "scale": 0.125,
                  "bias": torch.randn(1, 4, 6, 6), "model": torch.nn.Linear(1, 1)}
            exec(compile(code, "snippet", "exec"), ns)  # noqa: S102
            assert ns["out"].shape == (2, 4, 6, 8)
            ns["out"].sum().backward()
            seen.add("own")
        else:
            pytest.fail(f"a README snippet this test does not know how to run:\n{code}")
    assert seen == {"hf", "nn", "own"}


def test_integrations_doc_transformers_block_runs_as_written(checkpoint):
    (code,) = [c for c in _blocks(ROOT / "docs" / "integrations.md", "Hugging Face Transformers") if "from_pretrained" in c]
    ns = _run_hf(code, checkpoint)
    assert ns["n_layers"] == 2 and ns["model"].config._attn_implementation == "eager"  # its last line
