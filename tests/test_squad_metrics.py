"""metrics.squad and its CLI analysis.squad: hand-checked cases, loaders, CLI, and agreement with a reference oracle.

The oracle below re-implements the logic of the official SQuAD evaluation scripts (evaluate-v1.1.py
and evaluate-v2.0.py) step by step, in the same order of operations, so the comparison on randomized
predictions over the real dev files can demand exact float equality.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
import time
from pathlib import Path

import pytest

from analysis import squad
from metrics import squad as squad_metrics
from metrics.squad import (
    SquadFormatError,
    SquadMetricBug,
    evaluate_squad,
    evaluate_v1,
    evaluate_v2,
    exact_match_score,
    f1_score,
    normalize_answer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
SHARED_SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad"
DEV_V11 = SHARED_SQUAD / "dev-v1.1.json"
DEV_V20_SAMPLE = SHARED_SQUAD / "dev-v2.0-sample-5articles.json"
DEV_V20_CS224N = SHARED_SQUAD / "dev-v2.0-cs224n-16articles.json"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (../shared/data is not mounted here)")
    return path


# ====================================================================================================
# Reference oracle: the official scripts' logic.

def oracle_normalize(s):
    def drop_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def fix_spaces(text):
        return " ".join(text.split())

    def drop_punct(text):
        excluded = set(string.punctuation)
        return "".join(ch for ch in text if ch not in excluded)

    return fix_spaces(drop_articles(drop_punct(s.lower())))


# ---- evaluate-v1.1.py ----

def oracle_v1_f1(prediction, ground_truth):
    pred_tokens = oracle_normalize(prediction).split()
    gold_tokens = oracle_normalize(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def oracle_v1_em(prediction, ground_truth):
    return oracle_normalize(prediction) == oracle_normalize(ground_truth)


def oracle_v1_max_over_golds(metric, prediction, golds):
    return max([metric(prediction, g) for g in golds])


def oracle_v1_evaluate(articles, predictions):
    f1 = exact_match = total = 0
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # officially: "Unanswered question ... will receive score 0." on stderr
                golds = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += oracle_v1_max_over_golds(oracle_v1_em, prediction, golds)
                f1 += oracle_v1_max_over_golds(oracle_v1_f1, prediction, golds)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# ---- evaluate-v2.0.py ----

def oracle_v2_has_ans(articles):
    out = {}
    for article in articles:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                out[qa["id"]] = bool(qa["answers"])
    return out


def oracle_v2_tokens(s):
    if not s:
        return []
    return oracle_normalize(s).split()


def oracle_v2_exact(a_gold, a_pred):
    return int(oracle_normalize(a_gold) == oracle_normalize(a_pred))


def oracle_v2_f1(a_gold, a_pred):
    gold_toks = oracle_v2_tokens(a_gold)
    pred_toks = oracle_v2_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def oracle_v2_raw_scores(articles, preds):
    exact, f1 = {}, {}
    for article in articles:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                golds = [a["text"] for a in qa["answers"] if oracle_normalize(a["text"])]
                if not golds:
                    golds = [""]
                if qid not in preds:
                    continue  # officially: print("Missing prediction for ...")
                pred = preds[qid]
                exact[qid] = max(oracle_v2_exact(g, pred) for g in golds)
                f1[qid] = max(oracle_v2_f1(g, pred) for g in golds)
    return exact, f1


def oracle_v2_threshold(scores, na_probs, has_ans, thresh):
    out = {}
    for qid, s in scores.items():
        if na_probs[qid] > thresh:
            out[qid] = float(not has_ans[qid])
        else:
            out[qid] = s
    return out


def oracle_v2_eval_dict(exact, f1, qids=None):
    if not qids:
        total = len(exact)
        return collections.OrderedDict([
            ("exact", 100.0 * sum(exact.values()) / total),
            ("f1", 100.0 * sum(f1.values()) / total),
            ("total", total),
        ])
    total = len(qids)
    return collections.OrderedDict([
        ("exact", 100.0 * sum(exact[k] for k in qids) / total),
        ("f1", 100.0 * sum(f1[k] for k in qids) / total),
        ("total", total),
    ])


def oracle_v2_merge(main, new, prefix):
    for k in new:
        main[f"{prefix}_{k}"] = new[k]


def oracle_v2_best_thresh(preds, scores, na_probs, has_ans):
    num_no_ans = sum(1 for k in has_ans if not has_ans[k])
    cur = num_no_ans
    best = cur
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur += diff
        if cur > best:
            best = cur
            best_thresh = na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def oracle_v2_evaluate(articles, preds, na_probs=None, thresh=1.0):
    """The official main(): na_probs=None means no --na-prob-file."""
    have_file = na_probs is not None
    if not have_file:
        na_probs = {k: 0.0 for k in preds}
    has_ans = oracle_v2_has_ans(articles)
    has_ans_qids = [k for k, v in has_ans.items() if v]
    no_ans_qids = [k for k, v in has_ans.items() if not v]
    exact_raw, f1_raw = oracle_v2_raw_scores(articles, preds)
    exact_t = oracle_v2_threshold(exact_raw, na_probs, has_ans, thresh)
    f1_t = oracle_v2_threshold(f1_raw, na_probs, has_ans, thresh)
    out = oracle_v2_eval_dict(exact_t, f1_t)
    if has_ans_qids:
        oracle_v2_merge(out, oracle_v2_eval_dict(exact_t, f1_t, has_ans_qids), "HasAns")
    if no_ans_qids:
        oracle_v2_merge(out, oracle_v2_eval_dict(exact_t, f1_t, no_ans_qids), "NoAns")
    if have_file:
        out["best_exact"], out["best_exact_thresh"] = oracle_v2_best_thresh(preds, exact_raw, na_probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = oracle_v2_best_thresh(preds, f1_raw, na_probs, has_ans)
    return out


# ====================================================================================================
# Random predictions that hit the normalisation edge cases.

_NOISE = ["the", "a", "an", "The", "éthe", "anñ", "thé", ",", ".", "!", "“", "”", "–", "é", "Ünïcode", "  ",
          "\u00a0", "'s", "(", ")"]


def _random_prediction(rng: random.Random, golds: list[str], context: str) -> str:
    mode = rng.randrange(12)
    gold = rng.choice(golds) if golds else ""
    words = gold.split()
    if mode == 0:
        return gold
    if mode == 1:
        return rng.choice(["The ", "the ", "A ", "an "]) + gold + rng.choice(["", ".", "!", " ,", "”"])
    if mode == 2:
        return gold.upper() if rng.random() < 0.5 else gold.lower()
    if mode == 3 and words:
        i = rng.randrange(len(words))
        return " ".join(words[i:i + rng.randrange(1, 4)])
    if mode == 4:
        ctx = context.split()
        i = rng.randrange(len(ctx))
        return " ".join(ctx[i:i + rng.randrange(1, 8)])
    if mode == 5:
        return rng.choice(["", " ", ".", "the", "a an the", "“”", "\u00a0"])
    if mode == 6:
        return " ".join(rng.choice(_NOISE) for _ in range(rng.randrange(1, 5))) + " " + gold
    if mode == 7 and words:
        return " ".join(w + w for w in words)  # doubled words, repeated-token overlap counts
    if mode == 8:
        return gold + " " + gold
    if mode == 9:
        return "".join(rng.choice([c, c.upper(), c + "-", c + " "]) for c in gold)
    if mode == 10:
        return rng.choice(golds + [""]) if golds else rng.choice(["", "x"])
    return " ".join(rng.sample(context.split(), min(3, len(context.split()))))


def _random_predictions(articles, seed: int, missing_rate: float = 0.0) -> dict[str, str]:
    rng = random.Random(seed)
    preds = {}
    for article in articles:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if rng.random() < missing_rate:
                    continue
                preds[qa["id"]] = _random_prediction(rng, [a["text"] for a in qa["answers"]], p["context"])
    return preds


def _random_na_probs(preds: dict, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    ids = list(preds)
    rng.shuffle(ids)  # key order decides ties in the official sweep
    style = seed % 3
    if style == 0:
        return {k: round(rng.random(), 1) for k in ids}  # many ties
    if style == 1:
        return {k: rng.gauss(0.0, 3.0) for k in ids}  # null-odds style, negative values too
    return {k: rng.choice([0, 1, 0.5, 0.25]) for k in ids}  # ints and floats mixed


def _assert_same(ours: dict, official: dict) -> None:
    for key, value in official.items():
        assert ours[key] == value, f"{key}: ours {ours[key]!r} != official {value!r}"


# ====================================================================================================
# Hand-checked scoring


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("an apple a day", "apple day"),
        ("Theater and anthem", "theater and anthem"),  # articles only as whole words
        ("the, end", "end"),
        ("a.m.", "am"),  # punctuation goes before articles are matched
        ("  Several   spaces\tand\nnewlines ", "several spaces and newlines"),
        ("Über the café", "über café"),
        ("“Hello”", "“hello”"),  # curly quotes are not in string.punctuation
        ("Arab–Israeli", "arab–israeli"),  # nor is the en dash
        ("éthe", "éthe"),  # \b is Unicode-aware: no boundary between é and t
        ("the\u00a0end", "end"),  # str.split treats NBSP as whitespace
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected
    assert normalize_answer(text) == oracle_normalize(text)


def test_token_f1_hand_values():
    assert f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    # Counter overlap: min(3,1) + min(1,2) = 2 common tokens; P = 2/4, R = 2/3 -> F1 = 4/7
    assert f1_score("x x x y", "x y y") == pytest.approx(4 / 7)
    assert f1_score("Denver Broncos", "the denver broncos.") == 1.0
    assert f1_score("Zurich", "Zürich") == 0.0
    assert exact_match_score("The Denver Broncos!", "denver broncos") == 1
    assert exact_match_score("“Hello”", "Hello") == 0


def test_empty_answers_v1_vs_v2_rules():
    # v1.1: no overlap -> 0, even for two empty answers; v2.0: both empty -> 1.
    assert f1_score("", ".") == 0.0
    assert f1_score("", ".", version=2) == 1.0
    assert f1_score("", "x", version=2) == 0.0
    assert exact_match_score("", ".") == 1


def _v1_articles(questions):
    return [{"paragraphs": [{"context": "c", "qas": [
        {"id": qid, "answers": [{"text": t, "answer_start": 0} for t in golds]} for qid, golds in questions
    ]}]}]


def test_v1_several_golds_missing_and_extra_ids():
    articles = _v1_articles([
        ("q1", ["Denver Broncos", "Broncos"]),
        ("q2", ["Santa Clara, California", "Levi's Stadium"]),
        ("q3", ["1,000 miles"]),
    ])
    preds = {"q1": "broncos", "q2": "Levi's Stadium in Santa Clara", "extra": "x"}
    result = evaluate_v1(articles, preds, per_question=True)
    # q2: best gold "Levi's Stadium": P = 2/5, R = 1 -> F1 = 4/7; q3 missing scores 0 but counts.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)
    assert result["total"] == 3
    assert result["missing_predictions"] == 1
    assert result["extra_predictions"] == 1
    rows = {r["id"]: r for r in result["per_question"]}
    assert rows["q2"]["best_gold"] == "Levi's Stadium"
    assert rows["q2"]["f1"] == pytest.approx(4 / 7) and rows["q2"]["exact"] == 0
    assert rows["q3"]["missing"] and rows["q3"]["prediction"] is None
    official = oracle_v1_evaluate(articles, preds)
    assert (result["exact_match"], result["f1"]) == (official["exact_match"], official["f1"])


def test_v1_empty_prediction_against_punctuation_gold_is_official_em_without_f1():
    # dev-v1.1.json has three gold answers "."; officially "" matches them exactly but has F1 0.
    articles = _v1_articles([("q1", ["interventionism", "."])])
    result = evaluate_v1(articles, {"q1": ""})
    assert result["exact_match"] == 100.0 and result["f1"] == 0.0
    assert result["empty_normalized_exact_matches"] == 1


def test_v2_no_answer_questions_and_threshold_search():
    dataset = json.loads((FIXTURES / "squad_v2_tiny.json").read_text())
    preds = json.loads((FIXTURES / "squad_v2_tiny_predictions.json").read_text())
    na_probs = json.loads((FIXTURES / "squad_v2_tiny_na_probs.json").read_text())

    plain = evaluate_squad(dataset, preds)
    # q1 right, q2 wrong, q3 ("x" on a no-answer question) wrong, q4 ("" on a no-answer question) right.
    assert (plain["exact"], plain["f1"], plain["total"]) == (50.0, 50.0, 4)
    splits = (plain["HasAns_exact"], plain["HasAns_total"], plain["NoAns_exact"], plain["NoAns_total"])
    assert splits == (50.0, 2, 50.0, 2)
    assert plain["best_exact"] is None and plain["exact_match"] == plain["exact"]

    with_probs = evaluate_squad(dataset, preds, na_probs)
    # Sweep from "all no-answer" (2 of 4 right): q1 (0.1) +1 -> 3 (best, thresh 0.1), q4 (0.3) 0,
    # q2 (0.6) 0, q3 (0.9) -1.
    assert (with_probs["best_exact"], with_probs["best_exact_thresh"]) == (75.0, 0.1)
    assert (with_probs["best_f1"], with_probs["best_f1_thresh"]) == (75.0, 0.1)
    assert with_probs["exact"] == 50.0  # threshold 1.0: nothing is switched to no-answer

    at_half = evaluate_squad(dataset, preds, na_probs, 0.5)
    # q2 (0.6) and q3 (0.9) become no-answer: q2 stays wrong, q3 becomes right.
    assert at_half["exact"] == 75.0 and at_half["NoAns_exact"] == 100.0 and at_half["HasAns_exact"] == 50.0
    for result, thresh in ((plain, 1.0), (with_probs, 1.0), (at_half, 0.5)):
        official = oracle_v2_evaluate(dataset["data"], preds, na_probs if result is not plain else None, thresh)
        _assert_same(result, official)


def test_v2_threshold_ties_follow_key_order_and_raw_string_truthiness():
    articles = [{"paragraphs": [{"context": "c", "qas": [
        {"id": "has", "answers": [{"text": "yes", "answer_start": 0}]},
        {"id": "none", "answers": []},
    ]}]}]
    preds = {"has": "yes", "none": "x"}
    # Equal probabilities: the official stable sort keeps the dict order, and only a strict improvement
    # moves the threshold, so the two orders give different best scores.
    first_has = evaluate_v2(articles, preds, {"has": 0.5, "none": 0.5})
    first_none = evaluate_v2(articles, preds, {"none": 0.5, "has": 0.5})
    assert (first_has["best_exact"], first_has["best_exact_thresh"]) == (100.0, 0.5)
    assert (first_none["best_exact"], first_none["best_exact_thresh"]) == (50.0, 0.0)
    # " " normalises to the empty answer (raw EM 1) but is a non-empty string, so the sweep charges -1.
    blank = evaluate_v2(articles, {"has": "no", "none": " "}, {"none": 0.2, "has": 0.7})
    assert blank["exact"] == 50.0  # "none" right, "has" wrong
    assert (blank["best_exact"], blank["best_exact_thresh"]) == (50.0, 0.0)
    for na in ({"has": 0.5, "none": 0.5}, {"none": 0.5, "has": 0.5}):
        _assert_same(evaluate_v2(articles, preds, na), oracle_v2_evaluate(articles, preds, na))


def test_v2_missing_prediction_scores_zero_where_official_crashes():
    articles = [{"paragraphs": [{"context": "c", "qas": [
        {"id": "has", "answers": [{"text": "yes", "answer_start": 0}]},
        {"id": "none", "answers": []},
    ]}]}]
    with pytest.raises(KeyError):
        oracle_v2_evaluate(articles, {"has": "yes"})
    result = evaluate_v2(articles, {"has": "yes"}, per_question=True)
    # The missing no-answer question is NOT credited as an empty answer.
    assert (result["exact"], result["NoAns_exact"], result["missing_predictions"]) == (50.0, 0.0, 1)
    with_probs = evaluate_v2(articles, {"has": "yes"}, {"has": 0.3})
    assert with_probs["best_exact"] == 50.0
    # ... and the result says how many were missing, where, and how they were scored.
    assert (result["HasAns_missing"], result["NoAns_missing"]) == (0, 1)
    assert result["missing_scored_as"] == squad_metrics.MISSING_SCORED_AS_V2
    assert result["missing_scored_as"].startswith("0 (EM 0, F1 0") and "not as the empty answer" in \
        result["missing_scored_as"]
    # An empty-string prediction on the same question IS an abstention and earns the point.
    abstained = evaluate_v2(articles, {"has": "yes", "none": ""})
    assert (abstained["exact"], abstained["NoAns_exact"], abstained["missing_predictions"]) == (100.0, 100.0, 0)
    assert abstained["missing_scored_as"] == result["missing_scored_as"]  # the key is there with none missing


def test_missing_predictions_are_reported_in_both_versions_and_em_le_f1_still_checked(tmp_path, monkeypatch,
                                                                                        capsys):
    v1 = evaluate_v1(_v1_articles([("q1", ["Broncos"]), ("q2", ["Panthers"])]), {"q1": "Broncos"})
    assert (v1["missing_predictions"], v1["missing_scored_as"]) == (1, squad_metrics.MISSING_SCORED_AS_V1)
    assert (v1["exact_match"], v1["f1"]) == (50.0, 50.0)
    # The v2.0 CLI on a predictions file without one answerable and one no-answer question.
    preds = json.loads((FIXTURES / "squad_v2_tiny_predictions.json").read_text())
    dataset = json.loads((FIXTURES / "squad_v2_tiny.json").read_text())
    kinds = {qa["id"]: bool(qa["answers"]) for article in dataset["data"] for paragraph in article["paragraphs"]
             for qa in paragraph["qas"]}
    dropped = [next(q for q, has in kinds.items() if has), next(q for q, has in kinds.items() if not has)]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({q: a for q, a in preds.items() if q not in dropped}))
    assert squad.main(["--data", str(FIXTURES / "squad_v2_tiny.json"), "--predictions", str(partial)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert (printed["missing_predictions"], printed["HasAns_missing"], printed["NoAns_missing"]) == (2, 1, 1)
    assert printed["missing_scored_as"] == squad_metrics.MISSING_SCORED_AS_V2
    assert f"2 questions have no prediction and score 0 (missing_scored_as: {printed['missing_scored_as']})" \
        in captured.err
    full = evaluate_squad(dataset, {q: a for q, a in preds.items() if q not in dropped})
    assert printed["exact"] == full["exact"] and printed["exact"] <= printed["f1"]
    # The EM <= F1 check still runs with missing predictions.
    monkeypatch.setattr(squad_metrics, "_token_f1", lambda pred, gold, v2: 0.0)
    with pytest.raises(SquadMetricBug):
        evaluate_v1(_v1_articles([("q1", ["Broncos"]), ("q2", ["Panthers"])]), {"q1": "Broncos"})


def test_v2_na_probs_must_cover_predicted_questions():
    articles = [{"paragraphs": [{"context": "c", "qas": [{"id": "q", "answers": []}]}]}]
    with pytest.raises(SquadFormatError, match="no probability for question 'q'"):
        evaluate_v2(articles, {"q": ""}, {"other": 0.1})
    with pytest.raises(SquadFormatError, match="must be a number"):
        evaluate_v2(articles, {"q": ""}, {"q": "high"})


def test_version_detection_and_v1_rejects_unanswerable():
    v1 = json.loads((FIXTURES / "squad_v1_tiny.json").read_text())
    v2 = json.loads((FIXTURES / "squad_v2_tiny.json").read_text())
    assert squad_metrics.detect_version(v1) == 1 and squad_metrics.detect_version(v2) == 2
    no_version = {"data": v2["data"]}
    assert squad_metrics.detect_version(no_version) == 2
    assert squad_metrics.detect_version(v1["data"]) == 1
    with pytest.raises(SquadFormatError, match="no answers"):
        evaluate_squad(v2, {}, version="1.1")
    with pytest.raises(SquadFormatError, match="only apply to SQuAD v2.0"):
        evaluate_squad(v1, {}, {"v1-q1": 0.3})


def test_em_gt_f1_raises_bug(monkeypatch):
    monkeypatch.setattr(squad_metrics, "_token_f1", lambda pred, gold, v2: 0.0)
    with pytest.raises(SquadMetricBug, match="BUG"):
        evaluate_v1(_v1_articles([("q1", ["Broncos"])]), {"q1": "broncos"})
    with pytest.raises(SquadMetricBug, match="bug in the evaluation code"):
        evaluate_v2(_v1_articles([("q1", ["Broncos"])]), {"q1": "broncos"})


def test_key_sets_are_documented():
    v1 = evaluate_squad(json.loads((FIXTURES / "squad_v1_tiny.json").read_text()), {})
    v2 = evaluate_squad(json.loads((FIXTURES / "squad_v2_tiny.json").read_text()), {})
    assert set(v1) == {"version", "exact_match", "f1", "total", "missing_predictions", "missing_scored_as",
                       "extra_predictions", "empty_normalized_exact_matches"}
    assert set(v2) == {"version", "exact", "exact_match", "f1", "total", "HasAns_exact", "HasAns_f1",
                       "HasAns_total", "HasAns_missing", "NoAns_exact", "NoAns_f1", "NoAns_total", "NoAns_missing",
                       "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh", "na_prob_thresh",
                       "missing_predictions", "missing_scored_as", "extra_predictions"}
    assert v1["missing_predictions"] == 5 and v1["exact_match"] == 0.0


# ====================================================================================================
# Loaders


def test_loaders_name_file_and_record(tmp_path):
    where = r"squad_bad_structure\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing or non-string 'id'"
    with pytest.raises(SquadFormatError, match=where):
        squad_metrics.load_squad_json(str(FIXTURES / "squad_bad_structure.json"))
    with pytest.raises(SquadFormatError, match=r"squad_bad_predictions\.json: invalid JSON at line 2"):
        squad.load_predictions(str(FIXTURES / "squad_bad_predictions.json"))
    bad_value = tmp_path / "preds.json"
    bad_value.write_text(json.dumps({"q1": "ok", "q2": ["list"]}))
    with pytest.raises(SquadFormatError, match=r"preds\.json: id 'q2': answer must be a string, got list"):
        squad.load_predictions(str(bad_value))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"id": "q1", "prediction_text": "x"}]))
    with pytest.raises(SquadFormatError, match="expected a JSON object mapping question id"):
        squad.load_predictions(str(listed))
    with pytest.raises(SquadFormatError, match="no such file"):
        squad_metrics.load_squad_json(str(tmp_path / "absent.json"))
    no_data = tmp_path / "nodata.json"
    no_data.write_text("{\"version\": \"1.1\"}")
    with pytest.raises(SquadFormatError, match="'data' list"):
        squad_metrics.load_squad_json(str(no_data))
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"data": _v1_articles([("q", ["a"]), ("q", ["b"])])}))
    with pytest.raises(SquadFormatError, match="duplicate question id 'q'"):
        squad_metrics.load_squad_json(str(dup))
    probs = tmp_path / "na.json"
    probs.write_text('{"q": 0.5, "r": true}')
    with pytest.raises(SquadFormatError, match=r"na\.json: id 'r'"):
        squad.load_na_probs(str(probs))


# ====================================================================================================
# CLI


def test_cli_v1_prints_json_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "eval.json"
    per_q = tmp_path / "per_question.jsonl"
    rc = squad.main(["--data", str(FIXTURES / "squad_v1_tiny.json"),
                     "--predictions", str(FIXTURES / "squad_v1_tiny_predictions.json"),
                     "--out", str(out), "--per-question-out", str(per_q)])
    captured = capsys.readouterr()
    assert rc == 0
    printed = json.loads(captured.out)
    # q1 exact; q2 F1 4/7; q3 "Zurich" vs "Zürich" 0; q4 "Hello" vs "“Hello”" 0; q5 missing 0.
    assert printed["exact_match"] == pytest.approx(20.0)
    assert printed["f1"] == pytest.approx(100 * (1 + 4 / 7) / 5)
    assert (printed["missing_predictions"], printed["extra_predictions"], printed["total"]) == (1, 1, 5)
    assert "1 questions have no prediction and score 0 (missing_scored_as: 0 (EM 0, F1 0" in captured.err
    assert captured.err.splitlines()[0].endswith("): v1-q5")
    assert printed["missing_scored_as"] == squad_metrics.MISSING_SCORED_AS_V1
    assert json.loads(out.read_text())["f1"] == printed["f1"]
    lines = [json.loads(line) for line in per_q.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["v1-q1", "v1-q2", "v1-q3", "v1-q4", "v1-q5"]


def test_cli_v2_with_na_prob_file(capsys):
    rc = squad.main(["--data", str(FIXTURES / "squad_v2_tiny.json"),
                     "--predictions", str(FIXTURES / "squad_v2_tiny_predictions.json"),
                     "--na-prob-file", str(FIXTURES / "squad_v2_tiny_na_probs.json"), "--na-prob-thresh", "0.5"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert (printed["exact"], printed["best_exact"], printed["best_exact_thresh"]) == (75.0, 75.0, 0.1)


def test_cli_errors_and_help(capsys):
    rc = squad.main(["--data", str(FIXTURES / "squad_bad_structure.json"),
                     "--predictions", str(FIXTURES / "squad_v1_tiny_predictions.json")])
    assert rc == 2
    assert "squad_bad_structure.json: data[0].paragraphs[0].qas[1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        squad.main(["--help"])
    assert exc.value.code == 0
    assert "--na-prob-thresh" in capsys.readouterr().out


def test_cli_aux_adds_labelled_auxiliary_metrics(capsys):
    pytest.importorskip("sacrebleu")
    from metrics import text as text_metrics

    try:
        text_metrics._wordnet()
    except text_metrics.WordNetMissingError:
        pytest.skip("WordNet 3.0 not installed: run python -m analysis.wordnet_setup")
    rc = squad.main(["--data", str(FIXTURES / "squad_v2_tiny.json"),
                     "--predictions", str(FIXTURES / "squad_v2_tiny_predictions.json"), "--aux"])
    aux = json.loads(capsys.readouterr().out)["auxiliary_text_metrics"]
    assert rc == 0
    assert aux["note"].startswith("auxiliary")
    # Two answerable questions: "Paris" vs "Paris" and "Rome" vs "London"; two no-answer ones skipped.
    assert (aux["questions_used"], aux["questions_skipped_no_answer"]) == (2, 2)
    assert aux["rouge1"] == pytest.approx(0.5)
    assert aux["meteor"] == pytest.approx(0.25)  # one-word exact match scores 0.5 in nltk METEOR
    assert aux["bleu_sentence_mean"] == 50.0  # 100.0 (clamped) and 0
    assert aux["rouge2"] == 0.0 and "one-word" in aux["notes"]["rouge2"]  # the exact "Paris" has no bigram
    assert (aux["missing_predictions"], aux["missing_scored_as"]) == (0, squad_metrics.MISSING_SCORED_AS_AUX)


# ====================================================================================================
# Real dev files: exact agreement with the oracle, and the copy-gold sanity check


def test_dev_v11_first_gold_gives_100_and_is_fast():
    dataset = squad_metrics.load_squad_json(str(_need(DEV_V11)))
    preds = {qa["id"]: qa["answers"][0]["text"]
             for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}
    start = time.perf_counter()
    result = evaluate_squad(dataset, preds)
    elapsed = time.perf_counter() - start
    assert (result["exact_match"], result["f1"], result["total"]) == (100.0, 100.0, 10570)
    assert elapsed < 10.0, f"full dev-v1.1 evaluation took {elapsed:.1f}s"


@pytest.mark.parametrize("seed, missing_rate", [(0, 0.0), (2, 0.3)])
def test_dev_v11_random_predictions_match_official_v11(seed, missing_rate):
    dataset = json.loads(_need(DEV_V11).read_text(encoding="utf-8"))
    preds = _random_predictions(dataset["data"], seed, missing_rate)
    preds["not-in-dev"] = "extra"
    ours = evaluate_squad(dataset, preds)
    official = oracle_v1_evaluate(dataset["data"], preds)
    assert ours["version"] == "1.1"
    assert ours["exact_match"] == official["exact_match"]
    assert ours["f1"] == official["f1"]
    assert ours["extra_predictions"] == 1
    assert ours["missing_predictions"] == 10570 - (len(preds) - 1)
    # Randomness must reach the interesting range, not only 0 or 100.
    assert 5 < ours["f1"] < 95


@pytest.mark.parametrize(
    "path, seed",
    [(DEV_V20_SAMPLE, 0), (DEV_V20_SAMPLE, 1), (DEV_V20_SAMPLE, 2), (DEV_V20_CS224N, 1)],
    ids=["sample-5articles-ties", "sample-5articles-gauss", "sample-5articles-mixed", "cs224n-16articles-gauss"],
)
def test_dev_v20_random_predictions_match_official_v20(path, seed):
    dataset = json.loads(_need(path).read_text(encoding="utf-8"))
    preds = _random_predictions(dataset["data"], seed)
    na_probs = _random_na_probs(preds, seed)
    official_plain = oracle_v2_evaluate(dataset["data"], preds)
    _assert_same(evaluate_squad(dataset, preds), official_plain)
    values = sorted(set(na_probs.values()))
    for thresh in (1.0, 0.5, values[len(values) // 2], -1.0):
        ours = evaluate_squad(dataset, preds, na_probs, thresh, per_question=(thresh == 1.0))
        _assert_same(ours, oracle_v2_evaluate(dataset["data"], preds, na_probs, thresh))
        assert ours["version"] == "2.0" and ours["missing_predictions"] == 0


def test_v11_data_scored_with_v20_rules_matches_official_v20():
    # dev-v1.1.json has gold answers "." that v2.0 drops; exercise that path on the real file.
    dataset = json.loads(_need(DEV_V11).read_text(encoding="utf-8"))
    preds = _random_predictions(dataset["data"], 7)
    na_probs = _random_na_probs(preds, 7)
    _assert_same(evaluate_squad(dataset, preds, na_probs, 0.3, version="2.0"),
                 oracle_v2_evaluate(dataset["data"], preds, na_probs, 0.3))


def test_per_question_scores_average_to_totals():
    dataset = json.loads(_need(DEV_V20_SAMPLE).read_text(encoding="utf-8"))
    preds = _random_predictions(dataset["data"], 3)
    result = evaluate_squad(dataset, preds, per_question=True)
    rows = result["per_question"]
    assert len(rows) == result["total"] == 1407
    assert result["exact"] == pytest.approx(100 * sum(r["exact"] for r in rows) / len(rows))
    assert result["f1"] == pytest.approx(100 * sum(r["f1"] for r in rows) / len(rows))
    assert all(r["exact"] <= r["f1"] for r in rows)
    assert squad_metrics.score_questions(dataset, preds) == rows
