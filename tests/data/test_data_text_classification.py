"""Your own labelled text (``task=text_classification``) and the dataset machinery SST-2 and IMDB
now share: training end to end on a 3-class CSV and a JSONL file, the readers' one-line errors,
and differential checks that the shipped datasets read exactly as the readers' own composition
does and that the yamls say the same through Hydra and through the plain-YAML registry."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import compose_cfg
from fixtures_data import write_imdb_tgz, write_imdb_tree, write_sst2
from softmax_approx.data.classification import ClassificationDataModule
from softmax_approx.data.datasets import Dataset, shipped, shipped_names
from softmax_approx.data.formats import read_csv, read_jsonl, read_tsv
from softmax_approx.data.readers import holdout_split, read_glue_sst2, read_imdb, sentence_holdout
from softmax_approx.harness.validation import validate_config
from softmax_approx.train import train
from softmax_approx.utils.errors import ConfigError, DataError
from softmax_approx.utils.task_conf import task_kinds, task_names

WORDS = {"neg": "bad awful dull boring".split(), "neu": "okay fine plain average".split(),
         "pos": "good great superb lovely".split()}
FILL = "the film movie story plot was is a and".split()
TASK = "task=text_classification"


def _text(rng: random.Random, label: str) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(4, 12))]
    words[rng.randrange(len(words))] = rng.choice(WORDS.get(label, [label]))
    return " ".join(words)


def write_csv(path: Path, n: int, labels=("neg", "neu", "pos"), seed: int = 0, delimiter: str = ",") -> Path:
    """A CSV (or TSV) with an id column, a ``review`` text (with commas and quotes) and a ``sentiment``."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(["id", "review", "sentiment"])
        for i in range(n):
            label = labels[i % len(labels)]
            w.writerow([i, f'{_text(rng, label)}, "quoted"', label])
    return path


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """One object a line, integer labels 0/1/2."""
    rng = random.Random(seed)
    names = ["neg", "neu", "pos"]
    path.write_text("".join(json.dumps({"text": _text(rng, names[i % 3]), "label": i % 3}) + "\n" for i in range(n)),
                    encoding="utf-8")
    return path


def _dm(tmp_path: Path, **data) -> ClassificationDataModule:
    node = {"text": "review", "label": "sentiment", "val_size": 0.2, **data}
    return ClassificationDataModule(task="mine", data={k: str(v) if isinstance(v, Path) else v for k, v in node.items()},
                                    data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), vocab_size=120, max_len=16)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- end to end
