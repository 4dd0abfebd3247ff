"""SQuAD v1.1 / v2.0 evaluation giving exactly the numbers of the official evaluation scripts.

Scoring (both versions): an answer is normalised by lowercasing, deleting the ASCII characters of
``string.punctuation`` (non-ASCII punctuation such as curly quotes or dashes is kept, as officially),
replacing the whole words a/an/the with a space (``\\b`` is Unicode-aware in Python 3, so "éthe" keeps
its "the") and collapsing whitespace. EM is 1 when the normalised strings are equal; F1 is the token
F1 of the normalised whitespace tokens with multiset (Counter) overlap. Both take the max over the gold
answers; totals are 100 * mean over questions.

Differences between the versions, kept as in the official scripts:

* v1.1: a prediction and a gold answer that both normalise to "" give EM 1 but F1 0 (dev-v1.1.json has
  three gold answers "."), the only way EM can exceed F1; counted in ``empty_normalized_exact_matches``.
* v2.0: gold answers that normalise to "" are dropped; a question without gold answers has gold [""];
  F1 is 1 when both sides are empty. ``--na-prob-file`` maps ids to no-answer probabilities: a question
  whose probability is > ``na_prob_thresh`` counts as answered "no answer", and ``best_*`` report the
  best score over thresholds with the official sweep (stable sort by probability, strict improvement,
  raw truthiness of the prediction string for no-answer questions).

Missing predictions: v1.1 officially scores them 0 and keeps them in the total; the official v2.0 script
prints "Missing prediction for ..." and then crashes (KeyError) in its HasAns/NoAns split. Here both
versions score a missing prediction as 0 (EM 0, F1 0, kept in the total; v2.0: also on a no-answer question,
and at every threshold of the ``best_*`` sweep: never as "", which would reward a missing answer on a
no-answer question as an abstention), and the result says so: ``missing_predictions`` (how many),
``missing_scored_as`` (that rule, in words: ``MISSING_SCORED_AS_V1`` / ``MISSING_SCORED_AS_V2``) and, for v2.0,
``HasAns_missing`` / ``NoAns_missing``. Ids not in the data are ignored and counted in ``extra_predictions``.

The command line (``python -m analysis.squad``, reading the predictions and no-answer-probability files) is
analysis/squad.py; the fine-tuning script train/finetune_qa.py scores with the functions here.
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

# metrics.text imports sacrebleu/rouge/nltk only inside its functions, so this costs nothing without aux=True.
from metrics.text import text_metrics

MISSING_SCORED_AS_V1 = "0 (EM 0, F1 0; kept in the total, as the official v1.1 script does)"
MISSING_SCORED_AS_V2 = ("0 (EM 0, F1 0; kept in the total, also on no-answer questions and at every best_* threshold: "
                        "not as the empty answer, so a missing prediction is no abstention; the official v2.0 "
                        "script crashes instead)")
# What auxiliary_metrics does with one (the n-gram metrics have no "missing": they need a string).
MISSING_SCORED_AS_AUX = "the empty answer (n-gram scores 0)"

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


class SquadFormatError(ValueError):
    """Malformed SQuAD data, predictions or no-answer-probability input (message names file and record)."""


class SquadMetricBug(AssertionError):
    """Raised when scores break an invariant (EM <= F1) that correct scoring code cannot break."""


# ----------------------------------------------------------------------------------------------------
# Official scoring primitives


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = s.lower().translate(_PUNCT_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> int:
    """1 if both answers normalise to the same string, else 0 (same for v1.1 and v2.0)."""
    return int(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str, *, version: int = 1) -> float:
    """Token F1 of the normalised answers.

    ``version=2`` applies v2.0's rule that an empty side gives 1.0 if both are empty, else 0.0;
    v1.1 gives 0.0 whenever nothing overlaps, two empty answers included.
    """
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split(), version == 2)


def _token_f1(pred_toks: list[str], gold_toks: list[str], v2: bool) -> float:
    if v2 and (not pred_toks or not gold_toks):
        return float(pred_toks == gold_toks)
    num_same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
    if num_same == 0:
        return 0.0
    # Same expression and operand order as the official scripts so the floats agree bit for bit.
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


# ----------------------------------------------------------------------------------------------------
# Loading and validation


def _fail(source: str, where: str, what: str) -> None:
    raise SquadFormatError(f"{source}: {where}: {what}" if where else f"{source}: {what}")


def read_json(path: str) -> Any:
    """A JSON file's content; SquadFormatError naming the file if it is absent, not UTF-8 or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SquadFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise SquadFormatError(f"{path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SquadFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _iter_questions(articles: Any, source: str) -> Iterable[tuple[str, dict]]:
    """Yield (record path, qa) in file order after checking the nesting the scorers rely on."""
    if not isinstance(articles, list):
        _fail(source, "data", f"expected a list of articles, got {type(articles).__name__}")
    for i, article in enumerate(articles):
        where = f"data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            _fail(source, where, "expected an object with a 'paragraphs' list")
        for j, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                _fail(source, pwhere, "expected an object with a 'qas' list")
            for k, qa in enumerate(paragraph["qas"]):
                qwhere = f"{pwhere}.qas[{k}]"
                if not isinstance(qa, dict):
                    _fail(source, qwhere, f"expected an object, got {type(qa).__name__}")
                if not isinstance(qa.get("id"), str):
                    _fail(source, qwhere, "missing or non-string 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    _fail(source, qwhere, f"question {qa['id']!r}: 'answers' must be a list")
                for n, answer in enumerate(answers):
                    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
                        _fail(source, f"{qwhere}.answers[{n}]",
                              f"question {qa['id']!r}: expected an object with a string 'text'")
                yield qwhere, qa


def load_squad_json(path: str) -> dict:
    """Read a SQuAD file (``{"version": ..., "data": [articles]}``) and check its structure."""
    dataset = read_json(path)
    if not isinstance(dataset, dict) or "data" not in dataset:
        _fail(path, "", "expected a JSON object with a 'data' list of articles (SQuAD format)")
    _collect_questions(dataset["data"], path)
    return dataset


def check_predictions(predictions: Any, source: str = "<predictions>") -> dict[str, str]:
    if not isinstance(predictions, Mapping):
        _fail(source, "", "expected a JSON object mapping question id -> answer text, "
                          f"got {type(predictions).__name__}")
    for qid, answer in predictions.items():
        if not isinstance(qid, str):
            _fail(source, f"id {qid!r}", "question ids must be strings")
        if not isinstance(answer, str):
            _fail(source, f"id {qid!r}", f"answer must be a string, got {type(answer).__name__}")
    return dict(predictions)


def check_na_probs(na_probs: Any, source: str = "<na_probs>") -> dict[str, float]:
    if not isinstance(na_probs, Mapping):
        _fail(source, "", "expected a JSON object mapping question id -> no-answer probability, "
                          f"got {type(na_probs).__name__}")
    for qid, p in na_probs.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
            _fail(source, f"id {qid!r}", f"no-answer probability must be a number, got {p!r}")
    return dict(na_probs)


def _collect_questions(articles: Any, source: str) -> list[tuple[str, dict]]:
    questions = list(_iter_questions(articles, source))
    seen: dict[str, str] = {}
    for where, qa in questions:
        if qa["id"] in seen:
            _fail(source, where, f"duplicate question id {qa['id']!r} (first at {seen[qa['id']]})")
        seen[qa["id"]] = where
    return questions


def detect_version(dataset: Any) -> int:
    """1 or 2: from the file's "version" field ("1.1", "v2.0", ...), else 2 iff any question has is_impossible."""
    if isinstance(dataset, dict):
        version = str(dataset.get("version", "")).strip().lower().lstrip("v")
        if version.startswith("1"):
            return 1
        if version.startswith("2"):
            return 2
        articles = dataset.get("data", [])
    else:
        articles = dataset
    for article in articles or []:
        for paragraph in article.get("paragraphs", []):
            if any("is_impossible" in qa for qa in paragraph.get("qas", [])):
                return 2
    return 1


# ----------------------------------------------------------------------------------------------------
# Per-question scoring


def _best_over_golds(pred: str, golds: list[str], *, v2_empty_rule: bool) -> tuple[int, float, int]:
    """The official scripts' max over gold answers: (exact, f1, index of the gold giving the best F1, first on ties)."""
    p_norm = normalize_answer(pred)
    p_toks = p_norm.split()
    exact, f1, best = 0, 0.0, 0
    for n, gold in enumerate(golds):
        g_norm = normalize_answer(gold)
        exact = max(exact, int(p_norm == g_norm))
        score = _token_f1(p_toks, g_norm.split(), v2_empty_rule)
        if score > f1:
            f1, best = score, n
    return exact, f1, best


def _score_v1(articles: Any, predictions: Mapping[str, str], source: str) -> list[dict]:
    rows = []
    for where, qa in _collect_questions(articles, source):
        golds = [a["text"] for a in qa["answers"]]
        if not golds:
            _fail(source, where, f"question {qa['id']!r} has no answers; SQuAD v1.1 needs at least one "
                                 "(evaluate no-answer data as v2.0)")
        pred = predictions.get(qa["id"])
        row = {"id": qa["id"], "prediction": pred, "gold_answers": golds, "missing": pred is None}
        if pred is None:
            row.update(exact=0, f1=0.0, best_gold=golds[0], empty_quirk=False)
        else:
            exact, f1, best = _best_over_golds(pred, golds, v2_empty_rule=False)
            empty_quirk = bool(exact and not normalize_answer(pred))
            row.update(exact=exact, f1=f1, best_gold=golds[best], empty_quirk=empty_quirk)
        rows.append(row)
    return rows


def _score_v2(articles: Any, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None,
              na_prob_thresh: float, source: str) -> list[dict]:
    rows = []
    for where, qa in _collect_questions(articles, source):
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        pred = predictions.get(qa["id"])
        row = {"id": qa["id"], "prediction": pred, "gold_answers": golds, "missing": pred is None,
               "has_answer": bool(qa["answers"]), "na_prob": None, "predicted_no_answer": False}
        if pred is None:
            row.update(raw_exact=0, raw_f1=0.0, exact=0, f1=0.0, best_gold=golds[0])
            rows.append(row)
            continue
        exact, f1, best = _best_over_golds(pred, golds, v2_empty_rule=True)
        row.update(raw_exact=exact, raw_f1=f1, best_gold=golds[best])
        if na_probs is None:
            na_prob = 0.0  # the official default when no --na-prob-file is given
        elif qa["id"] in na_probs:
            na_prob = na_probs[qa["id"]]
        else:
            raise SquadFormatError(f"na_probs: no probability for question {qa['id']!r} ({where}), "
                                   "which has a prediction")
        row["na_prob"] = na_prob
        if na_prob > na_prob_thresh:
            row.update(predicted_no_answer=True, exact=int(not row["has_answer"]), f1=float(not row["has_answer"]))
        else:
            row.update(exact=exact, f1=f1)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# Aggregation


def _mean100(values: list) -> float:
    # Python's sum in file order, as the official scripts add scores, keeps the floats identical.
    return 100.0 * sum(values) / len(values)


def _check_em_le_f1(rows: list[dict], exact: float, f1: float, total: int, allowed_quirks: int) -> None:
    for row in rows:
        if row["exact"] > row["f1"] and not row.get("empty_quirk", False):
            raise SquadMetricBug(
                f"BUG in SQuAD scoring: question {row['id']!r} has EM {row['exact']} > F1 {row['f1']} "
                f"(prediction {row['prediction']!r}); an exact match always has F1 1. "
                "This is a bug in the evaluation code, not a property of the model."
            )
    if exact > f1 + 100.0 * allowed_quirks / total + 1e-9:
        raise SquadMetricBug(
            f"BUG in SQuAD scoring: overall EM {exact} > F1 {f1}. "
            "This is a bug in the evaluation code, not a property of the model."
        )


def _id_bookkeeping(rows: list[dict], predictions: Mapping[str, str], missing_scored_as: str) -> dict:
    ids = {row["id"] for row in rows}
    return {
        "missing_predictions": sum(row["missing"] for row in rows),
        "missing_scored_as": missing_scored_as,
        "extra_predictions": sum(1 for qid in predictions if qid not in ids),
    }


def evaluate_v1(dataset_articles: list, predictions: Mapping[str, str], *, per_question: bool = False) -> dict:
    """Official SQuAD v1.1 scores; see ``evaluate_squad`` for the keys."""
    predictions = check_predictions(predictions)
    rows = _score_v1(dataset_articles, predictions, "<dataset>")
    return _aggregate_v1(rows, predictions, per_question)


def _aggregate_v1(rows: list[dict], predictions: Mapping[str, str], per_question: bool) -> dict:
    if not rows:
        raise SquadFormatError("the dataset has no questions")
    total = len(rows)
    quirks = sum(row["empty_quirk"] for row in rows)
    result = {
        "version": "1.1",
        "exact_match": _mean100([row["exact"] for row in rows]),
        "f1": _mean100([row["f1"] for row in rows]),
        "total": total,
        **_id_bookkeeping(rows, predictions, MISSING_SCORED_AS_V1),
        "empty_normalized_exact_matches": quirks,
    }
    _check_em_le_f1(rows, result["exact_match"], result["f1"], total, quirks)
    if per_question:
        result["per_question"] = _public_rows(rows)
    return result


def evaluate_v2(dataset_articles: list, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
                na_prob_thresh: float = 1.0, *, per_question: bool = False) -> dict:
    """Official SQuAD v2.0 scores; see ``evaluate_squad`` for the keys."""
    predictions = check_predictions(predictions)
    if na_probs is not None:
        na_probs = check_na_probs(na_probs)
    rows = _score_v2(dataset_articles, predictions, na_probs, na_prob_thresh, "<dataset>")
    return _aggregate_v2(rows, predictions, na_probs, na_prob_thresh, per_question)


def _aggregate_v2(rows: list[dict], predictions: Mapping[str, str], na_probs: Mapping[str, float] | None,
                  na_prob_thresh: float, per_question: bool) -> dict:
    if not rows:
        raise SquadFormatError("the dataset has no questions")
    total = len(rows)
    result: dict[str, Any] = {
        "version": "2.0",
        "exact": _mean100([row["exact"] for row in rows]),
        "f1": _mean100([row["f1"] for row in rows]),
        "total": total,
    }
    for prefix, subset in (("HasAns", [r for r in rows if r["has_answer"]]),
                           ("NoAns", [r for r in rows if not r["has_answer"]])):
        # The official script omits an empty split; None keeps one dict shape for callers.
        result[f"{prefix}_exact"] = _mean100([r["exact"] for r in subset]) if subset else None
        result[f"{prefix}_f1"] = _mean100([r["f1"] for r in subset]) if subset else None
        result[f"{prefix}_total"] = len(subset)
        result[f"{prefix}_missing"] = sum(r["missing"] for r in subset)
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(rows, na_probs, "raw_exact")
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(rows, na_probs, "raw_f1")
    else:
        result.update(best_exact=None, best_exact_thresh=None, best_f1=None, best_f1_thresh=None)
    result["exact_match"] = result["exact"]
    result["na_prob_thresh"] = na_prob_thresh
    result.update(_id_bookkeeping(rows, predictions, MISSING_SCORED_AS_V2))
    _check_em_le_f1(rows, result["exact"], result["f1"], total, 0)
    if per_question:
        result["per_question"] = _public_rows(rows)
    return result


def _best_threshold(rows: list[dict], na_probs: Mapping[str, float], key: str) -> tuple[float, float]:
    """The official sweep: start from "every question answered no-answer" and move questions to
    "answered" in ascending (stable) probability order, keeping the first strictly best running score.

    Missing predictions score 0 at every threshold (the official script would have crashed).
    """
    by_id = {row["id"]: row for row in rows if not row["missing"]}
    cur_score = sum(1 for row in by_id.values() if not row["has_answer"])
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        row = by_id.get(qid)
        if row is None:
            continue
        if row["has_answer"]:
            diff = row[key]
        else:
            # The official script looks at the raw string here, so " " or "." costs a point although
            # it normalises to the empty answer.
            diff = -1 if row["prediction"] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(rows), best_thresh


_PUBLIC_KEYS = ("id", "prediction", "gold_answers", "best_gold", "exact", "f1", "missing",
                "has_answer", "na_prob", "predicted_no_answer")


def _public_rows(rows: list[dict]) -> list[dict]:
    return [{k: (float(row[k]) if k == "f1" else row[k]) for k in _PUBLIC_KEYS if k in row} for row in rows]


def evaluate_squad(dataset: dict | list, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
                   na_prob_thresh: float = 1.0, *, version: int | str | None = None, per_question: bool = False,
                   aux: bool = False) -> dict:
    """Score predictions {question id: answer text} against a SQuAD dataset.

    ``dataset`` is the whole JSON object (``{"version", "data"}``) or its list of articles. ``version``
    (1, 2, "1.1", "2.0") overrides detection (``detect_version``). ``na_probs`` only applies to v2.0.

    Keys (EM/F1 values are percentages 0..100):

    * both versions: ``version`` ("1.1" | "2.0"), ``exact_match``, ``f1``, ``total`` (questions in the
      data), ``missing_predictions`` (questions without a prediction), ``missing_scored_as`` (how they were
      scored, in words: 0, never as the empty answer), ``extra_predictions`` (ids not in the data, ignored).
    * v1.1 only: ``empty_normalized_exact_matches`` (EM 1 / F1 0 cases, see module docstring).
    * v2.0 only: ``exact`` (same value as ``exact_match``, the official name), ``HasAns_exact``,
      ``HasAns_f1``, ``HasAns_total``, ``HasAns_missing``, ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total``,
      ``NoAns_missing`` (exact/f1 are None for an empty split; ``*_missing``: the split's questions without a
      prediction), ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh`` (None unless
      ``na_probs`` is given, as the official script prints them only with --na-prob-file),
      ``na_prob_thresh``.
    * ``per_question=True`` adds ``per_question``: one dict per question in file order with ``id``,
      ``prediction`` (None if missing), ``gold_answers`` (the ones scored against), ``best_gold`` (the
      first gold answer with the highest F1), ``exact`` (0/1), ``f1`` (0..1), ``missing``; v2.0 adds
      ``has_answer``, ``na_prob`` and ``predicted_no_answer``. These are the scores the totals average.
    * ``aux=True`` adds ``auxiliary_text_metrics`` (see ``auxiliary_metrics``).

    Raises SquadFormatError for malformed input and SquadMetricBug if EM > F1 where that is impossible.
    """
    if isinstance(dataset, dict):
        if "data" not in dataset:
            raise SquadFormatError("<dataset>: expected the SQuAD JSON object with a 'data' list, or that list")
        articles = dataset["data"]
    else:
        articles = dataset
    resolved = _resolve_version(version, dataset)
    predictions = check_predictions(predictions)
    if resolved == 1:
        if na_probs is not None:
            raise SquadFormatError("na_probs (no-answer probabilities) only apply to SQuAD v2.0 data")
        rows = _score_v1(articles, predictions, "<dataset>")
        result = _aggregate_v1(rows, predictions, per_question)
    else:
        if na_probs is not None:
            na_probs = check_na_probs(na_probs)
        rows = _score_v2(articles, predictions, na_probs, na_prob_thresh, "<dataset>")
        result = _aggregate_v2(rows, predictions, na_probs, na_prob_thresh, per_question)
    if aux:
        result["auxiliary_text_metrics"] = auxiliary_metrics(rows)
    return result


def score_questions(dataset: dict | list, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
                    na_prob_thresh: float = 1.0, *, version: int | str | None = None) -> list[dict]:
    """Per-question scores only (the ``per_question`` list of ``evaluate_squad``)."""
    return evaluate_squad(dataset, predictions, na_probs, na_prob_thresh, version=version,
                          per_question=True)["per_question"]


def _resolve_version(version: int | str | None, dataset: Any) -> int:
    if version is None or str(version).lower() == "auto":
        return detect_version(dataset)
    text = str(version).strip().lower().lstrip("v")
    if text in ("1", "1.1"):
        return 1
    if text in ("2", "2.0"):
        return 2
    raise ValueError(f"unknown SQuAD version {version!r}; use 1.1 or 2.0")


def auxiliary_metrics(rows: list[dict]) -> dict:
    """BLEU/ROUGE/METEOR of each prediction against its best-matching gold answer (auxiliary only).

    The reference is ``best_gold``: the first gold answer with the highest official F1, i.e. the answer
    the F1 credit came from (for a prediction with no overlap: the first gold answer). Questions without
    a gold answer (v2.0 no-answer) are left out, because n-gram metrics are undefined on empty text; a
    missing prediction, or a v2.0 question predicted as no-answer, counts as the empty answer. The result says
    how many of the questions used had no prediction (``missing_predictions``) and how they were scored
    (``missing_scored_as``).
    """
    preds, refs = [], []
    missing = 0
    for row in rows:
        if row["gold_answers"] == [""]:
            continue
        empty = row["missing"] or row.get("predicted_no_answer", False)
        missing += row["missing"]
        preds.append("" if empty else row["prediction"])
        refs.append(row["best_gold"])
    skipped = len(rows) - len(preds)
    if not preds:
        return {"note": "auxiliary metrics skipped: no question has a gold answer", "questions_used": 0,
                "questions_skipped_no_answer": skipped}
    metrics = text_metrics(preds, refs)
    metrics["reference_choice"] = "best-matching gold answer by official F1 (first on ties)"
    metrics["questions_used"] = len(preds)
    metrics["questions_skipped_no_answer"] = skipped
    metrics["missing_predictions"] = missing
    metrics["missing_scored_as"] = MISSING_SCORED_AS_AUX
    return metrics
