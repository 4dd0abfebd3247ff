"""The pretraining vocabulary: a hub (or local) tokenizer, or a WordPiece trained on the training documents,
cached by corpus fingerprint and size so that reruns and other ranks reuse it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from datasets.fingerprint import Hasher

from ..run_folder import RunFolder
from ..tokenizer import load_tokenizer, train_wordpiece
from .pretraining import Corpus, iter_document_text

# Bump when train_wordpiece's settings change, so vocabularies trained the old way are not reused.
TOKENIZER_TRAINING_VERSION = 1


def obtain_tokenizer(data_args, corpus: Corpus, output_dir: Path | RunFolder, is_main_process: bool):
    """--train_tokenizer N: the main process trains on the training split and saves to
    OUTPUT_DIR/tokenizer (other ranks, entering after it, and resumed runs load that copy).
    Otherwise --tokenizer_name (hub id or local folder).

    The `tokenizers` trainer breaks count ties in hash order, so two trainings on the same text can differ in
    a few rare tokens. A trained vocabulary is therefore also kept next to the text's datasets cache, and a
    later run on the same training documents with the same N reuses it: the same command gives the same
    vocabulary, instances and numbers on this machine."""
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
    texts = iter_document_text(corpus.lines["train"], corpus.ranges["train"], corpus.wikitext)
    tokenizer = train_wordpiece(texts, data_args.train_tokenizer, saved)
    if cached is not None:
        # Written under a temporary name and renamed: a reader never sees half a vocabulary, and when two
        # runs race, the first rename wins and the other's copy is dropped.
        partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        tokenizer.save_pretrained(str(partial))
        try:
            os.rename(partial, cached)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def trained_vocabulary_cache(corpus: Corpus, vocab_size: int) -> Path | None:
    """Where a vocabulary trained on this corpus's training documents is kept (None for in-memory text)."""
    lines = corpus.lines["train"]
    if not lines.cache_files:
        return None
    key = Hasher.hash((TOKENIZER_TRAINING_VERSION, lines._fingerprint, corpus.ranges["train"]._fingerprint,
                       corpus.boundary, vocab_size))
    return Path(lines.cache_files[0]["filename"]).parent / f"wordpiece-{vocab_size}-{key}"
