"""Classification metrics as an ``evaluate`` module: a thin wrapper over ``metrics.classification``.

The numbers and keys are those ``python -m analysis.classification`` prints for a split (accuracy, macro and
weighted precision/recall/F1, per-class scores, confusion matrix): pass one split's labels per compute().
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

# analysis.classification (the CLI's default label set) reads SST-5's class names from train.common.data.sst: named
# here so that the locator checks that train/ too is this checkout's.
_classification, _cli, _ = _import_from_repository("metrics.classification", "analysis.classification",
                                                   "train.common.data.sst")

_DESCRIPTION = """Accuracy, macro and weighted precision/recall/F1 (0..1), per-class scores and the confusion matrix
(rows = true, columns = predicted), computed by metrics.classification.classification_metrics: the numbers
`python -m analysis.classification` prints for a split. Every class of the label set counts in the macro average,
also one that never occurs; a zero division gives 0. Without num_classes and label_names the label set is the CLI's
default (analysis.classification.default_label_set): SST-5's 5 named classes for integer labels 0..4 or SST-5 class
names, else the labels given (integer ids 0..max, or the sorted strings)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted labels (int or str).
    references: list of true labels, of the same type.
    num_classes: integer labels are range(num_classes) (the CLI's --num-classes). Optional.
    label_names: class names in label order (the CLI's --label-names). Optional. Without either, the CLI's default:
        SST-5 (5 classes, "very negative" .. "very positive") when the labels are 0..4 or those names.
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, weighted_precision, weighted_recall, weighted_f1,
    per_class ({name: {precision, recall, f1, support}}), confusion_matrix, labels, label_names, num_examples.
Examples:
    >>> clf = evaluate.load("analysis/evaluate_modules/classification")
    >>> clf.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # String labels first: evaluate takes the first option that encodes the first example, and int64
            # would quietly turn the string label "1" into the number 1.
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
        )

    def _compute(self, predictions, references, num_classes=None, label_names=None):
        if num_classes is None and label_names is None:
            num_classes, label_names, _, _ = _cli.default_label_set([*references, *predictions])
        return _classification.classification_metrics(references, predictions, num_classes, label_names)
