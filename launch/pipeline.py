"""The whole study in one command: pretrain -> fine-tune SST-5 -> fine-tune SQuAD -> parameter diffs -> report.

    python launch/pipeline.py --smoke                       # CPU, minutes, offline: ../shared/data or the sample
    python launch/pipeline.py --smoke --data-dir DIR        # a folder laid out like ../shared/data (or data/sample)
    python launch/pipeline.py --accelerate-config multi_gpu --num-processes 8    # full size (hub data)
    python launch/pipeline.py --smoke --control --seeds 3 --runs-dir runs/pipeline_control   # ours vs random init

--control adds sst_control/squad_control: the same fine-tuning from a random init of the pretrained model's shape
(--random_init true; on by default for full runs, off for --smoke, where it doubles the fine-tuning time).
--seeds N runs every fine-tuning stage once per seed (--seed, --seed+1, ...) into RUNS/<stage>/seed_<k>/;
pretraining runs once. The report's first table (analysis.arms) sets ours, the control and the majority baseline
side by side. --pretrain-config FILE picks the pretraining preset.

Each stage runs its script through `accelerate launch` into RUNS/<stage>/ and is skipped when its output
is complete (pretrain/sst/squad: final/ exists; params: both diff files; the report is always rebuilt).
An interrupted stage is resumed (`--resume_from_checkpoint latest`) when the pipeline is run again with
the same options. Extra options for one stage: --pretrain-args "...", --sst-args "...", --squad-args "...".

Full size: bert-base-uncased-shaped BERT pretrained on WikiText-2 (train/configs/bert_base.yaml), then
SST-5 (SetFit/sst5 from the hub, or --sst-trees-dir) and SQuAD v1.1 (hub) fine-tuned from it.
Smoke: the tiny preset, SST on the PTB trees, SQuAD on the first articles of one file (evaluated on the rest),
with small caps so it takes minutes on 2 cores. The data, printed at the start: --data-dir DIR, else ../shared/data
when it exists (WikiText-2 raw test split, all SST trees, SQuAD dev-v1.1: 40 articles train, 8 evaluate), else the
embedded sample data/sample/ (SOURCES.md: 27 WikiText articles + 4 for the test split, every 5th/10th SST tree, 4
SQuAD articles: 3 train, 1 evaluates). --wikitext-file, --sst-trees-dir and --squad-file replace single files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python launch/pipeline.py`: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample"
# Smoke inputs in the two layouts: ../shared/data (our machines; any --data-dir laid out like it) and the embedded
# sample (in the repository, so a fresh clone runs offline). Only the sample has separate WikiText test articles
# (the full layout has only WikiText-2's test split, used for training); squad_train_articles is --train_articles.
SHARED_LAYOUT = {"wikitext": "wikitext-2-raw/wiki.test.raw", "wikitext_test": None,
                 "sst_trees": "sst/trainDevTestTrees_PTB/trees", "squad": "squad/dev-v1.1.json",
                 "squad_train_articles": 40}
SAMPLE_LAYOUT = {"wikitext": "wikitext-2-raw/sample-train.raw", "wikitext_test": "wikitext-2-raw/sample-test.raw",
                 "sst_trees": "sst/trees", "squad": "squad/sample-v1.1.json", "squad_train_articles": 3}


class PipelineError(RuntimeError):
    pass


def stage_commands(args) -> dict[str, list[list[str]]]:
    runs = Path(args.runs_dir).resolve()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(accelerate_config(args.accelerate_config or ("cpu" if args.smoke else "multi_gpu")))]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    pretrained = str(RunFolder(runs / "pretrain").final_dir)
    if args.smoke:
        data = smoke_data(args)
        pretrain = ["--config", args.pretrain_config, "--train_file", str(data["wikitext"])]
        if data["wikitext_test"]:
            pretrain += ["--test_file", str(data["wikitext_test"])]
        # The smoke presets are tuned for a pretrained MiniLM; the smoke pretraining gives a tiny, barely trained
        # BERT, which needs a 10x learning rate, and on SST the phrase labels, to learn more than the majority class.
        sst = ["--config", "train/configs/sst_smoke.yaml", "--sst_trees_dir", str(data["sst_trees"]),
               "--train_on", "phrases", "--max_train_samples", "30000", "--num_train_epochs", "1",
               "--learning_rate", "1e-3"]
        squad = ["--config", "train/configs/squad_smoke.yaml", "--train_file", str(data["squad"]),
                 "--train_articles", str(data["squad_train_articles"]), "--max_train_samples", "3000",
                 "--num_train_epochs", "1",
                 "--learning_rate", "1e-3",
                 # the smoke model was pretrained on 128-token instances (its position table ends there)
                 "--max_seq_length", "128", "--doc_stride", "32", "--max_query_length", "32"]
    else:
        pretrain = ["--config", args.pretrain_config]
        sst = ["--config", "train/configs/sst_bert_base.yaml"] + (
            ["--sst_trees_dir", str(args.sst_trees_dir), "--train_on", "phrases"] if args.sst_trees_dir else [])
        squad = ["--config", "train/configs/squad_bert_base.yaml"] + (
            ["--train_file", str(args.squad_file)] if args.squad_file else [])
        if args.wikitext_file:
            pretrain += ["--train_file", str(args.wikitext_file)]
    pretrain += ["--output_dir", str(runs / "pretrain")] + shlex.split(args.pretrain_args)
    tasks = {"sst": ("train/finetune_classification.py", sst + shlex.split(args.sst_args)),
             "squad": ("train/finetune_qa.py", squad + shlex.split(args.squad_args))}
    commands = {"pretrain": [launch + ["train/pretrain.py"] + pretrain]}
    for stage in finetune_stages(args):
        script, options = tasks[stage.removesuffix(CONTROL_SUFFIX)]
        # The control differs from ours in one option only: same shape, tokenizer, data, schedule and seeds.
        control = ["--random_init", "true"] if stage.endswith(CONTROL_SUFFIX) else []
        commands[stage] = [launch + [script] + options + ["--model_name_or_path", pretrained, *control,
                                                          "--output_dir", str(folder), *seed]
                           for folder, seed in seed_runs(runs / stage, args)]
    # Parameter diffs and the per-run sections of the report are about one run of ours: the first seed's.
    first = {task: RunFolder(seed_runs(runs / task, args)[0][0]) for task in tasks}
    commands["params"] = [[sys.executable, "-m", "analysis.params", pretrained, str(first[task].final_dir),
                           "--json", str(runs / "params" / f"{task}_diff.json")] for task in tasks]
    commands["report"] = [[sys.executable, "-m", "analysis.report", str(runs / "pretrain"), str(first["sst"].root),
                           str(first["squad"].root), "--out", str(runs / "report"),
                           "--params-diff", str(runs / "params" / "sst_diff.json"),
                           "--params-diff", str(runs / "params" / "squad_diff.json"), "--arms", str(runs)]]
    return commands


CONTROL_SUFFIX = "_control"
FINETUNE_STAGES = ("sst", "squad", "sst_control", "squad_control")


def finetune_stages(args) -> list[str]:
    return ["sst", "squad"] + (["sst_control", "squad_control"] if args.control else [])


def seed_runs(stage_dir: Path, args) -> list[tuple[Path, list[str]]]:
    """(output folder, seed options) of each run of a fine-tuning stage. One seed keeps the stage folder itself
    (the layout before --seeds existed) and the scripts' own default seed unless --seed is given."""
    if args.seeds == 1:
        return [(stage_dir, [] if args.seed is None else ["--seed", str(args.seed)])]
    base = 42 if args.seed is None else args.seed
    return [(stage_dir / RunFolder.seed_folder_name(seed), ["--seed", str(seed)])
            for seed in range(base, base + args.seeds)]


