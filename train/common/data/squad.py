"""SQuAD v1.1 / v2.0 data for extractive QA fine-tuning: loading, sliding-window features, post-processing.

Example format (one dict per question; what every function here takes and returns):
    {"id": str, "title": str, "context": str, "question": str,
     "answers": {"text": [str, ...], "answer_start": [int, ...]}, "is_impossible": bool}
This is the column layout of the Hub's `squad` / `squad_v2` plus `is_impossible`, so a list of them goes straight
into `datasets.Dataset.from_list`.

Answer checking (both loaders): an answer whose text is not at `context[answer_start:]` is
* fixed when the exact text occurs within +-`window` (default 50) characters of answer_start: the occurrence
  nearest to the given start wins (ties: the earlier one);
* else fixed when the text occurs there up to whitespace (runs of spaces/newlines/no-break spaces compare equal;
  the answer text becomes the context's characters). SQuAD answers were selected in a browser, whose selection
  text can differ from the stored context in whitespace only; words and case are never changed;
* else dropped. A question left without any valid answer (and not marked impossible) is skipped.
Nothing is kept wrong silently: `SquadLoadReport` counts all of it and lists example ids.
The official dev-v1.1.json and the two v2.0 dev samples in ../shared/data have no mismatch at all.

Windows (`prepare_train_features` / `prepare_eval_features`): `doc_stride` has the Hugging Face meaning, i.e. the
number of context tokens that two consecutive windows SHARE (the tokenizer's `stride`), not the step between window
starts of the original BERT `run_squad.py`. A window holds max_seq_length - len(question tokens) - 3 context tokens;
consecutive windows start that many minus doc_stride tokens apart. Questions longer than max_query_length tokens
are cut to their first max_query_length tokens before pairing (the original BERT rule).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SquadFormatError(ValueError):
    """The SQuAD file/dataset does not have the official layout; the message names the file and the JSON path."""


class SquadMissingFileError(SquadFormatError, FileNotFoundError):
    """The SQuAD file is absent (catchable as SquadFormatError or FileNotFoundError)."""


@dataclass
class SquadLoadReport:
    """What the loader found; log it and write `to_dict()` next to the run's results."""

    source: str
    questions: int = 0  # questions read
    impossible: int = 0  # v2 questions marked is_impossible (kept, with no answers)
    answers: int = 0  # answers checked
    answers_fixed: int = 0  # answer_start moved (or whitespace of the text taken from the context)
    answers_dropped: int = 0  # answer text not found near answer_start
    questions_fixed: int = 0  # questions with at least one fixed answer
    questions_skipped: int = 0  # answerable questions left without any valid answer: not in the output
    # Kept answers that begin or end inside a word ("ten" at the "ten" of "contenders"): they match the context,
    # but no token span reproduces them exactly, and some are annotation slips. Counted for information.
    answers_mid_word: int = 0
    kept: int = 0  # questions returned
    fixed_examples: list = field(default_factory=list)  # first few {"id", "text", "old_start", "new_start", "how"}
    dropped_examples: list = field(default_factory=list)  # first few {"id", "text", "answer_start"}
    skipped_ids: list = field(default_factory=list)  # first few
    mid_word_examples: list = field(default_factory=list)  # first few {"id", "text", "answer_start"}
    max_listed: int = 10

    # The names the run report uses.
    @property
    def total(self) -> int:
        return self.questions

    @property
    def fixed(self) -> int:
        return self.answers_fixed

    @property
    def skipped(self) -> int:
        return self.questions_skipped

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "source", "questions", "impossible", "answers", "answers_fixed", "answers_dropped",
            "questions_fixed", "questions_skipped", "answers_mid_word", "kept", "fixed_examples",
            "dropped_examples", "skipped_ids", "mid_word_examples")}

    def summary(self) -> str:
        return (f"{self.source}: {self.questions} questions ({self.impossible} impossible), {self.answers} answers; "
                f"fixed {self.answers_fixed} answer(s) in {self.questions_fixed} question(s), dropped "
                f"{self.answers_dropped} answer(s), skipped {self.questions_skipped} question(s); kept {self.kept} "
                f"({self.answers_mid_word} kept answer(s) start or end inside a word)")


# ----------------------------------------------------------------------------------------------------------------
# answer checking


