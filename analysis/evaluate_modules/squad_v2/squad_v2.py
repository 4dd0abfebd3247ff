"""SQuAD v2.0 scores with no-answer probabilities as an ``evaluate`` module: a thin wrapper over ``metrics.squad``.

Inputs are shaped as the hub's ``squad_v2`` metric, so the two can be swapped; the numbers and keys are those
of ``python -m analysis.squad`` on v2.0 data (the official v2.0 script's, bit for bit).
"""

import importlib
import json
import sys
from pathlib import Path

import datasets
import evaluate


# ---- repository locator: the same block in every script under analysis/evaluate_modules (a test checks) ----
def _import_from_repository(*modules):
    """Import each module (a dotted name: ``metrics.squad``, ``analysis.evaluate_modules.inputs``) from the
    checkout this script was loaded from.

    evaluate.load() runs a copy of this file from its modules cache (HF_MODULES_CACHE), so neither __file__ nor
    the current directory says where the repository is. The original's path is, most trusted first: the path
    given to evaluate.load() (read from the loader's frame; right even when several checkouts hold identical
    copies, which evaluate caches as one), the "original file path" evaluate records next to its copy, and
    __file__ when the script is imported in place. A candidate counts only if it is a byte-identical copy of
    this file at <root>/analysis/evaluate_modules/<name>/<name>.py and <root> holds the packages of the modules
    (metrics/, analysis/).
    """
    here = Path(__file__)
    packages = sorted({name.split(".")[0] for name in modules})
    candidates = []
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "evaluate.loading" and isinstance(frame.f_locals.get("path"), str):
            candidates.append(Path(frame.f_locals["path"]))
        frame = frame.f_back
    meta = here.with_suffix(".json")
    if meta.is_file():
        candidates.append(Path(json.loads(meta.read_text(encoding="utf-8"))["original file path"]))
    candidates.append(here)
    for candidate in candidates:
        script = (candidate if candidate.suffix == ".py" else candidate / f"{candidate.name}.py").resolve()
        if len(script.parents) < 4 or not script.is_file() or script.read_bytes() != here.read_bytes():
            continue
        root = script.parents[3]
        if not all((root / package / "__init__.py").is_file() for package in packages):
            continue
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        for package in packages:
            imported = importlib.import_module(package)
            # Python imports a package once per process: a package from another checkout would win.
            if Path(imported.__file__).resolve().parents[1] != root:
                raise ImportError(f"the {package} package is already imported from {imported.__file__}, but this "
                                  f"metric belongs to the repository at {root}; use one checkout per process")
        return [importlib.import_module(name) for name in modules]
    try:  # the script was copied out of the repository: accept the repository on sys.path (PYTHONPATH)
        return [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        raise ImportError(f"cannot find the repository of {here.name}: load it from its folder in the repository, "
                          "evaluate.load('<repo>/analysis/evaluate_modules/<name>'), or put <repo> on PYTHONPATH"
                          ) from exc
# ---- end of repository locator ----

_squad, _inputs = _import_from_repository("metrics.squad", "analysis.evaluate_modules.inputs")

_DESCRIPTION = """SQuAD v2.0 exact match and F1 (0..100) with HasAns/NoAns splits and the official no-answer threshold
sweep, computed by metrics.squad.evaluate_squad: the numbers of `python -m analysis.squad` with --na-prob-file and
--na-prob-thresh. Predictions and references are paired by question id."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str, "no_answer_probability": float or None}; "" predicts
        no answer. None on every prediction gives the CLI's result without --na-prob-file (best_* are None); a
        number on some predictions only is an error. Ties between equal probabilities are broken in prediction
        order, as the CLI breaks them in the order of the na-prob file.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}; empty lists for
        a question without an answer.
    no_answer_threshold: a question whose no_answer_probability is above this counts as answered "no answer"
        (the CLI's --na-prob-thresh). Default 1.0.
    aux: also return "auxiliary_text_metrics" (BLEU/ROUGE/METEOR against the best-matching gold answer, no-answer
        questions left out), as the CLI's --aux does. Default False.
Returns:
    exact and exact_match (the same value), f1, total, HasAns_exact, HasAns_f1, HasAns_total, HasAns_missing,
    NoAns_exact, NoAns_f1, NoAns_total, NoAns_missing (exact/f1 None for an empty split), best_exact,
    best_exact_thresh, best_f1, best_f1_thresh (None without probabilities), na_prob_thresh, version ("2.0"),
    missing_predictions, missing_scored_as (how those were scored: 0, also on no-answer questions, not as an
    abstention), extra_predictions (ignored); auxiliary_text_metrics with aux=True.
Examples:
    >>> squad_v2 = evaluate.load("analysis/evaluate_modules/squad_v2")
    >>> squad_v2.compute(predictions=[{"id": "q1", "prediction_text": "", "no_answer_probability": 0.9}],
    ...                  references=[{"id": "q1", "answers": {"text": [], "answer_start": []}}])["exact"]
    100.0
"""

_CITATION = """@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of ACL 2018 (Volume 2: Short Papers)",
    year = "2018",
    pages = "784--789",
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The hub squad_v2 metric's features, except that the probability is float64: float32 would turn 0.1
            # into 0.10000000149011612 and the reported thresholds would no longer be the CLI's.
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string"),
                                "no_answer_probability": datasets.Value("float64")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0, aux=False):
        return _squad.evaluate_squad(_inputs.squad_articles(references), _inputs.squad_predictions(predictions),
                                     _inputs.no_answer_probabilities(predictions), no_answer_threshold,
                                     version="2.0", aux=aux)
