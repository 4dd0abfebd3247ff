"""Classification metrics (accuracy, precision/recall/F1, confusion matrix) on plain label lists.

Shared by the fine-tuning script and the CLI; numpy only. Conventions:

* The label set is ``range(num_classes)`` if given, else ``range(len(label_names))`` for integer labels
  (or ``label_names`` itself for string labels), else the sorted union of the labels seen. Every label
  in the set counts in the macro average, including one that never occurs (its scores are 0), so a
  5-class task is always averaged over 5 classes (sklearn with ``labels=`` and ``zero_division=0``).
* Zero division gives 0: precision of a never-predicted class, recall of a class with no examples,
  F1 when precision + recall = 0.
* Weighted averages weight each class by its support (number of true examples).
* Confusion matrix rows are true labels and columns predicted labels, in label-set order.

CLI::

    python -m analysis.classification --predictions predictions.jsonl [--split dev] \\
        [--label-names "very negative" negative neutral positive "very positive"]

reads one JSON object per line with ``label`` and ``prediction`` fields and prints the metrics of each split as
JSON, ``{"predictions": FILE, "splits": {"dev": M, "test": M}}`` (M as ``classification_metrics`` returns), and a
one-line-per-split summary on stderr. Rows are grouped by their ``split`` field (the fine-tuning script's
predictions.jsonl holds dev and test rows: one accuracy over both would be neither split's); a file without that
field is one group, ``"all rows (no split column)"``.
"""

from __future__ import annotations

import argparse
import json
import numbers
import sys
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np


def _plain_labels(values: Sequence, what: str) -> list:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{what}[{i}] is a bool; use integer or string labels")
        if isinstance(v, numbers.Integral):
            out.append(int(v))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise TypeError(f"{what}[{i}] = {v!r} is {type(v).__name__}; labels must be int or str")
    return out


def _label_set(y_true: list, y_pred: list, num_classes: int | None, label_names: Sequence[str] | None):
    seen = set(y_true) | set(y_pred)
    if len({type(v) for v in seen}) > 1:
        raise TypeError("labels mix integers and strings")
    is_int = all(isinstance(v, int) for v in seen)
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"label_names has duplicates: {label_names}")
        if num_classes is not None and num_classes != len(label_names):
            raise ValueError(f"num_classes={num_classes} but {len(label_names)} label_names")
    if num_classes is not None:
        if not is_int:
            raise ValueError("num_classes needs integer labels")
        labels = list(range(num_classes))
    elif label_names is not None:
        labels = list(range(len(label_names))) if is_int else list(label_names)
    else:
        labels = sorted(seen)
    unknown = sorted(seen - set(labels), key=str)
    if unknown:
        raise ValueError(f"labels {unknown[:10]} are outside the label set {labels}")
    names = list(label_names) if label_names is not None else [str(v) for v in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"label names are not unique: {names}")
    return labels, names


