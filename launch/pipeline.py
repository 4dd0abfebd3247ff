"""The whole study in one command: pretrain -> fine-tune SST-5 -> fine-tune SQuAD -> parameter diffs -> report.

    python launch/pipeline.py --smoke                       # CPU, minutes, local files under ../shared/data
    python launch/pipeline.py --accelerate-config multi_gpu --num-processes 8    # full size (hub data)

Each stage runs its script through `accelerate launch` into RUNS/<stage>/ and is skipped when its output
is complete (pretrain/sst/squad: final/ exists; params: both diff files; the report is always rebuilt).
An interrupted stage is resumed (`--resume_from_checkpoint latest`) when the pipeline is run again with
the same options. Extra options for one stage: --pretrain-args "...", --sst-args "...", --squad-args "...".

Full size: bert-base-uncased-shaped BERT pretrained on WikiText-2 (train/configs/bert_base.yaml), then
SST-5 (SetFit/sst5 from the hub, or --sst-trees-dir) and SQuAD v1.1 (hub) fine-tuned from it.
Smoke: the tiny preset on ../shared/data/wikitext-2-raw/wiki.test.raw, SST on the PTB trees, SQuAD on 40
articles of dev-v1.1.json (evaluated on the other 8), with small caps so it takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SMOKE_DATA = {
    "wikitext": SHARED / "wikitext-2-raw" / "wiki.test.raw",
    "sst_trees": SHARED / "sst" / "trainDevTestTrees_PTB" / "trees",
    "squad": SHARED / "squad" / "dev-v1.1.json",
}


class PipelineError(RuntimeError):
    pass


def stage_commands(args) -> dict[str, list[list[str]]]:
    runs = Path(args.runs_dir).resolve()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(accelerate_config(args.accelerate_config or ("cpu" if args.smoke else "multi_gpu")))]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    pretrained = str(runs / "pretrain" / "final")
    if args.smoke:
        pretrain = ["--config", "train/configs/smoke.yaml", "--train_file", str(args.wikitext_file or SMOKE_DATA["wikitext"])]
        # The smoke presets are tuned for a pretrained MiniLM; the smoke pretraining gives a tiny, barely trained
        # BERT, which needs a 10x learning rate, and on SST the phrase labels, to learn more than the majority class.
        sst = ["--config", "train/configs/sst_smoke.yaml", "--sst_trees_dir", str(args.sst_trees_dir or SMOKE_DATA["sst_trees"]),
               "--train_on", "phrases", "--max_train_samples", "30000", "--num_train_epochs", "1",
               "--learning_rate", "1e-3"]
        squad = ["--config", "train/configs/squad_smoke.yaml", "--train_file", str(args.squad_file or SMOKE_DATA["squad"]),
                 "--train_articles", "40", "--max_train_samples", "3000", "--num_train_epochs", "1",
                 "--learning_rate", "1e-3",
                 # the smoke model was pretrained on 128-token instances (its position table ends there)
                 "--max_seq_length", "128", "--doc_stride", "32", "--max_query_length", "32"]
    else:
        pretrain = ["--config", "train/configs/bert_base.yaml"]
        sst = ["--config", "train/configs/sst_bert_base.yaml"] + (
            ["--sst_trees_dir", str(args.sst_trees_dir), "--train_on", "phrases"] if args.sst_trees_dir else [])
        squad = ["--config", "train/configs/squad_bert_base.yaml"] + (
            ["--train_file", str(args.squad_file)] if args.squad_file else [])
        if args.wikitext_file:
            pretrain += ["--train_file", str(args.wikitext_file)]
    pretrain += ["--output_dir", str(runs / "pretrain")] + shlex.split(args.pretrain_args)
    sst += ["--model_name_or_path", pretrained, "--output_dir", str(runs / "sst")] + shlex.split(args.sst_args)
    squad += ["--model_name_or_path", pretrained, "--output_dir", str(runs / "squad")] + shlex.split(args.squad_args)
    params = [[sys.executable, "-m", "analysis.params", pretrained, str(runs / task / "final"),
               "--json", str(runs / "params" / f"{task}_diff.json")] for task in ("sst", "squad")]
    report = [sys.executable, "-m", "analysis.report", str(runs / "pretrain"), str(runs / "sst"), str(runs / "squad"),
              "--out", str(runs / "report"), "--params-diff", str(runs / "params" / "sst_diff.json"),
              "--params-diff", str(runs / "params" / "squad_diff.json")]
    return {
        "pretrain": [launch + ["train/pretrain.py"] + pretrain],
        "sst": [launch + ["train/finetune_classification.py"] + sst],
        "squad": [launch + ["train/finetune_qa.py"] + squad],
        "params": params,
        "report": [report],
    }


def accelerate_config(name: str) -> Path:
    path = Path(name)
    if not path.suffix:
        path = REPO / "accelerate_configs" / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"accelerate config {name}: no such file (see accelerate_configs/)")
    return path


def stage_done(stage: str, runs: Path) -> bool:
    if stage in ("pretrain", "sst", "squad"):
        return (runs / stage / "final" / "model.safetensors").is_file() and (runs / stage / "eval_results.json").is_file()
    if stage == "params":
        return all((runs / "params" / f"{t}_diff.json").is_file() for t in ("sst", "squad"))
    return False  # the report is cheap and reflects whatever is there now


def check_inputs(args) -> None:
    if not args.smoke:
        return
    for key, path in (("wikitext", args.wikitext_file), ("sst_trees", args.sst_trees_dir), ("squad", args.squad_file)):
        path = Path(path or SMOKE_DATA[key])
        if not path.exists():
            raise PipelineError(f"--smoke needs local data: {path} is missing (pass --{key.replace('_', '-')}"
                                f"{'-dir' if key == 'sst_trees' else '-file'} PATH)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run on local files (minutes)")
    parser.add_argument("--runs-dir", default=None, help="default runs/pipeline_smoke or runs/pipeline")
    parser.add_argument("--accelerate-config", default=None, help="name in accelerate_configs/ or a path "
                        "(default: cpu with --smoke, else multi_gpu)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--wikitext-file", default=None)
    parser.add_argument("--sst-trees-dir", default=None)
    parser.add_argument("--squad-file", default=None)
    parser.add_argument("--pretrain-args", default="", help="extra options for train/pretrain.py")
    parser.add_argument("--sst-args", default="", help="extra options for train/finetune_classification.py")
    parser.add_argument("--squad-args", default="", help="extra options for train/finetune_qa.py")
    parser.add_argument("--stages", default="pretrain,sst,squad,params,report")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or ("runs/pipeline_smoke" if args.smoke else "runs/pipeline")
    runs = Path(args.runs_dir).resolve()
    try:
        check_inputs(args)
        commands = stage_commands(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timings = {}
    for stage in args.stages.split(","):
        if stage_done(stage, runs):
            print(f"[pipeline] {stage}: complete, skipped", flush=True)
            continue
        for cmd in commands[stage]:
            if stage in ("pretrain", "sst", "squad") and (runs / stage / "config.yaml").is_file():
                cmd = cmd + ["--resume_from_checkpoint", "latest"]  # an earlier attempt: continue it
            print(f"[pipeline] {stage}: {shlex.join(cmd)}", flush=True)
            if args.dry_run:
                continue
            (runs / "params").mkdir(parents=True, exist_ok=True)
            started = time.time()
            code = subprocess.run(cmd, cwd=REPO).returncode
            timings[stage] = round(time.time() - started + timings.get(stage, 0.0), 1)
            if code != 0:
                print(f"[pipeline] {stage} failed (exit {code}); fix the cause and rerun the same command to "
                      "continue from here", file=sys.stderr)
                return code
    if not args.dry_run:
        (runs / "pipeline_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        print(f"[pipeline] done: report at {runs / 'report' / 'report.md'}; stage seconds {timings}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
