"""An interrupted run equals an uninterrupted one (docs/reliability.md §8, "Interrupted = uninterrupted").

The same deterministic smoke run, once straight through and once stopped by a signal at a given
phase (data/tokenizer setup, mid-epoch, during a validation, between fit and test, during test)
then rerun with the same command, must end with EVERY numeric metric of results.json equal
(``train/*``, ``val/*``, ``*_best``, ``test/*``), exactly (CPU, ``trainer.deterministic=true``).
For a classification and a translation task, by SIGTERM and by SIGINT, and with gradient
accumulation 2. The signal is the real one (``os.kill`` of this process by ``fault.signal_*``),
handled by the real handler. A representative cut runs by default; the whole grid is ``slow``.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from conftest import compose_cfg
from fixtures_data import write_multi30k, write_sst2
from softmax_approx.harness.preemption import Preempted
from softmax_approx.harness.results import load_results
from softmax_approx.harness.resume import last_checkpoint
from softmax_approx.train import train

# Three epochs of 4 batches (12 optimizer steps), a validation every 2 batches: steps 2, 4, ... 12.
COMMON = ["trainer.max_epochs=3", "trainer.deterministic=true", "trainer.limit_train_batches=4",
          "trainer.val_check_interval=2"]
# Gradient accumulation 2 over 6 batches: 3 optimizer steps per epoch, 9 in all.
ACCUMULATE = ["+trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=6"]
TRANSLATION = [
    "profile=smoke", "logger=none", "task=multi30k", "model.d_model=16", "model.n_heads=2",
    "model.n_layers=1", "model.d_ff=32", "trainer.max_steps=-1", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "task.datamodule.subset=null",
    "task.datamodule.vocab_size=120", "task.datamodule.batch_size=8", "task.datamodule.max_tokens=null",
    "task.datamodule.max_len=16", "task.module.beam=2", "task.module.val_bleu_max_sentences=6",
    "task.module.n_samples=2", "memory.warmup_steps=1", "timing.skip_steps=0",
]

#: phase -> fault overrides (without / with accumulation). ``mid-epoch``: in epoch 2 of 3 (its
#: train metrics are the ones reported); ``mid-epoch-early``: in epoch 1 (the best so far must
#: survive); ``validation``: the first validation from that step on.
PHASES = {
    "setup": (["fault.signal_phase=setup"],) * 2,
    "mid-epoch-early": (["fault.signal_at_step=5"], ["fault.signal_at_step=4"]),
    "mid-epoch": (["fault.signal_at_step=9"], ["fault.signal_at_step=7"]),
    "validation": (["fault.signal_phase=validation", "fault.signal_at_step=5"],
                   ["fault.signal_phase=validation", "fault.signal_at_step=4"]),
    "between": (["fault.signal_phase=between"],) * 2,
    "test": (["fault.signal_phase=test"],) * 2,
}


@pytest.fixture(scope="module")
def eq_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("eqdata")
    write_sst2(d, n_train=96, n_dev=16)
    write_multi30k(d, sizes=(64, 16, 8))
    return d


def _overrides(task: str, accumulate: bool) -> tuple[list[str], bool]:
    """(overrides, tiny): the classification run uses conftest's TINY, translation its own."""
    extra = [*COMMON, *(ACCUMULATE if accumulate else [])]
    return ([*TRANSLATION, *extra], False) if task == "multi30k" else (extra, True)


_REFERENCES: dict = {}


def _reference(task: str, accumulate: bool, tmp_path_factory, data: Path) -> dict:
    key = (task, accumulate)
    if key not in _REFERENCES:
        overrides, tiny = _overrides(task, accumulate)
        run = tmp_path_factory.mktemp(f"ref-{task}-{int(accumulate)}")
        train(compose_cfg(overrides, run, data, tiny=tiny))
        _REFERENCES[key] = load_results(run / "results.json")
    return _REFERENCES[key]


def _interrupted_then_resumed(task: str, accumulate: bool, phase: str, signame: str, run: Path,
                              data: Path) -> tuple[dict, dict]:
    overrides, tiny = _overrides(task, accumulate)
    with pytest.raises(Preempted) as info:
        train(compose_cfg([*overrides, *PHASES[phase][accumulate], f"fault.signal_name={signame}"], run, data, tiny=tiny))
    stopped = load_results(run / "results.json")
    assert signal.getsignal(signal.SIGINT) is not None  # the handlers were put back
    assert info.value.signame == signame
    train(compose_cfg(overrides, run, data, tiny=tiny))
    return stopped, load_results(run / "results.json")


