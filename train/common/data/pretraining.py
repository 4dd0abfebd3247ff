"""Raw text -> documents -> sentences -> pretraining instances, with `datasets` caching.

Documents are contiguous line ranges of a line dataset (one row per line, as `load_dataset("text")`
and the hub's wikitext give). A cheap streaming pass finds the ranges; a cached `datasets.map` over
groups of consecutive documents (`--preprocessing_num_workers` processes) then splits sentences, tokenises
them (one call of the Rust tokenizer per group) and builds instances. Everything stays in
memory-mapped Arrow files, so a corpus larger than RAM works, and `--validation_split_percentage`
can hold out whole documents by splitting the small range table.

NSP instances follow the original BERT data creation: segment A is 1..n-1 consecutive sentences
of a chunk filling a target length (shorter with probability short_seq_prob); B is the true
continuation half of the time, otherwise sentences from a different document (drawn from the
other documents of the same group); the longer segment is truncated from a random end.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.fingerprint import Hasher

# Bump when instance creation changes so stale caches are not reused.
PREPROCESSING_VERSION = 5
# Documents per group, the unit of instance creation: bounds the memory of one map call (its text, ids and
# instances) whatever the corpus size, leaves enough other documents to draw random B segments from, and
# makes enough groups for the map's worker processes.
DOCS_PER_GROUP = 16
DOCS_PER_MAP_BATCH = 64  # for streaming passes over documents (tokenizer training)
# Bytes of text the line loader reads at a time: its peak memory, whatever the corpus size (datasets: 10 MB).
TEXT_CHUNK_BYTES = 1 << 20

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?\s?[A-Z0-9])")
_WIKITEXT_MARKERS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


class DataError(ValueError):
    """Unusable input data; the message names the file/split and the fix."""


def is_wikitext_title(line: str) -> bool:
    """' = Robert Boulter = ' starts an article; ' = = Career = = ' is a section inside it."""
    text = line.strip()
    return (len(text) > 4 and text.startswith("= ") and text.endswith(" =")
            and not text.startswith("= =") and not text.endswith("= ="))


def is_wikitext_heading(line: str) -> bool:
    text = line.strip()
    return len(text) > 2 and text.startswith("=") and text.endswith("=")


def detect_boundary(lines: Iterable[str], probe_lines: int = 5000) -> str:
    for i, line in enumerate(lines):
        if i >= probe_lines:
            break
        if is_wikitext_title(line):
            return "wikitext"
    return "blank_line"


def split_sentences(paragraph: str, wikitext: bool) -> list[str]:
    """Rule-based splitter (no model, no downloads): a sentence ends at . ! or ? followed by
    whitespace and an upper-case letter, digit or opening quote/bracket. It errs towards longer
    sentences on abbreviations ("Mr. Smith"), which only makes some segments longer."""
    text = paragraph.strip()
    if wikitext:
        for marker, plain in _WIKITEXT_MARKERS:
            text = text.replace(marker, plain)
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def document_ranges(lines: Iterable[str], boundary: str) -> list[tuple[int, int]]:
    """[start, end) line ranges of documents; headings and blank lines may lie inside a range."""
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    last_content = -1
    for i, line in enumerate(lines):
        if boundary == "wikitext":
            if is_wikitext_title(line):
                if start is not None and last_content >= start:
                    ranges.append((start, last_content + 1))
                start = i
            elif line.strip() and not is_wikitext_heading(line):
                if start is None:
                    start = i
                last_content = i
        else:
            if line.strip():
                if start is None:
                    start = i
                last_content = i
            elif start is not None:
                ranges.append((start, last_content + 1))
                start = None
    if start is not None and last_content >= start:
        ranges.append((start, last_content + 1))
    return ranges


def document_sentences(lines: Sequence[str], wikitext: bool) -> list[str]:
    sentences: list[str] = []
    for line in lines:
        if not line.strip() or (wikitext and is_wikitext_heading(line)):
            continue
        sentences.extend(split_sentences(line, wikitext))
    return sentences


def iter_lines(line_dataset: datasets.Dataset, batch_size: int = 10_000) -> Iterator[str]:
    for batch in line_dataset.iter(batch_size=batch_size):
        yield from batch["text"]


# ---------------------------------------------------------------------------------------------
# Instance creation (pure Python on token id lists; unit-tested directly)
# ---------------------------------------------------------------------------------------------

def _truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Drop one token at a time from the longer segment, from a random end (always cutting the end would
    always lose sentence endings). The choices are made on counts, then each list is sliced once."""
    cut = {"a": [0, 0], "b": [0, 0]}  # tokens dropped from the front, from the back
    len_a, len_b = len(tokens_a), len(tokens_b)
    while len_a + len_b > max_tokens:
        side = "a" if len_a > len_b else "b"
        cut[side][0 if rng.random() < 0.5 else 1] += 1
        if side == "a":
            len_a -= 1
        else:
            len_b -= 1
    for tokens, (front, back) in ((tokens_a, cut["a"]), (tokens_b, cut["b"])):
        if front or back:
            tokens[:] = tokens[front: len(tokens) - back]


