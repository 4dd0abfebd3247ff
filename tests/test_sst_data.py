import json
import os
import shutil
from pathlib import Path

import pytest

from train.common.data import sst
from train.common.data.sst import Example

FIX = Path(__file__).parent / "fixtures" / "sst"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst"
REAL_TREES = REAL / "trainDevTestTrees_PTB" / "trees"


# ---------------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("value,cls", [
    (0.0, 0), (0.2, 0), (0.2000001, 1), (0.4, 1), (0.40001, 2), (0.5, 2), (0.6, 2), (0.6000001, 3), (0.8, 3),
    (0.80001, 4), (1.0, 4), (1, 4), (0, 0),
])
def test_value_to_class_boundaries(value, cls):
    assert sst.value_to_class(value) == cls


@pytest.mark.parametrize("value", [-0.01, 1.0000001, float("nan"), 2, True])
def test_value_to_class_out_of_range(value):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sst.value_to_class(value)


def test_label_names():
    assert sst.LABEL_NAMES == ("very negative", "negative", "neutral", "positive", "very positive")
    assert sst.NUM_CLASSES == 5


def test_class_weights_inverse_frequency_mean_one():
    labels = [0, 0, 1, 2, 2, 2, 2, 3]  # counts 2, 1, 4, 1, 0
    assert sst.class_counts(labels) == [2, 1, 4, 1, 0]
    w = sst.class_weights(labels, 5)
    assert w[4] == 0.0
    present = w[:4]
    assert sum(present) / 4 == pytest.approx(1.0)
    # inverse frequency: weight * count is the same for every present class
    assert [x * c for x, c in zip(present, [2, 1, 4, 1], strict=True)] == pytest.approx([present[1]] * 4)
    assert sst.class_weights([1, 1, 3, 3], 5) == [0.0, 1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        sst.class_weights([], 5)
    with pytest.raises(ValueError, match="outside"):
        sst.class_counts([5])


# ------------------------------------------------------------------------------------------------------ normalising


@pytest.mark.parametrize("raw,norm", [
    ("-LRB-", "("), ("-RRB-", ")"), ("-LSB-", "["), ("-RCB-", "}"), ("``", '"'), ("''", '"'), ("'s", "'s"),
    ("`", "`"), ("co-writer\\/director", "co-writer/director"), ("\\*\\*\\*", "***"),
    ("clichÃ©s", "clichés"), ("MÃ¼nch", "Münch"), ("8Â\xa01\\/2", "8\xa01/2"), ("Amélie", "Amélie"),
    ("Ã", "Ã"),  # does not round-trip: kept
])
def test_normalize_token(raw, norm):
    assert sst.normalize_token(raw) == norm


# ------------------------------------------------------------------------------------------------------------ trees


def test_parse_ptb_tree_spans():
    leaves, nodes = sst.parse_ptb_tree("(3 (2 It) (4 (2 's) (3 fine)))\n")
    assert leaves == ["It", "'s", "fine"]
    assert nodes == [(3, 0, 3), (2, 0, 1), (4, 1, 3), (2, 1, 2), (3, 2, 3)]


def test_ptb_trees_fixture():
    splits = sst.load_sst_ptb_trees(str(FIX / "trees"))
    assert splits.train.sentences == [
        Example("The film is charming .", 3),
        Example('" Amélie " co-writer/director ( dull ) .', 0),
        Example("A great film", 4),
    ]
    assert splits.dev.sentences == [Example("The plot is thin", 1), Example("Quite charming", 3)]
    assert splits.test.sentences == [Example("Awful .", 0), Example("Brilliant !", 4)]
    assert dict(splits.train.phrases) == {
        "The film is charming .": 3, "The film": 2, "The": 2, "film": 2, "is charming .": 3, "is charming": 3,
        "is": 2, "charming": 3, ".": 2,
        '" Amélie " co-writer/director ( dull ) .': 0, '" Amélie "': 2, '"': 2, 'Amélie "': 2, "Amélie": 2,
        "co-writer/director ( dull ) .": 0, "co-writer/director": 2, "( dull ) .": 0, "( dull )": 1, "(": 2,
        "dull )": 1, "dull": 1, ")": 2,
        "A great film": 4, "A": 2, "great film": 4, "great": 4,
    }
    assert len(splits.train.phrases) == 26  # deduplicated ("film", ".", '"' occur twice)
    assert dict(splits.dev.phrases)["thin"] == 1
    assert splits.counts()["train"] == {"sentences": 3, "phrases": 26, "sentence_classes": [1, 0, 0, 1, 1]}
    assert splits.has_phrases


def test_ptb_trees_parent_folder_and_load_sst(tmp_path):
    shutil.copytree(FIX / "trees", tmp_path / "trees")
    assert sst.load_sst(str(tmp_path)).dev.sentences[0] == Example("The plot is thin", 1)
    assert sst.load_sst(str(FIX / "trees")).source.startswith("ptb_trees:")


@pytest.mark.parametrize("line,message", [
    ("(3 (2 a) (2 b)", "unbalanced parentheses"),
    ("(3 (2 a) (2 b)))", "unbalanced parentheses"),
    ("(7 (2 a) (2 b))", "bad label '7'"),
    ("(x a)", "bad label 'x'"),
    ("(2 )", "neither a word nor sub-trees"),
    ("(2 a (2 b))", "both a word and sub-trees"),
    ("(2 a b)", "a leaf holds exactly one word"),
    ("(2 a) (2 b)", "after the end of the tree"),
    ("2 a", r"must start with '\('"),
    ("((2 a))", "not followed by a label"),
])
def test_ptb_trees_malformed(tmp_path, line, message):
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.txt").write_text("(2 (2 ok) (2 .))\n", encoding="utf-8")
    (tmp_path / "dev.txt").write_text("(2 (2 ok) (2 .))\n" + line + "\n", encoding="utf-8")
    with pytest.raises(sst.SSTFormatError, match=message) as err:
        sst.load_sst_ptb_trees(str(tmp_path))
    assert f"{tmp_path / 'dev.txt'}, line 2" in str(err.value)


def test_ptb_trees_missing_file(tmp_path):
    (tmp_path / "train.txt").write_text("(2 a)\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="dev.txt, test.txt missing"):
        sst.load_sst_ptb_trees(str(tmp_path))


def test_phrase_label_conflicts_counted(tmp_path):
    (tmp_path / "train.txt").write_text("(2 (2 a) (3 b))\n(2 (2 c) (1 b))\n", encoding="utf-8")
    for split in ("dev", "test"):
        (tmp_path / f"{split}.txt").write_text("(2 z)\n", encoding="utf-8")
    splits = sst.load_sst_ptb_trees(str(tmp_path))
    assert dict(splits.train.phrases)["b"] == 3  # first label kept
    assert splits.stats["train_phrase_label_conflicts"] == 1


# --------------------------------------------------------------------------------------------------------- leakage


def test_training_examples_and_no_leakage_clean_fixture():
    splits = sst.load_sst_ptb_trees(str(FIX / "trees"))
    assert splits.training_examples("sentences") == splits.train.sentences
    phrases = splits.training_examples("phrases")
    assert phrases == splits.train.phrases
    info = sst.check_no_leakage(splits, phrases)
    # "The", "is", "charming", "." occur in dev/test phrases too: shared short phrases are kept (documented rule)
    assert info["phrases_shared_with_eval"] == 4
    assert info["train_examples"] == 26
    with pytest.raises(ValueError, match="train_on"):
        splits.training_examples("words")


def test_leaking_fixture_is_caught_and_filtered():
    splits = sst.load_sst_ptb_trees(str(FIX / "trees_leak"))
    # dev sentence "The film" is a phrase of a training sentence; test sentence "a GREAT film" is, up to case,
    # the training sentence "A great film".
    with pytest.raises(sst.LeakageError, match="dev/test sentences") as err:
        sst.check_no_leakage(splits, splits.train.phrases)
    assert "'The film' (dev sentence)" in str(err.value)
    with pytest.raises(sst.LeakageError, match="'A great film' \\(test sentence\\)"):
        sst.check_no_leakage(splits, splits.train.sentences)

    phrases = splits.training_examples("phrases")
    assert {ex.text for ex in splits.dropped_for_leakage("phrases")} == {"The film", "A great film"}
    assert len(phrases) == len(splits.train.phrases) - 2
    sst.check_no_leakage(splits, phrases)
    sentences = splits.training_examples("sentences")
    assert [ex.text for ex in sentences] == ["The film is charming .", '" Amélie " co-writer/director ( dull ) .']
    sst.check_no_leakage(splits, sentences)


def test_phrase_only_known_from_dev_is_rejected():
    splits = sst.load_sst_ptb_trees(str(FIX / "trees"))
    leaked = splits.train.phrases + [Example("plot is thin", 1)]  # a span of a DEV sentence only
    with pytest.raises(sst.LeakageError, match="not token spans of any training sentence"):
        sst.check_no_leakage(splits, leaked)
    with pytest.raises(sst.LeakageError, match="not token spans"):
        sst.check_no_leakage(splits, splits.train.phrases + [Example("charming film", 3)])  # train words, no span


# ---------------------------------------------------------------------------------------------- original release


def test_original_release_fixture():
    splits = sst.load_sst_original(str(FIX / "original"))
    assert splits.train.sentences == [
        Example("The film is charming .", 3),  # value 0.8 -> 3
        Example('" Amélie " co-writer/director ( dull ) .', 0),  # mojibake, -LRB-, \/ and `` '' normalised
    ]
    assert splits.dev.sentences == [Example("The plot is thin", 1), Example("Quite charming", 3)]
    assert splits.test.sentences == [Example("8 1/2 is awful .", 0)]  # no-break space -> space
    assert dict(splits.train.phrases) == {
        "The": 2, "The film": 2, "The film is charming .": 3, "film": 2, "is": 2, "is charming": 3,
        "charming": 4, ".": 2,
        '"': 2, '" Amélie "': 2, '" Amélie " co-writer/director ( dull ) .': 0, "Amélie": 2,
        "co-writer/director": 2, "( dull )": 1, "dull": 1,
    }
    assert dict(splits.test.phrases) == {"8 1/2 is awful .": 0, "8 1/2": 2, "is": 2, "awful": 0, ".": 2}
    assert splits.stats["dictionary_duplicate_phrases"] == 1  # `` and '' are both '"'
    sst.check_no_leakage(splits, splits.training_examples("phrases"))
    assert sst.load_sst(str(FIX / "original")).train.sentences == splits.train.sentences


def _corrupt(tmp_path, name, transform):
    folder = tmp_path / "sst"
    shutil.copytree(FIX / "original", folder)
    path = folder / name
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(transform(lines)) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("name,transform,message", [
    ("dictionary.txt", lambda ls: ls[:2] + ["no bar here"] + ls[2:], r"dictionary.txt, line 3: expected 'phrase\|id'"),
    ("dictionary.txt", lambda ls: ["film|x"] + ls, "dictionary.txt, line 1: phrase id 'x' is not an integer"),
    ("sentiment_labels.txt", lambda ls: ls[:3] + ["2|high"] + ls[3:], "sentiment_labels.txt, line 4: sentiment value"),
    ("sentiment_labels.txt", lambda ls: ls[:3] + ["2|1.5"] + ls[3:], "sentiment_labels.txt, line 4: .*in \\[0, 1\\]"),
    ("sentiment_labels.txt", lambda ls: ls[:3] + ["2 0.5"] + ls[3:],
     "sentiment_labels.txt, line 4: expected 'id\\|value'"),
    ("sentiment_labels.txt", lambda ls: ls[1:], "sentiment_labels.txt, line 1: missing header"),
    ("datasetSentences.txt", lambda ls: ls[1:], "datasetSentences.txt, line 1: missing header"),
    ("datasetSentences.txt", lambda ls: ls[:2] + ["6 no tab"] + ls[2:], "datasetSentences.txt, line 3: expected"),
    ("datasetSentences.txt", lambda ls: ls[:5] + ["5\tAn unknown sentence ."],
     "datasetSentences.txt, line 6: .*not in"),
    ("datasetSplit.txt", lambda ls: ls + ["9,1"], "datasetSplit.txt, line 7: sentence_index 9 is not in"),
    ("datasetSplit.txt", lambda ls: ls[:2] + ["2,4"] + ls[3:], "datasetSplit.txt, line 3: expected .*1 \\(train\\)"),
    ("datasetSplit.txt", lambda ls: ls[:-1], "datasetSplit.txt: 1 sentence\\(s\\) .* have no split"),
    ("datasetSplit.txt", lambda ls: ls[1:], "datasetSplit.txt, line 1: missing header"),
    ("sentiment_labels.txt", lambda ls: [ls[0]] + [line for line in ls[1:] if not line.startswith("0|")],
     "phrase id 0 .*has no sentiment value"),
])
def test_original_release_malformed(tmp_path, name, transform, message):
    folder = _corrupt(tmp_path, name, transform)
    with pytest.raises(sst.SSTFormatError, match=message):
        sst.load_sst_original(str(folder))


def test_original_release_missing_files(tmp_path):
    folder = tmp_path / "sst"
    shutil.copytree(FIX / "original", folder)
    (folder / "dictionary.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        sst.load_sst_original(str(folder))
    msg = str(err.value)
    assert "missing dictionary.txt" in msg and "stanfordSentimentTreebank.zip" in msg
    (folder / "datasetSplit.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing dictionary.txt, datasetSplit.txt"):
        sst.load_sst_original(str(folder))


# ----------------------------------------------------------------------------------------------------- csv / json


def test_csv_files():
    splits = sst.load_sst_files(str(FIX / "files" / "train.csv"), str(FIX / "files" / "dev.csv"))
    assert splits.train.sentences == [
        Example("A warm, funny film .", 4), Example("The plot is thin", 1), Example('It is "fine" , I guess .', 2),
        Example("Dreadful from start to end .", 0), Example("Good performances all round .", 3)]
    assert splits.dev.sentences == [Example("Quite charming", 3), Example("A total mess .", 0)]
    assert splits.test.sentences == [] and not splits.has_phrases
    with pytest.raises(ValueError, match="train_on='sentences'"):
        splits.training_examples("phrases")
    sst.check_no_leakage(splits, splits.training_examples("sentences"))


def test_jsonl_float_values_and_json_names():
    values = sst.load_labeled_file(str(FIX / "files" / "values.jsonl"), "sentence", "value")
    assert [ex.label for ex in values] == [0, 0, 1, 1, 2, 3, 4]
    names = sst.load_labeled_file(str(FIX / "files" / "names.json"))
    assert [ex.label for ex in names] == [0, 1, 2, 3, 4]


def test_json_variants(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"data": [{"text": "a", "label": 1}]}), encoding="utf-8")
    assert sst.load_labeled_file(str(p)) == [Example("a", 1)]
    p.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0.9}\n', encoding="utf-8")  # JSON lines
    assert sst.load_labeled_file(str(p)) == [Example("a", 4), Example("b", 4)]  # floats present: values
    p = tmp_path / "bom.csv"
    p.write_bytes('\ufefftext,label\n"two\nlines \u2028 here",3\n'.encode("utf-8"))
    assert sst.load_labeled_file(str(p)) == [Example("two\nlines \u2028 here", 3)]
    p = tmp_path / "sep.jsonl"
    p.write_text(json.dumps({"text": "a\u2028b", "label": 0}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert sst.load_labeled_file(str(p)) == [Example("a\u2028b", 0)]
    p = tmp_path / "d.tsv"
    p.write_text("text\tlabel\nhello there\t2\n", encoding="utf-8")
    assert sst.load_labeled_file(str(p)) == [Example("hello there", 2)]


@pytest.mark.parametrize("name,content,kwargs,message", [
    ("a.csv", "sentence,label\nhi,1\n", {}, r"no column 'text'; columns found: \['sentence', 'label'\]"),
    ("a.csv", "", {}, "empty file"),
    ("a.csv", "text,label\n", {}, "header only"),
    ("a.jsonl", "\n\n", {}, "empty file"),
    ("a.csv", "text,label\nok,1\nbad,7\n", {}, r"a.csv, line 3: class id '7' is outside 0..4"),
    ("a.csv", "text,label\nok,0.5\nbad,3.0\n", {}, r"a.csv, line 3: label '3.0' is not a sentiment value"),
    ("a.csv", "text,label\nok,1\nbad,great\n", {}, r"a.csv, line 3: bad label 'great'"),
    ("a.csv", "text,label\nok,positive\nbad,1\n", {}, r"a.csv, line 3: label '1' mixes label names"),
    ("a.csv", "text,label\n,1\n", {}, r"a.csv, line 2: text column 'text' is empty"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, r"a.jsonl, line 2: missing"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', {}, r"a.jsonl, line 2: bad label None"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": true}\n', {}, r"a.jsonl, line 2: bad label True"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{oops\n', {}, r"a.jsonl, line 2: invalid JSON"),
    ("a.json", '[{"text": "a", "label": 1}, 3]', {}, r"a.json, record 1: expected an object"),
    ("a.json", '{"text": "a"', {}, r"a.json: invalid JSON at line 1"),
    ("a.txt", "text,label\n", {}, "unsupported extension"),
])
def test_labeled_file_errors(tmp_path, name, content, kwargs, message):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(sst.SSTFormatError, match=message):
        sst.load_labeled_file(str(p), **kwargs)


# ------------------------------------------------------------------------------------------------------------- hub


def _hub_like():
    import datasets

    setfit = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 4], "label_text": ["a", "b"]}),
        "validation": datasets.Dataset.from_dict({"text": ["ok"], "label": [2], "label_text": ["c"]}),
        "test": datasets.Dataset.from_dict({"text": ["meh"], "label": [1], "label_text": ["d"]}),
    })
    stanford = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0.1, 0.95],
                                             "tokens": ["bad", "good"]}),
        "validation": datasets.Dataset.from_dict({"sentence": ["edge"], "label": [0.2], "tokens": ["edge"]}),
    })
    return setfit, stanford


