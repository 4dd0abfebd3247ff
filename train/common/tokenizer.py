"""Loading a tokenizer (hub id or local folder) or training an uncased WordPiece vocabulary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LIMIT_ALPHABET = 1000  # at most this many single characters (the most frequent; the tokenizers default)
_PREFIX = "##"
_NORMALIZE_BATCH = 1000  # texts normalised per call when characters are counted


class TokenizerError(ValueError):
    pass


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        hint = ("it is not a local folder, and the Hugging Face Hub could not provide it "
                "(offline? set --tokenizer_name to a local folder or use --train_tokenizer N)")
        raise TokenizerError(f"tokenizer {name_or_path!r}: {hint}\n  cause: {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"tokenizer {name_or_path!r} is not a fast tokenizer; offset mappings and batched "
                             "preprocessing need one")
    missing = [t for t in ("cls_token", "sep_token", "mask_token", "pad_token") if getattr(tokenizer, t) is None]
    if missing:
        raise TokenizerError(f"tokenizer {name_or_path!r} lacks BERT special tokens: {', '.join(missing)}")
    return tokenizer


def _text_source(texts: Callable[[], Iterable[str]] | Iterable[str]) -> Callable[[], Iterable[str]]:
    """Training reads the texts more than once: a zero-argument callable gives a fresh iterable each time (streamed),
    a collection is reused, and a one-shot iterator (a generator) is read into a list."""
    if callable(texts):
        return texts
    if iter(texts) is texts:
        texts = list(texts)
    return lambda: texts


def _bert_wordpiece():
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(lowercase=True, clean_text=True, handle_chinese_chars=True)


def _pinned_alphabet(texts: Callable[[], Iterable[str]], limit_alphabet: int) -> tuple[list[str], list[str], bool]:
    """(kept characters, continuation tokens "##c" of the kept characters, whether the alphabet was cut), both
    sorted by code point, chosen by a rule that does not depend on hash order.

    A first, merge-free training run (vocab_size 0, no alphabet limit) lists every character of the words and
    every "##c" that occurs. When there are more than ``limit_alphabet`` characters, the most frequent are kept,
    counted in BERT-normalised text (each non-space character of it lies in exactly one word), ties to the
    smaller code point; the trainer's own cut sorts by count alone, so its ties fall in hash order."""
    probe = _bert_wordpiece()
    probe.train_from_iterator(texts(), vocab_size=0, min_frequency=2, special_tokens=[], limit_alphabet=1 << 62,
                              show_progress=False)
    alphabet, continuing = [], []
    for token in probe.get_vocab():
        if len(token) == 1:
            alphabet.append(token)
        elif token.startswith(_PREFIX) and len(token) == len(_PREFIX) + 1:
            continuing.append(token[len(_PREFIX):])
        else:  # a merge-free run holds characters only
            raise RuntimeError(f"unexpected token {token!r} in the alphabet pass of the WordPiece trainer")
    cut = len(alphabet) > limit_alphabet
    if cut:
        counts: Counter = Counter()
        normalize = probe.normalizer.normalize_str
        batch: list[str] = []
        for text in texts():
            batch.append(text)
            if len(batch) == _NORMALIZE_BATCH:
                counts.update(normalize("\n".join(batch)))
                batch = []
        if batch:
            counts.update(normalize("\n".join(batch)))
        alphabet = sorted(alphabet, key=lambda c: (-counts[c], c))[:limit_alphabet]
    kept = set(alphabet)
    return sorted(alphabet), [_PREFIX + c for c in sorted(continuing) if c in kept], cut


def train_wordpiece(texts: Callable[[], Iterable[str]] | Iterable[str], vocab_size: int, save_dir: str | Path, *,
                    limit_alphabet: int = LIMIT_ALPHABET) -> BertTokenizerFast:
    """Train an uncased WordPiece vocabulary (BERT's normaliser and pre-tokeniser) and save it.

    ``texts``: a zero-argument callable returning a fresh iterable of texts (they are read two or three times), or
    the texts themselves (see ``_text_source``).

    Reproducible: the vocabulary (tokens and ids; tokenizer.json, vocab.txt when exported) depends on the words of
    the texts (their counts) and ``vocab_size`` only, not on the order of the texts, hash seeds, thread count or
    process. The `tokenizers` trainer (BPE
    merges behind WordPieceTrainer) would not give that: it numbers the "##c" continuation tokens in the order it
    meets them while iterating a hash map of words (random per process), breaks ties between equally frequent
    merges by those ids, and cuts the alphabet at ``limit_alphabet`` by count with ties in hash order; so the ids,
    and some rare tokens, changed from run to run (huggingface/tokenizers#1794). Here the alphabet is chosen
    first (``_pinned_alphabet``) and the "##c" tokens are handed to the trainer as special tokens in code-point
    order, so they get fixed ids (5, 6, ... after the 5 BERT special tokens) before it iterates any hash map;
    single characters follow in code-point order (the trainer sorts them), then the merges, whose ties now go by
    fixed ids. Afterwards the "##c" tokens are ordinary vocabulary entries again (not special tokens)."""
    from tokenizers import Tokenizer

    texts = _text_source(texts)
    alphabet, continuing, cut = _pinned_alphabet(texts, limit_alphabet)
    trainer = _bert_wordpiece()
    # initial_alphabet (trainer count: the maximum) pins exactly the chosen characters when the alphabet is cut.
    trainer.train_from_iterator(texts(), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=SPECIAL_TOKENS + continuing, limit_alphabet=limit_alphabet,
                                initial_alphabet=alphabet if cut else [], show_progress=False)
    state = json.loads(trainer._tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    backend = Tokenizer.from_str(json.dumps(state))
    # tokenizer_object, not vocab_file: BertTokenizerFast(vocab_file=...) silently builds a
    # 5-token vocabulary in transformers 5.
    tokenizer = BertTokenizerFast(tokenizer_object=backend, do_lower_case=True, unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tokenizer.save_pretrained(str(save_dir))
    return tokenizer
