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

The command line (``python -m analysis.classification``: a predictions JSONL file, metrics per split) is
analysis/classification.py; the fine-tuning script train/finetune_classification.py calls the functions here.
"""

from __future__ import annotations

import numbers
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
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
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