def _target_length(max_tokens: int, short_seq_prob: float, rng: random.Random) -> int:
    return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens


def nsp_instances_from_document(doc_index: int, documents: Sequence[Sequence[list[int]]], max_seq_length: int,
                                short_seq_prob: float, rng: random.Random) -> list[tuple[list[int], list[int], int]]:
    """(tokens_a, tokens_b, is_random_next) pairs from documents[doc_index]; others give random B."""
    document = documents[doc_index]
    max_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target = _target_length(max_tokens, short_seq_prob, rng)
    instances = []
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target:
            want_random = rng.random() < 0.5
            if len(chunk) == 1 and not want_random and i + 1 < len(document):
                # A single long sentence: take the next one as B so "true next" stays at ~50%.
                i += 1
                chunk.append(document[i])
            a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
            tokens_a = list(chain.from_iterable(chunk[:a_end]))
            if len(chunk) == 1 or want_random:
                is_random_next = 1
                target_b = max(1, target - len(tokens_a))
                other = rng.randrange(len(documents) - 1)
                other = other + 1 if other >= doc_index else other
                random_document = documents[other]
                start = rng.randrange(len(random_document))
                tokens_b = []
                for segment in random_document[start:]:
                    tokens_b.extend(segment)
                    if len(tokens_b) >= target_b:
                        break
                # Sentences not used for A go back to the stream so no text is wasted.
                i -= len(chunk) - a_end
            else:
                is_random_next = 0
                tokens_b = list(chain.from_iterable(chunk[a_end:]))
            _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
            if tokens_a and tokens_b:
                instances.append((tokens_a, tokens_b, is_random_next))
            chunk, chunk_length = [], 0
            target = _target_length(max_tokens, short_seq_prob, rng)
        i += 1
    return instances


def mlm_instances_from_document(document: Sequence[list[int]], max_seq_length: int, short_seq_prob: float,
                                rng: random.Random) -> list[list[int]]:
    """Contiguous sentence runs filling max_seq_length - 2 tokens (MLM-only pretraining)."""
    max_tokens = max_seq_length - 2
    flat = list(chain.from_iterable(document))
    chunks = []
    pos = 0
    while pos < len(flat):
        length = _target_length(max_tokens, short_seq_prob, rng)
        chunks.append(flat[pos: pos + length])
        pos += length
    return chunks


# ---------------------------------------------------------------------------------------------
# datasets pipeline
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceSettings:
    max_seq_length: int
    short_seq_prob: float
    nsp: bool
    seed: int
    wikitext: bool
    # Copies of the text, each cut into instances with its own segment lengths and NSP pairs (BERT's dupe_factor;
    # the training split only). Masks are drawn afresh every epoch anyway; the pairs are not, and a small corpus
    # passed over many times lets the model memorise its NSP pairs instead of learning the task.
    dupe_factor: int = 1


INSTANCE_FEATURES_NSP = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "token_type_ids": datasets.Sequence(datasets.Value("int8")),
    "next_sentence_label": datasets.Value("int8"),
})
INSTANCE_FEATURES_MLM = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "token_type_ids": datasets.Sequence(datasets.Value("int8")),
})