def confusion_matrix(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]) -> np.ndarray:
    """Counts, rows = true label, columns = predicted label, in ``labels`` order."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[t] for t in y_true], [index[p] for p in y_pred]), 1)
    return matrix


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def classification_metrics(y_true: Sequence, y_pred: Sequence, num_classes: int | None = None,
                           label_names: Sequence[str] | None = None) -> dict:
    """Metrics of predictions ``y_pred`` against ``y_true`` (lists of int or str labels).

    Returns a JSON-ready dict: ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
    ``weighted_precision``, ``weighted_recall``, ``weighted_f1`` (all 0..1), ``per_class``
    ({label name: {precision, recall, f1, support}}), ``confusion_matrix`` (nested lists, rows = true,
    columns = predicted), ``labels`` (label values in matrix order), ``label_names``, ``num_examples``.
    """
    y_true = _plain_labels(y_true, "y_true")
    y_pred = _plain_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("classification_metrics needs at least one example")
    labels, names = _label_set(y_true, y_pred, num_classes, label_names)

    matrix = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    weights = support / support.sum()

    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": labels,
        "label_names": names,
        "num_examples": len(y_true),
    }


def majority_baseline(y_train: Sequence, y_eval: Sequence) -> float:
    """Accuracy on ``y_eval`` of always predicting the most frequent class of ``y_train``.

    Ties go to the smallest label, so the baseline does not depend on the order of the training data.
    """
    y_train = _plain_labels(y_train, "y_train")
    y_eval = _plain_labels(y_eval, "y_eval")
    if not y_train or not y_eval:
        raise ValueError("majority_baseline needs non-empty y_train and y_eval")
    counts = Counter(y_train)
    top = max(counts.values())
    majority = min(label for label, c in counts.items() if c == top)
    return sum(1 for y in y_eval if y == majority) / len(y_eval)


class PredictionsFileError(ValueError):
    """A malformed predictions JSONL line (message names the file and line)."""


SPLIT_KEY = "split"
NO_SPLIT = "all rows (no split column)"


def _read_record(path: str, lineno: int, line: str, label_key: str, prediction_key: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PredictionsFileError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise PredictionsFileError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    for key in (label_key, prediction_key):
        if key not in record:
            raise PredictionsFileError(f"{path}:{lineno}: missing field {key!r}")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise PredictionsFileError(f"{path}:{lineno}: field {key!r} = {value!r} must be an int or a string")
    split = record.get(SPLIT_KEY)
    if SPLIT_KEY in record and not (isinstance(split, str) and split):
        raise PredictionsFileError(f"{path}:{lineno}: field {SPLIT_KEY!r} = {split!r} must be a non-empty string")
    return record


def load_predictions_by_split(path: str, label_key: str = "label",
                              prediction_key: str = "prediction") -> dict[str, tuple[list, list]]:
    """{split: (labels, predictions)} from a JSONL file, splits in order of first appearance; blank lines are
    skipped. Rows without a ``split`` field form the one group ``NO_SPLIT``; a file mixing both is refused, since
    its unlabelled rows would belong to no split."""
    groups: dict[str, tuple[list, list]] = {}
    first_with, first_without = None, None
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise PredictionsFileError(f"{path}: cannot open: {exc.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = _read_record(path, lineno, line, label_key, prediction_key)
            if SPLIT_KEY in record:
                first_with = first_with or lineno
            else:
                first_without = first_without or lineno
            if first_with and first_without:
                raise PredictionsFileError(
                    f"{path}:{max(first_with, first_without)}: line {first_with} has a {SPLIT_KEY!r} field but line "
                    f"{first_without} has none; give every row a split, or none")
            y_true, y_pred = groups.setdefault(record.get(SPLIT_KEY, NO_SPLIT), ([], []))
            y_true.append(record[label_key])
            y_pred.append(record[prediction_key])
    if not groups:
        raise PredictionsFileError(f"{path}: no records")
    return groups


def select_split(groups: dict[str, tuple[list, list]], split: str | None, path: str) -> dict[str, tuple[list, list]]:
    """The groups to report: all of them, or the one ``--split`` names."""
    if split is None:
        return groups
    if NO_SPLIT in groups:
        raise PredictionsFileError(f"--split {split}: {path} has no {SPLIT_KEY!r} field; omit --split to report "
                                   "all its rows")
    if split not in groups:
        raise PredictionsFileError(f"--split {split}: {path} has no rows of that split; its splits are "
                                   f"{', '.join(groups)}: pick one of them or omit --split")
    return {split: groups[split]}


def summary_table(results: dict[str, dict]) -> str:
    """One line per split, so every printed accuracy sits next to the split it was measured on."""
    columns = ("accuracy", "macro_f1", "weighted_f1")
    width = max(len("split"), *(len(name) for name in results))
    lines = [f"{'split':<{width}}  {'examples':>8}  " + "  ".join(f"{c:>11}" for c in columns)]
    for name, m in results.items():
        lines.append(f"{name:<{width}}  {m['num_examples']:>8}  " + "  ".join(f"{m[c]:>11.4f}" for c in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.classification",
        description="Accuracy, macro/weighted precision/recall/F1, per-class scores and confusion matrix "
                    "(rows = true, columns = predicted) per split from a JSONL of {label, prediction, split}. "
                    "Prints JSON keyed by split, and a summary table on stderr.",
    )
    parser.add_argument("--predictions", required=True,
                        help="JSONL file, one object per line with label and prediction (and split, e.g. dev/test)")
    parser.add_argument("--split", default=None,
                        help="report only this split (a value of the rows' split field, e.g. dev); default: each")
    parser.add_argument("--label-names", nargs="+", default=None,
                        help="class names in label order (integer label i is the i-th name)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes for integer labels (classes that never occur still count)")
    parser.add_argument("--label-key", default="label", help="field holding the true label (default: label)")
    parser.add_argument("--prediction-key", default="prediction",
                        help="field holding the prediction (default: prediction)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    try:
        groups = load_predictions_by_split(args.predictions, args.label_key, args.prediction_key)
        groups = select_split(groups, args.split, args.predictions)
        splits = {}
        for name, (y_true, y_pred) in groups.items():
            try:
                splits[name] = classification_metrics(y_true, y_pred, args.num_classes, args.label_names)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{args.predictions}, split {name}: {exc}") from None
    except (PredictionsFileError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps({"predictions": args.predictions, "splits": splits}, indent=2)
    print(text)
    print(summary_table(splits), file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
