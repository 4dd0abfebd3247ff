"""Markdown report with PNG plots comparing training runs.

    python -m analysis.report RUN_DIR [RUN_DIR ...] --out report/ \\
        [--reference ref.json] [--params-diff diff.json ...] [--arms RUNS] [--strict]

Writes ``OUT/report.md`` and ``OUT/plots/*.png`` (with ``--arms``: the analysis.arms table and
``OUT/arms.json``). From Python: ``load_run(run_dir)``,
``build_report(run_dirs, out_dir, reference=None, params_diffs=(), arms=None)``.

A run folder (written by the training scripts) may hold
``config.yaml`` (top-level ``task``: pretraining|classification|qa, and ``world_size``),
``metrics.jsonl`` (one JSON object per line; records with a ``split`` key are evaluations,
the others training steps), ``eval_results.json``, ``tensorboard/`` (event files; a series
missing from metrics.jsonl is read from the tags ``train/<key>`` / ``eval/<key>``) and
``params_diff.json`` (from ``python -m analysis.params A B --json``). Missing files are noted
in the report; a malformed file is an error that names the file (and the line, for
metrics.jsonl). Unknown keys are ignored.

Reference numbers (``--reference``): a JSON object keyed by task; each task maps column ids
of that task's results table to numbers, plus an optional free-text ``source``::

    {"pretraining":    {"perplexity": 4.0, "source": "where the number comes from"},
     "classification": {"test_accuracy": 0.53},
     "qa":             {"exact_match": 80.8, "f1": 88.5}}

Column ids that take a reference:
  pretraining:    final_train_loss, mlm_loss, perplexity, nsp_accuracy (last evaluated epoch),
                  test_mlm_loss, test_perplexity, test_nsp_accuracy
  classification: dev_accuracy, dev_macro_f1, test_accuracy, test_macro_f1,
                  test_phrases_accuracy, majority_test_accuracy
  qa:             exact_match, f1, HasAns_exact, HasAns_f1, NoAns_exact, NoAns_f1, best_f1
Unknown tasks or column ids are errors. The reference is shown as an extra table row.

Sanity checks stated in the report: perplexity falls every epoch (WARNING if not) and equals
exp(mlm_loss) (WARNING if not); SQuAD EM <= F1 everywhere (BUG if not) and scores lie in
[0, 100]; classification accuracy agrees with its confusion matrix (BUG if not) and beats the
majority baseline (WARNING if not); training losses are finite. ``--strict`` makes the CLI
exit with status 1 when any WARNING or BUG is raised.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from analysis import plots
from analysis.arms import ArmsError, compare_arms
from analysis.arms import markdown as markdown_arms
from train.common.run_folder import RunFolder, RunFolderError, read_json

TASKS = ("pretraining", "classification", "qa")

COLUMNS = {
    "pretraining": (
        ("world_size", "world size"), ("steps", "steps"), ("epochs", "epochs"),
        ("final_train_loss", "train loss (last)"), ("mlm_loss", "val MLM loss"),
        ("perplexity", "val perplexity"), ("unigram_perplexity", "unigram baseline (val)"),
        ("nsp_accuracy", "val NSP acc"), ("nsp_majority_accuracy", "NSP majority (val)"),
        ("test_mlm_loss", "test MLM loss"), ("test_perplexity", "test perplexity"),
        ("test_unigram_perplexity", "unigram baseline (test)"), ("test_nsp_accuracy", "test NSP acc"),
    ),
    "classification": (
        ("world_size", "world size"), ("steps", "steps"), ("dev_accuracy", "dev acc"),
        ("dev_macro_f1", "dev macro-F1"), ("test_accuracy", "test acc"),
        ("test_macro_f1", "test macro-F1"), ("test_phrases_accuracy", "test phrases acc"),
        ("majority_test_accuracy", "majority baseline (test)"), ("seeds", "seeds"),
        ("params_added", "params added"),
    ),
    "qa": (
        ("world_size", "world size"), ("steps", "steps"), ("version", "SQuAD"),
        ("exact_match", "EM"), ("f1", "F1"), ("HasAns_exact", "HasAns EM"),
        ("HasAns_f1", "HasAns F1"), ("NoAns_exact", "NoAns EM"), ("NoAns_f1", "NoAns F1"),
        ("best_f1", "best F1"), ("total", "questions"), ("params_added", "params added"),
    ),
}
_NOT_REFERENCE = {"world_size", "steps", "epochs", "seeds", "params_added", "version", "total"}

# Pairs checked for EM <= F1.
_EM_F1_PAIRS = (("exact_match", "f1"), ("HasAns_exact", "HasAns_f1"), ("NoAns_exact", "NoAns_f1"),
                ("best_exact", "best_f1"))

_LEVEL_TAG = {"ok": "OK", "info": "INFO", "warning": "WARNING", "bug": "BUG"}


class ReportError(Exception):
    """A run folder, reference or params-diff file that cannot be read; names the file."""


@dataclass
class Check:
    level: str  # "ok" | "info" | "warning" | "bug"
    run: str
    message: str


@dataclass
class Run:
    path: Path
    name: str
    task: str
    config: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)  # metrics.jsonl, in file order
    eval_results: dict | None = None
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # TensorBoard
    params_diff: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def train_records(self) -> list[dict]:
        return [r for r in self.records if "split" not in r]

    def eval_records(self, split: str | None = None) -> list[dict]:
        return [r for r in self.records if "split" in r and (split is None or r["split"] == split)]

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(r["split"] for r in self.eval_records()))

    def series(self, key: str, split: str | None = None) -> tuple[list, list]:
        """(steps, values) of ``key`` from metrics.jsonl, else from TensorBoard."""
        records = self.eval_records(split) if split else self.train_records
        pairs = [(r.get("step"), _num(r.get(key))) for r in records]
        pairs = [p for p in pairs if p[1] is not None]
        if pairs:
            return [p[0] for p in pairs], [p[1] for p in pairs]
        tag = f"eval/{key}" if split else f"train/{key}"
        values = self.scalars.get(tag, [])
        return [s for s, _ in values], [v for _, v in values]

    @property
    def world_size(self):
        return self.config.get("world_size")

    @property
    def last_step(self):
        steps = [r["step"] for r in self.records if _num(r.get("step")) is not None]
        if not steps:
            steps = [s for values in self.scalars.values() for s, _ in values]
        return max(steps) if steps else None

    @property
    def epochs(self) -> list[dict]:
        return [e for e in _list((self.eval_results or {}).get("epochs")) if isinstance(e, dict)]


def _num(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


# ----------------------------------------------------------------------------- loading


@contextmanager
def _reading():
    """The run folder's readers name the file (and line) they cannot parse: that message, as a ReportError."""
    try:
        yield
    except RunFolderError as exc:
        raise ReportError(str(exc)) from exc