def output_dir(cmd: list[str]) -> Path:
    """The folder a fine-tuning command writes (the last --output_dir wins, as in the scripts' parser)."""
    return Path(cmd[len(cmd) - 1 - cmd[::-1].index("--output_dir") + 1])


def accelerate_config(name: str) -> Path:
    path = Path(name)
    if not path.suffix:
        path = REPO / "accelerate_configs" / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"accelerate config {name}: no such file (see accelerate_configs/)")
    return path


def portable(commands: list[list[str]]) -> list[list[str]]:
    """The interpreter's path is not part of what a stage computed (another venv may rerun it)."""
    return [["python" if arg == sys.executable else arg for arg in cmd] for cmd in commands]


def stage_done(stage: str, runs: Path, commands: list[list[str]]) -> bool:
    """Complete, and made by these very commands: a finished stage of another run (other data, other options)
    is neither reused nor overwritten."""
    recorded = RunFolder(runs / stage).pipeline_record
    if recorded.is_file() and json.loads(recorded.read_text()) != portable(commands):
        raise PipelineError(f"{runs / stage} holds a stage made by other commands (other data or options, see "
                            f"{recorded}); pass --runs-dir NEW_FOLDER, or delete {runs / stage} to redo it")
    if stage == "pretrain" or stage in FINETUNE_STAGES:
        folders = [RunFolder(runs / stage)] if stage == "pretrain" else [RunFolder(output_dir(c)) for c in commands]
        return all((f.final_dir / "model.safetensors").is_file() and f.eval_results_file.is_file() for f in folders)
    if stage == "params":
        return all((runs / "params" / f"{t}_diff.json").is_file() for t in ("sst", "squad"))
    return False  # the report is cheap and reflects whatever is there now


