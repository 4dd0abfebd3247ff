"""Stanford Sentiment Treebank (SST-5) data for fine-tuning: loaders, label scheme, leakage guard, class weights.

Four sources, one output (`SSTSplits`):

* `load_sst_ptb_trees(folder)`  - the official PTB trees (`train.txt`, `dev.txt`, `test.txt`; every node labelled 0-4).
* `load_sst_original(folder)`   - the original release (`dictionary.txt`, `sentiment_labels.txt`,
  `datasetSentences.txt`, `datasetSplit.txt`) of stanfordSentimentTreebank.zip.
* `load_sst_files(train, dev, test, text_column, label_column)` - CSV / TSV / JSON / JSONL files (sentences only).
* `load_sst_hub(name, config)`  - `datasets.load_dataset` (e.g. SetFit/sst5, stanfordnlp/sst), sentences only.

`load_sst(source, ...)` picks one of them from what `source` is.

Labels are the 5 classes of the SST README: a sentiment value v in [0, 1] maps to
[0, .2] -> 0 very negative, (.2, .4] -> 1 negative, (.4, .6] -> 2 neutral, (.6, .8] -> 3 positive, (.8, 1] -> 4.

Text normalisation (applied to every token of every source that has PTB-style tokens, so that the trees, the
original release and dictionary.txt give the same strings; tokens stay space-separated as in the treebank):

* mojibake: datasetSentences.txt holds UTF-8 text that was decoded as Latin-1 and encoded again
  (``Ã©`` for ``é``, ``Â\xa0`` for a no-break space). A token containing ``Ã`` or ``Â`` is repaired by
  ``token.encode("latin-1").decode("utf-8")`` when that round trip succeeds; otherwise it is kept as is.
* PTB bracket codes: ``-LRB-`` ``-RRB-`` ``-LSB-`` ``-RSB-`` ``-LCB-`` ``-RCB-`` -> ``( ) [ ] { }``.
* PTB backslash escapes: ``\\/`` -> ``/`` and ``\\*`` -> ``*``.
* PTB quotes: the tokens `````` and ``''`` -> ``"`` (the straight quote BERT saw in pre-training; left as they
  are, a WordPiece vocabulary splits them into two ``` ` ``` / ``'`` pieces). Single ``` ` ``` and ``'`` stay.
* a no-break space inside a token (``8\xa01/2``) becomes a plain space in the output text; tokens are split on
  ASCII space only, so the token boundaries used for phrase spans are unaffected.

Leakage rule (what `SSTSplits.training_examples` guarantees and `check_no_leakage` verifies), with texts compared
by `text_key` (case-folded, whitespace collapsed, because the models are uncased):

1. No training example (sentence or phrase) has the text of a dev or test SENTENCE. The official split has four
   such duplicates (dev "Hey Arnold !" x2, test "No. ." and "What 's next ?" are also training sentences), and some
   short dev/test sentences also occur as phrases inside training sentences; `training_examples` drops them all.
2. Every training phrase is a contiguous token span of some training sentence, i.e. phrases are only ever taken
   from training sentences, never from dev/test ones.

Short phrases that occur inside training sentences AND inside dev/test sentences ("the", "a film") are KEPT: that
is the standard fine-grained SST setup (their label is the treebank's label of that phrase string, which the
training sentence carries itself). Phrases of dev/test sentences are available in `SSTSplits.dev.phrases` /
`.test.phrases` for phrase-level evaluation only.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

LABEL_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
NUM_CLASSES = len(LABEL_NAMES)
SPLIT_NAMES = ("train", "dev", "test")

ORIGINAL_FILES = ("dictionary.txt", "sentiment_labels.txt", "datasetSentences.txt", "datasetSplit.txt")
ORIGINAL_ZIP_URL = "https://nlp.stanford.edu/~socherr/stanfordSentimentTreebank.zip"

# Column names of the 5-class SST datasets on the Hugging Face Hub (text column, label column).
HUB_COLUMNS = {
    "SetFit/sst5": ("text", "label"),
    "stanfordnlp/sst": ("sentence", "label"),
    "sst": ("sentence", "label"),
}

_PTB_TOKENS = {
    "-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
    "``": '"', "''": '"',
}
_SPLIT_CODES = {"1": "train", "2": "test", "3": "dev"}  # datasetSplit.txt's splitset_label


class SSTFormatError(ValueError):
    """A data file or dataset does not have the expected layout; the message names the file and line/row."""


class SSTMissingFileError(SSTFormatError, FileNotFoundError):
    """A required data file is absent (catchable as SSTFormatError or FileNotFoundError)."""


class LeakageError(ValueError):
    """Training data contains text that must only be seen at evaluation."""


class Example(NamedTuple):
    text: str
    label: int  # 0..4, see LABEL_NAMES


@dataclass
class SSTSplit:
    sentences: list[Example] = field(default_factory=list)
    # Every labelled phrase of this split's sentences (the sentences themselves included), deduplicated by text.
    phrases: list[Example] = field(default_factory=list)


@dataclass
class SSTSplits:
    train: SSTSplit
    dev: SSTSplit
    test: SSTSplit
    source: str = ""
    # Loader-specific counts (phrases with conflicting labels, normalised tokens, ...); for logs and run reports.
    stats: dict = field(default_factory=dict)

    def split(self, name: str) -> SSTSplit:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, name)

    @property
    def has_phrases(self) -> bool:
        return bool(self.train.phrases)

    def _eval_sentence_keys(self) -> set[str]:
        return {text_key(ex.text) for ex in self.dev.sentences + self.test.sentences}

    def _raw_training(self, train_on: str) -> list[Example]:
        if train_on == "sentences":
            return list(self.train.sentences)
        if train_on == "phrases":
            if not self.train.phrases:
                raise ValueError(
                    f"train_on='phrases' needs phrase labels, but {self.source or 'this source'} has none "
                    "(only the PTB trees and the original release with dictionary.txt have them); "
                    "use train_on='sentences'")
            return list(self.train.phrases)
        raise ValueError(f"train_on must be 'sentences' or 'phrases', got {train_on!r}")

    def training_examples(self, train_on: str = "sentences") -> list[Example]:
        """Training sentences, or every labelled phrase of the training sentences (the standard fine-grained
        setup; the full sentences are among them), minus anything whose text is a dev/test sentence (rule 1)."""
        banned = self._eval_sentence_keys()
        return [ex for ex in self._raw_training(train_on) if text_key(ex.text) not in banned]

    def dropped_for_leakage(self, train_on: str = "sentences") -> list[Example]:
        """The examples `training_examples(train_on)` leaves out because they are dev/test sentences."""
        banned = self._eval_sentence_keys()
        return [ex for ex in self._raw_training(train_on) if text_key(ex.text) in banned]

    def counts(self) -> dict:
        """{split: {"sentences": n, "phrases": n, "sentence_classes": [n0..n4]}} for logs and tests."""
        return {
            name: {
                "sentences": len(self.split(name).sentences),
                "phrases": len(self.split(name).phrases),
                "sentence_classes": class_counts([ex.label for ex in self.split(name).sentences]),
            }
            for name in SPLIT_NAMES
        }


# ----------------------------------------------------------------------------------------------------------------
# labels


def value_to_class(value: float) -> int:
    """Sentiment value in [0, 1] -> class 0..4 with the README cut-offs [0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]."""
    if isinstance(value, bool):
        raise ValueError(f"sentiment value must be a number in [0, 1], got {value!r}")
    v = float(value)
    if math.isnan(v) or v < 0.0 or v > 1.0:
        raise ValueError(f"sentiment value must be in [0, 1], got {value!r}")
    if v <= 0.2:
        return 0
    if v <= 0.4:
        return 1
    if v <= 0.6:
        return 2
    if v <= 0.8:
        return 3
    return 4


def _name_to_class(name: str) -> int | None:
    canon = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    return LABEL_NAMES.index(canon) if canon in LABEL_NAMES else None


def _parse_label_token(raw):
    """One raw label -> ("int", n) | ("float", x) | ("name", class) | ("bad", None)."""
    if isinstance(raw, bool) or raw is None:
        return "bad", None
    if isinstance(raw, int):
        return "int", raw
    if isinstance(raw, float):
        return "float", raw
    if hasattr(raw, "item") and not isinstance(raw, str):  # numpy scalars
        return _parse_label_token(raw.item())
    if isinstance(raw, str):
        s = raw.strip()
        try:
            return "int", int(s)
        except ValueError:
            pass
        try:
            x = float(s)
            if not math.isnan(x):
                return "float", x
        except ValueError:
            pass
        cls = _name_to_class(s)
        if cls is not None:
            return "name", cls
    return "bad", None


def labels_to_classes(raw_labels: Sequence, where: Sequence[str]) -> list[int]:
    """Map one column of raw labels to classes 0..4; `where[i]` names row i in error messages.

    The kind is decided for the whole column, so that "1" means the same thing on every row:
    * all integers (ints or integer strings)          -> class ids, each must be in 0..4;
    * any float (float or a string like "0.73")       -> sentiment values in [0, 1] mapped with `value_to_class`
                                                         (integers 0 and 1 in such a column are values too);
    * label names (LABEL_NAMES, any case, '_'/'-' for spaces) -> their index; names and numbers may not mix.
    """
    parsed = [_parse_label_token(r) for r in raw_labels]
    for (kind, _), raw, w in zip(parsed, raw_labels, where, strict=True):
        if kind == "bad":
            raise SSTFormatError(
                f"{w}: bad label {raw!r}: expected a class id 0..4, a sentiment value in [0, 1] or one of "
                f"{list(LABEL_NAMES)}")
    kinds = {k for k, _ in parsed}
    if "name" in kinds and len(kinds) > 1:
        i = next(i for i, (k, _) in enumerate(parsed) if k != parsed[0][0])
        raise SSTFormatError(f"{where[i]}: label {raw_labels[i]!r} mixes label names with numbers in one column")
    out = []
    if "float" in kinds:
        for (_kind, x), raw, w in zip(parsed, raw_labels, where, strict=True):
            try:
                out.append(value_to_class(x))
            except ValueError:
                raise SSTFormatError(
                    f"{w}: label {raw!r} is not a sentiment value in [0, 1] (this column holds floats, so every "
                    "label is read as a value; write class ids as integers 0..4)") from None
        return out
    for (kind, x), raw, w in zip(parsed, raw_labels, where, strict=True):
        if kind == "int" and not 0 <= x < NUM_CLASSES:
            raise SSTFormatError(f"{w}: class id {raw!r} is outside 0..{NUM_CLASSES - 1}")
        out.append(x)
    return out


def class_counts(labels: Iterable[int], num_classes: int = NUM_CLASSES) -> list[int]:
    counts = [0] * num_classes
    for y in labels:
        if not 0 <= int(y) < num_classes:
            raise ValueError(f"label {y} is outside 0..{num_classes - 1}")
        counts[int(y)] += 1
    return counts


def class_weights(labels: Iterable[int], num_classes: int = NUM_CLASSES) -> list[float]:
    """Inverse-frequency weights for a weighted cross-entropy: w_c proportional to 1 / count_c, scaled so that
    the mean over the classes PRESENT in `labels` is 1 (so the loss scale stays comparable to unweighted).
    A class absent from `labels` gets weight 0.0 (it never occurs as a target, and 1/0 would be meaningless)."""
    counts = class_counts(labels, num_classes)
    inv = [1.0 / c if c else 0.0 for c in counts]
    present = [x for x in inv if x > 0]
    if not present:
        raise ValueError("class_weights needs at least one label")
    mean = sum(present) / len(present)
    return [x / mean for x in inv]


# ----------------------------------------------------------------------------------------------------------------
# text normalisation and leakage


def fix_mojibake(token: str) -> str:
    """Undo UTF-8 read as Latin-1 ('Ã©' -> 'é') in one token; tokens that do not round-trip are returned as is."""
    if "Ã" not in token and "Â" not in token:
        return token
    try:
        return token.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return token


@functools.lru_cache(maxsize=1 << 17)
def normalize_token(token: str) -> str:
    """One PTB/SST token -> display form (see the module docstring)."""
    token = fix_mojibake(token)
    if token in _PTB_TOKENS:
        return _PTB_TOKENS[token]
    return token.replace("\\/", "/").replace("\\*", "*")


def _tokens(text: str) -> list[str]:
    # ASCII space only: a no-break space inside an SST token ("8\xa01/2") is part of the token.
    return [t for t in text.split(" ") if t]


def _display(tokens: Sequence[str]) -> str:
    return " ".join(tokens).replace("\xa0", " ")


def text_key(text: str) -> str:
    """Comparison key for leakage checks: case-folded, whitespace collapsed (the models are uncased)."""
    return " ".join(text.casefold().split())


def check_no_leakage(splits: SSTSplits, train_examples: Sequence[Example]) -> dict:
    """Raise LeakageError unless `train_examples` obey the module's leakage rules 1 and 2 against `splits`.

    Call it on exactly what the training loop will see (`splits.training_examples(train_on)`).
    Returns counts for the run log: {"train_examples", "train_sentences", "eval_sentences",
    "phrases_shared_with_eval"} (the last = training phrases that also occur in dev/test phrase lists; allowed)."""
    eval_keys = {}
    for name in ("dev", "test"):
        for ex in splits.split(name).sentences:
            eval_keys.setdefault(text_key(ex.text), name)
    bad = [(ex.text, eval_keys[text_key(ex.text)]) for ex in train_examples if text_key(ex.text) in eval_keys]
    if bad:
        shown = "; ".join(f"{t!r} ({s} sentence)" for t, s in bad[:5])
        raise LeakageError(
            f"{len(bad)} training example(s) are dev/test sentences: {shown}. "
            "Use SSTSplits.training_examples(), which removes them.")

    train_sentence_keys = [text_key(ex.text) for ex in splits.train.sentences]
    exact = set(train_sentence_keys)
    postings: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(train_sentence_keys):
        for tok in set(key.split(" ")):
            postings[tok].append(i)
    padded = [f" {k} " for k in train_sentence_keys]

    def is_span_of_training_sentence(key: str) -> bool:
        if key in exact:
            return True
        toks = key.split(" ")
        if not key or any(t not in postings for t in toks):
            return False
        rarest = min(toks, key=lambda t: len(postings[t]))
        needle = f" {key} "
        return any(needle in padded[i] for i in postings[rarest])

    orphans = [ex.text for ex in train_examples if not is_span_of_training_sentence(text_key(ex.text))]
    if orphans:
        raise LeakageError(
            f"{len(orphans)} training example(s) are not token spans of any training sentence (phrases must come "
            f"from training sentences only), e.g. {orphans[:5]!r}")

    eval_phrase_keys = {text_key(ex.text) for name in ("dev", "test") for ex in splits.split(name).phrases}
    return {
        "train_examples": len(train_examples),
        "train_sentences": len(splits.train.sentences),
        "eval_sentences": len(eval_keys),
        "phrases_shared_with_eval": sum(text_key(ex.text) in eval_phrase_keys for ex in train_examples),
    }


def _dedup_phrases(pairs: Iterable[tuple[str, int]], stats: Counter, split: str) -> list[Example]:
    """Deduplicate by exact text, keeping the first label; count strings seen with a different label."""
    first: dict[str, int] = {}
    for text, label in pairs:
        if text not in first:
            first[text] = label
        elif first[text] != label:
            stats[f"{split}_phrase_label_conflicts"] += 1
    return [Example(t, y) for t, y in first.items()]


# ----------------------------------------------------------------------------------------------------------------
# loader 1: PTB trees


def parse_ptb_tree(line: str) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Parse one SST tree, e.g. "(3 (2 It) (4 (2 's) (3 fine)))".

    Returns (leaves, nodes): the raw leaf tokens in order, and one (label, start, end) per node (leaf span
    [start, end)), root first, in pre-order. Raises ValueError (without file/line; the loader adds them) for
    unbalanced parentheses, labels outside 0..4, empty nodes and text outside the tree."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t\r\n":
            i += 1
        elif c in "()":
            tokens.append(c)
            i += 1
        else:
            j = i
            while j < n and line[j] not in " \t\r\n()":
                j += 1
            tokens.append(line[i:j])
            i = j
    if not tokens:
        raise ValueError("empty line: expected a tree")
    if tokens[0] != "(":
        raise ValueError(f"a tree must start with '(', found {tokens[0]!r}")

    leaves: list[str] = []
    nodes: list[list[int]] = []  # [label, start, end]
    stack: list[list] = []  # [node_index, saw_word, n_children]
    pos = 0
    while pos < len(tokens):
        tok = tokens[pos]
        if tok == "(":
            if stack and stack[-1][1]:
                raise ValueError(f"node at token {pos} has both a word and sub-trees")
            if not stack and nodes:
                raise ValueError(f"text after the end of the tree (token {pos}: {tok!r})")
            if pos + 1 >= len(tokens) or tokens[pos + 1] in "()":
                raise ValueError(f"'(' at token {pos} is not followed by a label")
            label_str = tokens[pos + 1]
            if label_str not in ("0", "1", "2", "3", "4"):
                raise ValueError(f"bad label {label_str!r} at token {pos + 1}: expected 0..4")
            if stack:
                stack[-1][2] += 1
            nodes.append([int(label_str), len(leaves), -1])
            stack.append([len(nodes) - 1, False, 0])
            pos += 2
        elif tok == ")":
            if not stack:
                raise ValueError(f"unbalanced parentheses: unmatched ')' at token {pos}")
            idx, saw_word, n_children = stack.pop()
            if not saw_word and n_children == 0:
                raise ValueError(f"node at token {pos} has neither a word nor sub-trees")
            nodes[idx][2] = len(leaves)
            pos += 1
        else:
            if not stack:
                raise ValueError(f"text after the end of the tree (token {pos}: {tok!r})")
            top = stack[-1]
            if top[1] or top[2]:
                raise ValueError(f"unexpected word {tok!r} at token {pos}: a leaf holds exactly one word")
            top[1] = True
            leaves.append(tok)
            pos += 1
    if stack:
        raise ValueError(f"unbalanced parentheses: {len(stack)} '(' not closed at the end of the line")
    return leaves, [tuple(x) for x in nodes]


def load_sst_ptb_trees(folder: str) -> SSTSplits:
    """Load the official PTB trees (folder holding train.txt, dev.txt, test.txt, or a parent with trees/)."""
    if os.path.isfile(folder):
        raise SSTFormatError(f"SST PTB trees: {folder} is a file; give the folder holding train.txt, dev.txt, "
                             "test.txt (trainDevTestTrees_PTB/trees); a file of sentences goes to --train_file")
    if os.path.isdir(os.path.join(folder, "trees")) and not os.path.exists(os.path.join(folder, "train.txt")):
        folder = os.path.join(folder, "trees")
    missing = [f"{s}.txt" for s in SPLIT_NAMES if not os.path.isfile(os.path.join(folder, f"{s}.txt"))]
    if missing:
        raise SSTMissingFileError(f"SST PTB trees: {', '.join(missing)} missing in {folder} "
                                "(expected train.txt, dev.txt, test.txt from trainDevTestTrees_PTB.zip)")
    stats: Counter = Counter()
    out = {}
    for split in SPLIT_NAMES:
        path = os.path.join(folder, f"{split}.txt")
        sentences: list[Example] = []
        phrase_pairs: list[tuple[str, int]] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    raw_leaves, nodes = parse_ptb_tree(line)
                except ValueError as e:
                    raise SSTFormatError(f"{path}, line {lineno}: {e}") from None
                leaves = [normalize_token(t) for t in raw_leaves]
                stats["normalized_tokens"] += sum(a != b for a, b in zip(raw_leaves, leaves, strict=True))
                for label, start, end in nodes:
                    phrase_pairs.append((_display(leaves[start:end]), label))
                sentences.append(Example(_display(leaves), nodes[0][0]))
        if not sentences:
            raise SSTFormatError(f"{path}: no trees")
        out[split] = SSTSplit(sentences, _dedup_phrases(phrase_pairs, stats, split))
    return SSTSplits(out["train"], out["dev"], out["test"], source=f"ptb_trees:{folder}", stats=dict(stats))


# ----------------------------------------------------------------------------------------------------------------
# loader 2: original release


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def _check_header(path: str, lines: list[str], expected: str, looks_like_data) -> None:
    first = lines[0].strip() if lines else ""
    if not first:
        raise SSTFormatError(f"{path}: empty file (expected a header line {expected!r})")
    if looks_like_data(first):
        raise SSTFormatError(f"{path}, line 1: missing header line {expected!r} (found data: {first[:60]!r})")


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def load_sst_original(folder: str) -> SSTSplits:
    """Load the original release of stanfordSentimentTreebank.zip.

    Sentence labels come from dictionary.txt (phrase -> id) and sentiment_labels.txt (id -> value). A sentence's
    phrases are the dictionary phrases that are contiguous token spans of it (all O(n^2) spans are looked up in a
    dict keyed by normalised phrase text). Because dictionary.txt pools the phrases of all sentences, this can
    find a few more spans than the sentence's own parse tree has (a span that is a tree node of ANOTHER sentence);
    the PTB trees are the exact per-sentence phrase sets."""
    if os.path.isfile(folder):
        raise SSTFormatError(f"SST original release: {folder} is a file; give the unzipped "
                             f"stanfordSentimentTreebank folder ({', '.join(ORIGINAL_FILES)})")
    missing = [name for name in ORIGINAL_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        hint = ""
        if "dictionary.txt" in missing:
            hint = (f" dictionary.txt (phrase|phrase_id, needed to join phrase texts to sentiment_labels.txt) comes "
                    f"with the official stanfordSentimentTreebank.zip ({ORIGINAL_ZIP_URL}); without it use the PTB "
                    "trees (trainDevTestTrees_PTB/trees) with load_sst_ptb_trees.")
            trees = os.path.join(folder, "trainDevTestTrees_PTB", "trees")
            if os.path.isdir(trees):
                hint += f" The trees are here: {trees}"
        raise SSTMissingFileError(
            f"SST original release in {folder}: missing {', '.join(missing)} "
            f"(needs all of {', '.join(ORIGINAL_FILES)}).{hint}")
    p_dict, p_labels, p_sent, p_split = (os.path.join(folder, n) for n in ORIGINAL_FILES)
    stats: Counter = Counter()

    # dictionary.txt: "phrase|id", no header. rpartition: the id never holds '|', a phrase might.
    phrase_ids: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(p_dict), 1):
        if not line.strip():
            continue
        phrase, bar, pid = line.rstrip("\r").rpartition("|")
        if not bar:
            raise SSTFormatError(f"{p_dict}, line {lineno}: expected 'phrase|id', no '|' in {line[:60]!r}")
        if not _is_int(pid.strip()):
            raise SSTFormatError(f"{p_dict}, line {lineno}: phrase id {pid!r} is not an integer")
        key = _display([normalize_token(t) for t in _tokens(phrase)])
        if key in phrase_ids:
            stats["dictionary_duplicate_phrases"] += 1
            continue
        phrase_ids[key] = int(pid)
    if not phrase_ids:
        raise SSTFormatError(f"{p_dict}: empty file")

    # sentiment_labels.txt: header "phrase ids|sentiment values", then "id|value".
    lines = _read_lines(p_labels)
    _check_header(p_labels, lines, "phrase ids|sentiment values", lambda s: _is_int(s.partition("|")[0].strip()))
    classes: dict[int, int] = {}
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        pid, bar, value = line.rstrip("\r").partition("|")
        if not bar:
            raise SSTFormatError(f"{p_labels}, line {lineno}: expected 'id|value', no '|' in {line[:60]!r}")
        if not _is_int(pid.strip()):
            raise SSTFormatError(f"{p_labels}, line {lineno}: phrase id {pid!r} is not an integer")
        try:
            classes[int(pid)] = value_to_class(float(value))
        except ValueError:
            raise SSTFormatError(
                f"{p_labels}, line {lineno}: sentiment value {value!r} is not a number in [0, 1]") from None

    # datasetSentences.txt: header "sentence_index\tsentence".
    lines = _read_lines(p_sent)
    _check_header(p_sent, lines, "sentence_index\tsentence", lambda s: _is_int(s.partition("\t")[0].strip()))
    sentences: dict[int, tuple[int, list[str]]] = {}  # index -> (line number, normalised tokens)
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        idx, tab, text = line.rstrip("\r").partition("\t")
        if not tab or not _is_int(idx.strip()):
            raise SSTFormatError(f"{p_sent}, line {lineno}: expected 'sentence_index<TAB>sentence', got {line[:60]!r}")
        if int(idx) in sentences:
            raise SSTFormatError(f"{p_sent}, line {lineno}: duplicate sentence_index {idx.strip()}")
        raw = _tokens(text)
        toks = [normalize_token(t) for t in raw]
        stats["normalized_tokens"] += sum(a != b for a, b in zip(raw, toks, strict=True))
        sentences[int(idx)] = (lineno, toks)

    # datasetSplit.txt: header "sentence_index,splitset_label"; 1 = train, 2 = test, 3 = dev.
    lines = _read_lines(p_split)
    _check_header(p_split, lines, "sentence_index,splitset_label", lambda s: _is_int(s.partition(",")[0].strip()))
    split_of: dict[int, str] = {}
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        idx, comma, code = line.strip().partition(",")
        if not comma or not _is_int(idx) or code.strip() not in _SPLIT_CODES:
            raise SSTFormatError(
                f"{p_split}, line {lineno}: expected 'sentence_index,splitset_label' with label 1 (train), "
                f"2 (test) or 3 (dev), got {line.strip()[:60]!r}")
        if int(idx) not in sentences:
            raise SSTFormatError(f"{p_split}, line {lineno}: sentence_index {idx} is not in {p_sent}")
        split_of[int(idx)] = _SPLIT_CODES[code.strip()]
    unsplit = sorted(set(sentences) - set(split_of))
    if unsplit:
        raise SSTFormatError(f"{p_split}: {len(unsplit)} sentence(s) of {p_sent} have no split, "
                             f"e.g. sentence_index {unsplit[:5]}")

    def label_of(text: str, where: str) -> int:
        pid = phrase_ids[text]
        if pid not in classes:
            raise SSTFormatError(f"{p_labels}: phrase id {pid} (for {text[:60]!r}, {where}) has no sentiment value")
        return classes[pid]

    per_split = {s: ([], []) for s in SPLIT_NAMES}
    for idx in sorted(sentences):
        lineno, toks = sentences[idx]
        text = _display(toks)
        if text not in phrase_ids:
            raise SSTFormatError(
                f"{p_sent}, line {lineno}: sentence {text[:80]!r} (after normalisation) is not in {p_dict}")
        sents, pairs = per_split[split_of[idx]]
        where = f"{p_sent}, line {lineno}"
        sents.append(Example(text, label_of(text, where)))
        shown = [t.replace("\xa0", " ") for t in toks]  # so that a joined span equals _display(span)
        for i in range(len(shown)):
            span = shown[i]
            for j in range(i + 1, len(shown) + 1):
                if j > i + 1:
                    span = f"{span} {shown[j - 1]}"
                if span in phrase_ids:
                    pairs.append((span, label_of(span, where)))
    out = {s: SSTSplit(sents, _dedup_phrases(pairs, stats, s)) for s, (sents, pairs) in per_split.items()}
    return SSTSplits(out["train"], out["dev"], out["test"], source=f"original:{folder}", stats=dict(stats))


# ----------------------------------------------------------------------------------------------------------------
# loader 3: CSV / TSV / JSON / JSONL files


def _read_records(path: str) -> list[tuple[str, dict]]:
    """(where, record) pairs; `where` = "<path>, line N" (CSV/TSV/JSONL) or "<path>, record N" (JSON list)."""
    if os.path.isdir(path):
        raise SSTFormatError(f"{path}: is a directory; pass a .csv, .tsv, .json or .jsonl file of sentences (a folder "
                             "of SST trees goes to --sst_trees_dir, the original release to --sst_dir)")
    if not os.path.isfile(path):
        raise SSTMissingFileError(f"data file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM would rename the first column
            content = f.read()
    except PermissionError as err:
        raise SSTFormatError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
    if not content.strip():
        raise SSTFormatError(f"{path}: empty file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter="\t" if ext == ".tsv" else ",")
        rows = []
        for row in reader:
            rows.append((f"{path}, line {reader.line_num}", row))
        if not reader.fieldnames:
            raise SSTFormatError(f"{path}: no header row")
        if not rows:
            raise SSTFormatError(f"{path}: header only, no data rows")
        return rows
    if ext not in (".json", ".jsonl"):
        raise SSTFormatError(f"{path}: unsupported extension {ext!r} (use .csv, .tsv, .json or .jsonl)")
    if ext == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise SSTFormatError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
            data = None  # several top-level values: JSON lines in a .json file, as `datasets` accepts
        if data is not None:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise SSTFormatError(f"{path}: expected a list of records (or {{\"data\": [...]}}) or JSON lines")
            if not data:
                raise SSTFormatError(f"{path}: no records")
            for i, rec in enumerate(data):
                if not isinstance(rec, dict):
                    raise SSTFormatError(f"{path}, record {i}: expected an object, got {type(rec).__name__}")
            return [(f"{path}, record {i}", rec) for i, rec in enumerate(data)]
    rows = []
    for lineno, line in enumerate(content.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SSTFormatError(f"{path}, line {lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise SSTFormatError(f"{path}, line {lineno}: expected a JSON object, got {type(rec).__name__}")
        rows.append((f"{path}, line {lineno}", rec))
    return rows


def load_labeled_file(path: str, text_column: str = "text", label_column: str = "label") -> list[Example]:
    """Read (text, label) sentences from .csv/.tsv (header row), .json (a list of objects, {"data": [...]}, or
    JSON lines) or .jsonl. Labels: see `labels_to_classes` (class ids 0..4, values in [0, 1], or names)."""
    rows = _read_records(path)
    found = list(rows[0][1].keys())
    for col in (text_column, label_column):
        if col not in rows[0][1]:
            raise SSTFormatError(f"{path}: no column {col!r}; columns found: {found}")
    texts, raw_labels, where = [], [], []
    for w, rec in rows:
        if text_column not in rec or label_column not in rec:
            raise SSTFormatError(f"{w}: missing {text_column!r} or {label_column!r}; keys found: {list(rec)}")
        text = rec[text_column]
        if not isinstance(text, str) or not text.strip():
            raise SSTFormatError(f"{w}: text column {text_column!r} is empty or not a string: {text!r}")
        texts.append(text.strip())
        raw_labels.append(rec[label_column])
        where.append(w)
    return [Example(t, y) for t, y in zip(texts, labels_to_classes(raw_labels, where), strict=True)]


def load_sst_files(train_file: str, dev_file: str, test_file: str | None = None,
                   text_column: str = "text", label_column: str = "label") -> SSTSplits:
    """Sentence-level splits from local files (no phrases, so only train_on='sentences')."""
    parts = {
        "train": load_labeled_file(train_file, text_column, label_column),
        "dev": load_labeled_file(dev_file, text_column, label_column),
        "test": load_labeled_file(test_file, text_column, label_column) if test_file else [],
    }
    return SSTSplits(*(SSTSplit(parts[s]) for s in SPLIT_NAMES), source=f"files:{train_file}")


# ----------------------------------------------------------------------------------------------------------------
# loader 4: Hugging Face Hub


def examples_from_dataset(dataset, text_column: str, label_column: str, name: str = "dataset") -> list[Example]:
    """A `datasets.Dataset` -> Examples. Float label columns (stanfordnlp/sst) are sentiment values, integer ones
    (SetFit/sst5, ClassLabel) class ids, string ones label names (see `labels_to_classes`)."""
    cols = list(dataset.column_names)
    for col in (text_column, label_column):
        if col not in cols:
            raise SSTFormatError(f"{name}: no column {col!r}; columns found: {cols}")
    texts = list(dataset[text_column])
    raw = list(dataset[label_column])
    where = [f"{name}, row {i}" for i in range(len(raw))]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise SSTFormatError(f"{where[i]}: text column {text_column!r} is empty or not a string: {t!r}")
    return [Example(t.strip(), y) for t, y in zip(texts, labels_to_classes(raw, where), strict=True)]


def splits_from_dataset_dict(dataset_dict, text_column: str, label_column: str, name: str = "dataset") -> SSTSplits:
    """Map a DatasetDict with train + validation|dev (+ test) splits to SSTSplits (sentences only)."""
    available = list(dataset_dict.keys())

    def pick(*names, required=True):
        for n in names:
            if n in dataset_dict:
                return examples_from_dataset(dataset_dict[n], text_column, label_column, f"{name}[{n}]")
        if required:
            raise SSTFormatError(f"{name}: needs a split named {' or '.join(names)}; splits found: {available}")
        return []

    return SSTSplits(SSTSplit(pick("train")), SSTSplit(pick("validation", "dev")),
                     SSTSplit(pick("test", required=False)), source=f"hub:{name}")


def load_sst_hub(name: str = "SetFit/sst5", config: str | None = None, text_column: str | None = None,
                 label_column: str | None = None) -> SSTSplits:
    """`datasets.load_dataset(name, config)` -> SSTSplits; columns default to HUB_COLUMNS[name] or text/label."""
    import datasets

    default_text, default_label = HUB_COLUMNS.get(name, ("text", "label"))
    dsd = datasets.load_dataset(name, config)
    return splits_from_dataset_dict(dsd, text_column or default_text, label_column or default_label,
                                    name if config is None else f"{name}/{config}")


# ----------------------------------------------------------------------------------------------------------------


def load_sst(source: str, *, text_column: str | None = None, label_column: str | None = None,
             hub_config: str | None = None, dev_file: str | None = None, test_file: str | None = None) -> SSTSplits:
    """Pick a loader from `source`: a folder with train.txt/dev.txt/test.txt (or trees/) -> PTB trees; a folder
    with datasetSentences.txt -> original release; a file -> `load_sst_files(source, dev_file, test_file)`;
    anything else -> a Hub dataset name."""
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "train.txt")) or os.path.isdir(os.path.join(source, "trees")):
            return load_sst_ptb_trees(source)
        if any(os.path.isfile(os.path.join(source, n)) for n in ORIGINAL_FILES):
            return load_sst_original(source)
        raise SSTMissingFileError(f"{source}: neither SST PTB trees (train.txt, dev.txt, test.txt) nor the original "
                                f"release ({', '.join(ORIGINAL_FILES)})")
    if os.path.isfile(source):
        if not dev_file:
            raise ValueError("a training file needs dev_file as well")
        return load_sst_files(source, dev_file, test_file, text_column or "text", label_column or "label")
    return load_sst_hub(source, hub_config, text_column, label_column)
