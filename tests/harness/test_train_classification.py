"""End to end through ``train(cfg)``: both classification tasks under eager, paper and topk,
on tiny fixture data in the real formats (GLUE TSV, aclImdb tarball)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import compose_cfg
from softmax_approx.nn import MultiHeadAttention
from softmax_approx.train import train


@pytest.mark.parametrize("task", ["sst2", "imdb"])
@pytest.mark.parametrize("policy", ["eager", "paper", "topk"])
def test_train_runs_and_writes_results(task, policy, make_cfg, tmp_path):
    cfg = make_cfg([f"task={task}", f"attention={policy}"])
    metrics, objects = train(cfg)

    for key in ("train/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["test/acc"] <= 1.0

    # the configured policy reached every attention layer
    mhas = [m for m in objects["model"].net.modules() if isinstance(m, MultiHeadAttention)]
    assert mhas and all(m.policy.name == policy for m in mhas)

    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["status"] == "completed" and rec["error"] is None
    assert (rec["task"], rec["task_kind"], rec["policy"], rec["seed"]) == (task, "classification", policy, 0)
    assert rec["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])
    mem = rec["memory"]
    assert 0 < mem["softmax_state_bytes"] <= mem["attention_bytes"] < mem["total_activation_bytes"]
    assert mem["peak_step_bytes"] is None  # CPU
    assert rec["timing"]["step_seconds_median"] > 0 and rec["timing"]["tokens_per_second"] > 0
    assert rec["params"]["total"] == sum(p.numel() for p in objects["model"].parameters())


def test_policies_change_softmax_state_not_the_rest(data_dir, tmp_path):
    """Same batch, same model: exact keeps the full probabilities, topk keeps fewer bytes."""
    recs = {}
    for policy in ("exact", "topk"):
        # one run dir per config: a run dir holding another config's run is refused (resume)
        cfg = compose_cfg([f"attention={policy}", "model.attn_dropout=0.0"], tmp_path / policy, data_dir)
        _, objects = train(cfg)
        recs[policy] = objects["record"]["memory"]
    assert recs["exact"]["batch_shape"] == recs["topk"]["batch_shape"]
    assert recs["topk"]["softmax_state_bytes"] < recs["exact"]["softmax_state_bytes"]
    other = {p: r["total_activation_bytes"] - r["attention_bytes"] for p, r in recs.items()}
    assert other["exact"] == other["topk"]


def test_test_accuracy_comes_from_best_checkpoint(make_cfg, tmp_path):
    """Validation every epoch, several epochs: the tested weights are the best val/acc ones."""
    cfg = make_cfg(["trainer.max_epochs=3", "trainer.limit_train_batches=2", "optimizer.lr=0.05"])
    metrics, objects = train(cfg)
    ckpt_cb = objects["trainer"].checkpoint_callback
    rec = objects["record"]
    assert rec["test_weights"] == ckpt_cb.best_model_path and ckpt_cb.best_model_path.endswith(".ckpt")
    assert ckpt_cb.best_model_score.item() == pytest.approx(metrics["val/acc_best"])
    # re-test the saved best weights by hand: same accuracy as recorded
    state = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    model, dm = objects["model"], objects["datamodule"]
    model.load_state_dict(state)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i, batch in enumerate(dm.test_dataloader()):
            if i >= 2:  # limit_test_batches=2
                break
            pred = model(batch["input_ids"], batch["attention_mask"]).argmax(-1)
            correct += int((pred == batch["labels"]).sum())
            total += batch["labels"].numel()
    assert rec["metrics"]["test/acc"] == pytest.approx(correct / total)


def test_gradient_fidelity_probe(make_cfg, tmp_path):
    cfg = make_cfg(["attention=topk", "attention.params.keep_ratio=0.25", "probe.every_n_steps=2", "model.n_layers=2"])
    _, objects = train(cfg)
    fid = objects["record"]["fidelity"]
    assert set(fid["layers"]) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    for vals in fid["layers"].values():
        assert -1.0 <= vals["cosine"] <= 1.0 + 1e-9 and vals["cosine"] > 0.5
        assert vals["rel_err"] > 0  # topk at 25% is not exact
    # after the probe the configured policy is back in place
    mhas = [m for m in objects["model"].net.modules() if isinstance(m, MultiHeadAttention)]
    assert all(m.policy.name == "topk" and m.policy.keep_ratio == 0.25 for m in mhas)


def test_probe_is_exact_for_exact_policy(make_cfg):
    _, objects = train(make_cfg(["attention=exact", "probe.every_n_steps=1"]))
    for vals in objects["record"]["fidelity"]["layers"].values():
        assert vals["rel_err"] < 1e-6 and vals["cosine"] == pytest.approx(1.0)


def test_memory_is_measured_on_the_largest_of_the_measured_batches(data_dir, tmp_path):
    """Length-bucketed batches differ in size: the meter keeps the biggest one it saw."""
    one = train(compose_cfg(["memory.warmup_steps=0", "memory.measure_steps=1"], tmp_path / "one", data_dir))[1]["record"]["memory"]
    four = train(compose_cfg(["memory.warmup_steps=0", "memory.measure_steps=4"], tmp_path / "four", data_dir))[1]["record"]["memory"]
    numel = lambda m: m["batch_shape"][0] * m["batch_shape"][1]  # noqa: E731
    assert one["measured_at_step"] == 0 and 0 <= four["measured_at_step"] < 4
    assert numel(four) >= numel(one)
    if numel(four) > numel(one):
        assert four["total_activation_bytes"] > one["total_activation_bytes"]
