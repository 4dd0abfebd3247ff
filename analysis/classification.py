"""Command line for the classification metrics of ``metrics.classification``, per split of a predictions file.

    python -m analysis.classification --predictions predictions.jsonl [--split dev] \\
        [--num-classes N] [--label-names NAME ...]

reads one JSON object per line with ``label`` and ``prediction`` fields and prints the metrics of each split as
JSON, ``{"predictions": FILE, "label_set": {"source", "labels", "label_names"}, "splits": {"dev": M, "test": M}}``
(M as ``classification_metrics`` returns), and on stderr a one-line-per-split summary and a per-class table with
the class names. Rows are grouped by their ``split`` field (the fine-tuning script's predictions.jsonl holds dev and
test rows: one accuracy over both would be neither split's); a file without that field is one group,
``"all rows (no split column)"``.

The label set (every class in it counts in the macro averages, also one that never occurs in a split): the task is
SST-5, so by default integer labels 0..4 are its 5 classes, named as train/common/data/sst.py's LABEL_NAMES, and so
are string labels that are those names (``default_label_set``). ``--num-classes`` / ``--label-names`` give another
label set. A file whose labels are not SST-5's gets one label set for all its splits from the labels it holds:
integer ids 0..max (so an id below the largest still counts when it never occurs), or the sorted strings; a
warning on stderr says so.

Metric conventions (label set, zero division, averages, confusion matrix orientation): see metrics/classification.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from metrics.classification import classification_metrics
from train.common.data.sst import LABEL_NAMES


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


def default_label_set(values: list) -> tuple[int | None, list[str] | None, str, bool]:
    """(num_classes, label_names, source, is_sst5) for ``classification_metrics`` when the command line names no
    label set; ``values`` are all labels and predictions of the file (every split).

    * integers 0..4, or strings that are all SST-5 class names -> SST-5: 5 classes named LABEL_NAMES;
    * other non-negative integers -> classes 0..max(values), named by their ids;
    * other strings -> the sorted strings seen.
    Mixed types are left to ``classification_metrics`` (which refuses them); a negative integer id is refused.
    """
    ints = [v for v in values if isinstance(v, int)]
    strings = [v for v in values if isinstance(v, str)]
    if ints and strings:
        return None, None, "labels seen in the file", False
    if ints:
        if all(0 <= v < len(LABEL_NAMES) for v in ints):
            return len(LABEL_NAMES), list(LABEL_NAMES), "SST-5 (default): integer labels 0..4", True
        if min(ints) < 0:
            raise ValueError(f"label {min(ints)} is negative: class ids are 0..K-1; pass --label-names (string "
                             "labels) or fix the file")
        top = max(ints)
        return top + 1, None, f"integer labels seen in the file, classes 0..{top} (not SST-5's 0..4)", False
    if set(strings) <= set(LABEL_NAMES):
        return None, list(LABEL_NAMES), "SST-5 (default): class names", True
    return None, sorted(set(strings)), "string labels seen in the file (sorted)", False


def summary_table(results: dict[str, dict]) -> str:
    """One line per split, so every printed accuracy sits next to the split it was measured on."""
    columns = ("accuracy", "macro_f1", "weighted_f1")
    width = max(len("split"), *(len(name) for name in results))
    lines = [f"{'split':<{width}}  {'examples':>8}  " + "  ".join(f"{c:>11}" for c in columns)]
    for name, m in results.items():
        lines.append(f"{name:<{width}}  {m['num_examples']:>8}  " + "  ".join(f"{m[c]:>11.4f}" for c in columns))
    return "\n".join(lines)


def per_class_table(results: dict[str, dict]) -> str:
    """One line per class (by name), F1 and support (true examples) of each split."""
    names = next(iter(results.values()))["label_names"]
    width = max(len("class"), *(len(n) for n in names))
    cells = [f"{split + ' f1':>{max(len(split) + 3, 6)}}  {'n':>6}" for split in results]
    lines = [f"{'class':<{width}}  " + "  ".join(cells)]
    for name in names:
        row = []
        for split, m in results.items():
            scores = m["per_class"][name]
            row.append(f"{scores['f1']:>{max(len(split) + 3, 6)}.4f}  {scores['support']:>6}")
        lines.append(f"{name:<{width}}  " + "  ".join(row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.classification",
        description="Accuracy, macro/weighted precision/recall/F1, per-class scores and confusion matrix "
                    "(rows = true, columns = predicted) per split from a JSONL of {label, prediction, split}. "
                    "Prints JSON keyed by split, and a summary and a per-class table on stderr. The label set is "
                    "SST-5's 5 classes unless --num-classes/--label-names give another or the file's labels are not "
                    "SST-5's (then the labels it holds, with a warning); every class of it counts in the macro "
                    "averages, also one that never occurs.",
    )
    parser.add_argument("--predictions", required=True,
                        help="JSONL file, one object per line with label and prediction (and split, e.g. dev/test)")
    parser.add_argument("--split", default=None,
                        help="report only this split (a value of the rows' split field, e.g. dev); default: each")
    parser.add_argument("--label-names", nargs="+", default=None,
                        help="class names in label order (integer label i is the i-th name; string labels must be "
                             "among them). Default: SST-5's " + ", ".join(repr(n) for n in LABEL_NAMES))
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes for integer labels 0..N-1 (classes that never occur still count; "
                             "named by their ids unless --label-names). Default: 5 (SST-5) when every label and "
                             "prediction is 0..4; with other integers, 0..the largest one in the file; with other "
                             "strings, the sorted strings of the file (all splits share that label set)")
    parser.add_argument("--label-key", default="label", help="field holding the true label (default: label)")
    parser.add_argument("--prediction-key", default="prediction",
                        help="field holding the prediction (default: prediction)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    try:
        every_split = load_predictions_by_split(args.predictions, args.label_key, args.prediction_key)
        groups = select_split(every_split, args.split, args.predictions)
        num_classes, label_names = args.num_classes, args.label_names
        if num_classes is None and label_names is None:
            try:  # from every split, also with --split: one label set per file
                num_classes, label_names, source, sst5 = default_label_set(
                    [v for y_true, y_pred in every_split.values() for v in (*y_true, *y_pred)])
            except ValueError as exc:
                raise ValueError(f"{args.predictions}: {exc}") from None
            from_file = not sst5
        else:
            source = " and ".join(opt for opt, value in (("--num-classes", args.num_classes),
                                                         ("--label-names", args.label_names)) if value is not None)
            from_file = False
        splits = {}
        for name, (y_true, y_pred) in groups.items():
            try:
                splits[name] = classification_metrics(y_true, y_pred, num_classes, label_names)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{args.predictions}, split {name}: {exc}") from None
    except (PredictionsFileError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = next(iter(splits.values()))
    label_set = {"source": source, "labels": first["labels"], "label_names": first["label_names"]}
    if from_file:
        print(f"warning: {args.predictions} has labels outside SST-5's (0..4 or its class names): the label set is "
              f"{len(label_set['labels'])} classes from the file ({source}); a class that never occurs in it is "
              "not counted. Pass --num-classes / --label-names to give the label set.", file=sys.stderr)
    text = json.dumps({"predictions": args.predictions, "label_set": label_set, "splits": splits}, indent=2)
    print(text)
    print(summary_table(splits), file=sys.stderr)
    print(per_class_table(splits), file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
