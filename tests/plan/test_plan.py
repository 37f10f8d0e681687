"""Experiment definitions (plan/): typed once, one-line errors naming the file and the key;
the profiles come from conf/profile/; every kind has exactly one table builder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from softmax_approx.plan import Claim, Metric, load_common, load_experiments
from softmax_approx.plan.definitions import KINDS
from softmax_approx.report.builders import BUILDERS
from softmax_approx.utils.errors import ConfigError
from softmax_approx.utils.profiles import PROFILE_CONF_DIR, profile_names

GOOD = """\
name: quality
kind: quality
tasks: [sst2]
policies: [eager, {name: paper, grid: {S: [2, 5]}}]
seeds: [0, 1]
baseline: eager
also_paired_with: [recompute]
"""


def write(tmp_path: Path, text: str, name: str = "quality.yaml") -> Path:
    d = tmp_path / "experiments"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(text))
    return d


def test_keys_are_typed_with_defaults_and_metric_overrides_merged(tmp_path):
    metrics = "metrics:\n  classification: {label: acc (%), definition: on dev}\n"
    (exp,) = load_experiments("cpu", write(tmp_path, GOOD + metrics))
    assert exp.baseline == "eager" and exp.reference == "exact" and exp.uses == []
    assert exp.also_paired_with == ["recompute"] and exp.seeds == [0, 1]
    # a partial metric keeps the default key and scale of its kind; an unnamed kind gets the default
    assert exp.metric("classification") == Metric("test/acc", 100.0, "acc (%)", "on dev")
    assert exp.metric("translation") == Metric("test/bleu", 1.0, "BLEU")
    assert exp.evidence_profiles == ["cpu", "paper"] and exp.figure == "which_policy"


def test_shipped_claims_parse_into_claims():
    claims = {e.name: e for e in load_experiments("smoke")}["claims"].claims
    assert claims and all(isinstance(c, Claim) for c in claims)
    bleu = next(c for c in claims if c.id == "bleu_comparable")
    assert bleu.policy == "paper" and bleu.params == {"S": 5} and bleu.margin == 1.0


@pytest.mark.parametrize("extra,key", [
    ("baselin: eager\n", "baselin"),                       # a typo is refused, not ignored
    ("uses: memory\n", "uses"),                             # a string where a list belongs
    ("figure: [a, b]\n", "figure"),
    ("evidence_profiles: [gpu]\n", "evidence_profiles"),
    ("metrics: {translation: {key: test/bleu, scal: 1}}\n", "scal"),
    ("claims: [{id: a, claim: b, source: quality, measure: biggest}]\n", "measure"),
    ("claims: [{id: a, claim: b, source: quality}]\n", "measure"),
    ("claims: [{id: a, claim: b, source: quality, measure: paired_max_gain, threshold: high}]\n",
     "threshold"),
])
def test_a_bad_key_is_one_line_naming_the_file_and_the_key(tmp_path, extra, key):
    d = write(tmp_path, GOOD.replace("seeds: [0, 1]\n", "seeds: [0, 1]\n" + extra))
    with pytest.raises(ConfigError) as e:
        load_experiments("cpu", d)
    msg = str(e.value)
    assert "\n" not in msg and "quality.yaml" in msg and key in msg, msg


def test_seeds_must_be_integers_in_a_profile_section_too(tmp_path):
    d = write(tmp_path, GOOD + "profiles:\n  cpu: {seeds: [zero]}\n")
    with pytest.raises(ConfigError, match=r"quality\.yaml: `seeds` must be a list of integers"):
        load_experiments("cpu", d)
    assert load_experiments("smoke", d)[0].seeds == [0, 1]  # only the cpu section is bad


def test_common_is_typed_and_refuses_unknown_keys(tmp_path):
    d = write(tmp_path, "order: [b, a]\nprofiles:\n  cpu: {overrides: [x=1]}\n", "_common.yaml")
    common = load_common(d)
    assert common.order == ["b", "a"] and common.overrides_for("cpu") == ["x=1"]
    assert common.overrides_for("paper") == []
    write(tmp_path, "profiles:\n  cpu: {overide: [x=1]}\n", "_common.yaml")
    with pytest.raises(ConfigError, match=r"_common\.yaml: profiles\.cpu: unknown key\(s\) \['overide'\]"):
        load_common(d)


def test_profiles_are_the_files_of_conf_profile(tmp_path):
    assert set(profile_names()) == {p.stem for p in PROFILE_CONF_DIR.glob("*.yaml")} >= {"smoke", "cpu", "paper"}
    with pytest.raises(ConfigError, match="is not one of " + ", ".join(profile_names())):
        load_experiments("gpu", write(tmp_path, GOOD))


@pytest.mark.parametrize("module", ["softmax_approx.report", "softmax_approx.reproduce"])
def test_the_command_lines_offer_exactly_the_profiles(module, capsys):
    """--profile accepts the listed profiles and refuses others (argparse exits 2)."""
    import importlib

    main = importlib.import_module(module + (".__main__" if module.endswith("report") else "")).main
    argv = ["--out", "o", "--profile", "nonesuch"] if module.endswith("report") else \
        ["run", "--out", "o", "--profile", "nonesuch"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "choose from " + ", ".join(f"'{p}'" for p in profile_names()) in err, err


def test_every_kind_has_one_builder():
    assert set(BUILDERS) == set(KINDS)
