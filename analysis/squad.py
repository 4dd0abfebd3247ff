"""Command line for the SQuAD v1.1 / v2.0 evaluation of ``metrics.squad`` (the official scripts' numbers).

    python -m analysis.squad --data dev-v1.1.json --predictions predictions.json [--out eval.json] [--aux]
    python -m analysis.squad --data dev-v2.0.json --predictions predictions.json \\
        --na-prob-file null_odds.json --na-prob-thresh 1.0

Scoring rules, missing and extra predictions: see metrics/squad.py. Here: reading the predictions and
no-answer-probability files named on the command line, the warnings and the JSON output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from metrics.squad import (
    SquadFormatError,
    check_na_probs,
    check_predictions,
    evaluate_squad,
    load_squad_json,
    read_json,
)
from metrics.text import WordNetMissingError


def load_predictions(path: str) -> dict[str, str]:
    """Read an official-format predictions file: one JSON object mapping question id -> answer text."""
    return check_predictions(read_json(path), path)


def load_na_probs(path: str) -> dict[str, float]:
    """Read a no-answer-probability (null odds) file: question id -> number. Key order is kept."""
    return check_na_probs(read_json(path), path)


# ----------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.squad",
        description="Official-equivalent SQuAD v1.1/v2.0 evaluation. Prints the result as JSON.",
    )
    parser.add_argument("--data", required=True, help="SQuAD dataset JSON (e.g. dev-v1.1.json, dev-v2.0.json)")
    parser.add_argument("--predictions", required=True, help="JSON object {question id: predicted answer text}")
    parser.add_argument("--na-prob-file", default=None,
                        help="v2.0 only: JSON object {question id: no-answer probability}; enables best_* keys")
    parser.add_argument("--na-prob-thresh", type=float, default=1.0,
                        help="v2.0: predict no-answer when the probability is above this (default 1.0)")
    parser.add_argument("--version", default="auto", choices=["auto", "1.1", "2.0"],
                        help="scoring rules; auto = the file's 'version' field, else is_impossible presence")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--per-question-out", default=None,
                        help="write per-question scores as JSON lines to this file")
    parser.add_argument("--aux", action="store_true",
                        help="add auxiliary BLEU/ROUGE/METEOR on predictions vs best-matching gold answers")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        dataset = load_squad_json(args.data)
        predictions = load_predictions(args.predictions)
        na_probs = load_na_probs(args.na_prob_file) if args.na_prob_file else None
        result = evaluate_squad(dataset, predictions, na_probs, args.na_prob_thresh, version=args.version,
                                per_question=True, aux=args.aux)
    except (SquadFormatError, WordNetMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = result.pop("per_question")
    if result["missing_predictions"]:
        missing = [r["id"] for r in rows if r["missing"]]
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"warning: {len(missing)} questions have no prediction and score 0 (missing_scored_as: "
              f"{result['missing_scored_as']}): {shown}", file=sys.stderr)
    if result["extra_predictions"]:
        print(f"warning: {result['extra_predictions']} predictions have ids that are not in {args.data}; ignored",
              file=sys.stderr)
    result["eval_seconds"] = round(time.perf_counter() - start, 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.per_question_out:
        with open(args.per_question_out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
