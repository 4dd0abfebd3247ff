"""The pretraining vocabulary: a hub (or local) tokenizer, or a WordPiece trained on the training documents,
cached by the training documents' text and the size, so that reruns and other ranks reuse it.

A trained vocabulary depends on the training documents and N only: ``train_wordpiece`` is reproducible (the same
words give the same vocab.txt in any process), and the cache key is a digest of the training documents' lines, not
the `datasets` fingerprints of the line dataset, which follow the whole ``load_dataset`` call: every data file, so
adding --test_file or --validation_file changed them (and the cache folder under them) although the training
documents were the same."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import datasets

from ..run_folder import RunFolder
from ..tokenizer import load_tokenizer, train_wordpiece
from .pretraining import DOCS_PER_MAP_BATCH, Corpus, iter_document_text

# Bump when train_wordpiece's settings change, so vocabularies trained the old way are not reused.
# 2: reproducible training (fixed ids for the "##c" tokens and a tie-free alphabet cut), key from the text.
TOKENIZER_TRAINING_VERSION = 2
VOCABULARY_CACHE_FOLDER = "trained_wordpiece_vocabularies"  # under the datasets cache (HF_DATASETS_CACHE)


def obtain_tokenizer(data_args, corpus: Corpus, output_dir: Path | RunFolder, is_main_process: bool):
    """--train_tokenizer N: the main process trains on the training split and saves to
    OUTPUT_DIR/tokenizer (other ranks, entering after it, and resumed runs load that copy).
    Otherwise --tokenizer_name (hub id or local folder).

    Training is reproducible (``train_wordpiece``), and a trained vocabulary is also kept in the datasets cache
    under a key of the training documents' text and N (``trained_vocabulary_cache``): a later run on the same
    training documents with the same N reuses it instead of training again, whatever its other splits."""
    if data_args.train_tokenizer is None:
        return load_tokenizer(data_args.tokenizer_name)
    saved = RunFolder.of(output_dir).tokenizer_dir
    if (saved / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(str(saved))
        if len(tokenizer) <= data_args.train_tokenizer:
            return tokenizer
    if not is_main_process:
        raise RuntimeError(f"{saved} should have been written by the main process")
    cached = trained_vocabulary_cache(corpus, data_args.train_tokenizer)
    if cached is not None and (cached / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(str(cached))
        tokenizer.save_pretrained(str(saved))
        return tokenizer
    tokenizer = train_wordpiece(
        lambda: iter_document_text(corpus.lines["train"], corpus.ranges["train"], corpus.wikitext),
        data_args.train_tokenizer, saved)
    if cached is not None:
        # Written under a temporary name and renamed: a reader never sees half a vocabulary, and when two
        # runs race, the first rename wins and the other's copy is dropped.
        partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        partial.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(partial))
        try:
            os.rename(partial, cached)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def training_text_digest(corpus: Corpus) -> str:
    """sha256 of what the vocabulary is trained on: the lines of each training document, in order, and whether
    they are read as WikiText (headings dropped, @-@ markers joined). Validation and test documents, and documents
    held out of the training file for validation, are not in it. One streaming pass over the training lines."""
    digest = hashlib.sha256(f"wikitext={corpus.wikitext}\n".encode())
    lines, ranges = corpus.lines["train"], corpus.ranges["train"]
    for batch in ranges.iter(batch_size=DOCS_PER_MAP_BATCH):
        lo, hi = min(batch["start"]), max(batch["end"])
        block = lines[lo:hi]["text"]
        for start, end in zip(batch["start"], batch["end"], strict=True):
            digest.update((end - start).to_bytes(8, "little"))  # a document: its line count, then each line
            for line in block[start - lo: end - lo]:
                data = line.encode("utf-8", "surrogatepass")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
    return digest.hexdigest()


def trained_vocabulary_cache(corpus: Corpus, vocab_size: int) -> Path | None:
    """Where a vocabulary of size ``vocab_size`` trained on this corpus's training documents is kept: a folder of
    the datasets cache named by the training text's digest, so it is the same whatever the other splits (None for
    in-memory text, which has no datasets cache)."""
    if not corpus.lines["train"].cache_files:
        return None
    key = hashlib.sha256(f"{TOKENIZER_TRAINING_VERSION}:{training_text_digest(corpus)}".encode()).hexdigest()[:32]
    return Path(datasets.config.HF_DATASETS_CACHE) / VOCABULARY_CACHE_FOLDER / f"wordpiece-{vocab_size}-{key}"