def _plain_backend(tokenizer):
    """The Rust tokenizer of a fast tokenizer with truncation and padding off (None for a slow one).

    A tokenizer.json may carry truncation/padding settings; the transformers wrapper switches them off for
    every call without truncation=/padding= arguments, and so do we, once."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.truncation:
            backend.no_truncation()
        if backend.padding:
            backend.no_padding()
    return backend


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens, as `tokenizer(texts, add_special_tokens=False)["input_ids"]` gives them.

    A fast tokenizer's Rust backend is called directly (`encode_batch_fast` skips the character offsets we do
    not need): the Python wrapper around it costs about as much again as the tokenisation itself."""
    backend = _plain_backend(tokenizer)
    if backend is None:  # a slow (Python) tokenizer
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


class _InstanceBuilder:
    """The map function: one group of consecutive documents -> its instances. Picklable for num_proc > 1.

    A group's instances depend on its documents, the seed and the group's index only, so they are the same
    whatever the number of worker processes and however the map shards the groups."""

    def __init__(self, lines: datasets.Dataset, ranges: datasets.Dataset, tokenizer, settings: InstanceSettings,
                 split: str):
        self.lines = lines
        self.ranges = ranges
        self.tokenizer = tokenizer
        self.settings = settings
        self.split = split

    def _tokenized_documents(self, starts, ends) -> list[list[list[int]]]:
        block = self.lines[min(starts): max(ends)]["text"]
        offset = min(starts)
        per_doc = [document_sentences(block[s - offset: e - offset], self.settings.wikitext)
                   for s, e in zip(starts, ends, strict=True)]
        flat = [s for doc in per_doc for s in doc]
        ids = token_ids(self.tokenizer, flat) if flat else []
        documents, k = [], 0
        for doc in per_doc:
            documents.append([x for x in ids[k: k + len(doc)] if x])
            k += len(doc)
        return documents

    def __call__(self, batch, indices) -> pa.Table:
        instances = _InstanceColumns()
        for starts, ends, group in zip(batch["starts"], batch["ends"], indices, strict=True):
            self._add_group(instances, starts, ends, group)
        return instances.table(self.settings.nsp)

    def _add_group(self, out: _InstanceColumns, starts: list[int], ends: list[int], group: int) -> None:
        s = self.settings
        own = [d for d in self._tokenized_documents(starts, ends) if d]
        pool = list(own)  # documents random B segments may come from; own ones first
        if s.nsp and len(own) == 1:
            # A lone document in its group still needs a different document for random B segments.
            first = group * DOCS_PER_GROUP
            neighbour = first - 1 if first > 0 else first + len(starts)
            if neighbour < len(self.ranges):
                row = self.ranges[neighbour]
                pool += [d for d in self._tokenized_documents([row["start"]], [row["end"]]) if d]
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if s.nsp and own and len(pool) < 2:
            raise DataError(f"split '{self.split}': next sentence prediction needs at least two documents; "
                            "give more text or pass --no_nsp")
        for copy in range(s.dupe_factor):
            # Copy 0 keeps the key of a single copy, so --dupe_factor 1 builds exactly what it always did.
            rng = random.Random(f"{s.seed}-{self.split}-{group}" + (f"-copy{copy}" if copy else ""))
            if s.nsp:
                for doc_index in range(len(own)):
                    for a, b, label in nsp_instances_from_document(doc_index, pool, s.max_seq_length,
                                                                   s.short_seq_prob, rng):
                        out.add(cls_id, a, sep_id, b, label)
            else:
                for document in own:
                    for chunk in mlm_instances_from_document(document, s.max_seq_length, s.short_seq_prob, rng):
                        out.add(cls_id, chunk, sep_id)


