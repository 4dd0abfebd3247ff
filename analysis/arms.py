"""Does pretraining help? Ours vs the random-init control vs the majority baseline, over seeds.

Reads a pipeline's runs folder (launch/pipeline.py): RUNS/sst, RUNS/squad (fine-tuned from our pretrained model)
and RUNS/sst_control, RUNS/squad_control (the same fine-tuning from a random init of the same shape, --random_init).
Each stage is one run folder, or one per seed in RUNS/<stage>/seed_<k>/ (--seeds N). The runs a stage should hold
are the --output_dir of the commands it recorded (pipeline_commands.json), so a seed that never finished is named.

Spread is the sample standard deviation over seeds (0 for one seed); the verdict compares the min..max ranges:
ours beats the control only when every seed of ours is above every seed of the control.

    python -m analysis.arms RUNS [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from train.common.run_folder import RunFolder, RunFolderError, write_json_atomic

# (row label, stage, how to read the number from eval_results.json, majority baseline from the same file or None)
ROWS = (
    ("SST-5 test accuracy", "sst", lambda r: r["splits"]["test"]["accuracy"],
     lambda r: r["majority_baseline"]["test"]),
    ("SST-5 test macro-F1", "sst", lambda r: r["splits"]["test"]["macro_f1"], lambda r: majority_macro_f1(
        r["majority_baseline"]["test"], len(r["label_names"]))),
    ("SQuAD EM", "squad", lambda r: r["exact_match"], None),
    ("SQuAD F1", "squad", lambda r: r["f1"], None),
)
CONTROL = "_control"


class ArmsError(RuntimeError):
    pass


def majority_macro_f1(share: float, num_classes: int) -> float:
    """Macro-F1 of always predicting one class that makes up `share` of the split: that class has precision
    `share` and recall 1, every other class F1 0 (no predictions), averaged over all classes."""
    return 2 * share / (1 + share) / num_classes


def expected_runs(stage_dir: Path) -> list[Path]:
    """The run folders of one stage: those its recorded commands write, else seed_* folders, else the stage."""
    record = RunFolder(stage_dir).pipeline_record
    if record.is_file():
        commands = json.loads(record.read_text())
        folders = [Path(c[len(c) - c[::-1].index("--output_dir")]) for c in commands if "--output_dir" in c]
        if folders:
            return folders
    seeds = sorted(p for p in stage_dir.glob(f"{RunFolder.SEED_PREFIX}*") if p.is_dir())
    return seeds or [stage_dir]


def read_stage(stage_dir: Path) -> tuple[list[dict], list[str]]:
    """(eval_results of each finished run, one line for each run that is missing or unfinished)."""
    results, missing = [], []
    for folder in expected_runs(stage_dir):
        run = RunFolder(folder)
        try:
            res = run.read_eval_results() if run.eval_results_file.is_file() else None
        except RunFolderError as err:
            raise ArmsError(str(err)) from None
        if not res or not res.get("completed", True):
            missing.append(f"{folder}: no finished eval_results.json (rerun the pipeline to finish this seed)")
        else:
            results.append({**res, "_folder": str(folder)})
    return results, missing


def summarize(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def verdict(ours: dict | None, control: dict | None) -> str:
    if ours is None or control is None:
        return "no comparison: " + ("ours" if ours is None else "the control") + " has no finished run"
    diff = ours["mean"] - control["mean"]
    if ours["n"] < 2 or control["n"] < 2:
        return f"difference of means {diff:+.4f} from one seed on a side: no spread to judge it by (use --seeds 3)"
    if ours["min"] > control["max"]:
        return f"ours beats the control by {diff:+.4f} (every seed above every control seed)"
    if ours["max"] < control["min"]:
        return f"the control beats ours by {-diff:+.4f} (every control seed above every seed of ours)"
    return f"not distinguishable: difference of means {diff:+.4f}, but the min..max ranges overlap"


def compare_arms(runs_dir) -> dict:
    """{"rows": [{"metric", "ours", "control", "majority", "verdict"}], "missing": [...], "spread": "..."}."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise ArmsError(f"{runs}: no such runs folder (give the --runs-dir of launch/pipeline.py)")
    stages, missing = {}, []
    for stage in ("sst", "squad", "sst" + CONTROL, "squad" + CONTROL):
        if (runs / stage).is_dir():
            stages[stage], lost = read_stage(runs / stage)
            missing += lost
        else:
            stages[stage] = []
            missing.append(f"{runs / stage}: stage not run" + (" (launch/pipeline.py --control runs it)"
                                                                  if CONTROL in stage else ""))
    rows = []
    for label, stage, read, majority in ROWS:
        arms = {arm: summarize([_number(read, r, label) for r in stages[stage + suffix]])
                for arm, suffix in (("ours", ""), ("control", CONTROL))}
        base = stages[stage] or stages[stage + CONTROL]
        rows.append({"metric": label, **arms, "verdict": verdict(arms["ours"], arms["control"]),
                     "majority": _number(majority, base[0], label + " majority baseline")
                     if majority and base else None})
    return {"rows": rows, "missing": missing,
            "spread": "mean ± sample standard deviation over seeds, [min..max], n = seeds"}


def _number(read, results: dict, label: str) -> float:
    try:
        return float(read(results))
    except (KeyError, TypeError, ValueError):
        raise ArmsError(f"{results['_folder']}/eval_results.json has no {label} (was it evaluated on that split?)"
                        ) from None


def _cell(summary: dict | None) -> str:
    if summary is None:
        return "n/a"
    return (f"{summary['mean']:.4f} ± {summary['std']:.4f} [{summary['min']:.4f}..{summary['max']:.4f}] "
            f"n={summary['n']}")


def markdown(comparison: dict) -> list[str]:
    lines = ["## Does pretraining help? Ours vs random-init control", "",
             f"Each cell: {comparison['spread']}. Control: the same fine-tuning (options, data, seeds) from a "
             "random initialisation of the pretrained model's shape and tokenizer. Majority: always the most "
             "frequent training label (SST test split); SQuAD has no majority baseline (n/a).", "",
             "| metric | ours | random-init control | majority | ours vs control |", "|---|---|---|---|---|"]
    for row in comparison["rows"]:
        majority = "n/a" if row["majority"] is None else f"{row['majority']:.4f}"
        lines.append(f"| {row['metric']} | {_cell(row['ours'])} | {_cell(row['control'])} | {majority} | "
                     f"{row['verdict']} |")
    lines.append("")
    lines += [f"- **missing**: {m}" for m in comparison["missing"]]
    return lines + ([""] if comparison["missing"] else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.arms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", metavar="RUNS")
    parser.add_argument("--json", default=None, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        comparison = compare_arms(args.runs_dir)
    except ArmsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        write_json_atomic(Path(args.json), comparison)  # a rerun never leaves a half-written table
    print("\n".join(markdown(comparison)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