def test_train_text_classification_on_a_three_class_csv(tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", 90)
    test_csv = write_csv(tmp_path / "test.csv", 30, seed=1)
    cfg = compose_cfg([TASK, "logger=csv", f"task.data.train={train_csv}", f"task.data.test={test_csv}",
                       "task.data.text=review", "task.data.label=sentiment", "task.datamodule.val_size=null"],
                      tmp_path / "run", tmp_path / "data")
    metrics, objects = train(cfg)

    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["status"] == "completed" and rec["error"] is None
    assert (rec["task"], rec["task_kind"]) == ("text_classification", "classification")
    assert 0.0 <= rec["metrics"]["test/acc"] <= 1.0 and rec["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert rec["data"]["classes"] == ["neg", "neu", "pos"]
    # the class count reached the head and the metrics
    assert objects["model"].net.head.out_features == 3 and objects["model"].test_acc.num_classes == 3
    files = rec["data"]["files"]
    assert set(files) == {"train", "test"}
    assert files["train"]["sha256"] == _sha256(train_csv) and files["test"]["sha256"] == _sha256(test_csv)
    assert rec["data"]["split_sizes_full"] == {"train": 81, "val": 9, "test": 30}  # 10% of train held out
    assert rec["test_split"] == "text_classification test (test.csv)"
    assert list((tmp_path / "run" / "csv").rglob("metrics.csv"))  # logger=csv wrote its file


def test_train_text_classification_on_jsonl_with_integer_labels_and_a_val_file(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", 60)
    val_file = write_jsonl(tmp_path / "val.jsonl", 12, seed=1)
    test_file = write_jsonl(tmp_path / "test.jsonl", 24, seed=2)
    cfg = compose_cfg([TASK, "logger=csv", f"task.data.train={train_file}", f"task.data.val={val_file}",
                       f"task.data.test={test_file}"], tmp_path / "run", tmp_path / "data")
    metrics, objects = train(cfg)

    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["status"] == "completed"
    assert rec["data"]["classes"] == [0, 1, 2] and objects["model"].net.head.out_features == 3
    assert 0.0 <= rec["metrics"]["test/acc"] <= 1.0
    assert rec["data"]["split_sizes_full"] == {"train": 60, "val": 12, "test": 24}  # nothing held out
    assert rec["data"]["split"]["val_rule"] == "the val file (val.jsonl)"
    assert rec["data"]["files"]["val"]["sha256"] == _sha256(val_file)


def test_a_dataset_of_your_own_is_one_yaml_in_your_config_dir(tmp_path):
    """No package file touched: a task yaml extending text_classification, found through
    hydra.searchpath, names its files under the data folder (GLUE-like TSV, labels y)."""
    conf = tmp_path / "myconf" / "task"
    conf.mkdir(parents=True)
    (conf / "mydata.yaml").write_text(
        "# @package _global_\ndefaults:\n  - text_classification\n  - _self_\n"
        "task:\n  name: mydata\n  data:\n    train: ${paths.data_dir}/mydata/train.tsv\n"
        "    test: ${paths.data_dir}/mydata/test.tsv\n    text: review\n    label: sentiment\n")
    (tmp_path / "data" / "mydata").mkdir(parents=True)
    write_csv(tmp_path / "data" / "mydata" / "train.tsv", 40, labels=("yes", "no"), delimiter="\t")
    write_csv(tmp_path / "data" / "mydata" / "test.tsv", 10, labels=("no", "yes"), delimiter="\t")
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "task=mydata"], tmp_path / "run", tmp_path / "data")
    metrics, objects = train(cfg)
    rec = objects["record"]
    assert (rec["status"], rec["task"], rec["data"]["classes"]) == ("completed", "mydata", ["no", "yes"])
    assert rec["test_split"] == "mydata test (test.tsv)" and 0.0 <= metrics["test/acc"] <= 1.0


# --------------------------------------------------------------------------- labels and splits
def test_classes_are_the_sorted_training_labels_integers_numerically(tmp_path):
    dm = _dm(tmp_path, train=write_csv(tmp_path / "a.csv", 30, labels=("10", "2", "1")),
             test=write_csv(tmp_path / "b.csv", 6, labels=("2", "1")))
    splits, _ = dm.splits()
    assert dm.classes == [1, 2, 10] and dm.num_classes == 3  # numbers, not "1" < "10" < "2"
    assert {e.label for e in splits["test"]} == {0, 1}
    text = _dm(tmp_path, train=write_csv(tmp_path / "c.csv", 30, labels=("pos", "neg", "neu")),
               test=write_csv(tmp_path / "d.csv", 6, labels=("neu",)))
    text.splits()
    assert text.classes == ["neg", "neu", "pos"]


def test_the_holdout_depends_on_split_seed_only(tmp_path):
    train_csv, test_csv = write_csv(tmp_path / "a.csv", 40), write_csv(tmp_path / "b.csv", 6)

    def val_texts(**kw):
        dm = _dm(tmp_path, train=train_csv, test=test_csv)
        dm.split_seed, dm.seed = kw.get("split_seed", 0), kw.get("seed", 0)
        return [e.text for e in dm.splits()[0]["val"]]

    assert val_texts() == val_texts(seed=7) != val_texts(split_seed=1)
    assert len(val_texts()) == 8  # val_size 0.2 of 40


# --------------------------------------------------------------------------- one-line errors
def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def test_a_test_label_missing_from_train_names_file_and_line(tmp_path):
    test_csv = write_csv(tmp_path / "test.csv", 4)
    lines = test_csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",angry"  # the third data row, line 4 of the file
    test_csv.write_text("\n".join(lines) + "\n")
    dm = _dm(tmp_path, train=write_csv(tmp_path / "train.csv", 30), test=test_csv)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    msg = _one_line_error(info)
    assert msg.startswith(f"{test_csv}:4: label 'angry' does not occur in the training file") and "neg, neu, pos" in msg


def test_a_missing_column_names_the_file_and_its_columns(tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", 30)
    dm = _dm(tmp_path, train=train_csv, test=train_csv, label="polarity")
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert _one_line_error(info) == f"{train_csv}: no column 'polarity' (task.data.label); its columns are: id, review, sentiment"
    jsonl = write_jsonl(tmp_path / "t.jsonl", 5)
    with pytest.raises(DataError) as info:
        read_jsonl(jsonl, "train", "sentence", "label")
    assert _one_line_error(info) == f"{jsonl}:1: no key 'sentence' (task.data.text); this line has keys: text, label"


@pytest.mark.parametrize("content,suffix,expected", [
    ("", ".csv", "file is empty"),
    ("review,sentiment\n", ".csv", "no rows after the header"),
    ("\n\n", ".jsonl", "file is empty"),
    ('{"text": "a", "label": 1}\n{"text": "b", \n', ".jsonl", ":2: not JSON"),
    ('{"text": "a", "label": [1]}\n', ".jsonl", ":1: label [1] must be a string or an integer"),
    ("review\tsentiment\nfine\t\n", ".tsv", ":2: empty label (column 'sentiment')"),
    ("review,sentiment\na,b,c\n", ".csv", ":2: 3 fields, the header has 2"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, suffix, expected):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    reader = {".csv": read_csv, ".tsv": read_tsv, ".jsonl": read_jsonl}[suffix]
    columns = ("text", "label") if suffix == ".jsonl" else ("review", "sentiment")
    with pytest.raises(DataError) as info:
        reader(path, "train", *columns)
    msg = _one_line_error(info)
    assert msg.startswith(str(path)) and expected in msg, msg


def test_config_errors_come_before_any_data_is_read(tmp_path):
    good = write_csv(tmp_path / "train.csv", 10)
    bad = tmp_path / "train.txt"
    bad.write_text("whatever\n")
    cases = [
        ([f"task.data.train={bad}", f"task.data.test={good}"],
         ConfigError, f"task.data.train={bad}: cannot tell the format from the suffix '.txt'"),
        ([f"task.data.test={good}"], ConfigError, "task.data.train is not set"),
        ([f"task.data.train={tmp_path / 'nope.csv'}", f"task.data.test={good}"],
         DataError, f"task text_classification: missing data file(s) {tmp_path / 'nope.csv'}; check task.data.train"),
        ([f"task.data.train={good}", f"task.data.test={good}", "task.data.format=xml"],
         ConfigError, "task.data.format='xml': unknown format; allowed: csv, tsv, jsonl"),
    ]
    for overrides, err, start in cases:
        cfg = compose_cfg([TASK, *overrides], tmp_path / "run", tmp_path / "data")
        with pytest.raises(err) as info:
            validate_config(cfg)
        assert _one_line_error(info).startswith(start), str(info.value)


def test_task_n_classes_must_agree_with_the_data(tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", 30)
    cfg = compose_cfg([TASK, f"task.data.train={train_csv}", f"task.data.test={train_csv}", "task.data.text=review",
                       "task.data.label=sentiment", "task.n_classes=2"], tmp_path / "run", tmp_path / "data")
    with pytest.raises(DataError, match=r"^task.n_classes=2: the training file .* has 3 classes \(neg, neu, pos\)"):
        train(cfg)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- readers, hypothesis
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(lambda t: t.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, st.sampled_from(["a", "b,c", 'd "e"', "7"])), min_size=1, max_size=8),
       delimiter=st.sampled_from([",", "\t"]))
def test_what_csv_writes_the_reader_reads_back(tmp_path, rows, delimiter):
    """Any text Python's csv writer (as pandas) writes, quotes and separators included, reads back."""
    path = tmp_path / ("h.csv" if delimiter == "," else "h.tsv")
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(["text", "label"])
        w.writerows(rows)
    got = (read_csv if delimiter == "," else read_tsv)(path, "train", "text", "label")
    assert [(r.text, r.label) for r in got] == [(t.strip(), y) for t, y in rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, st.one_of(st.integers(-5, 5), st.sampled_from(["x", "y z"]))), min_size=1, max_size=8))
def test_what_json_writes_the_jsonl_reader_reads_back(tmp_path, rows):
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps({"label": y, "text": t}, ensure_ascii=False) + "\n" for t, y in rows), encoding="utf-8")
    got = read_jsonl(path, "train", "text", "label")
    assert [(r.text, r.label, r.where) for r in got] == [(t.strip(), y, f"{path}:{i}") for i, (t, y) in enumerate(rows, 1)]


