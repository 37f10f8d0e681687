"""README's install lines and library examples, as written, for .ci/package_check.

    python readme_routes.py install README.md          the pip lines of "## Install", in order
    python readme_routes.py examples README.md lib|hf  run README's Python examples

``examples lib`` runs every Python block of README that does not use Transformers, ``hf`` those
that do. Each block runs as written in a namespace of its own, after a preamble that defines
only the names a snippet assumes from the reader's code (``model``, ``q``, ``k``, ``v``, ``keep``,
``scale``, ``bias``); the Transformers examples load a tiny random BERT written to a temporary
directory in place of the hub model (no network here). Plain standard library: it runs in the
fresh environment, from outside the repository, with the installed wheel.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HUB_MODEL = '"bert-base-uncased"'

PREAMBLE = """\
import torch
layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
keep = torch.rand(2, 1, 1, 16) > 0.2
scale, bias = 8 ** -0.5, torch.zeros(1, 4, 16, 16)
"""


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not match:
        raise SystemExit(f"README.md has no '## {title}' section")
    return match.group(1)


def install_lines(text: str) -> list[str]:
    """The ``pip install`` lines of the Install section's bash block, comments removed."""
    blocks = [code for lang, code in FENCE.findall(section(text, "Install")) if lang == "bash"]
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    lines = [line for line in lines if line.startswith("pip install ")]
    if len(lines) != 3 or not lines[0].startswith("pip install torch") or "[hf]" not in lines[2]:
        raise SystemExit(f"README.md Install: expected the torch, wheel and wheel[hf] lines, found {lines}")
    return lines


def write_tiny_bert(where: Path) -> Path:
    """A random 2-layer BERT classifier saved like a hub checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(where)
    return where


def run_examples(text: str, route: str) -> int:
    blocks = [code for lang, code in FENCE.findall(text) if lang == "python"]
    chosen = [code for code in blocks if ("transformers" in code) == (route == "hf")]
    if not chosen:
        raise SystemExit(f"README.md has no Python example for the {route} route")
    with tempfile.TemporaryDirectory() as tmp:
        for i, code in enumerate(chosen):
            namespace: dict = {"__name__": "__readme__"}
            exec(PREAMBLE, namespace)
            if route == "hf":
                if HUB_MODEL not in code:
                    raise SystemExit(f"README.md: the Transformers example no longer loads {HUB_MODEL}")
                code = code.replace(HUB_MODEL, repr(str(write_tiny_bert(Path(tmp) / f"bert{i}"))))
            exec(compile(code, f"README.md python block ({route} {i + 1})", "exec"), namespace)
            model = namespace.get("model")
            if route == "hf":  # the loaded model trains: forward + backward
                import torch

                out = model(input_ids=torch.randint(0, 99, (2, 8)), labels=torch.tensor([0, 1]))
                out.loss.backward()
            print(f"README {route} example {i + 1}/{len(chosen)}: ok")
    import softmax_approx

    print(f"README {route} examples ran with softmax_approx {softmax_approx.__version__} from {softmax_approx.__file__}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("install", "examples"):
        raise SystemExit(__doc__)
    text = Path(argv[1]).read_text(encoding="utf-8")
    if argv[0] == "install":
        print("\n".join(install_lines(text)))
        return 0
    return run_examples(text, argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