def locate_answer(context: str, text: str, answer_start: int, window: int = 50) -> tuple[int, str, str] | None:
    """Where `text` really is in `context`, near `answer_start`.

    Returns (start, text, how) with how in {"exact", "nearby", "whitespace"}, or None when not found (see the
    module docstring for the rules)."""
    if not text or not text.strip():
        return None
    if 0 <= answer_start and context[answer_start:answer_start + len(text)] == text:
        return answer_start, text, "exact"
    lo = max(0, answer_start - window)
    hi = min(len(context), answer_start + window + len(text))
    best = None
    pos = context.find(text, lo, hi)
    while pos != -1:
        if best is None or abs(pos - answer_start) < abs(best - answer_start):
            best = pos
        pos = context.find(text, pos + 1, hi)
    if best is not None:
        return best, text, "nearby"
    pattern = re.compile(r"\s+".join(re.escape(w) for w in text.split()))
    best_m = None
    for m in pattern.finditer(context, lo, hi):
        if best_m is None or abs(m.start() - answer_start) < abs(best_m.start() - answer_start):
            best_m = m
    if best_m is not None:
        return best_m.start(), best_m.group(0), "whitespace"
    return None


def _inside_word(context: str, start: int, end: int) -> bool:
    return ((start > 0 and context[start - 1].isalnum() and context[start].isalnum())
            or (end < len(context) and context[end - 1].isalnum() and context[end].isalnum()))


def _check_example(ex: dict, report: SquadLoadReport, window: int) -> dict | None:
    """Validate/fix the answers of one example in place; None when it must be skipped."""
    report.questions += 1
    if ex["is_impossible"]:
        report.impossible += 1
        report.kept += 1
        return ex
    texts, starts = [], []
    fixed_here = False
    for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"], strict=True):
        report.answers += 1
        found = locate_answer(ex["context"], text, start, window)
        if found is None:
            report.answers_dropped += 1
            if len(report.dropped_examples) < report.max_listed:
                report.dropped_examples.append({"id": ex["id"], "text": text, "answer_start": start})
            continue
        new_start, new_text, how = found
        if how != "exact":
            report.answers_fixed += 1
            fixed_here = True
            if len(report.fixed_examples) < report.max_listed:
                report.fixed_examples.append(
                    {"id": ex["id"], "text": text, "old_start": start, "new_start": new_start, "how": how})
        if _inside_word(ex["context"], new_start, new_start + len(new_text)):
            report.answers_mid_word += 1
            if len(report.mid_word_examples) < report.max_listed:
                report.mid_word_examples.append({"id": ex["id"], "text": new_text, "answer_start": new_start})
        texts.append(new_text)
        starts.append(new_start)
    report.questions_fixed += fixed_here
    if not texts:
        report.questions_skipped += 1
        if len(report.skipped_ids) < report.max_listed:
            report.skipped_ids.append(ex["id"])
        return None
    ex["answers"] = {"text": texts, "answer_start": starts}
    report.kept += 1
    return ex


# ----------------------------------------------------------------------------------------------------------------
# loaders