class _InstanceColumns:
    """Instances of one map call as flat id lists, turned into one Arrow table: lists of lists of Python ints
    would go through datasets' per-element type inference, which cost about a tenth of the preprocessing."""

    def __init__(self):
        self.ids: list[int] = []
        self.a_lengths: list[int] = []  # [CLS] A [SEP]: token type 0
        self.b_lengths: list[int] = []  # B [SEP]: token type 1 (0 without a B segment)
        self.labels: list[int] = []

    def add(self, cls_id: int, tokens_a: list[int], sep_id: int, tokens_b: list[int] | None = None,
            next_sentence_label: int | None = None) -> None:
        self.ids.append(cls_id)
        self.ids.extend(tokens_a)
        self.ids.append(sep_id)
        self.a_lengths.append(len(tokens_a) + 2)
        if tokens_b is None:
            self.b_lengths.append(0)
        else:
            self.ids.extend(tokens_b)
            self.ids.append(sep_id)
            self.b_lengths.append(len(tokens_b) + 1)
        if next_sentence_label is not None:
            self.labels.append(next_sentence_label)

    def table(self, nsp: bool) -> pa.Table:
        a_lengths = np.asarray(self.a_lengths, dtype=np.int64)
        b_lengths = np.asarray(self.b_lengths, dtype=np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(a_lengths + b_lengths)]).astype(np.int32))
        # Runs of 0 (A) and 1 (B) per instance, in order.
        types = np.repeat(np.tile(np.array([0, 1], dtype=np.int8), len(a_lengths)),
                          np.stack([a_lengths, b_lengths], axis=1).ravel())
        columns = {"input_ids": pa.ListArray.from_arrays(offsets, pa.array(self.ids, type=pa.int32())),
                   "token_type_ids": pa.ListArray.from_arrays(offsets, pa.array(types, type=pa.int8()))}
        if nsp:
            columns["next_sentence_label"] = pa.array(self.labels, type=pa.int8())
        return pa.table(columns)


def document_groups(ranges: datasets.Dataset) -> datasets.Dataset:
    """Consecutive documents in groups of DOCS_PER_GROUP: one row (starts, ends) per group."""
    starts, ends = ranges["start"], ranges["end"]
    cuts = range(0, len(starts), DOCS_PER_GROUP)
    return _small_dataset({"starts": pa.array([starts[i: i + DOCS_PER_GROUP] for i in cuts], pa.list_(pa.int64())),
                           "ends": pa.array([ends[i: i + DOCS_PER_GROUP] for i in cuts], pa.list_(pa.int64()))},
                          fingerprint=Hasher.hash((ranges._fingerprint, DOCS_PER_GROUP, "groups")))


def _small_dataset(columns: dict[str, pa.Array], fingerprint: str) -> datasets.Dataset:
    """An in-memory Dataset with a given fingerprint (a stable one makes the instance cache hit across runs).
    `Dataset.from_dict` would first hash all of its content for a fingerprint we replace anyway."""
    from datasets.table import InMemoryTable  # here: the GPU check imports this module with a stand-in `datasets`
    return datasets.Dataset(InMemoryTable(pa.table(columns)), fingerprint=fingerprint)


def default_preprocessing_workers(requested: int | None, groups: int) -> int | None:
    """--preprocessing_num_workers when it asks for a pool that has work for two processes at least, else None.

    No pool by default: on 2 cores the tokenizer's own threads already use both, and a pool's start-up cost
    more than the Python part it parallelised (bench/README.md); with many cores, ask for workers."""
    if requested is None or requested < 2 or groups < 2:
        return None
    return min(requested, groups)


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the token ids: a fast tokenizer's whole serialised pipeline (normaliser, pre-tokeniser,
    model and vocabulary; ~6 ms), a slow one's vocabulary and case/accent settings (~0.1 s)."""
    backend = _plain_backend(tokenizer)
    if backend is not None:
        described = backend.to_str()
    else:
        described = repr((type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                          tokenizer.init_kwargs.get("do_lower_case"), tokenizer.init_kwargs.get("strip_accents")))
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def build_instances(lines: datasets.Dataset, ranges: datasets.Dataset, tokenizer, settings: InstanceSettings,
                    split: str, num_proc: int | None = None, overwrite_cache: bool = False) -> datasets.Dataset:
    """Map document ranges of `lines` to pretraining instances (cached by content fingerprint)."""
    if len(ranges) == 0:
        raise DataError(f"split '{split}' has no documents with text (empty or whitespace-only input)")
    if settings.nsp and len(ranges) < 2:
        raise DataError(f"split '{split}' has {len(ranges)} document; next sentence prediction draws random "
                        "segments from a different document, so it needs at least two (give more text, raise "
                        "--validation_split_percentage, or pass --no_nsp)")
    builder = _InstanceBuilder(lines, ranges, tokenizer, settings, split)
    groups = document_groups(ranges)
    fingerprint = Hasher.hash((PREPROCESSING_VERSION, lines._fingerprint, ranges._fingerprint,
                               tokenizer_fingerprint(tokenizer), settings, split))
    features = INSTANCE_FEATURES_NSP if settings.nsp else INSTANCE_FEATURES_MLM
    num_proc = default_preprocessing_workers(num_proc, len(groups))
    if num_proc:
        # Forked workers cannot use the tokenizer's own threads (it warns and turns them off): say so up front.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return groups.map(builder, batched=True, batch_size=1, with_indices=True, remove_columns=groups.column_names,
                      features=features, num_proc=num_proc, new_fingerprint=fingerprint,
                      cache_file_name=instance_cache_file(lines, fingerprint),
                      load_from_cache_file=not overwrite_cache, desc=f"Building {split} instances")


