"""metrics.classification and its CLI analysis.classification: hand-checked metrics, label handling, majority
baseline, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from analysis import classification as cm
from analysis import plots
from metrics.classification import classification_metrics, majority_baseline
from train.common.data.sst import LABEL_NAMES as SST5_NAMES

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"

# y_true [0,0,1,1,2] vs y_pred [0,1,1,1,0]:
#   class 0: tp 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
#   class 1: tp 2, predicted 3, support 2 -> P 2/3, R 1,   F1 4/5
#   class 2: tp 0, predicted 0, support 1 -> P 0 (0/0 -> 0), R 0, F1 0
Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_hand_checked_example():
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["labels"] == [0, 1, 2] and m["label_names"] == ["0", "1", "2"]
    expected_1 = {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["1"] == expected_1
    assert m["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)
    assert m["weighted_precision"] == pytest.approx((2 * 1 / 2 + 2 * 2 / 3 + 0) / 5)
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])  # always true for weighted recall
    assert m["weighted_f1"] == pytest.approx((2 * 1 / 2 + 2 * 4 / 5) / 5)
    assert m["num_examples"] == 5
    json.dumps(m)  # plain Python types only


def test_num_classes_counts_absent_classes_and_names_key_per_class():
    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=5, label_names=names)
    assert m["labels"] == [0, 1, 2, 3, 4]
    assert list(m["per_class"]) == names
    assert m["per_class"]["positive"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5) / 5)
    assert len(m["confusion_matrix"]) == 5 and all(len(row) == 5 for row in m["confusion_matrix"])
    assert classification_metrics(Y_TRUE, Y_PRED, label_names=names)["labels"] == [0, 1, 2, 3, 4]


def test_string_labels_and_numpy_inputs():
    m = classification_metrics(["pos", "neg", "pos"], ["pos", "pos", "pos"])
    assert m["labels"] == ["neg", "pos"] and m["confusion_matrix"] == [[0, 1], [0, 2]]
    ordered = classification_metrics(["pos", "neg"], ["pos", "neg"], label_names=["pos", "neg", "neutral"])
    assert ordered["labels"] == ["pos", "neg", "neutral"] and ordered["accuracy"] == 1.0
    arr = classification_metrics(np.array(Y_TRUE), np.array(Y_PRED, dtype=np.int32))
    assert arr["accuracy"] == pytest.approx(0.6) and isinstance(arr["labels"][0], int)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"y_true": [0, 1], "y_pred": [0]}, ValueError, "2 labels but y_pred has 1"),
        ({"y_true": [], "y_pred": []}, ValueError, "at least one"),
        ({"y_true": [0, 5], "y_pred": [0, 1], "num_classes": 3}, ValueError, "outside the label set"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "num_classes": 3, "label_names": ["a", "b"]},
         ValueError, "num_classes=3 but 2"),
        ({"y_true": [0, "a"], "y_pred": [0, 0]}, TypeError, "mix"),
        ({"y_true": [0.5], "y_pred": [0]}, TypeError, "must be int or str"),
        ({"y_true": [True], "y_pred": [0]}, TypeError, "bool"),
        ({"y_true": [0], "y_pred": [0], "label_names": ["a", "a"]}, ValueError, "duplicates"),
    ],
)
def test_input_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        classification_metrics(**kwargs)


def test_majority_baseline():
    assert majority_baseline([0, 1, 1, 2], [1, 1, 0, 2]) == 0.5
    # Tie between 2 and 0 -> the smaller label, whatever the order.
    assert majority_baseline([2, 2, 0, 0], [0, 0, 2]) == pytest.approx(2 / 3)
    assert majority_baseline([0, 0, 2, 2], [0, 0, 2]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        majority_baseline([], [0])


def test_matches_sklearn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    rng = random.Random(0)
    for trial in range(20):
        k = rng.randint(2, 6)
        n = rng.randint(1, 60)
        y_true = [rng.randrange(k) for _ in range(n)]
        y_pred = [rng.randrange(k) for _ in range(n)]
        ours = classification_metrics(y_true, y_pred, num_classes=k)
        labels = list(range(k))
        assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
        assert ours["confusion_matrix"] == metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
        for avg in ("macro", "weighted"):
            p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                                 zero_division=0)
            assert (ours[f"{avg}_precision"], ours[f"{avg}_recall"], ours[f"{avg}_f1"]) == \
                (pytest.approx(p), pytest.approx(r), pytest.approx(f)), (trial, avg)
        p, r, f, s = metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        for i in labels:
            row = ours["per_class"][str(i)]
            assert (row["precision"], row["recall"], row["f1"], row["support"]) == \
                (pytest.approx(p[i]), pytest.approx(r[i]), pytest.approx(f[i]), s[i])


def test_cli_prints_metrics(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    predictions = str(FIXTURES / "classification_predictions.jsonl")
    rc = cm.main(["--predictions", predictions, "--label-names", "negative", "neutral", "positive", "--out", str(out)])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert rc == 0
    # The fixture holds Y_TRUE / Y_PRED above (plus a blank line, which is skipped), without a split field.
    expected = classification_metrics(Y_TRUE, Y_PRED, label_names=["negative", "neutral", "positive"])
    assert printed == {"predictions": predictions,
                       "label_set": {"source": "--label-names", "labels": [0, 1, 2],
                                     "label_names": ["negative", "neutral", "positive"]},
                       "splits": {cm.NO_SPLIT: json.loads(json.dumps(expected))}}
    assert cm.NO_SPLIT == "all rows (no split column)"
    assert "all rows (no split column)" in captured.err.splitlines()[1]
    assert json.loads(out.read_text()) == printed


def write_split_predictions(path: Path, rows: dict[str, tuple[list, list]]) -> Path:
    """Rows as train/finetune_classification.py writes predictions.jsonl."""
    with path.open("w") as f:
        for split, (y_true, y_pred) in rows.items():
            for i, (label, prediction) in enumerate(zip(y_true, y_pred, strict=True)):
                probabilities = [0.9 if c == prediction else 0.025 for c in range(5)]
                f.write(json.dumps({"split": split, "index": i, "text": f"sentence {i}", "label": label,
                                    "prediction": prediction, "probabilities": probabilities}) + "\n")
    return path


# dev all right, test all wrong: pooled they would read 0.5, which is neither split's accuracy.
SPLIT_ROWS = {"dev": ([0, 1, 2, 3], [0, 1, 2, 3]), "test": ([4, 3, 2, 1], [0, 0, 0, 0])}


def test_cli_reports_each_split_separately(tmp_path, capsys):
    path = write_split_predictions(tmp_path / "predictions.jsonl", SPLIT_ROWS)
    assert cm.main(["--predictions", str(path), "--num-classes", "5"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert list(printed["splits"]) == ["dev", "test"]
    for split, (y_true, y_pred) in SPLIT_ROWS.items():
        assert printed["splits"][split] == classification_metrics(y_true, y_pred, num_classes=5)
    assert printed["splits"]["dev"]["accuracy"] == 1.0 and printed["splits"]["test"]["accuracy"] == 0.0
    # The summary on stderr: each accuracy on the line of its split.
    header, dev, test = captured.err.splitlines()[:3]
    assert header.split()[:3] == ["split", "examples", "accuracy"]
    assert dev.split()[:3] == ["dev", "4", "1.0000"] and test.split()[:3] == ["test", "4", "0.0000"]


def test_cli_split_selects_one(tmp_path, capsys):
    path = write_split_predictions(tmp_path / "predictions.jsonl", SPLIT_ROWS)
    out = tmp_path / "test.json"
    assert cm.main(["--predictions", str(path), "--split", "test", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["splits"]) == ["test"] and printed["splits"]["test"]["num_examples"] == 4
    assert printed["splits"]["test"] == classification_metrics(*SPLIT_ROWS["test"], num_classes=5,
                                                               label_names=list(SST5_NAMES))
    assert json.loads(out.read_text()) == printed


def test_cli_split_errors(tmp_path, capsys):
    path = write_split_predictions(tmp_path / "predictions.jsonl", SPLIT_ROWS)
    assert cm.main(["--predictions", str(path), "--split", "dev_phrases"]) == 2
    err = capsys.readouterr().err
    assert f"--split dev_phrases: {path} has no rows of that split; its splits are dev, test" in err
    plain = str(FIXTURES / "classification_predictions.jsonl")
    assert cm.main(["--predictions", plain, "--split", "dev"]) == 2
    assert f"--split dev: {plain} has no 'split' field; omit --split" in capsys.readouterr().err
    # Rows without a split in a file with splits belong to no split: refused, not pooled into one.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(path.read_text() + '{"label": 1, "prediction": 1}\n')
    assert cm.main(["--predictions", str(mixed)]) == 2
    assert "mixed.jsonl:9: line 1 has a 'split' field but line 9 has none" in capsys.readouterr().err
    bad = tmp_path / "bad_split.jsonl"
    bad.write_text('{"split": "dev", "label": 1, "prediction": 1}\n{"split": null, "label": 1, "prediction": 1}\n')
    assert cm.main(["--predictions", str(bad)]) == 2
    assert "bad_split.jsonl:2: field 'split' = None must be a non-empty string" in capsys.readouterr().err


def test_cli_names_file_and_line_of_bad_records(tmp_path, capsys):
    assert cm.main(["--predictions", str(FIXTURES / "classification_bad.jsonl")]) == 2
    assert "classification_bad.jsonl:3: invalid JSON" in capsys.readouterr().err
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"label": 1, "prediction": 1}\n{"label": 0}\n')
    assert cm.main(["--predictions", str(missing)]) == 2
    assert "missing_field.jsonl:2: missing field 'prediction'" in capsys.readouterr().err
    wrong_type = tmp_path / "float.jsonl"
    wrong_type.write_text('{"label": 1.5, "prediction": 1}\n')
    assert cm.main(["--predictions", str(wrong_type)]) == 2
    assert "float.jsonl:1: field 'label' = 1.5" in capsys.readouterr().err
    assert cm.main(["--predictions", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl: cannot open" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cm.main(["--help"])
    assert exc.value.code == 0 and "--label-names" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cm.main(["--help"])
    assert "--split" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# The CLI's default label set: SST-5's 5 named classes


# Class 2 (neutral) never occurs, neither as a label nor as a prediction:
#   class 0: tp 2, predicted 3, support 2 -> P 2/3, R 1,   F1 4/5
#   class 1: tp 1, predicted 1, support 2 -> P 1,   R 1/2, F1 2/3
#   class 2: tp 0, predicted 0, support 0 -> P 0,   R 0,   F1 0   (counts in the macro average)
#   class 3: tp 1, predicted 2, support 1 -> P 1/2, R 1,   F1 2/3
#   class 4: tp 1, predicted 1, support 2 -> P 1,   R 1/2, F1 2/3
NO_NEUTRAL = {"test": ([0, 0, 1, 1, 3, 4, 4], [0, 0, 1, 0, 3, 4, 3])}
NO_NEUTRAL_F1 = [4 / 5, 2 / 3, 0.0, 2 / 3, 2 / 3]


def test_cli_defaults_to_the_five_sst_classes_when_one_never_occurs(tmp_path, capsys):
    path = write_split_predictions(tmp_path / "predictions.jsonl", NO_NEUTRAL)
    assert cm.main(["--predictions", str(path)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    m = printed["splits"]["test"]
    assert m["labels"] == [0, 1, 2, 3, 4] and m["label_names"] == list(SST5_NAMES)
    assert m["macro_f1"] == pytest.approx(sum(NO_NEUTRAL_F1) / 5)  # over 5 classes, not the 4 that occur
    assert m["macro_f1"] != pytest.approx(sum(NO_NEUTRAL_F1) / 4)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 + 0 + 1 / 2 + 1) / 5)
    assert m["macro_recall"] == pytest.approx((1 + 1 / 2 + 0 + 1 + 1 / 2) / 5)
    assert m["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0, 0, 0, 0, 0] and [row[2] for row in m["confusion_matrix"]] == [0] * 5
    assert printed["label_set"] == {"source": "SST-5 (default): integer labels 0..4", "labels": [0, 1, 2, 3, 4],
                                    "label_names": list(SST5_NAMES)}
    assert m == classification_metrics(*NO_NEUTRAL["test"], num_classes=5, label_names=list(SST5_NAMES))
    # The per-class table on stderr names every class, the absent one included, with its F1 and support.
    table = captured.err.splitlines()[2:]
    assert table[0].split()[:3] == ["class", "test", "f1"]
    assert [line[:13].strip() for line in table[1:]] == list(SST5_NAMES)
    assert table[3].split() == ["neutral", "0.0000", "0"] and table[1].split() == ["very", "negative", "0.8000", "2"]
    assert "warning" not in captured.err


def test_cli_default_matches_sklearn_with_all_five_labels(tmp_path, capsys):
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    path = write_split_predictions(tmp_path / "predictions.jsonl", NO_NEUTRAL)
    assert cm.main(["--predictions", str(path)]) == 0
    m = json.loads(capsys.readouterr().out)["splits"]["test"]
    y_true, y_pred = NO_NEUTRAL["test"]
    p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3, 4], average="macro",
                                                         zero_division=0)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == (pytest.approx(p), pytest.approx(r),
                                                                         pytest.approx(f))


def test_cli_default_for_sst_names_and_for_other_label_sets(tmp_path, capsys):
    names = tmp_path / "names.jsonl"
    names.write_text("".join(json.dumps({"label": SST5_NAMES[t], "prediction": SST5_NAMES[p]}) + "\n"
                             for t, p in zip(*NO_NEUTRAL["test"], strict=True)))
    assert cm.main(["--predictions", str(names)]) == 0
    printed = json.loads(capsys.readouterr().out)
    m = printed["splits"][cm.NO_SPLIT]
    assert printed["label_set"]["source"] == "SST-5 (default): class names"
    assert m["labels"] == list(SST5_NAMES) and m["macro_f1"] == pytest.approx(sum(NO_NEUTRAL_F1) / 5)

    # Integer ids beyond 0..4: classes 0..max, one label set for every split (dev alone would be SST-5's), warned.
    wide = write_split_predictions(tmp_path / "wide.jsonl", {"dev": ([0, 2], [0, 2]), "test": ([3, 6], [3, 0])})
    assert cm.main(["--predictions", str(wide)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["label_set"]["labels"] == list(range(7)) and printed["label_set"]["label_names"][6] == "6"
    assert printed["splits"]["dev"]["macro_f1"] == pytest.approx(2 / 7)
    assert printed["splits"]["dev"] == classification_metrics([0, 2], [0, 2], num_classes=7)
    assert "warning" in captured.err and "labels outside SST-5's" in captured.err
    assert cm.main(["--predictions", str(wide), "--split", "dev"]) == 0  # the file's label set, not the split's
    assert json.loads(capsys.readouterr().out)["splits"]["dev"] == printed["splits"]["dev"]
    # An explicit label set wins and is not warned about.
    assert cm.main(["--predictions", str(wide), "--num-classes", "8"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["label_set"] == {"source": "--num-classes", "labels": list(range(8)),
                                                     "label_names": [str(i) for i in range(8)]}
    assert "warning" not in captured.err

    # Other strings: the sorted strings of the whole file.
    words = tmp_path / "words.jsonl"
    words.write_text('{"label": "pos", "prediction": "pos"}\n{"label": "neg", "prediction": "pos"}\n')
    assert cm.main(["--predictions", str(words)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["label_set"]["labels"] == ["neg", "pos"]
    negative = tmp_path / "negative.jsonl"
    negative.write_text('{"label": -1, "prediction": 0}\n')
    assert cm.main(["--predictions", str(negative)]) == 2
    assert "label -1 is negative" in capsys.readouterr().err


def test_default_label_set():
    assert cm.default_label_set([0, 4, 1]) == (5, list(SST5_NAMES), "SST-5 (default): integer labels 0..4", True)
    assert cm.default_label_set(["neutral"]) == (None, list(SST5_NAMES), "SST-5 (default): class names", True)
    assert cm.default_label_set([0, 9])[:2] == (10, None)
    assert cm.default_label_set(["b", "a", "b"])[:2] == (None, ["a", "b"])


def test_confusion_plot_names_the_sst_classes(tmp_path):
    assert plots.class_tick_labels([0, 1, 2, 3, 4], 5) == [f"{i} {n}" for i, n in enumerate(SST5_NAMES)]
    assert plots.class_tick_labels(["0", "1", "2", "3", "4"], 5)[2] == "2 neutral"
    assert plots.class_tick_labels(None, 5)[4] == "4 very positive"
    assert plots.class_tick_labels([0, 1, 2], 3) == ["0", "1", "2"]
    assert plots.class_tick_labels([0, 1, 2], 3, ["a", "b", "c"]) == ["a", "b", "c"]
    matrix = classification_metrics(*NO_NEUTRAL["test"], num_classes=5)["confusion_matrix"]
    path = plots.plot_confusion(tmp_path / "confusion.png", matrix, [0, 1, 2, 3, 4], "test")
    assert path is not None and path.stat().st_size > 0
