"""SQuAD v1.1 exact match and F1 as an ``evaluate`` module: a thin wrapper over ``metrics.squad``.

Inputs are shaped as the hub's ``squad`` metric, so the two can be swapped; the numbers are those of
``python -m analysis.squad`` (the official v1.1 script's, bit for bit).
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

_DESCRIPTION = """SQuAD v1.1 exact match and F1 (0..100), computed by metrics.squad.evaluate_squad with the official
v1.1 rules: the numbers of `python -m analysis.squad`. Predictions and references are paired by question id."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}; every question
        needs at least one answer (no-answer data is v2.0: use the squad_v2 module).
    aux: also return "auxiliary_text_metrics" (BLEU/ROUGE/METEOR against the best-matching gold answer), as the
        CLI's --aux does. Default False.
Returns:
    exact_match, f1 (0..100), version ("1.1"), total (references), missing_predictions (references without a
    prediction), missing_scored_as (how those were scored: 0), extra_predictions (ids not among the references,
    ignored), empty_normalized_exact_matches (the official EM 1 / F1 0 cases); auxiliary_text_metrics with aux=True.
Examples:
    >>> squad = evaluate.load("analysis/evaluate_modules/squad")
    >>> squad.compute(predictions=[{"id": "q1", "prediction_text": "the Broncos"}],
    ...               references=[{"id": "q1", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}}])["f1"]
    66.66666666666666
"""

_CITATION = """@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
    pages = "2383--2392",
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The hub squad metric's features, so that inputs prepared for it work unchanged.
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, aux=False):
        return _squad.evaluate_squad(_inputs.squad_articles(references), _inputs.squad_predictions(predictions),
                                     version="1.1", aux=aux)