def instance_cache_file(lines: datasets.Dataset, fingerprint: str) -> str | None:
    """The instances' Arrow file, next to the line dataset's own cache files. It must be named: the map runs
    over the small in-memory group table, and datasets keeps the result of a map over an in-memory table in
    memory (no file, no cache hit in the next run, every rank building its own copy). None for an in-memory
    line dataset: then the instances stay in memory too."""
    if not lines.cache_files:
        return None
    return str(Path(lines.cache_files[0]["filename"]).parent / f"pretraining-instances-{fingerprint}.arrow")


def ranges_dataset(lines: datasets.Dataset, boundary: str) -> tuple[datasets.Dataset, str]:
    """Document ranges of a line dataset as a small Dataset (start, end), and the boundary used."""
    if boundary == "auto":
        boundary = detect_boundary(iter_lines(lines))
    ranges = document_ranges(iter_lines(lines), boundary)
    table = _small_dataset({"start": pa.array([r[0] for r in ranges], pa.int64()),
                            "end": pa.array([r[1] for r in ranges], pa.int64())},
                           fingerprint=Hasher.hash((lines._fingerprint, boundary, "ranges")))
    return table, boundary


def load_line_splits(data_args) -> datasets.DatasetDict:
    """One row per line, column 'text': local files or the hub dataset (its own splits)."""
    if data_args.uses_local_files():
        files = {"train": data_args.train_file, "validation": data_args.validation_file,
                 "test": data_args.test_file}
        files = {split: path for split, path in files.items() if path}
        for split, path in files.items():
            _check_text_file(path, split)
        return datasets.load_dataset("text", data_files=files, chunksize=TEXT_CHUNK_BYTES)
    try:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    except Exception as err:  # offline, unknown name, no permission: the user's next step is the same
        raise DataError(f"could not load the hub dataset {data_args.dataset_name}/{data_args.dataset_config_name} "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Offline? Run the "
                        "offline smoke preset on the embedded sample: accelerate launch train/pretrain.py --config "
                        "train/configs/smoke.yaml; or give local text with --train_file (and --validation_file/"
                        "--test_file), e.g. WikiText's wiki.*.raw") from None
    if "text" not in raw["train"].column_names:
        raise DataError(f"dataset {data_args.dataset_name} has no 'text' column (columns: "
                        f"{raw['train'].column_names}); pretraining reads raw text lines")
    return raw


# What a folder given as --{split}_file most likely holds for that split (WikiText: wiki.{train,valid,test}.raw).
_SPLIT_WORDS = {"train": ("train",), "validation": ("valid", "dev"), "test": ("test",)}


def _text_file_in(folder: Path, split: str) -> Path | None:
    """A text file in `folder` (or one level down, as WikiText unzips) to name in the error, the split's first."""
    found = sorted(p for pattern in ("*.raw", "*.txt", "*/*.raw", "*/*.txt") for p in folder.glob(pattern)
                   if p.is_file())
    return next((p for p in found if any(w in p.name for w in _SPLIT_WORDS[split])), found[0] if found else None)