# --------------------------------------------------------------------------- the shipped datasets
def _old_sst2(data_dir: Path, val_size: int, seed: int):
    """SST-2 as the readers compose it: GLUE train/dev, leak-free sentence hold-out."""
    train_all, test = read_glue_sst2(data_dir / "sst2/train.tsv"), read_glue_sst2(data_dir / "sst2/dev.tsv")
    split = sentence_holdout([e.text for e in train_all], val_size, seed, what="sst2 train")
    return {"train": [train_all[i] for i in split.kept], "val": [train_all[i] for i in split.held], "test": test}


def _old_imdb(data_dir: Path, val_size, seed: int):
    """IMDB as the readers compose it: official train/test, seeded random hold-out."""
    imdb = read_imdb(data_dir / "imdb")
    kept, held = holdout_split(len(imdb["train"]), val_size, seed, what="imdb train")
    return {"train": [imdb["train"][i] for i in kept], "val": [imdb["train"][i] for i in held], "test": imdb["test"]}


@pytest.mark.parametrize("task,layout", [("sst2", "tsv"), ("imdb", "tgz"), ("imdb", "tree")])
@pytest.mark.parametrize("val_size,split_seed", [(5, 0), (3, 2), (0.25, 1)])
def test_shipped_datasets_read_as_the_readers_compose_them(tmp_path, task, layout, val_size, split_seed):
    """Differential: the task yaml's dataset through the DataModule yields exactly the examples
    and labels, split for split, that the format's reader and hold-out rule give by hand."""
    if layout == "tsv":
        write_sst2(tmp_path, n_train=60, n_dev=12)
    else:
        (write_imdb_tgz if layout == "tgz" else write_imdb_tree)(tmp_path, n_per_class=12)
    dm = ClassificationDataModule(task=task, data_dir=str(tmp_path), val_size=val_size, split_seed=split_seed)
    got, tok_inputs = dm.splits()
    assert got == (_old_sst2 if task == "sst2" else _old_imdb)(tmp_path, val_size, split_seed)
    assert dm.classes == [0, 1] and dm.num_classes == 2
    expected_input = {"tsv": "sst2/train.tsv", "tgz": "imdb/aclImdb.tar.gz", "tree": "imdb/aclImdb"}[layout]
    assert tok_inputs == [tmp_path / expected_input]