@pytest.fixture(autouse=True)
def falling_val_bleu(monkeypatch):
    """Validation BLEU that falls with the step, so the best is an early one and a resume that
    loses it reports a lower ``val/bleu_best`` (and tests another checkpoint). A tiny model's
    real BLEU only rises (or stays 0) over 12 steps; the test BLEU stays the real one."""
    from dataclasses import replace

    from softmax_approx.tasks.translation import TranslationTask

    real = TranslationTask._bleu

    def bleu(self, split):
        res, samples = real(self, split)
        if split == "val" and res is not None and not self.trainer.sanity_checking:
            res = replace(res, bleu=res.bleu + 100.0 / (1 + int(self.global_step)))
        return res, samples

    monkeypatch.setattr(TranslationTask, "_bleu", bleu)


def _check(task, accumulate, phase, signame, tmp_path, tmp_path_factory, data):
    ref = _reference(task, accumulate, tmp_path_factory, data)
    stopped, done = _interrupted_then_resumed(task, accumulate, phase, signame, tmp_path / "run", data)
    assert stopped["status"] == ("interrupted" if signame == "SIGINT" else "preempted")
    assert stopped["error"].startswith(f"Preempted: {signame} received")
    assert done["status"] == "completed"
    numeric = {k for k, v in ref["metrics"].items() if isinstance(v, float)}
    assert {"train/loss_epoch", "val/loss", "test/loss"} <= numeric
    assert any(k.endswith("_best") for k in numeric) and any(k.startswith("train/") for k in numeric)
    assert set(done["metrics"]) == set(ref["metrics"])
    different = {k: (ref["metrics"][k], done["metrics"][k]) for k in ref["metrics"]
                 if done["metrics"][k] != ref["metrics"][k]}
    assert not different, f"{task} {phase} {signame}: resumed != uninterrupted: {different}"
    assert done["memory"] == ref["memory"]
    return stopped


# ------------------------------------------------------------------------ default cut (~20 s)
DEFAULT_CASES = [
    ("sst2", False, "mid-epoch", "SIGTERM"),        # train/* of the interrupted epoch
    ("multi30k", False, "mid-epoch", "SIGTERM"),    # val/bleu_best of the epochs before
    ("sst2", False, "validation", "SIGINT"),        # Ctrl-C during validation, Lightning skips a due one
    ("sst2", True, "mid-epoch-early", "SIGTERM"),   # mid gradient-accumulation
    ("multi30k", False, "test", "SIGTERM"),         # during test decoding
    ("sst2", False, "setup", "SIGTERM"),            # during data/tokenizer setup
]


@pytest.mark.parametrize("task,accumulate,phase,signame", DEFAULT_CASES,
                         ids=["-".join([t, "accum2" if a else "accum1", p, s]) for t, a, p, s in DEFAULT_CASES])
def test_interrupted_run_equals_uninterrupted(task, accumulate, phase, signame, tmp_path, tmp_path_factory, eq_data):
    _check(task, accumulate, phase, signame, tmp_path, tmp_path_factory, eq_data)


GRID = [c for c in itertools.product(("sst2", "multi30k"), (False, True), tuple(PHASES), ("SIGTERM", "SIGINT"))
        if c not in DEFAULT_CASES]


@pytest.mark.slow
@pytest.mark.parametrize("task,accumulate,phase,signame", GRID,
                         ids=["-".join([t, "accum2" if a else "accum1", p, s]) for t, a, p, s in GRID])
def test_interrupted_run_equals_uninterrupted_every_phase(task, accumulate, phase, signame, tmp_path,
                                                          tmp_path_factory, eq_data):
    _check(task, accumulate, phase, signame, tmp_path, tmp_path_factory, eq_data)


# ------------------------------------------------------------------ where each phase stops
def test_each_phase_stops_at_its_safe_point(tmp_path, eq_data):
    """setup: before any checkpoint; a signal before a due validation: after it (step 6, not 5);
    mid gradient-accumulation: at the next optimizer step; between fit and test: last.ckpt of
    the finished training, nothing tested."""
    import torch

    def stop(name, extra):
        run = tmp_path / name
        with pytest.raises(Preempted) as info:
            train(compose_cfg([*COMMON, *extra], run, eq_data))
        ck = last_checkpoint(run)
        return info.value, (torch.load(ck, map_location="cpu", weights_only=False) if ck.exists() else None)

    e, ck = stop("setup", PHASES["setup"][0])
    assert e.phase == "data setup" and ck is None and "during data setup (no checkpoint)" in str(e)
    e, ck = stop("val", ["fault.signal_at_step=5", "fault.signal_name=SIGUSR1"])  # validation after step 6
    assert e.step == 6 and ck["global_step"] == 6
    e, ck = stop("accum", [*ACCUMULATE, "fault.signal_at_step=1"])  # batch 2 starts an accumulation
    assert ck["global_step"] == 2  # the accumulation finished: no partial gradient dropped
    assert ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] % 2 == 0
    e, ck = stop("between", PHASES["between"][0])
    assert "after training, before testing" in str(e) and ck["global_step"] == 12
