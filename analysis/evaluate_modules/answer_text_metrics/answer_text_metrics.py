"""AUXILIARY BLEU / ROUGE / METEOR on answers as an ``evaluate`` module: a wrapper over ``metrics.text``.

For extractive QA these n-gram scores are auxiliary: EM/F1 (the squad and squad_v2 modules) are the primary
metrics. The numbers are those of ``metrics.text.text_metrics``; for exactly what the SQuAD CLI's --aux
reports (each prediction against its best-matching gold answer) use ``aux=True`` of the squad modules.
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

(_text_metrics,) = _import_from_repository("metrics.text")

_DESCRIPTION = """AUXILIARY text-overlap metrics on short answers, computed by metrics.text.text_metrics:
sacrebleu corpus BLEU and the mean of sacrebleu sentence BLEU (0..100, 13a tokenizer, lowercase, exp smoothing,
effective order; a perfect match is 100.0), rouge-score ROUGE-1/2/L/Lsum F-measure and nltk METEOR (0..1, mean over
examples, lowercase \\w+ tokens). ROUGE-2 of a one-word answer is 0, an exact match included. Reported next to
EM/F1, never instead of them. METEOR needs WordNet 3.0 installed offline (python -m analysis.wordnet_setup)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of answer strings.
    references: list of one reference string, or of a list of acceptable strings, per prediction.
    with_meteor: compute METEOR (needs WordNet 3.0); with False, "meteor" is None. Default True.
Returns:
    bleu (corpus BLEU, 0..100), bleu_sentence_mean (mean sentence BLEU, 0..100), bleu_signature, rouge1, rouge2,
    rougeL, rougeLsum (F-measures), meteor (0..1), num_examples, note (which says that these metrics are auxiliary)
    and notes (what each figure is: corpus vs sentence BLEU, ROUGE F-measure and tokeniser, ROUGE-2 of one word).
Examples:
    >>> aux = evaluate.load("analysis/evaluate_modules/answer_text_metrics")
    >>> aux.compute(predictions=["Denver Broncos"], references=[["Denver Broncos", "Broncos"]])["rouge1"]
    1.0
"""

_CITATION = """@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
@inproceedings{banerjee-lavie-2005-meteor,
    title = "{METEOR}: An Automatic Metric for {MT} Evaluation with Improved Correlation with Human Judgments",
    author = "Banerjee, Satanjeev and Lavie, Alon",
    booktitle = "Proceedings of the ACL Workshop on Intrinsic and Extrinsic Evaluation Measures",
    year = "2005",
    pages = "65--72",
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerTextMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Several references per answer first, as the hub's bleu and rouge metrics accept either shape.
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu",
                            "https://github.com/google-research/google-research/tree/master/rouge",
                            "https://www.nltk.org/api/nltk.translate.meteor_score.html"],
        )

    def _compute(self, predictions, references, with_meteor=True):
        return _text_metrics.text_metrics(predictions, references, with_meteor=with_meteor)