def test_hub_column_mapping_on_local_datasets():
    setfit, stanford = _hub_like()
    s = sst.splits_from_dataset_dict(setfit, "text", "label", "SetFit/sst5")
    assert s.train.sentences == [Example("bad", 0), Example("good", 4)]
    assert s.dev.sentences == [Example("ok", 2)] and s.test.sentences == [Example("meh", 1)]
    s = sst.splits_from_dataset_dict(stanford, "sentence", "label", "stanfordnlp/sst")
    assert s.train.sentences == [Example("bad", 0), Example("good", 4)]
    assert s.dev.sentences == [Example("edge", 0)] and s.test.sentences == []
    with pytest.raises(sst.SSTFormatError, match=r"no column 'text'; columns found: \['sentence', 'label', 'tokens'\]"):
        sst.splits_from_dataset_dict(stanford, "text", "label")
    import datasets

    with pytest.raises(sst.SSTFormatError, match="validation or dev"):
        sst.splits_from_dataset_dict(datasets.DatasetDict({"train": stanford["train"]}), "sentence", "label")


def test_load_sst_hub_calls_load_dataset(monkeypatch):
    import datasets

    setfit, stanford = _hub_like()
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return {"SetFit/sst5": setfit, "stanfordnlp/sst": stanford}[name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert sst.load_sst_hub("stanfordnlp/sst", "default").train.sentences[1] == Example("good", 4)
    assert sst.load_sst("SetFit/sst5").dev.sentences == [Example("ok", 2)]
    assert calls == [("stanfordnlp/sst", "default"), ("SetFit/sst5", None)]


# ------------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_trees():
    if not REAL_TREES.is_dir():
        pytest.skip("real SST trees not present")
    return sst.load_sst_ptb_trees(str(REAL_TREES))


def test_real_ptb_trees(real_trees):
    splits = real_trees
    counts = splits.counts()
    assert [counts[s]["sentences"] for s in sst.SPLIT_NAMES] == [8544, 1101, 2210]
    assert counts["train"]["sentence_classes"] == [1092, 2218, 1624, 2322, 1288]
    assert counts["dev"]["sentence_classes"] == [139, 289, 229, 279, 165]
    assert counts["test"]["sentence_classes"] == [279, 633, 389, 510, 399]
    assert counts["train"]["phrases"] == 159273
    # four official dev/test sentences are also training sentences ("Hey Arnold !" twice in dev, ...)
    assert len(splits.dropped_for_leakage("sentences")) == 4
    sentences = splits.training_examples("sentences")
    phrases = splits.training_examples("phrases")
    assert len(sentences) == 8540 and len(phrases) == 159267
    sst.check_no_leakage(splits, sentences)
    info = sst.check_no_leakage(splits, phrases)
    assert info["phrases_shared_with_eval"] > 10000  # short phrases shared with dev/test: kept by design
    with pytest.raises(sst.LeakageError):
        sst.check_no_leakage(splits, splits.train.phrases)
    assert not any(t in ex.text for ex in splits.train.phrases for t in ("-LRB-", "``", "\\/", "Ã"))


@pytest.mark.skipif(not REAL.is_dir(), reason="real SST release not present")
def test_real_original_release_reports_missing_dictionary():
    if (REAL / "dictionary.txt").exists():
        pytest.skip("dictionary.txt is present here")
    with pytest.raises(FileNotFoundError) as err:
        sst.load_sst(str(REAL))
    msg = str(err.value)
    assert "missing dictionary.txt" in msg and "stanfordSentimentTreebank.zip" in msg
    assert str(REAL_TREES) in msg


@pytest.mark.skipif(not (REAL / "datasetSentences.txt").exists(), reason="real SST data not present")
def test_real_dataset_sentences_normalise_to_tree_sentences(real_trees):
    """datasetSentences.txt (mojibake, -LRB-, \\/) normalises to exactly the trees' sentences, split by split."""
    splits = real_trees
    lines = (REAL / "datasetSentences.txt").read_text(encoding="utf-8").split("\n")[1:]
    texts = {}
    for line in lines:
        if line.strip():
            idx, _, text = line.partition("\t")
            texts[int(idx)] = " ".join(sst.normalize_token(t) for t in text.split(" ")).replace("\xa0", " ")
    split_lines = (REAL / "datasetSplit.txt").read_text().split("\n")[1:]
    code = dict(line.split(",") for line in split_lines if line.strip())
    for name, c in (("train", "1"), ("dev", "3"), ("test", "2")):
        ours = [texts[i] for i in sorted(texts) if code[str(i)] == c]
        assert ours == [ex.text for ex in splits.split(name).sentences]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "datasetSentences.txt").exists(), reason="real SST data not present")