def _read_json(path: Path):
    with _reading():
        return read_json(path)


def read_tensorboard(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalar series by tag from every sub-folder of ``folder`` that holds event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(folder)
    dirs = sorted({p.parent for p in folder.rglob("events.out.tfevents*") if p.is_file()})
    scalars: dict[str, list[tuple[int, float]]] = {}
    for d in dirs:
        try:
            acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                scalars.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
        except Exception as exc:  # the accumulator raises assorted errors on corrupt files
            raise ReportError(f"{d}: cannot read TensorBoard events: {exc}") from exc
    return {tag: sorted(values) for tag, values in scalars.items()}


def load_params_diff(path) -> dict:
    """A diff from metrics.params.diff_parameters: the CLI's --json output (has "diff") or a bare diff."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"params diff not found: {path}")
    data = _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("diff"), dict):
        data = {**data["diff"], "summary": data.get("summary")}
    if not isinstance(data, dict) or not isinstance(data.get("by_layer"), list):
        raise ReportError(f"{path}: not a params diff (expected 'by_layer', as written by "
                          "python -m analysis.params A B --json)")
    return data


def load_run(run_dir) -> Run:
    """Read one run folder; missing files become notes, malformed files raise ReportError."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"run folder not found: {path}")
    run = Run(path=path, name=path.resolve().name, task="unknown")
    folder = RunFolder(path)
    with _reading():
        config, records, results = folder.read_config(), folder.read_metrics(), folder.read_eval_results()
    found = any(part is not None for part in (config, records, results))

    if config is None:
        run.notes.append(f"{folder.config_file} is missing")
    run.config = config or {}
    if records is None:
        run.notes.append(f"{folder.metrics_file} is missing")
    run.records = records or []
    if results is None:
        run.notes.append(f"{folder.eval_results_file} is missing: no final evaluation to report")
    run.eval_results = results

    if folder.tensorboard_dir.is_dir():
        run.scalars = read_tensorboard(folder.tensorboard_dir)
        found = found or bool(run.scalars)
        if not run.records and run.scalars:
            run.notes.append(f"curves read from TensorBoard events ({folder.METRICS} missing)")

    if folder.params_diff_file.is_file():
        run.params_diff = load_params_diff(folder.params_diff_file)

    if not found:
        raise ReportError(f"{path}: no run files ({folder.CONFIG}, {folder.METRICS}, {folder.EVAL_RESULTS}, "
                          f"{folder.TENSORBOARD}/)")

    task_cfg = run.config.get("task")
    task_res = (run.eval_results or {}).get("task")
    if task_cfg and task_res and task_cfg != task_res:
        run.notes.append(f"{folder.CONFIG} says task {task_cfg!r}, {folder.EVAL_RESULTS} says {task_res!r}")
    task = task_cfg or task_res
    if task not in TASKS:
        run.notes.append(f"unknown task {task!r}: showing generic curves only")
        task = "unknown"
    run.task = task
    return run


def load_reference(source) -> dict:
    """Validate reference numbers (schema in the module docstring) from a path or a dict."""
    origin = str(source) if isinstance(source, (str, Path)) else "reference"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ReportError(f"reference file not found: {path}")
        data = _read_json(path)
    else:
        data = source
    if not isinstance(data, dict):
        raise ReportError(f"{origin}: expected a JSON object keyed by task")
    out = {}
    for task, values in data.items():
        if task not in TASKS:
            raise ReportError(f"{origin}: unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if not isinstance(values, dict):
            raise ReportError(f"{origin}: {task!r} must map column ids to numbers")
        valid = [c for c, _ in COLUMNS[task] if c not in _NOT_REFERENCE]
        clean = {}
        for key, value in values.items():
            if key == "source":
                clean[key] = str(value)
            elif key not in valid:
                raise ReportError(f"{origin}: unknown {task} column {key!r} "
                                  f"(expected one of {', '.join(valid)})")
            elif _num(value) is None:
                raise ReportError(f"{origin}: {task}.{key} must be a number, got {value!r}")
            else:
                clean[key] = float(value)
        out[task] = clean
    return out


# ----------------------------------------------------------------------------- numbers


def perplexity_by_epoch(run: Run) -> tuple[list, list, str]:
    """(x, perplexity, x label) from eval_results epochs, else eval records, else TensorBoard."""
    pairs = [(e.get("epoch"), _num(e.get("perplexity"))) for e in run.epochs]
    pairs = [p for p in pairs if p[1] is not None]
    if pairs:
        return [p[0] for p in pairs], [p[1] for p in pairs], "epoch"
    for split in (s for s in run.splits if s != "test"):  # a final test record is no epoch
        recs = [r for r in run.eval_records(split) if _num(r.get("perplexity")) is not None]
        if recs:
            key = "epoch" if all("epoch" in r for r in recs) else "step"
            return [r[key] for r in recs], [float(r["perplexity"]) for r in recs], key
    values = run.scalars.get("eval/perplexity", [])
    return [s for s, _ in values], [v for _, v in values], "step"


def _split_metrics(run: Run, split: str) -> dict:
    return _dict(_dict((run.eval_results or {}).get("splits")).get(split))


def table_values(run: Run) -> dict:
    """Column id -> value for the run's row in its task's results table."""
    res = run.eval_results or {}
    values = {"world_size": run.world_size, "steps": run.last_step}
    if run.task == "pretraining":
        _, losses = run.series("loss")
        values["final_train_loss"] = losses[-1] if losses else None
        values["epochs"] = len(run.epochs) or None
        evaluated = [e for e in run.epochs if _num(e.get("perplexity")) is not None]
        last = evaluated[-1] if evaluated else {}
        if not last:
            _, ppl, _ = perplexity_by_epoch(run)
            last = {"perplexity": ppl[-1]} if ppl else {}
        test = _dict(res.get("test"))
        for key in ("mlm_loss", "perplexity", "nsp_accuracy", "unigram_perplexity", "nsp_majority_accuracy"):
            values[key] = _num(last.get(key))
            values[f"test_{key}"] = _num(test.get(key))
    elif run.task == "classification":
        for split in ("dev", "test"):
            m = _split_metrics(run, split)
            values[f"{split}_accuracy"] = _num(m.get("accuracy"))
            values[f"{split}_macro_f1"] = _num(m.get("macro_f1"))
        if values["dev_accuracy"] is None:
            _, acc = run.series("accuracy", split="dev")
            values["dev_accuracy"] = acc[-1] if acc else None
        values["test_phrases_accuracy"] = _num(_split_metrics(run, "test_phrases").get("accuracy"))
        values["majority_test_accuracy"] = _num(_dict(res.get("majority_baseline")).get("test"))
        seeds = _list(_dict(res.get("seeds")).get("runs"))
        values["seeds"] = len(seeds) or None
        values["params_added"] = _dict(res.get("params")).get("added_total")
    elif run.task == "qa":
        values["version"] = res.get("version")
        for key in ("exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                    "best_f1"):
            values[key] = _num(res.get(key))
        values["total"] = res.get("total") if isinstance(res.get("total"), int) else None
        values["params_added"] = _dict(res.get("params")).get("added_total")
    return values


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- checks


def sanity_checks(run: Run) -> list[Check]:
    """The plain-language checks stated in the report (see the module docstring)."""
    checks: list[Check] = []

    def add(level, message):
        checks.append(Check(level, run.name, message))

    for key in ("loss", "mlm_loss", "nsp_loss"):
        _, values = run.series(key)
        bad = sum(1 for v in values if not math.isfinite(v))
        if key != "nsp_loss":  # NaN is written as null; nsp_loss is legitimately null without NSP
            bad += sum(1 for r in run.train_records if key in r and r[key] is None)
        if bad:
            add("warning", f"training {key} has {bad} non-finite (or null) value(s)")
    if run.config and run.world_size is None:
        add("info", "config.yaml has no world_size")

    res = run.eval_results or {}
    if run.task == "pretraining":
        _check_perplexity(run, add)
    elif run.task == "classification":
        _check_classification(res, add)
    elif run.task == "qa":
        _check_qa(run, res, add)
    return checks


def _check_against_baselines(run: Run, add) -> None:
    """Plainly: does the model beat word frequencies (unigram perplexity on the same masks), and NSP chance?"""
    test = (run.eval_results or {}).get("test")
    last = test if isinstance(test, dict) and test else (run.epochs[-1] if run.epochs else {})
    label = "test" if last is test else "last validation"
    p, unigram = _num(last.get("perplexity")), _num(last.get("unigram_perplexity"))
    if p is not None and unigram is not None:
        if p < unigram:
            add("ok", f"{label}: perplexity {p:.3f} beats the unigram baseline {unigram:.3f} ({p / unigram:.2f}x)")
        else:
            add("warning", f"{label}: perplexity {p:.3f} does NOT beat the unigram baseline {unigram:.3f}: the model "
                           "has learnt no more than word frequencies")
    acc, majority = _num(last.get("nsp_accuracy")), _num(last.get("nsp_majority_accuracy"))
    if acc is not None and majority is not None:
        if acc > majority + 0.02:
            add("ok", f"{label}: NSP accuracy {acc:.4f} beats always-majority {majority:.4f}")
        else:
            add("warning", f"{label}: NSP accuracy {acc:.4f} is at chance (always-majority {majority:.4f})")


def _check_perplexity(run: Run, add) -> None:
    xs, ppl, xlabel = perplexity_by_epoch(run)
    if len(ppl) >= 2:
        rises = [i for i in range(1, len(ppl)) if ppl[i] >= ppl[i - 1]]
        for i in rises:
            add("warning", f"perplexity did not fall: {ppl[i - 1]:.3f} ({xlabel} {xs[i - 1]}) -> "
                           f"{ppl[i]:.3f} ({xlabel} {xs[i]}); a correct loop on real text shows it "
                           "fall (check the fixed eval masking and the loss normalisation)")
        if not rises:
            add("ok", f"perplexity fell every {xlabel}: " + " -> ".join(f"{p:.3f}" for p in ppl))
    elif ppl:
        add("info", f"one perplexity value ({ppl[0]:.3f}): its trend cannot be checked")
    else:
        add("info", "no perplexity recorded")
    _check_against_baselines(run, add)
    rows = [(f"epoch {e.get('epoch')}", e) for e in run.epochs]
    test = (run.eval_results or {}).get("test")
    if isinstance(test, dict):
        rows.append(("test", test))
    for label, e in rows:
        loss, p = _num(e.get("mlm_loss")), _num(e.get("perplexity"))
        if loss is not None and p is not None and p > 0 and \
                abs(math.log(p) - loss) > 1e-3 * max(1.0, abs(loss)):
            add("warning", f"{label}: perplexity {p:.4f} is not exp(mlm_loss) = {math.exp(loss):.4f} "
                           "(it must come from the token-averaged MLM loss alone)")
        acc = _num(e.get("nsp_accuracy"))
        if acc is not None and not 0 <= acc <= 1:
            add("bug", f"{label}: nsp_accuracy {acc} outside [0, 1]")


def _check_classification(res: dict, add) -> None:
    majority = _dict(res.get("majority_baseline"))
    for split, m in _dict(res.get("splits")).items():
        if not isinstance(m, dict):
            continue
        acc = _num(m.get("accuracy"))
        if acc is not None and not 0 <= acc <= 1:
            add("bug", f"{split}: accuracy {acc} outside [0, 1]")
        cm = m.get("confusion_matrix")
        if isinstance(cm, list) and cm:
            try:
                total = sum(sum(row) for row in cm)
                trace = sum(cm[i][i] for i in range(len(cm)))
            except (TypeError, IndexError):
                add("bug", f"{split}: confusion_matrix is not a square matrix of counts")
                continue
            n = m.get("num_examples")
            if isinstance(n, int) and n != total:
                add("bug", f"{split}: confusion matrix holds {total} examples, num_examples says {n}")
            if acc is not None and total and abs(trace / total - acc) > 1e-4:
                add("bug", f"{split}: accuracy {acc:.4f} disagrees with the confusion matrix "
                           f"({trace}/{total} = {trace / total:.4f})")
        base = _num(majority.get(split))
        if acc is not None and base is not None:
            if acc <= base:
                add("warning", f"{split}: accuracy {acc:.4f} does not beat the majority baseline "
                               f"{base:.4f}")
            else:
                add("ok", f"{split}: accuracy {acc:.4f} beats the majority baseline {base:.4f}")


def _check_qa(run: Run, res: dict, add) -> None:
    rows = [("final", res)] + [(f"epoch {e.get('epoch')}", e) for e in run.epochs]
    rows += [(f"{r.get('split')} step {r.get('step')}", r) for r in run.eval_records()]
    compared, violations = 0, 0
    for label, r in rows:
        for em_key, f1_key in _EM_F1_PAIRS:
            em, f1 = _num(r.get(em_key)), _num(r.get(f1_key))
            if em is None or f1 is None:
                continue
            compared += 1
            if em > f1 + 1e-9:
                violations += 1
                add("bug", f"{label}: {em_key} {em:.3f} > {f1_key} {f1:.3f}; EM can never exceed F1 "
                           "(check answer normalisation and the max over gold answers)")
            for key, v in ((em_key, em), (f1_key, f1)):
                if not 0 <= v <= 100:
                    add("bug", f"{label}: {key} {v} outside [0, 100]")
    if compared and not violations:
        add("ok", f"EM <= F1 holds in all {compared} EM/F1 pair(s)")
    if isinstance(res.get("auxiliary"), dict):
        add("info", "BLEU/ROUGE/METEOR are auxiliary for extractive QA; EM and F1 are the official "
                    "scores")


# ----------------------------------------------------------------------------- report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


def _unique_names(runs: list[Run]) -> None:
    """Disambiguate runs whose folders share a name: parent/name, then a counter."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"


def _image(lines: list[str], out_dir: Path, path: Path | None, alt: str) -> None:
    if path is not None:
        lines += [f"![{alt}]({Path(path).relative_to(out_dir).as_posix()})", ""]


def _per_epoch(run: Run, key: str) -> tuple[list, list] | None:
    pairs = [(e.get("epoch"), _num(e.get(key))) for e in run.epochs if _num(e.get(key)) is not None]
    return ([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None


def _dev_curves(run: Run) -> tuple[str, dict]:
    """(x label, {label: (xs, ys)}) of the evaluation metrics of a fine-tuning run."""
    keys = {"classification": (("dev_accuracy", "accuracy"), ("dev_macro_f1", "macro_f1")),
            "qa": (("exact_match", "exact_match"), ("f1", "f1"))}[run.task]
    curves = {k: c for k, _ in keys if (c := _per_epoch(run, k))}
    if curves:
        return "epoch", curves
    for split in run.splits:
        for _, key in keys:
            xs, ys = run.series(key, split=split)
            if xs:
                curves[f"{split} {key}"] = (xs, ys)
    return "step", curves


def _run_plots(run: Run, out_dir: Path, plot_dir: Path) -> list[str]:
    lines: list[str] = []
    p = plot_dir / _slug(run.name)

    loss_keys = ("loss", "mlm_loss", "nsp_loss") if run.task == "pretraining" else ("loss",)
    train = {f"train {k}": run.series(k) for k in loss_keys}
    val = {f"{split} {k}": run.series(k, split=split) for split in run.splits for k in loss_keys}
    val = {k: v for k, v in val.items() if v[0]}
    if not val:
        for k in loss_keys:
            pairs = [(e.get("step"), _num(e.get(k))) for e in run.epochs]
            pairs = [pr for pr in pairs if pr[0] is not None and pr[1] is not None]
            if pairs:
                val[f"eval {k} (per epoch)"] = ([a for a, _ in pairs], [b for _, b in pairs])
    _image(lines, out_dir, plots.plot_lines(f"{p}_loss.png", f"{run.name}: loss", "step", "loss",
                                            train, markers=val), "loss curves")

    if run.task == "pretraining":
        xs, ppl, xlabel = perplexity_by_epoch(run)
        _image(lines, out_dir,
               plots.plot_lines(f"{p}_perplexity.png", f"{run.name}: validation perplexity", xlabel,
                                "perplexity", {}, markers={"perplexity": (xs, ppl)}),
               "perplexity per epoch")
    _image(lines, out_dir, plots.plot_lines(f"{p}_lr.png", f"{run.name}: learning rate", "step",
                                            "learning rate", {"lr": run.series("lr")}),
           "learning rate")
    tput, label = run.series("tokens_per_second"), "tokens/s"
    if not tput[0]:
        tput, label = run.series("samples_per_second"), "samples/s"
    _image(lines, out_dir, plots.plot_lines(f"{p}_throughput.png", f"{run.name}: throughput", "step",
                                            label, {label: tput}), "throughput")

    res = run.eval_results or {}
    if run.task in ("classification", "qa"):
        xlabel, curves = _dev_curves(run)
        _image(lines, out_dir, plots.plot_lines(f"{p}_eval.png", f"{run.name}: evaluation", xlabel,
                                                "score", {}, markers=curves), "evaluation per epoch")
    if run.task == "classification":
        for split in ("dev", "test"):
            m = _split_metrics(run, split)
            if isinstance(m.get("confusion_matrix"), list):
                _image(lines, out_dir,
                       plots.plot_confusion(f"{p}_confusion_{split}.png", m["confusion_matrix"],
                                            _list(m.get("labels")),
                                            f"{run.name}: {split} (rows normalised, counts shown)"),
                       f"{split} confusion matrix")
    elif run.task == "qa":
        official = {k: res.get(k) for k in ("exact_match", "f1", "HasAns_exact", "HasAns_f1",
                                            "NoAns_exact", "NoAns_f1")}
        _image(lines, out_dir,
               plots.plot_bars(f"{p}_squad.png", f"{run.name}: SQuAD v{res.get('version', '?')} "
                               "official metrics", official, "score (0-100)"),
               "SQuAD EM/F1")
        _image(lines, out_dir,
               plots.plot_bars(f"{p}_auxiliary.png", f"{run.name}: AUXILIARY metrics (not official)",
                               *_common_scale(_dict(res.get("auxiliary"))),
                               note="auxiliary: n-gram metrics, not SQuAD EM/F1", color="tab:gray"),
               "auxiliary metrics")
    return lines


def _common_scale(values: dict) -> tuple[dict, str]:
    """Put 0-1 scores (ROUGE, METEOR) on the 0-100 scale of the others (sacrebleu), labelled x100."""
    nums = {k: _num(v) for k, v in values.items() if _num(v) is not None}
    if not any(v > 1 for v in nums.values()):
        return nums, "score"
    return ({(f"{k} (x100)" if v <= 1 else k): (100 * v if v <= 1 else v) for k, v in nums.items()},
            "score (0-100)")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif _num(v) is not None:
            out[f"{prefix}{k}"] = float(v)
    return out


def _run_details(run: Run) -> list[str]:
    res = run.eval_results or {}
    lines: list[str] = []
    if run.task == "classification":
        rows = [[split] + [_num(m.get(k)) for k in ("accuracy", "macro_f1", "weighted_f1")]
                + [m.get("num_examples")]
                for split, m in _dict(res.get("splits")).items() if isinstance(m, dict)]
        if rows:
            lines += [markdown_table(["split", "accuracy", "macro-F1", "weighted-F1", "examples"], rows), ""]
        seeds = _dict(res.get("seeds"))
        mean, std = _flatten(_dict(seeds.get("mean"))), _flatten(_dict(seeds.get("std")))
        if mean:
            lines += [f"Across {len(_list(seeds.get('runs'))) or '?'} seeds (mean ± std):", "",
                      markdown_table(["metric", "mean", "std"],
                                     [[k, v, std.get(k)] for k, v in mean.items()]), ""]
    if run.task == "qa":
        aux = _dict(res.get("auxiliary"))
        if aux:
            lines += ["Auxiliary metrics (not official SQuAD metrics): "
                      + ", ".join(f"{k} {_fmt(_num(v))}" for k, v in aux.items()), ""]
    params = _dict(res.get("params"))
    if params:
        before, after = _dict(params.get("before")), _dict(params.get("after"))
        lines += ["Parameters (eval_results.json `params`):", ""]
        if before or after:
            lines += [markdown_table(["", "architecture", "total", "trainable"],
                                     [[label, d.get("architecture"), d.get("total"), d.get("trainable")]
                                      for label, d in (("before", before), ("after", after))]), ""]
        if params.get("added_total") is not None and not params.get("added"):
            lines.append(f"- added: {_fmt(params['added_total'])}")
        for key in ("added", "dropped"):
            items = _dict(params.get(key))
            if items:
                lines.append(f"- {key} ({_fmt(params.get(key + '_total'))}): "
                             + ", ".join(f"`{n}` {_fmt(c)}" for n, c in items.items()))
        if params.get("explanation"):
            lines.append(f"- {params['explanation']}")
        lines.append("")
    return lines


def _diff_section(diff: dict, label: str, out_dir: Path, plot_dir: Path) -> list[str]:
    from metrics.params import ENCODER_MODULE_TYPES  # imports torch: only when diffs are shown

    a, b = _dict(diff.get("a")), _dict(diff.get("b"))
    lines = [f"### {label}", "",
             f"A = `{a.get('source', '?')}` ({a.get('architecture')}), B = `{b.get('source', '?')}` "
             f"({b.get('architecture')}). Relative change = ‖W_B − W_A‖ / ‖W_A‖, norms of a group "
             "combined as the square root of summed squares (float64).", ""]
    _image(lines, out_dir,
           plots.plot_param_change(plot_dir / f"params_{_slug(label)}.png", diff,
                                   f"relative parameter change, {a.get('architecture') or 'A'} -> "
                                   f"{b.get('architecture') or 'B'} ({label})", ENCODER_MODULE_TYPES),
           "per-layer relative parameter change")
    rows = [[r.get("group"), r.get("numel"), r.get("delta_norm"), r.get("relative_change"),
             r.get("cosine")] for r in _list(diff.get("by_layer")) if isinstance(r, dict)]
    overall = _dict(diff.get("overall"))
    if overall:
        rows.append(["overall", overall.get("numel"), overall.get("delta_norm"),
                     overall.get("relative_change"), overall.get("cosine")])
    lines += [markdown_table(["layer", "params", "‖dW‖", "‖dW‖/‖W_A‖", "cosine"], rows), ""]
    for key, what in (("only_in_a", "only in A"), ("only_in_b", "only in B")):
        items = _dict(diff.get(key))
        if items:
            lines.append(f"- {what}: " + ", ".join(f"`{n}` ({_fmt(c)})" for n, c in items.items()))
    explanation = _dict(diff.get("summary")).get("explanation")
    if explanation:
        lines.append(f"- {explanation}")
    lines.append("")
    return lines


def build_report(run_dirs, out_dir, reference=None, params_diffs=(), arms=None) -> Path:
    """Write OUT/report.md and OUT/plots/*.png and return the report's path.

    ``reference``: a path or dict (schema in the module docstring); ``params_diffs``: paths
    (or already loaded dicts) from analysis.params. Raises ReportError for unreadable input.
    """
    return write_report(run_dirs, out_dir, reference, params_diffs, arms)[0]


def write_report(run_dirs, out_dir, reference=None, params_diffs=(), arms=None) -> tuple[Path, list[Check]]:
    """build_report, also returning the sanity checks the report states."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ReportError("no run folders given")
    _unique_names(runs)
    ref = load_reference(reference) if reference is not None else {}
    diffs = []
    for i, item in enumerate(params_diffs, start=1):
        if isinstance(item, dict):
            diffs.append((f"params diff {i}", item))
        else:
            diffs.append((Path(item).stem, load_params_diff(item)))
    diffs += [(f"{run.name} params_diff", run.params_diff) for run in runs if run.params_diff]
    labels = [label for label, _ in diffs]
    diffs = [(f"{label} ({i + 1})" if labels.count(label) > 1 else label, diff)
             for i, (label, diff) in enumerate(diffs)]  # one PNG per diff, never overwritten

    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    checks = [c for run in runs for c in sanity_checks(run)]

    lines = ["# Training report", "",
             f"{len(runs)} run(s): " + ", ".join(f"`{r.name}` ({r.task})" for r in runs), "",
             "## Results", ""]
    for task in (*TASKS, "unknown"):
        task_runs = [r for r in runs if r.task == task]
        if not task_runs:
            continue
        lines += [f"### {task}", ""]
        cols = COLUMNS.get(task, (("world_size", "world size"), ("steps", "steps")))
        rows = []
        for run in task_runs:
            values = table_values(run)
            rows.append([run.name] + [values.get(c) for c, _ in cols])
        task_ref = ref.get(task, {})
        if any(k != "source" for k in task_ref):
            rows.append(["*reference*"] + [task_ref.get(c) for c, _ in cols])
        lines += [markdown_table(["run"] + [h for _, h in cols], rows), ""]
        if task_ref.get("source"):
            lines += [f"Reference: {task_ref['source']}", ""]
        if task == "qa":
            lines += ["EM and F1 are the official SQuAD metrics (0-100); BLEU/ROUGE/METEOR, when "
                      "present, are auxiliary and shown separately.", ""]

    if arms is not None:  # a pipeline's runs folder: ours vs the random-init control, over seeds
        try:
            comparison = compare_arms(arms)
        except ArmsError as err:
            raise ReportError(str(err)) from None
        lines += markdown_arms(comparison)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "arms.json").write_text(json.dumps(comparison, indent=2) + "\n")

    lines += ["## Sanity checks", ""]
    lines += [f"- **{_LEVEL_TAG[c.level]}** `{c.run}`: {c.message}" for c in checks] or ["- none"]
    lines.append("")

    for run in runs:
        lines += [f"## Run `{run.name}`", "", f"- folder: `{run.path}`", f"- task: {run.task}",
                  f"- world size: {_fmt(run.world_size)}", f"- last step: {_fmt(run.last_step)}"]
        lines += [f"- note: {n}" for n in run.notes]
        lines.append("")
        lines += _run_details(run)
        lines += _run_plots(run, out_dir, plot_dir)

    if diffs:
        lines += ["## Parameter change after fine-tuning", ""]
        for label, diff in diffs:
            lines += _diff_section(diff, label, out_dir, plot_dir)

    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report, checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Build a Markdown report (report.md + plots/*.png) from training run folders.",
        epilog='Reference JSON: {"pretraining": {"perplexity": 4.0}, "classification": '
               '{"test_accuracy": 0.53}, "qa": {"exact_match": 80.8, "f1": 88.5}}; all column ids '
               "are listed in the module docstring.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s)")
    parser.add_argument("--out", required=True, help="output folder for report.md and plots/")
    parser.add_argument("--reference", help="JSON file with reference numbers per task")
    parser.add_argument("--params-diff", action="append", default=[], metavar="FILE",
                        help="JSON from `python -m analysis.params A B --json` (repeatable)")
    parser.add_argument("--arms", default=None, metavar="RUNS", help="a launch/pipeline.py runs folder: add the "
                        "ours vs random-init control vs majority table over seeds (also OUT/arms.json)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if a sanity check gives WARNING or BUG")
    args = parser.parse_args(argv)
    try:
        report, checks = write_report(args.run_dirs, args.out, reference=args.reference,
                                      params_diffs=args.params_diff, arms=args.arms)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flagged = [c for c in checks if c.level in ("warning", "bug")]
    for c in flagged:
        print(f"{_LEVEL_TAG[c.level]} {c.run}: {c.message}", file=sys.stderr)
    print(f"wrote {report}")
    return 1 if args.strict and flagged else 0


if __name__ == "__main__":
    sys.exit(main())
