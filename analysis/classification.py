"""Command line for the classification metrics of ``metrics.classification``, per split of a predictions file.

    python -m analysis.classification --predictions predictions.jsonl [--split dev] \\
        [--label-names "very negative" negative neutral positive "very positive"]

reads one JSON object per line with ``label`` and ``prediction`` fields and prints the metrics of each split as
JSON, ``{"predictions": FILE, "splits": {"dev": M, "test": M}}`` (M as ``classification_metrics`` returns), and a
one-line-per-split summary on stderr. Rows are grouped by their ``split`` field (the fine-tuning script's
predictions.jsonl holds dev and test rows: one accuracy over both would be neither split's); a file without that
field is one group, ``"all rows (no split column)"``.

Metric conventions (label set, zero division, averages, confusion matrix orientation): see metrics/classification.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from metrics.classification import classification_metrics


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