def test_real_original_loader_with_dictionary_rebuilt_from_trees(tmp_path, real_trees):
    """Without the real dictionary.txt: rebuild one from the trees ((, ) and real UTF-8 as in the release, class
    mid-point values), run the original-release loader on the real datasetSentences/datasetSplit files, and get the
    trees' sentence labels back exactly; its span-based phrases are a superset of the trees' phrases."""
    trees = real_trees
    phrase_label = {}
    for name in sst.SPLIT_NAMES:
        for line in (REAL_TREES / f"{name}.txt").read_text(encoding="utf-8").splitlines():
            leaves, nodes = sst.parse_ptb_tree(line)
            leaves = [{"-LRB-": "(", "-RRB-": ")"}.get(t, t) for t in leaves]
            for label, a, b in nodes:
                phrase_label.setdefault(" ".join(leaves[a:b]), label)
    with open(tmp_path / "dictionary.txt", "w", encoding="utf-8") as f:
        f.writelines(f"{p}|{i}\n" for i, p in enumerate(phrase_label))
    with open(tmp_path / "sentiment_labels.txt", "w", encoding="utf-8") as f:
        f.write("phrase ids|sentiment values\n")
        f.writelines(f"{i}|{(0.1, 0.3, 0.5, 0.7, 0.9)[y]}\n" for i, y in enumerate(phrase_label.values()))
    for name in ("datasetSentences.txt", "datasetSplit.txt"):
        os.symlink(REAL / name, tmp_path / name)
    splits = sst.load_sst_original(str(tmp_path))
    for name in sst.SPLIT_NAMES:
        assert splits.split(name).sentences == trees.split(name).sentences
        assert set(trees.split(name).phrases) <= set(splits.split(name).phrases)
    sst.check_no_leakage(splits, splits.training_examples("phrases"))