def _check_text_file(path: str, split: str) -> None:
    p = Path(path)
    if p.is_dir():
        example = _text_file_in(p, split)
        raise DataError(f"--{split}_file {path}: is a directory; pass a text file (WikiText raw or plain text)"
                        + (f", e.g. {example}" if example else ""))
    if not p.exists():
        raise DataError(f"--{split}_file {path}: no such file")
    if not p.is_file():
        raise DataError(f"--{split}_file {path}: not a regular file; pass a text file (WikiText raw or plain text)")
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as err:
        raise DataError(f"--{split}_file {path}: cannot be read ({err.strerror}); check its permissions or pass "
                        "another text file") from None
    if b"\x00" in head:
        raise DataError(f"--{split}_file {path}: looks binary (NUL bytes); pretraining expects UTF-8 text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # a multi-byte char cut by the probe is fine
            raise DataError(f"--{split}_file {path}: not UTF-8 text (byte {err.start}); "
                            "convert it with iconv") from None
    if not head.strip():
        raise DataError(f"--{split}_file {path}: contains no text (empty or only whitespace); give a text "
                        "file with documents")


def iter_document_text(lines: datasets.Dataset, ranges: datasets.Dataset, wikitext: bool) -> Iterator[str]:
    """Sentences of every document, for training a tokenizer on exactly the training split."""
    for batch in ranges.iter(batch_size=DOCS_PER_MAP_BATCH):
        lo, hi = min(batch["start"]), max(batch["end"])
        block = lines[lo:hi]["text"]
        for s, e in zip(batch["start"], batch["end"], strict=True):
            yield from document_sentences(block[s - lo: e - lo], wikitext)


@dataclass
class Corpus:
    """Line datasets and document ranges per split ('train', 'validation', maybe 'test')."""

    lines: dict[str, datasets.Dataset]
    ranges: dict[str, datasets.Dataset]
    boundary: str

    @property
    def wikitext(self) -> bool:
        return self.boundary == "wikitext"


def load_corpus(data_args, seed: int) -> Corpus:
    raw = load_line_splits(data_args)
    if "train" not in raw:
        raise DataError("no training split: give --train_file or a hub dataset with a 'train' split")
    train_ranges, boundary = ranges_dataset(raw["train"], data_args.document_boundary)
    lines = {"train": raw["train"]}
    ranges = {"train": train_ranges}
    for split in ("validation", "test"):
        if split in raw:
            lines[split] = raw[split]
            ranges[split], _ = ranges_dataset(raw[split], boundary)
    where = data_args.train_file or f"{data_args.dataset_name}/{data_args.dataset_config_name}"
    if len(train_ranges) == 0:
        raise DataError(f"{where}: the training text contains no documents (only blank lines or headings)")
    if "validation" not in ranges and data_args.validation_split_percentage > 0:
        n_docs = len(train_ranges)
        # NSP draws random B segments from another document: a held-out split needs two at least.
        n_val = max(2 if data_args.nsp else 1, round(n_docs * data_args.validation_split_percentage / 100))
        if n_docs - n_val < 2:
            raise DataError(f"{where}: {n_docs} document(s) are too few to hold out {n_val} for validation; give "
                            "--validation_file, more text, or --validation_split_percentage 0")
        order = list(range(n_docs))
        random.Random(f"{seed}-held-out").shuffle(order)
        # Each side stays in file order: a map batch then reads one contiguous block of lines, not the corpus.
        ranges["validation"] = train_ranges.select(sorted(order[:n_val]))
        ranges["train"] = train_ranges.select(sorted(order[n_val:]))
        lines["validation"] = raw["train"]
    return Corpus(lines=lines, ranges=ranges, boundary=boundary)


def build_pretraining_datasets(corpus: Corpus, tokenizer, data_args, seed: int) -> dict[str, datasets.Dataset]:
    """Instances per split. Training pairs use the run's seed; validation/test pairs use the fixed
    eval seed, so runs with different seeds are evaluated on the same instances and masks."""
    out = {}
    for split, ranges in corpus.ranges.items():
        settings = InstanceSettings(max_seq_length=data_args.max_seq_length, short_seq_prob=data_args.short_seq_prob,
                                    nsp=data_args.nsp, seed=seed if split == "train" else data_args.eval_mask_seed,
                                    wikitext=corpus.wikitext,
                                    dupe_factor=data_args.dupe_factor if split == "train" else 1)
        instances = build_instances(corpus.lines[split], ranges, tokenizer, settings, split,
                                    num_proc=data_args.preprocessing_num_workers,
                                    overwrite_cache=data_args.overwrite_cache)
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None:
            instances = instances.select(range(min(limit, len(instances))))
        if len(instances) == 0:
            raise DataError(f"split '{split}' produced no instances (documents too short?)")
        out[split] = instances
    return out
