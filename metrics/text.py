"""Auxiliary text-overlap metrics (BLEU, ROUGE, METEOR) for predicted vs gold answers.

AUXILIARY for extractive QA: SQuAD answers are short spans scored by EM/F1 (metrics.squad); these
n-gram metrics are reported next to them for comparison with generation-style reports, never instead.

Choices (all offline; no nltk data except WordNet 3.0 for METEOR):

* BLEU, two figures, both in use, with the same settings: ``bleu`` is sacrebleu corpus BLEU over all
  examples (n-gram counts pooled, then one score, 0..100), ``bleu_sentence_mean`` the mean over examples
  of sacrebleu sentence BLEU (each answer scored alone, with its own brevity penalty and n-gram orders).
  On short answers they differ a lot (18.8 corpus vs 49.4 sentence mean on the same SQuAD answers in the
  cross-check with the reference implementations): always say which one. Settings: the standard ``13a``
  tokenizer, ``lowercase=True``, ``smooth_method="exp"`` (sacrebleu's default) and
  ``effective_order=True``: a corpus of 1-3 word answers has no 4-grams, and without effective order its
  BLEU would be 0 whatever the overlap; with it, BLEU uses the n-gram orders that exist. Several
  references per example are allowed (sacrebleu multi-reference, variable counts padded with None).
  The exact settings are returned as ``bleu_signature``. sacrebleu's float arithmetic gives a perfect
  match 100.00000000000004; scores are clamped to 100.0.
* ROUGE-1/2/L/Lsum: rouge-score F-measure (0..1; not its precision or recall), mean over examples; with
  several references the best one per example (``score_multi``). Tokens are lowercase ``\\w+`` runs
  (Unicode letters and digits), no stemming: rouge-score's default tokenizer drops every non-ASCII letter
  ("Zürich" -> "z rich"), which would make identical non-English answers score 0. rougeLsum splits on
  newlines, so text is first split into sentences without punkt (newlines, and whitespace after . ! ?)
  and joined with "\\n". ROUGE-2 of a one-word answer (or against a one-word reference) is 0, a one-word
  exact match included: there is no bigram. SQuAD answers are often one word, so even the gold answers
  copied as predictions score well below 1 (0.707 on average in the cross-check).
* METEOR: ``nltk.translate.meteor_score.meteor_score`` with its defaults (alpha 0.9, beta 3, gamma 0.5,
  Porter stemmer, WordNet synonyms), mean over examples (nltk has no corpus METEOR), 0..1, on the same
  lowercase ``\\w+`` tokens (``nltk.word_tokenize`` would need punkt). Note that nltk's fragmentation
  penalty makes an identical one-word answer score 0.5, not 1. Needs WordNet 3.0 installed with
  ``python -m analysis.wordnet_setup``; nothing is downloaded at run time.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

NOTE = ("auxiliary metrics: n-gram overlap on short extractive answers; EM/F1 are the primary SQuAD metrics. "
        "bleu 0..100 (sacrebleu corpus BLEU), bleu_sentence_mean 0..100 (mean sentence BLEU), rouge*/meteor 0..1 "
        "(mean over examples); see notes")
# What each figure is, returned as ``notes`` with the scores.
NOTES = {
    "bleu": "corpus BLEU: sacrebleu corpus_score, n-gram counts pooled over all answers, then one score (0..100); "
            "settings in bleu_signature",
    "bleu_sentence_mean": "mean over answers of sacrebleu sentence_score with the same settings (0..100); on short "
                          "answers much higher than corpus BLEU, so name the one you report",
    "rouge": "rouge1/rouge2/rougeL/rougeLsum: rouge-score F-measure (0..1), mean over answers, best reference of "
             "each; tokeniser: lowercase \\w+ runs (Unicode letters and digits, no stemming), not rouge-score's "
             "ASCII-only default",
    "rouge2": "ROUGE-2 is 0 for a one-word answer or reference (no bigram), a one-word exact match included: gold "
              "answers copied as predictions average well below 1 (0.707 in the cross-check)",
    "meteor": "nltk meteor_score (alpha 0.9, beta 3, gamma 0.5, WordNet synonyms) on the same tokens, mean over "
              "answers (0..1); a one-word exact match scores 0.5 (fragmentation penalty)",
}

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class WordNetMissingError(LookupError):
    """WordNet 3.0 is not installed where nltk looks for it."""


def tokenize(text: str) -> list[str]:
    """Lowercase ``\\w+`` runs: needs no tokenizer data and keeps non-ASCII letters."""
    return _WORD.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Sentences for rougeLsum without punkt: existing line breaks, then whitespace after . ! ?"""
    out = []
    for line in text.splitlines():
        out.extend(s for s in _SENTENCE_END.split(line.strip()) if s)
    return out


