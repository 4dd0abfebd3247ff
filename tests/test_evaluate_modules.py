"""analysis/evaluate_modules: the evaluate modules load offline from the repository and give the CLI's numbers.

Every comparison is exact (==): a module is a thin wrapper, so any drift from the plain functions in metrics/
or from the CLI fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import evaluate
import pytest

from metrics import classification, squad
from metrics import text as text_metrics
from train.common.data.sst import LABEL_NAMES as SST5_NAMES

REPO = Path(__file__).resolve().parents[1]
MODULES = REPO / "analysis" / "evaluate_modules"
METRIC_FIXTURES = REPO / "tests" / "fixtures" / "metrics"
SQUAD_FIXTURES = REPO / "tests" / "fixtures" / "squad"
NAMES = ["squad", "squad_v2", "answer_text_metrics", "classification"]
# Where a hub copy of squad / squad_v2 would be cached; read before the tests point the cache elsewhere.
HOME_METRIC_MODULES = Path(os.environ.get("HF_MODULES_CACHE", evaluate.config.DEFAULT_HF_MODULES_CACHE)) \
    / "evaluate_modules" / "metrics"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """Offline, with evaluate's modules and metrics caches in a temporary folder.

    Module-scoped on purpose: evaluate imports its modules cache as the package ``evaluate_modules`` once per
    process, so a second cache folder in the same process is never searched (ModuleNotFoundError).
    """
    root = tmp_path_factory.mktemp("hf-evaluate")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                           ("HF_MODULES_CACHE", str(root / "modules")), ("HF_METRICS_CACHE", str(root / "metrics"))):
            mp.setenv(var, value)
        # evaluate.config read the variables at import time; the loader looks these attributes up when it runs.
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", root / "modules")
        mp.setattr(evaluate.config, "HF_METRICS_CACHE", root / "metrics")
        mp.setattr(sys, "path", list(sys.path))  # evaluate appends the modules cache to sys.path
        yield root
        for name in [m for m in sys.modules if m == "evaluate_modules" or m.startswith("evaluate_modules.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def load(hf_cache):
    loaded = {}

    def _load(name):
        if name not in loaded:
            loaded[name] = evaluate.load(str(MODULES / name))
        return loaded[name]
    return _load


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _hub_inputs(dataset: dict, predictions: dict, na_probs: dict | None = None, *, v2: bool = False):
    """The hub squad metric's input lists for a SQuAD file and an official predictions dict (in file orders)."""
    refs = [{"id": qa["id"], "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in dataset["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    preds = []
    for qid, text in predictions.items():
        pred = {"id": qid, "prediction_text": text}
        if v2:
            pred["no_answer_probability"] = None if na_probs is None else na_probs[qid]
        preds.append(pred)
    return preds, refs


def _cli(module: str, *args: str) -> dict:
    """A CLI's printed JSON, from a separate process, without the timing field."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=True)
    result = json.loads(proc.stdout)
    result.pop("eval_seconds", None)
    return result


def _write_generated_predictions(tmp_path: Path, data_file: Path) -> tuple[Path, Path]:
    """Deterministic predictions (exact, with article and punctuation, partial, wrong, empty) and na-probs.

    The probabilities hold ties (0.5) so that the v2.0 sweep's order matters; both files list ids in file order.
    """
    dataset = _read(data_file)
    qas = [qa for article in dataset["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    preds, probs = {}, {}
    for i, qa in enumerate(qas):
        gold = qa["answers"][0]["text"] if qa["answers"] else "Margaret Leask"
        preds[qa["id"]] = [gold, f"The {gold.upper()}!", gold.split()[0], "Paris", "", f"{gold} and more"][i % 6]
        probs[qa["id"]] = [0.2, 0.5, 0.9, 0.5, 0.1, 0.7][i % 6]
    pred_file, prob_file = tmp_path / "predictions.json", tmp_path / "na_probs.json"
    pred_file.write_text(json.dumps(preds))
    prob_file.write_text(json.dumps(probs))
    return pred_file, prob_file


def _wordnet_or_skip():
    try:
        text_metrics._wordnet()
    except text_metrics.WordNetMissingError:
        pytest.skip("WordNet 3.0 not installed: run python -m analysis.wordnet_setup")


# ----------------------------------------------------------------------------------------------------
# SQuAD v1.1 and v2.0


@pytest.mark.parametrize("fixture", ["metrics", "generated"])
def test_squad_module_gives_cli_and_plain_numbers(load, tmp_path, fixture):
    if fixture == "metrics":  # with a missing and an extra prediction
        data_file = METRIC_FIXTURES / "squad_v1_tiny.json"
        pred_file = METRIC_FIXTURES / "squad_v1_tiny_predictions.json"
    else:
        data_file = SQUAD_FIXTURES / "tiny-v1.1.json"
        pred_file, _ = _write_generated_predictions(tmp_path, data_file)
    dataset, predictions = _read(data_file), _read(pred_file)
    preds, refs = _hub_inputs(dataset, predictions)

    result = load("squad").compute(predictions=preds, references=refs)
    assert result == squad.evaluate_squad(dataset, predictions)
    assert result == _cli("analysis.squad", "--data", data_file, "--predictions", pred_file)
    assert 0 < result["f1"] < 100 and result["version"] == "1.1"


def test_squad_module_loads_by_relative_path_from_the_repository_root(hf_cache, monkeypatch):
    monkeypatch.chdir(REPO)
    module = evaluate.load("analysis/evaluate_modules/squad")
    preds = [{"id": "q1", "prediction_text": "the Broncos"}]
    refs = [{"id": "q1", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}}]
    expected = 100 * squad.f1_score("the Broncos", "Denver Broncos")
    assert module.compute(predictions=preds, references=refs)["f1"] == expected


@pytest.mark.parametrize("probs, thresh", [(False, None), (True, None), (True, 0.5), (True, 0.0)])
@pytest.mark.parametrize("fixture", ["metrics", "generated"])
def test_squad_v2_module_gives_cli_and_plain_numbers(load, tmp_path, fixture, probs, thresh):
    if fixture == "metrics":
        data_file = METRIC_FIXTURES / "squad_v2_tiny.json"
        pred_file = METRIC_FIXTURES / "squad_v2_tiny_predictions.json"
        prob_file = METRIC_FIXTURES / "squad_v2_tiny_na_probs.json"
    else:
        data_file = SQUAD_FIXTURES / "tiny-v2.0.json"
        pred_file, prob_file = _write_generated_predictions(tmp_path, data_file)
    dataset, predictions = _read(data_file), _read(pred_file)
    na_probs = _read(prob_file) if probs else None
    # The module sweeps ties in prediction order, the CLI in na-prob-file order: give both the same order.
    predictions = {qid: predictions[qid] for qid in na_probs} if na_probs else predictions
    preds, refs = _hub_inputs(dataset, predictions, na_probs, v2=True)
    kwargs = {} if thresh is None else {"no_answer_threshold": thresh}
    cli_args = ["--data", data_file, "--predictions", pred_file]
    cli_args += ["--na-prob-file", prob_file] if probs else []
    cli_args += [] if thresh is None else ["--na-prob-thresh", str(thresh)]

    result = load("squad_v2").compute(predictions=preds, references=refs, **kwargs)
    assert result == squad.evaluate_squad(dataset, predictions, na_probs, 1.0 if thresh is None else thresh)
    assert result == _cli("analysis.squad", *cli_args)
    assert (result["best_f1"] is None) == (not probs) and result["NoAns_total"] > 0


@pytest.mark.slow
def test_squad_aux_gives_the_cli_aux_metrics(load):
    _wordnet_or_skip()
    data_file = METRIC_FIXTURES / "squad_v2_tiny.json"
    pred_file = METRIC_FIXTURES / "squad_v2_tiny_predictions.json"
    preds, refs = _hub_inputs(_read(data_file), _read(pred_file), v2=True)
    result = load("squad_v2").compute(predictions=preds, references=refs, aux=True)
    assert result == _cli("analysis.squad", "--data", data_file, "--predictions", pred_file, "--aux")
    assert "auxiliary" in result["auxiliary_text_metrics"]["note"]


def test_squad_input_errors(load):
    refs = [{"id": "q1", "answers": {"text": ["yes"], "answer_start": [0]}},
            {"id": "q2", "answers": {"text": [], "answer_start": []}}]
    twice = [{"id": "q1", "prediction_text": "yes"}, {"id": "q1", "prediction_text": "no"}]
    with pytest.raises(ValueError, match="'q1' appears more than once"):
        load("squad").compute(predictions=twice, references=refs)
    with pytest.raises(squad.SquadFormatError, match="has no answers"):  # no-answer data is v2.0
        load("squad").compute(predictions=[twice[0], {"id": "q2", "prediction_text": ""}], references=refs)
    partial = [{"id": "q1", "prediction_text": "yes", "no_answer_probability": 0.3},
               {"id": "q2", "prediction_text": "", "no_answer_probability": None}]
    with pytest.raises(ValueError, match="no_answer_probability is missing for 1 predictions"):
        load("squad_v2").compute(predictions=partial, references=refs)


# ----------------------------------------------------------------------------------------------------
# Auxiliary text metrics and classification


def test_answer_text_metrics_module_gives_text_metrics_numbers(load):
    _wordnet_or_skip()
    dataset = _read(SQUAD_FIXTURES / "tiny-v1.1.json")
    qas = [qa for article in dataset["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    golds = [[a["text"] for a in qa["answers"]] for qa in qas]
    answers = [g[0] if i % 3 else f"the {g[-1]} indeed" for i, g in enumerate(golds)]
    module = load("answer_text_metrics")

    result = module.compute(predictions=answers, references=golds)
    assert result == text_metrics.text_metrics(answers, golds)
    assert "auxiliary" in result["note"] and 0 < result["meteor"] < 1
    firsts = [g[0] for g in golds]  # the one-reference-per-answer feature option
    assert module.compute(predictions=answers, references=firsts, with_meteor=False) == \
        text_metrics.text_metrics(answers, firsts, with_meteor=False)


def test_classification_module_gives_cli_and_plain_numbers(load):
    jsonl = METRIC_FIXTURES / "classification_predictions.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    y_true, y_pred = [row["label"] for row in rows], [row["prediction"] for row in rows]
    names = ["negative", "neutral", "positive"]
    module = load("classification")

    result = module.compute(predictions=y_pred, references=y_true, label_names=names)
    assert result == classification.classification_metrics(y_true, y_pred, label_names=names)
    printed = _cli("analysis.classification", "--predictions", jsonl, "--label-names", *names)
    # The CLI prints {"predictions": FILE, "splits": {split: metrics}}; the fixture has no split column, so one.
    ((cli_split, cli_metrics),) = printed["splits"].items()
    assert result == cli_metrics
    assert module.compute(predictions=y_pred, references=y_true, num_classes=5) == \
        classification.classification_metrics(y_true, y_pred, num_classes=5)
    # Without num_classes/label_names the CLI's default: SST-5's 5 named classes (the fixture has labels 0..2 only).
    default = module.compute(predictions=y_pred, references=y_true)
    assert default == classification.classification_metrics(y_true, y_pred, num_classes=5, label_names=SST5_NAMES)
    assert default["label_names"] == list(SST5_NAMES) and default["per_class"]["very positive"]["support"] == 0
    assert default == _cli("analysis.classification", "--predictions", jsonl)["splits"][cli_split]
    words = [names[y] for y in y_true], [names[y] for y in y_pred]  # SST-5 class names: the same default
    as_strings = module.compute(predictions=words[1], references=words[0])
    assert as_strings == classification.classification_metrics(*words, label_names=SST5_NAMES)
    assert as_strings["labels"] == list(SST5_NAMES) and as_strings["accuracy"] == result["accuracy"]
    other = module.compute(predictions=["b", "a"], references=["a", "a"])  # other strings: the ones given, sorted
    assert other == classification.classification_metrics(["a", "a"], ["b", "a"]) and other["labels"] == ["a", "b"]


def test_combine_two_modules(load):
    answers, golds = ["Paris", "London", "Rome", "the Moon"], ["Paris", "London", "Paris", "Moon"]
    combined = evaluate.combine([load("classification"), load("answer_text_metrics")])
    result = combined.compute(predictions=answers, references=golds)
    clf = classification.classification_metrics(golds, answers)
    aux = text_metrics.text_metrics(answers, golds)
    # combine prefixes the keys both modules return with the module name.
    assert result.pop("classification_num_examples") == clf.pop("num_examples")
    assert result.pop("answer_text_metrics_num_examples") == aux.pop("num_examples")
    assert result == {**clf, **aux}
    assert result["accuracy"] == 0.5


# ----------------------------------------------------------------------------------------------------
# Thin wrappers, loading and the repository locator


@pytest.mark.parametrize("name, target, inputs", [
    ("squad", (squad, "evaluate_squad"),
     {"predictions": [{"id": "q", "prediction_text": "a"}],
      "references": [{"id": "q", "answers": {"text": ["a"], "answer_start": [0]}}]}),
    ("squad_v2", (squad, "evaluate_squad"),
     {"predictions": [{"id": "q", "prediction_text": "a", "no_answer_probability": None}],
      "references": [{"id": "q", "answers": {"text": ["a"], "answer_start": [0]}}]}),
    ("answer_text_metrics", (text_metrics, "text_metrics"), {"predictions": ["a"], "references": ["a"]}),
    ("classification", (classification, "classification_metrics"), {"predictions": [1], "references": [1]}),
])
def test_modules_call_the_plain_functions_at_compute_time(load, monkeypatch, name, target, inputs):
    # A copy of the scoring code inside a module would ignore this patch and keep its own numbers.
    module = load(name)
    calls = []
    monkeypatch.setattr(*target, lambda *args, **kwargs: calls.append(args) or {"patched": True})
    assert module.compute(**inputs) == {"patched": True} and len(calls) == 1


def test_modules_load_offline_from_the_local_folder(load, hf_cache):
    for name in NAMES:
        module = load(name)
        assert module.name == name
        # evaluate ran its copy in our cache folder; nothing came from the Hub.
        copies = list((hf_cache / "modules" / "evaluate_modules" / "metrics" / name).glob(f"*/{name}.py"))
        assert (MODULES / name / f"{name}.py").read_bytes() in [copy.read_bytes() for copy in copies]


def test_the_repository_locator_is_the_same_in_every_script():
    def block(name):
        text = (MODULES / name / f"{name}.py").read_text(encoding="utf-8")
        start, end = text.index("# ---- repository locator"), text.index("# ---- end of repository locator ----")
        return text[start:end]
    assert len({block(name) for name in NAMES}) == 1


_LOAD_ALL = f"NAMES = {NAMES!r}\n" + """
import json, sys, evaluate
root = sys.argv[1]
results = {}
for name in NAMES:
    results[name] = evaluate.load(f"{root}/analysis/evaluate_modules/{name}").name
preds = [{"id": "q", "prediction_text": "the Broncos"}]
refs = [{"id": "q", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}}]
squad = evaluate.load(f"{root}/analysis/evaluate_modules/squad")
results["f1"] = squad.compute(predictions=preds, references=refs)["f1"]
import analysis
results["analysis"] = analysis.__file__
print(json.dumps(results))
"""


@pytest.mark.slow
def test_modules_find_their_own_checkout_from_another_directory(tmp_path):
    """Fresh processes outside the repository, without PYTHONPATH, sharing one modules cache.

    A second checkout with byte-identical scripts (evaluate caches them as one copy, whose recorded original
    path is the first loader's) must still get its own analysis package, and so must the repository after it.
    """
    other = tmp_path / "other-checkout"
    for package in ("analysis", "metrics", "train"):  # train: SST-5's class names for classification
        shutil.copytree(REPO / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_METRICS_CACHE=str(tmp_path / "metrics"))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    for root in (other, REPO):
        proc = subprocess.run([sys.executable, "-c", _LOAD_ALL, str(root)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        assert Path(results.pop("analysis")) == root / "analysis" / "__init__.py"
        assert results.pop("f1") == 100 * squad.f1_score("the Broncos", "Denver Broncos")
        assert results == {name: name for name in NAMES}


# ----------------------------------------------------------------------------------------------------
# The hub's copies, where cached


def _cached_hub_script(name: str) -> Path:
    scripts = sorted((HOME_METRIC_MODULES / f"evaluate-metric--{name}").glob(f"*/{name}.py"))
    if not scripts:
        pytest.skip(f"the hub's {name} metric is not cached under {HOME_METRIC_MODULES} (nothing is downloaded)")
    return scripts[-1]


def test_hub_squad_agrees_where_cached(load):
    hub = evaluate.load(str(_cached_hub_script("squad")))
    preds, refs = _hub_inputs(_read(METRIC_FIXTURES / "squad_v1_tiny.json"),
                              _read(METRIC_FIXTURES / "squad_v1_tiny_predictions.json"))
    ours = load("squad").compute(predictions=preds, references=refs)
    theirs = hub.compute(predictions=preds, references=refs)
    assert theirs == {"exact_match": ours["exact_match"], "f1": ours["f1"]}


def test_hub_squad_v2_agrees_where_cached(load):
    hub = evaluate.load(str(_cached_hub_script("squad_v2")))
    preds, refs = _hub_inputs(_read(METRIC_FIXTURES / "squad_v2_tiny.json"),
                              _read(METRIC_FIXTURES / "squad_v2_tiny_predictions.json"),
                              _read(METRIC_FIXTURES / "squad_v2_tiny_na_probs.json"), v2=True)
    ours = load("squad_v2").compute(predictions=preds, references=refs, no_answer_threshold=0.5)
    theirs = hub.compute(predictions=preds, references=refs, no_answer_threshold=0.5)
    for key, value in theirs.items():
        # The hub stores probabilities as float32, so its thresholds are 0.1 only to float32 precision.
        assert ours[key] == (pytest.approx(value, rel=1e-6) if key.endswith("_thresh") else value), key
