"""Translation presets compose, validate, and carry their documented sources' values."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from softmax_approx.harness.validation import CONF_DIR, validate_config


def _cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("task", ["multi30k", "iwslt14", "iwslt14_mini"])
def test_every_task_profile_pair_validates(task, profile):
    cfg = _cfg([f"task={task}", f"profile={profile}", "trainer=cpu", "paths.data_dir=/nonexistent"])
    validate_config(cfg, check_data=False)
    assert cfg.model.kind == "translation" and cfg.task.metric == "val/bleu"


def test_iwslt_paper_profile_is_fairseqs_recipe():
    cfg = _cfg(["task=iwslt14", "profile=paper", "trainer=cpu"])
    m = cfg.model
    assert (m.d_model, m.n_heads, m.n_layers, m.d_ff, m.dropout, m.attn_dropout) == (512, 4, 6, 1024, 0.3, 0.0)
    assert m.tie_decoder_embeddings
    o = cfg.optimizer
    assert (o.lr, list(o.betas), o.weight_decay) == (5e-4, [0.9, 0.98], 1e-4)
    assert cfg.scheduler.warmup_steps == 4000 and cfg.scheduler._target_.endswith("inverse_sqrt")
    assert cfg.task.datamodule.max_tokens == 4096 and cfg.task.module.label_smoothing == 0.1
    assert cfg.task.module.beam == 5 and cfg.trainer.gradient_clip_val is None


def test_multi30k_paper_profile_is_the_reference_example():
    cfg = _cfg(["task=multi30k", "profile=paper", "trainer=cpu"])
    m = cfg.model
    assert (m.d_model, m.n_heads, m.n_layers, m.d_ff, m.dropout) == (256, 8, 3, 512, 0.1)
    assert cfg.optimizer.lr == 5e-4 and cfg.scheduler is None and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.task.datamodule.batch_size == 128 and cfg.task.datamodule.max_len == 40


def test_task_picks_its_model_but_command_line_wins():
    assert _cfg(["task=iwslt14_mini"]).model._target_.endswith("Translator")
    cfg = _cfg(["task=multi30k", "model=transformer_iwslt", "profile=cpu"])
    assert cfg.model.tie_decoder_embeddings  # the IWSLT preset, chosen explicitly