def _get(obj: Any, key: str, typ, path: str, src: str):
    if not isinstance(obj, dict):
        raise SquadFormatError(f"{src}: {path} should be an object, got {type(obj).__name__}")
    if key not in obj:
        raise SquadFormatError(f"{src}: {path} has no field {key!r} (fields: {sorted(obj)})")
    val = obj[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise SquadFormatError(f"{src}: {path}.{key} should be {want}, got {type(val).__name__}")
    return val


def load_squad_json(path: str, window: int = 50) -> tuple[list[dict], SquadLoadReport]:
    """Read an official SQuAD v1.1/v2.0 JSON file into flat examples (file order), checking every answer.

    A missing article title becomes "article_<i>" (titles group examples into articles for `split_articles`).
    v1.1 questions have no is_impossible: False. v2.0 `plausible_answers` are not used."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".json"))
        raise SquadFormatError(f"{path}: is a directory; pass an official SQuAD JSON file"
                               + (f", e.g. {found[0]}" if found else " (train-v1.1.json, dev-v1.1.json, ...)"))
    if not os.path.isfile(path):
        raise SquadMissingFileError(f"SQuAD file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            try:
                root = json.load(f)
            except json.JSONDecodeError as e:
                raise SquadFormatError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except PermissionError as err:
        raise SquadFormatError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
    articles = _get(root, "data", list, "<root>", path)
    report = SquadLoadReport(source=path)
    examples: list[dict] = []
    seen: dict[str, str] = {}
    for ai, art in enumerate(articles):
        apath = f"data[{ai}]"
        if not isinstance(art, dict):
            raise SquadFormatError(f"{path}: {apath} should be an object, got {type(art).__name__}")
        title = art.get("title", f"article_{ai}")
        if not isinstance(title, str):
            raise SquadFormatError(f"{path}: {apath}.title should be str, got {type(title).__name__}")
        for pi, par in enumerate(_get(art, "paragraphs", list, apath, path)):
            ppath = f"{apath}.paragraphs[{pi}]"
            context = _get(par, "context", str, ppath, path)
            for qi, qa in enumerate(_get(par, "qas", list, ppath, path)):
                qpath = f"{ppath}.qas[{qi}]"
                qid = _get(qa, "id", str, qpath, path)
                question = _get(qa, "question", str, qpath, path)
                if qid in seen:
                    raise SquadFormatError(f"{path}: duplicate question id {qid!r} at {qpath} (first at {seen[qid]})")
                seen[qid] = qpath
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise SquadFormatError(f"{path}: {qpath}.is_impossible should be bool, got {impossible!r}")
                answers = _get(qa, "answers", list, qpath, path)
                if impossible and answers:
                    raise SquadFormatError(f"{path}: {qpath} is_impossible but has {len(answers)} answer(s)")
                texts, starts = [], []
                for ki, ans in enumerate(answers):
                    kpath = f"{qpath}.answers[{ki}]"
                    texts.append(_get(ans, "text", str, kpath, path))
                    starts.append(_get(ans, "answer_start", int, kpath, path))
                ex = {"id": qid, "title": title, "context": context, "question": question,
                      "answers": {"text": texts, "answer_start": starts}, "is_impossible": impossible}
                if _check_example(ex, report, window) is not None:
                    examples.append(ex)
    return examples, report


def examples_from_hub_dataset(dataset, source: str = "dataset", window: int = 50) -> tuple[list[dict], SquadLoadReport]:
    """A `datasets.Dataset` with the Hub's squad/squad_v2 columns (id, title, context, question, answers) ->
    examples + report. is_impossible = the column if present, else "no answers" (squad_v2 has no such column)."""
    cols = list(dataset.column_names)
    missing = [c for c in ("id", "context", "question", "answers") if c not in cols]
    if missing:
        raise SquadFormatError(f"{source}: missing column(s) {missing}; columns found: {cols}")
    n = len(dataset)
    ids, contexts, questions, answers = (list(dataset[c]) for c in ("id", "context", "question", "answers"))
    titles = list(dataset["title"]) if "title" in cols else [""] * n
    flags = list(dataset["is_impossible"]) if "is_impossible" in cols else [None] * n
    report = SquadLoadReport(source=source)
    examples, seen = [], {}
    for i in range(n):
        where = f"{source}, row {i}"
        ans = answers[i]
        if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
            raise SquadFormatError(f"{where}: answers should be {{'text': [...], 'answer_start': [...]}}, got {ans!r}")
        texts, starts = list(ans["text"]), [int(s) for s in ans["answer_start"]]
        if len(texts) != len(starts):
            raise SquadFormatError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
        if ids[i] in seen:
            raise SquadFormatError(f"{where}: duplicate question id {ids[i]!r} (first at row {seen[ids[i]]})")
        seen[ids[i]] = i
        impossible = bool(flags[i]) if flags[i] is not None else not texts
        ex = {"id": ids[i], "title": titles[i], "context": contexts[i], "question": questions[i],
              "answers": {"text": [] if impossible else texts, "answer_start": [] if impossible else starts},
              "is_impossible": impossible}
        if _check_example(ex, report, window) is not None:
            examples.append(ex)
    return examples, report


def load_squad_hub(name: str = "squad", split: str = "validation", config: str | None = None,
                   window: int = 50) -> tuple[list[dict], SquadLoadReport]:
    """`datasets.load_dataset(name, config, split=split)` (squad or squad_v2) -> examples + report."""
    import datasets

    ds = datasets.load_dataset(name, config, split=split)
    return examples_from_hub_dataset(ds, source=f"hub:{name}[{split}]", window=window)


def load_squad(source: str, split: str = "validation", window: int = 50) -> tuple[list[dict], SquadLoadReport]:
    """A path to an official JSON file, else a Hub dataset name."""
    if source.endswith(".json") or os.path.exists(source):
        return load_squad_json(source, window)
    return load_squad_hub(source, split, window=window)


def split_articles(examples: Sequence[dict], train_articles: int = 40) -> tuple[list[dict], list[dict]]:
    """Split examples by article for acceptance runs: the first `train_articles` articles (in order of first
    appearance; an article = all examples with the same title) train, all later articles evaluate. Deterministic;
    no example order changes; no article is on both sides."""
    order: dict[str, int] = {}
    for ex in examples:
        order.setdefault(ex["title"], len(order))
    if not 1 <= train_articles < len(order):
        raise ValueError(f"train_articles must be in 1..{len(order) - 1} (the data has {len(order)} articles), "
                         f"got {train_articles}")
    train = [ex for ex in examples if order[ex["title"]] < train_articles]
    held = [ex for ex in examples if order[ex["title"]] >= train_articles]
    return train, held


# ----------------------------------------------------------------------------------------------------------------
# features


def _column(batch, name: str) -> list:
    if isinstance(batch, Mapping):  # a dict of columns or datasets' LazyBatch
        return list(batch[name])
    if isinstance(batch, (list, tuple)):
        return [row[name] for row in batch]
    return list(batch[name])  # datasets.Dataset


def _has(batch, name: str) -> bool:
    if isinstance(batch, Mapping):
        return name in batch
    if isinstance(batch, (list, tuple)):
        return bool(batch) and name in batch[0]
    return name in batch.column_names


def truncate_questions(questions: Sequence[str], tokenizer, max_query_length: int) -> list[str]:
    """Cut each question after its max_query_length-th token (leading whitespace stripped first).

    Cutting the string at the end character of that token re-tokenises to the same first tokens: WordPiece takes
    the longest vocabulary match from the left, so a prefix of a word yields the same leading pieces."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, ids, offs in zip(questions, enc["input_ids"], enc["offset_mapping"], strict=True):
        out.append(q[:offs[max_query_length - 1][1]] if len(ids) > max_query_length else q)
    return out


def _encode(examples, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int,
            pad_to_max_length: bool, for_eval: bool) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (offset mappings)")
    if tokenizer.padding_side != "right":
        raise ValueError(f"SQuAD features assume padding on the right, tokenizer pads {tokenizer.padding_side!r}")
    capacity = max_seq_length - max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if capacity <= 0 or not 0 <= doc_stride < capacity:
        raise ValueError(
            f"doc_stride ({doc_stride}) must be >= 0 and smaller than the context room of the shortest window "
            f"(max_seq_length {max_seq_length} - max_query_length {max_query_length} - special tokens = {capacity})")
    questions = truncate_questions(_column(examples, "question"), tokenizer, max_query_length)
    contexts = _column(examples, "context")
    answers = _column(examples, "answers")
    impossible = _column(examples, "is_impossible") if _has(examples, "is_impossible") else [False] * len(contexts)
    enc = tokenizer(
        questions, contexts, truncation="only_second", max_length=max_seq_length, stride=doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends, example_ids, eval_offsets = [], [], [], []
    ids_col = _column(examples, "id") if for_eval else None
    for i, offsets in enumerate(offsets_all):
        k = sample_map[i]
        seq_ids = enc.sequence_ids(i)
        input_ids = enc["input_ids"][i]
        cls = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        ctx = [j for j, s in enumerate(seq_ids) if s == 1]
        s_tok = e_tok = cls
        ans = answers[k]
        if ctx and not impossible[k] and ans["text"]:
            start_char = ans["answer_start"][0]
            end_char = start_char + len(ans["text"][0])
            c0, c1 = ctx[0], ctx[-1]
            if offsets[c0][0] <= start_char and offsets[c1][1] >= end_char:
                a = c0
                while a <= c1 and offsets[a][1] <= start_char:
                    a += 1
                b = c1
                while b >= c0 and offsets[b][0] >= end_char:
                    b -= 1
                if a <= b:
                    s_tok, e_tok = a, b
        starts.append(s_tok)
        ends.append(e_tok)
        if for_eval:
            example_ids.append(ids_col[k])
            eval_offsets.append([tuple(o) if s == 1 else None for o, s in zip(offsets, seq_ids, strict=True)])
    out = {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
    out["start_positions"] = starts
    out["end_positions"] = ends
    if for_eval:
        out["example_id"] = example_ids
        out["offset_mapping"] = eval_offsets
    return out


def prepare_train_features(examples, tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                           max_query_length: int = 64, pad_to_max_length: bool = False) -> dict:
    """Batched `datasets.map` function (use `remove_columns=dataset.column_names`: one example -> >= 1 windows).

    Returns lists per feature: input_ids, attention_mask, token_type_ids, start_positions, end_positions.
    The positions are the first answer's first/last token when it lies fully inside the window's context, else
    the [CLS] index (0), as for impossible questions. No padding unless pad_to_max_length (then to
    max_seq_length); padding is on the right."""
    return _encode(examples, tokenizer, max_seq_length, doc_stride, max_query_length, pad_to_max_length, False)


def prepare_eval_features(examples, tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                          max_query_length: int = 64, pad_to_max_length: bool = False) -> dict:
    """As `prepare_train_features`, plus example_id (the example's id) and offset_mapping per feature: a
    (start_char, end_char) pair into the example's context for context tokens, None for every other token
    (question, special tokens, padding). Drop both columns before the model's forward pass."""
    return _encode(examples, tokenizer, max_seq_length, doc_stride, max_query_length, pad_to_max_length, True)


# ----------------------------------------------------------------------------------------------------------------
# post-processing


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    m = max(scores)
    exps = [math.exp(s - m) for s in scores]
    z = sum(exps)
    return [e / z for e in exps]


def postprocess_qa_predictions(examples, features, start_logits, end_logits, n_best_size: int = 20,
                               max_answer_length: int = 30, version_2_with_negative: bool = False,
                               null_score_diff_threshold: float = 0.0):
    """Turn per-feature logits into one answer text per example.

    examples: list of example dicts / dict of columns / datasets.Dataset (id, context).
    features: the same kinds, from `prepare_eval_features` (example_id, offset_mapping), aligned row by row with
        the logits. [CLS] is position 0 of every feature (BERT layout, right padding, as the features are built).
    start_logits, end_logits: arrays [n_features, seq_len] (seq_len may exceed a feature's length: padding from
        gathering is ignored).

    Candidates: over all windows of an example, the n_best_size highest start and end logits among the window's
    CONTEXT tokens; a pair is kept when end >= start and end - start + 1 <= max_answer_length; its text is
    context[offsets[start][0]:offsets[end][1]] and its score start_logit + end_logit. The same character span from
    two overlapping windows counts once, with its best score.
    v2 (version_2_with_negative): null score = MIN over the example's windows of start_logit[CLS] + end_logit[CLS]
    (as in the original BERT run_squad.py); score_diff = null score - best span score; the prediction is "" when
    score_diff > null_score_diff_threshold. score_diff is +inf when no span is valid.

    Returns (predictions {id: text}, nbest {id: [{"text", "start_logit", "end_logit", "probability", "offsets"}]},
    null_odds {id: score_diff} (v2 only, else empty)). Every example gets exactly one prediction ("" when no
    valid span exists); nbest is sorted by score, probabilities are a softmax over the listed entries (v2: with
    the null entry, whose offsets are None)."""
    start_logits = np.asarray(start_logits)
    end_logits = np.asarray(end_logits)
    ex_ids = _column(examples, "id")
    contexts = _column(examples, "context")
    feat_ex_ids = _column(features, "example_id")
    feat_offsets = _column(features, "offset_mapping")
    if not (len(feat_ex_ids) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(feat_ex_ids)} features but {len(start_logits)} start / {len(end_logits)} end logit "
                         "rows (gather with gather_for_metrics so that padding duplicates are dropped)")
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(feat_ex_ids):
        by_example[eid].append(i)
    known = set(ex_ids)
    stray = [eid for eid in by_example if eid not in known]
    if stray:
        raise ValueError(f"{len(stray)} feature example_id(s) are not among the examples, e.g. {stray[:3]}")

    predictions, all_nbest, null_odds = {}, {}, {}
    for eid, context in zip(ex_ids, contexts, strict=True):
        spans: dict[tuple[int, int], tuple[float, float]] = {}
        null = None  # (score, start_logit, end_logit)
        for fi in by_example.get(eid, []):
            offsets = feat_offsets[fi]
            n = min(len(offsets), start_logits.shape[1])
            s_log = start_logits[fi, :n]
            e_log = end_logits[fi, :n]
            cls_score = float(s_log[0] + e_log[0])
            if null is None or cls_score < null[0]:
                null = (cls_score, float(s_log[0]), float(e_log[0]))
            is_context = (o is not None and o[0] is not None and o[0] >= 0 for o in offsets[:n])
            valid = np.flatnonzero(np.fromiter(is_context, dtype=bool, count=n))
            if valid.size == 0:
                continue
            top_s = valid[np.argsort(-s_log[valid], kind="stable")[:n_best_size]]
            top_e = valid[np.argsort(-e_log[valid], kind="stable")[:n_best_size]]
            length = top_e[None, :] - top_s[:, None] + 1
            scores = np.where((length >= 1) & (length <= max_answer_length),
                              s_log[top_s][:, None] + e_log[top_e][None, :], -np.inf)
            # This window's n_best best pairs contain every pair of it that can make the overall n-best list.
            for flat in np.argsort(-scores, axis=None, kind="stable")[:n_best_size]:
                i, j = divmod(int(flat), len(top_e))
                if scores[i, j] == -np.inf:
                    break
                s_tok, e_tok = top_s[i], top_e[j]
                key = (int(offsets[s_tok][0]), int(offsets[e_tok][1]))
                cand = (float(s_log[s_tok]), float(e_log[e_tok]))
                if key not in spans or sum(cand) > sum(spans[key]):
                    spans[key] = cand
        ranked = sorted(spans.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:n_best_size]
        entries = [{"text": context[a:b], "start_logit": sl, "end_logit": el, "offsets": [a, b]}
                   for (a, b), (sl, el) in ranked]
        best_text = entries[0]["text"] if entries else ""
        best_score = entries[0]["start_logit"] + entries[0]["end_logit"] if entries else -math.inf
        if version_2_with_negative:
            null_score, null_s, null_e = null if null is not None else (0.0, 0.0, 0.0)
            entries.append({"text": "", "start_logit": null_s, "end_logit": null_e, "offsets": None})
            entries.sort(key=lambda d: -(d["start_logit"] + d["end_logit"]))
            diff = null_score - best_score
            null_odds[eid] = float(diff)
            predictions[eid] = "" if diff > null_score_diff_threshold else best_text
        else:
            predictions[eid] = best_text
        if not entries:
            entries = [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "offsets": None}]
        for entry, p in zip(entries, _softmax([d["start_logit"] + d["end_logit"] for d in entries]), strict=True):
            entry["probability"] = p
        all_nbest[eid] = entries
    return predictions, all_nbest, null_odds


def squad_gold_from_examples(examples: Sequence[dict], version: str) -> dict:
    """Official SQuAD JSON ({"version", "data": articles -> paragraphs -> qas}) of loaded examples, for
    metrics.squad when the evaluation set is not a file as it stands (hub data, a capped set)."""
    articles: dict[str, dict[str, list]] = {}
    for ex in examples:
        paragraphs = articles.setdefault(ex["title"], {})
        paragraphs.setdefault(ex["context"], []).append({
            "id": ex["id"], "question": ex["question"], "is_impossible": ex["is_impossible"],
            "answers": [{"text": t, "answer_start": s}
                        for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"], strict=True)]})
    return {"version": "v2.0" if version == "2.0" else "1.1",
            "data": [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
                     for title, paragraphs in articles.items()]}


def squad_repair_lines(data_report: dict) -> list[str]:
    """The answer repairs of each loaded SQuAD file, for the terminal (eval_results.json has the details)."""
    lines = []
    for role, report in data_report.items():
        if report.get("answers_fixed") or report.get("answers_dropped") or report.get("questions_skipped"):
            lines.append(f"{role} data ({report.get('source')}): {report['answers_fixed']} answer(s) moved to where "
                         f"their text is, {report['answers_dropped']} dropped (text not near answer_start), "
                         f"{report['questions_skipped']} question(s) skipped (no valid answer left); listed in "
                         "eval_results.json data_report")
    return lines
