"""Convert evaluate's hub-style SQuAD inputs into what ``metrics.squad.evaluate_squad`` takes.

evaluate hands ``_compute`` one dict per example, shaped as the hub's squad / squad_v2 metrics:
predictions ``{"id", "prediction_text"[, "no_answer_probability"]}`` and references
``{"id", "answers": {"text": [...], "answer_start": [...]}}``. Predictions and references are paired by
id, not by position, exactly as the CLI pairs a predictions file with a dataset file.
"""

from __future__ import annotations

from collections.abc import Sequence


def squad_articles(references: Sequence[dict]) -> list[dict]:
    """The references as one SQuAD article (a list of articles, as in a dataset file's "data")."""
    qas = []
    for ref in references:
        answers = ref["answers"]
        pairs = zip(answers["text"], answers["answer_start"], strict=True)
        qas.append({"id": ref["id"], "answers": [{"text": text, "answer_start": start} for text, start in pairs]})
    # evaluate_squad checks the questions itself (duplicate ids, answers without text), with its messages.
    return [{"title": "evaluate references", "paragraphs": [{"context": "", "qas": qas}]}]


def squad_predictions(predictions: Sequence[dict]) -> dict[str, str]:
    """{question id: answer text}, the official predictions-file format; a repeated id is an error."""
    out: dict[str, str] = {}
    for pred in predictions:
        if pred["id"] in out:
            # A dict would silently keep the last answer; the CLI's JSON file cannot even express this.
            raise ValueError(f"prediction id {pred['id']!r} appears more than once")
        out[pred["id"]] = pred["prediction_text"]
    return out


def no_answer_probabilities(predictions: Sequence[dict]) -> dict[str, float] | None:
    """{id: no-answer probability} in prediction order, or None when every probability is None.

    All None means "no --na-prob-file": v2.0 then scores without the threshold sweep (best_* are None). evaluate
    needs the key on every prediction (its input check wants all feature keys), so None is the way to leave it
    out. A probability on some predictions only is rejected, as the CLI rejects an incomplete na-prob file.
    """
    probs = {pred["id"]: pred["no_answer_probability"] for pred in predictions}
    if all(p is None for p in probs.values()):
        return None
    missing = [qid for qid, p in probs.items() if p is None]
    if missing:
        raise ValueError(f"no_answer_probability is missing for {len(missing)} predictions "
                         f"(first: {missing[0]!r}); give a number for all predictions or None for all")
    return probs