class _RougeTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def _as_reference_lists(predictions: Sequence[str], references: Sequence) -> list[list[str]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists, not single strings")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("text_metrics needs at least one example")
    refs = []
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i} is {type(pred).__name__}, expected str")
        group = [ref] if isinstance(ref, str) else list(ref)
        if not group or not all(isinstance(r, str) for r in group):
            raise TypeError(f"references[{i}] must be a string or a non-empty list of strings")
        refs.append(group)
    return refs


def _bleu():
    from sacrebleu.metrics import BLEU

    # force=True: answers ending in " ." are not a sign of pre-tokenised MT output here.
    return BLEU(lowercase=True, tokenize="13a", smooth_method="exp", effective_order=True, force=True)


def _clamp100(score: float) -> float:
    """sacrebleu's exp(mean log precision) gives a perfect match 100.00000000000004."""
    return min(float(score), 100.0)


def corpus_bleu(predictions: Sequence[str], references: list[list[str]]) -> tuple[float, str]:
    """sacrebleu corpus BLEU (0..100) and its signature, with the settings in the module docstring."""
    bleu = _bleu()
    width = max(len(group) for group in references)
    streams = [[group[k] if k < len(group) else None for group in references] for k in range(width)]
    score = bleu.corpus_score(list(predictions), streams)
    return _clamp100(score.score), str(bleu.get_signature())


def sentence_bleu_mean(predictions: Sequence[str], references: list[list[str]]) -> float:
    """Mean over examples of sacrebleu sentence BLEU (0..100, each clamped), same settings as ``corpus_bleu``."""
    bleu = _bleu()
    total = 0.0
    for pred, group in zip(predictions, references, strict=True):
        total += _clamp100(bleu.sentence_score(pred, list(group)).score)
    return total / len(predictions)


def rouge_scores(predictions: Sequence[str], references: list[list[str]]) -> dict[str, float]:
    """Mean rouge-score F-measures (0..1); best reference per example."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=False, tokenizer=_RougeTokenizer())
    sums = dict.fromkeys(types, 0.0)
    for pred, group in zip(predictions, references, strict=True):
        scores = scorer.score_multi(["\n".join(split_sentences(r)) for r in group], "\n".join(split_sentences(pred)))
        for t in types:
            sums[t] += scores[t].fmeasure
    return {t: sums[t] / len(predictions) for t in types}


def _wordnet():
    import nltk
    from nltk.corpus import wordnet

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wordnet.ensure_loaded()
    except LookupError as exc:
        raise WordNetMissingError(
            "METEOR needs WordNet 3.0, which nltk cannot find on its search path "
            f"({', '.join(map(str, nltk.data.path))}). Install it offline with "
            "`python -m analysis.wordnet_setup` (see its --help), or pass with_meteor=False."
        ) from exc
    return wordnet


def meteor(predictions: Sequence[str], references: list[list[str]]) -> float:
    """Mean nltk METEOR (0..1) over examples; several references -> nltk takes the best."""
    from nltk.translate.meteor_score import meteor_score

    wordnet = _wordnet()
    total = 0.0
    for pred, group in zip(predictions, references, strict=True):
        total += meteor_score([tokenize(r) for r in group], tokenize(pred), wordnet=wordnet)
    return total / len(predictions)


def text_metrics(predictions: list[str], references: list[list[str]] | list[str], *,
                 with_meteor: bool = True) -> dict:
    """Auxiliary BLEU / ROUGE / METEOR of ``predictions`` against ``references``.

    ``references[i]`` is one string or a list of acceptable strings for ``predictions[i]``.
    Returns ``bleu`` (corpus BLEU, 0..100), ``bleu_sentence_mean`` (mean sentence BLEU, 0..100),
    ``bleu_signature``, ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (F-measures), ``meteor`` (0..1; None
    when ``with_meteor=False``), ``num_examples``, ``note`` and ``notes`` (``NOTES``: what each figure is).
    Raises WordNetMissingError if METEOR is requested and WordNet is not installed.
    """
    refs = _as_reference_lists(predictions, references)
    bleu, signature = corpus_bleu(predictions, refs)
    result: dict = {"bleu": bleu, "bleu_sentence_mean": sentence_bleu_mean(predictions, refs),
                    "bleu_signature": signature}
    result.update(rouge_scores(predictions, refs))
    result["meteor"] = meteor(predictions, refs) if with_meteor else None
    result["num_examples"] = len(predictions)
    result["note"] = NOTE
    result["notes"] = dict(NOTES)
    return result