def smoke_folder(args) -> tuple[Path, dict, str]:
    """The data folder of a smoke run, its layout, and why it was chosen."""
    if args.data_dir:
        folder = Path(args.data_dir).resolve()
        # A folder with the sample's files is read as the sample (e.g. --data-dir data/sample).
        layout = SAMPLE_LAYOUT if (folder / SAMPLE_LAYOUT["wikitext"]).is_file() else SHARED_LAYOUT
        return folder, layout, "--data-dir"
    if SHARED.is_dir():
        return SHARED, SHARED_LAYOUT, "../shared/data exists"
    return SAMPLE, SAMPLE_LAYOUT, "embedded sample; ../shared/data not found"


def smoke_data(args) -> dict:
    """Every input of a smoke run. A single-file option replaces that file only; a --wikitext-file of your own is
    not evaluated on the sample's WikiText test articles, and a --squad-file of your own trains on its first 40."""
    folder, layout, _ = smoke_folder(args)
    data = {key: folder / layout[key] for key in ("wikitext", "sst_trees", "squad")}
    data["wikitext_test"] = folder / layout["wikitext_test"] if layout["wikitext_test"] else None
    data["squad_train_articles"] = layout["squad_train_articles"]
    if args.wikitext_file:
        data["wikitext"], data["wikitext_test"] = Path(args.wikitext_file), None
    if args.sst_trees_dir:
        data["sst_trees"] = Path(args.sst_trees_dir)
    if args.squad_file:
        data["squad"], data["squad_train_articles"] = Path(args.squad_file), SHARED_LAYOUT["squad_train_articles"]
    return data