def test_shipped_defaults_come_from_the_task_yamls(tmp_path):
    sst2, imdb = (ClassificationDataModule(task=t, data_dir=str(tmp_path)) for t in ("sst2", "imdb"))
    assert (sst2.val_size, sst2.spec.val_holdout, sst2.test_split_name) == (
        872, "sentences", "sst2 dev (GLUE; test labels not public)")
    assert (imdb.val_size, imdb.spec.val_holdout, imdb.test_split_name) == (
        1000, "rows", "imdb test (official, 25,000 reviews)")


@pytest.mark.parametrize("name", shipped_names())
def test_the_registry_and_hydra_read_the_same_dataset_from_a_task_yaml(name, tmp_path):
    """Differential: the plain-YAML registry (command line, reproduce) and the composed config
    (a run) give the same dataset for every shipped task."""
    cfg = compose_cfg([f"task={name}"], tmp_path, Path("/d"), tiny=False)
    node = OmegaConf.to_container(cfg.task.data, resolve=True)
    assert Dataset.from_node(name, cfg.task.kind, node) == shipped(name, "/d")


def test_task_kinds_come_from_the_task_yamls():
    kinds = task_kinds()
    assert set(kinds) == set(task_names()) >= {"sst2", "imdb", "multi30k", "iwslt14", "iwslt14_mini", "text_classification"}
    for name, kind in kinds.items():
        assert kind == OmegaConf.load(Path(__file__).parents[2] / "src/softmax_approx/conf/task" / f"{name}.yaml").task.get(
            "kind", kind)  # iwslt14_mini inherits iwslt14's
    assert kinds["iwslt14_mini"] == "translation" and kinds["text_classification"] == "classification"
    assert "text_classification" not in shipped_names()  # nothing to download: your own files
