"""Command line for the parameter counts and diffs of ``metrics.params``: tables, JSON and CSV.

    python -m analysis.params A                  # counts per module for one model
    python -m analysis.params A B [--json out.json] [--csv out.csv] [--per-tensor]

A and B are folders written by ``save_pretrained``, single ``.safetensors`` files, or hub ids already in the
local Hugging Face cache (never downloaded). Conventions (tied weights, name alignment, grouping) and the diff
statistics: see metrics/params.py.

Outputs
-------
``--json`` one model: ``count_parameters`` dict. Two models:
``{"a": counts, "b": counts, "summary": parameter_summary(A, B), "diff": diff_parameters(A, B)}``
(``analysis.report --params-diff`` reads this file, or a bare diff).
``--csv`` one CSV. One model: rows ``level,name,numel`` (level = module|tied|total). Two models:
one row per tensor (``level=tensor``; ``status`` shared|only_in_a|only_in_b|shape_changed),
then the aggregates (``level`` = layer|module_type|layer_module|overall); columns are
``CSV_COLUMNS``. Empty cells are undefined values.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from metrics.params import (
    ParamsError,
    align_name,
    count_parameters,
    diff_parameters,
    format_shape,
    layer_of,
    load_params,
    module_type_of,
    parameter_summary,
)

CSV_COLUMNS = (
    "level", "name", "status", "name_a", "name_b", "layer", "module_type", "shape_a", "shape_b",
    "numel", "num_tensors", "norm_a", "norm_b", "delta_norm", "relative_change", "cosine",
    "max_abs_delta",
)


# ----------------------------------------------------------------------------- output


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(headers: list[str], rows: list[list]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_counts(counts: dict) -> str:
    rows = [[g, n] for g, n in counts["by_module"].items()]
    rows.append(["total (tied counted once)", counts["total"]])
    rows.append(["trainable" + (" (assumed)" if counts["trainable_assumed"] else ""),
                 counts["trainable"]])
    text = [f"{counts['source']}  architecture={counts['architecture']}  "
            f"pooler={'yes' if counts['has_pooler'] else 'no'}",
            format_table(["module", "parameters"], rows)]
    for alias, canonical in counts["tied"]:
        text.append(f"tied: {alias} -> {canonical}")
    if counts["skipped"]:
        text.append("skipped (not floating point): " + ", ".join(counts["skipped"]))
    text.extend(f"note: {n}" for n in counts["notes"])
    return "\n".join(text)


_STAT_HEADERS = ["numel", "||W_A||", "||dW||", "||dW||/||W_A||", "cosine"]


def _stat_row(label, s):
    return [label, s["numel"], s["norm_a"], s["delta_norm"], s["relative_change"], s["cosine"]]


def format_diff(diff: dict, per_tensor: bool = False) -> str:
    text = [f"A: {diff['a']['source']} ({diff['a']['architecture']}, {diff['a']['total']:,})",
            f"B: {diff['b']['source']} ({diff['b']['architecture']}, {diff['b']['total']:,})",
            f"alignment: {diff['alignment']}", ""]
    text.append(format_table(["layer"] + _STAT_HEADERS,
                             [_stat_row(r["group"], r) for r in diff["by_layer"]]
                             + [_stat_row("overall", diff["overall"])]))
    text.append("")
    text.append(format_table(["module type"] + _STAT_HEADERS,
                             [_stat_row(r["group"], r) for r in diff["by_module_type"]]))
    if per_tensor:
        text.append("")
        text.append(format_table(["tensor"] + _STAT_HEADERS,
                                 [_stat_row(r["name"], r) for r in diff["tensors"]]))
    for label, key in (("only in A", "only_in_a"), ("only in B", "only_in_b")):
        if diff[key]:
            text.append(f"\n{label}:")
            text.extend(f"  {n} ({c:,})" for n, c in diff[key].items())
    if diff["shape_changed"]:
        text.append("\nshape changed:")
        text.extend(f"  {n}: {format_shape(s['a'])} -> {format_shape(s['b'])}"
                    for n, s in diff["shape_changed"].items())
    return "\n".join(text)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return value


def diff_csv_rows(diff: dict) -> list[dict]:
    """Rows for the two-model CSV (columns ``CSV_COLUMNS``)."""
    rows = []
    for t in diff["tensors"]:
        rows.append({**t, "level": "tensor", "status": "shared", "shape_a": t["shape"],
                     "shape_b": t["shape"], "num_tensors": 1})
    for name, numel in diff["only_in_a"].items():
        rows.append({"level": "tensor", "name": align_name(name), "status": "only_in_a",
                     "name_a": name, "layer": layer_of(name), "module_type": module_type_of(name),
                     "numel": numel})
    for name, numel in diff["only_in_b"].items():
        rows.append({"level": "tensor", "name": align_name(name), "status": "only_in_b",
                     "name_b": name, "layer": layer_of(name), "module_type": module_type_of(name),
                     "numel": numel})
    for name, shapes in diff["shape_changed"].items():
        rows.append({"level": "tensor", "name": name, "status": "shape_changed",
                     "layer": layer_of(name), "module_type": module_type_of(name),
                     "shape_a": shapes["a"], "shape_b": shapes["b"]})
    for level, key in (("layer", "by_layer"), ("module_type", "by_module_type")):
        rows.extend({**r, "level": level, "name": r["group"]} for r in diff[key])
    rows.extend({**r, "level": "layer_module", "name": f"{r['layer']}/{r['module_type']}"}
                for r in diff["by_layer_module"])
    rows.append({**diff["overall"], "level": "overall", "name": "overall"})
    return [{c: _csv_value(r.get(c)) for c in CSV_COLUMNS} for r in rows]


def write_csv(path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.params",
        description="Count BERT parameters per module (one model) or measure the per-layer "
                    "change between two models (e.g. pretraining final/ vs fine-tuned final/).",
        epilog="Model paths are save_pretrained folders or .safetensors files. "
               "Norms are computed in float64; aggregates are sqrt of sums of squares.")
    parser.add_argument("model_a", help="model folder (or .safetensors file); A = before")
    parser.add_argument("model_b", nargs="?", help="optional second model; B = after")
    parser.add_argument("--json", dest="json_out", help="write results as JSON to this file")
    parser.add_argument("--csv", dest="csv_out", help="write results as CSV to this file")
    parser.add_argument("--per-tensor", action="store_true",
                        help="also print one table row per tensor (two models)")
    args = parser.parse_args(argv)
    try:
        if args.model_b is None:
            counts = count_parameters(args.model_a)
            print(format_counts(counts))
            result = counts
            rows = [{"level": "module", "name": g, "numel": n} for g, n in counts["by_module"].items()]
            rows += [{"level": "tied", "name": f"{a}->{c}", "numel": ""} for a, c in counts["tied"]]
            rows.append({"level": "total", "name": "total", "numel": counts["total"]})
            columns = ("level", "name", "numel")
        else:
            a, b = load_params(args.model_a), load_params(args.model_b)
            counts_a, counts_b = count_parameters(a), count_parameters(b)
            summary, diff = parameter_summary(a, b), diff_parameters(a, b)
            print(format_counts(counts_a))
            print()
            print(format_counts(counts_b))
            print()
            print(summary["explanation"])
            print()
            print(format_diff(diff, per_tensor=args.per_tensor))
            result = {"a": counts_a, "b": counts_b, "summary": summary, "diff": diff}
            rows, columns = diff_csv_rows(diff), CSV_COLUMNS
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if args.csv_out:
        write_csv(args.csv_out, rows, columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