def check_inputs(args) -> None:
    if not args.smoke:
        if args.data_dir:
            raise PipelineError("--data-dir is for --smoke; the full-size run reads the hub (or --wikitext-file, "
                                "--sst-trees-dir, --squad-file)")
        return
    folder, _, why = smoke_folder(args)
    if args.data_dir and not folder.is_dir():
        raise PipelineError(f"--data-dir {args.data_dir}: no such folder")
    data = smoke_data(args)
    for key, option in (("wikitext", "--wikitext-file"), ("wikitext_test", "--wikitext-file"),
                        ("sst_trees", "--sst-trees-dir"), ("squad", "--squad-file")):
        path = data[key]
        if path is not None and not path.exists():
            raise PipelineError(f"--smoke needs local data: {path} is missing (pass {option} PATH, or --data-dir DIR "
                                "laid out like ../shared/data)")
    print(f"[pipeline] data: {folder} ({why})", flush=True)
    for key in ("wikitext", "wikitext_test", "sst_trees", "squad"):
        if data[key] is not None:
            print(f"[pipeline]   {key}: {data[key]}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run on local files (minutes)")
    parser.add_argument("--runs-dir", default=None, help="default runs/pipeline_smoke or runs/pipeline")
    parser.add_argument("--accelerate-config", default=None, help="name in accelerate_configs/ or a path "
                        "(default: cpu with --smoke, else multi_gpu)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="--smoke data: a folder laid out like ../shared/data "
                        "(default: ../shared/data when it exists, else the embedded sample data/sample)")
    parser.add_argument("--wikitext-file", default=None)
    parser.add_argument("--sst-trees-dir", default=None)
    parser.add_argument("--squad-file", default=None)
    parser.add_argument("--pretrain-args", default="", help="extra options for train/pretrain.py")
    parser.add_argument("--sst-args", default="", help="extra options for train/finetune_classification.py")
    parser.add_argument("--squad-args", default="", help="extra options for train/finetune_qa.py")
    parser.add_argument("--pretrain-config", default=None, help="pretraining preset (default: "
                        "train/configs/smoke.yaml with --smoke, else train/configs/bert_base.yaml)")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=None,
                        help="also fine-tune a random-init model of the pretrained model's shape (stages "
                        "sst_control, squad_control); default on for full runs, off for --smoke (it doubles the "
                        "fine-tuning time)")
    parser.add_argument("--seeds", type=int, default=1, help="N: every fine-tuning stage runs seeds "
                        "SEED..SEED+N-1 into RUNS/<stage>/seed_<k>/; pretraining runs once")
    parser.add_argument("--seed", type=int, default=None, help="first fine-tuning seed (default: the scripts' 42)")
    parser.add_argument("--stages", default=None, help="comma-separated (default: pretrain, sst, squad, "
                        "sst_control and squad_control with --control, params, report)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or ("runs/pipeline_smoke" if args.smoke else "runs/pipeline")
    args.pretrain_config = args.pretrain_config or f"train/configs/{'smoke' if args.smoke else 'bert_base'}.yaml"
    args.control = not args.smoke if args.control is None else args.control
    args.stages = args.stages or ",".join(["pretrain", *finetune_stages(args), "params", "report"])
    if args.seeds < 1:
        print(f"error: --seeds must be at least 1, got {args.seeds}", file=sys.stderr)
        return 2
    runs = Path(args.runs_dir).resolve()
    try:
        check_inputs(args)
        commands = stage_commands(args)
        unknown = [stage for stage in args.stages.split(",") if stage not in commands]
        if unknown:
            raise PipelineError(f"--stages {','.join(unknown)}: not a stage of this run (its stages: "
                                f"{', '.join(commands)}; the *_control stages need --control)")
        if not (REPO / args.pretrain_config).is_file():
            raise PipelineError(f"--pretrain-config {args.pretrain_config}: no such file (see train/configs/)")
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timings = {}
    for stage in args.stages.split(","):
        try:
            if stage_done(stage, runs, commands[stage]):
                print(f"[pipeline] {stage}: complete, skipped", flush=True)
                continue
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        folder = RunFolder(runs / stage)
        if not args.dry_run and stage != "report":
            folder.root.mkdir(parents=True, exist_ok=True)
            folder.pipeline_record.write_text(json.dumps(portable(commands[stage])) + "\n")
        for cmd in commands[stage]:
            run = folder if stage == "pretrain" else RunFolder(output_dir(cmd)) if stage in FINETUNE_STAGES else None
            if run is not None and (run.final_dir / "model.safetensors").is_file() and run.eval_results_file.is_file():
                continue  # one seed of an interrupted stage that had finished
            if run is not None and run.config_file.is_file():
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
