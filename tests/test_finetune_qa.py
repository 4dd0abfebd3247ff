"""train/finetune_qa.py end to end: run folder, official-format outputs scored like the analysis CLI, v2.0,
loader reports, resume, 2 processes, DeepSpeed, real MiniLM weights."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, fp32_deepspeed_config, reset_accelerate_state
from tests.test_finetune_classification import (
    TINY_HIDDEN,
    accelerate_launch,
    assert_same_tensors,
    final_tensors,
    minilm_path,
    read_jsonl,
    without,
    write_tiny_bert,
)

pytestmark = pytest.mark.slow
FIX = REPO / "tests" / "fixtures" / "squad"
TINY_V1, TINY_V2 = FIX / "tiny-v1.1.json", FIX / "tiny-v2.0.json"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert_qa"))


def run_qa(argv: list[str]) -> int:
    reset_accelerate_state()
    from train.finetune_qa import main
    return main(argv)


def cli_qa(argv: list[str], capsys) -> tuple[int, str]:
    reset_accelerate_state()
    from train.common.errors import run_main
    from train.finetune_qa import main
    capsys.readouterr()
    code = run_main(lambda: main(argv))
    return code, capsys.readouterr().err


def qa_args(model: Path, output_dir: Path, *extra: str) -> list[str]:
    # 64-token windows sharing 16 tokens: every fixture context needs several windows.
    return ["--model_name_or_path", str(model), "--output_dir", str(output_dir), "--max_seq_length", "64",
            "--doc_stride", "16", "--max_query_length", "16", "--n_best_size", "5", "--per_device_train_batch_size",
            "4", "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3", "--warmup_ratio", "0.1",
            "--logging_steps", "2", "--seed", "7", *extra]


def squad_cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "analysis.squad", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def held_out_ids(path: Path, first_articles: int) -> list[str]:
    articles = json.loads(path.read_text())["data"][first_articles:]
    return [qa["id"] for a in articles for p in a["paragraphs"] for qa in p["qas"]]


@pytest.fixture(scope="module")
def smoke_run(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa_smoke") / "run"
    assert run_qa(qa_args(tiny_bert, out, "--train_file", str(TINY_V1), "--train_articles", "2",
                          "--num_train_epochs", "2")) == 0
    return out


def test_run_folder_contract(smoke_run):
    from analysis.squad import score_questions
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["task"] == "qa" and config["world_size"] == 1 and config["config"]["doc_stride"] == 16
    sizes = config["dataset_sizes"]
    assert (sizes["train_examples"], sizes["eval_examples"]) == (13, 5)
    assert sizes["eval_features"] > sizes["eval_examples"]  # long contexts make several windows

    train_lines = [line for line in read_jsonl(smoke_run / "metrics.jsonl") if "split" not in line]
    for key in ("loss", "lr", "grad_norm", "samples_per_second", "tokens_per_second", "padding_fraction"):
        assert all(line.get(key) is not None for line in train_lines), key

    predictions = json.loads((smoke_run / "predictions.json").read_text())
    ids = held_out_ids(TINY_V1, 2)
    assert sorted(predictions) == sorted(ids) and all(isinstance(v, str) for v in predictions.values())
    nbest = json.loads((smoke_run / "nbest.json").read_text())
    assert sorted(nbest) == sorted(ids)
    for qid, entries in nbest.items():
        scores = [e["start_logit"] + e["end_logit"] for e in entries]
        assert scores == sorted(scores, reverse=True) and len(entries) <= 5
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
        assert entries[0]["text"] == predictions[qid]
    assert not (smoke_run / "null_odds.json").exists()

    results = json.loads((smoke_run / "eval_results.json").read_text())
    assert results["task"] == "qa" and results["version"] == "1.1" and results["completed"]
    assert results["total"] == 5 and results["missing_predictions"] == 0
    assert 0 <= results["exact_match"] <= results["f1"] <= 100
    for row in score_questions(json.loads(Path(results["eval_data"]).read_text()), predictions):
        assert row["exact"] <= row["f1"]  # EM <= F1 per question too
    assert [e["epoch"] for e in results["epochs"]] == [1.0, 2.0]
    assert {"step", "eval_loss", "exact_match", "f1"} <= results["epochs"][0].keys()
    assert results["epochs"][-1]["f1"] == results["f1"]
    aux = results["auxiliary"]
    assert aux["label"].startswith("AUXILIARY") and {"bleu", "rouge1", "rouge2", "rougeL", "rougeLsum",
                                                     "meteor"} <= aux.keys()
    assert results["data_report"]["file"]["questions"] == 18 and results["data_report"]["file"]["kept"] == 18
    eval_data = json.loads((smoke_run / "eval_data.json").read_text())
    assert [a["title"] for a in eval_data["data"]] == ["Salar_de_Uyuni"]  # the held-out article, as in the file
    assert eval_data["data"] == json.loads(TINY_V1.read_text())["data"][2:]

    from transformers import AutoModelForQuestionAnswering
    assert AutoModelForQuestionAnswering.from_pretrained(smoke_run / "final").config.hidden_size == TINY_HIDDEN


def test_analysis_cli_gives_the_same_numbers(smoke_run):
    results = json.loads((smoke_run / "eval_results.json").read_text())
    cli = squad_cli("--data", str(smoke_run / "eval_data.json"), "--predictions", str(smoke_run / "predictions.json"))
    for key in ("exact_match", "f1", "total", "missing_predictions"):
        assert cli[key] == results[key], key


def test_params_block_counts_the_qa_head(smoke_run):
    params = json.loads((smoke_run / "eval_results.json").read_text())["params"]
    assert params["added"] == {"qa_outputs.weight": TINY_HIDDEN * 2, "qa_outputs.bias": 2}
    assert set(params["dropped_modules"]) == {"cls.predictions", "cls.seq_relationship", "pooler"}
    assert params["dropped_modules"]["pooler"] == TINY_HIDDEN * TINY_HIDDEN + TINY_HIDDEN
    assert params["after"]["total"] == params["before"]["total"] - params["dropped_total"] + params["added_total"]


def test_squad_v2_outputs_thresholds_and_the_cli(tiny_bert, tmp_path, capsys):
    out = tmp_path / "v2"
    common = ("--train_file", str(TINY_V2), "--validation_file", str(TINY_V2), "--num_train_epochs", "2")
    code, err = cli_qa(qa_args(tiny_bert, out, *common), capsys)
    assert code == 2 and "--version_2_with_negative" in err.strip().splitlines()[-1]
    assert run_qa(qa_args(tiny_bert, out, *common, "--version_2_with_negative", "--null_score_diff_threshold", "0.5",
                          "--overwrite_output_dir")) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["version"] == "2.0" and (results["HasAns_total"], results["NoAns_total"]) == (3, 3)
    assert results["best_f1_thresh"] is not None and results["exact_match"] <= results["f1"]
    null_odds = json.loads((out / "null_odds.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert sorted(null_odds) == sorted(predictions) == [f"v2-{i}" for i in range(1, 7)]
    nbest = json.loads((out / "nbest.json").read_text())
    for qid, diff in null_odds.items():  # the no-answer rule
        best_span = next((e["text"] for e in nbest[qid] if e["offsets"] is not None), "")
        assert predictions[qid] == ("" if diff > 0.5 else best_span)
    cli = squad_cli("--data", str(TINY_V2), "--predictions", str(out / "predictions.json"), "--na-prob-file",
                    str(out / "null_odds.json"), "--na-prob-thresh", "0.5")
    for key in ("exact_match", "f1", "HasAns_f1", "NoAns_exact", "best_f1", "best_f1_thresh"):
        assert cli[key] == results[key], key


def test_evaluation_only_mode_on_v2_data(smoke_run, tiny_bert, tmp_path, capsys):
    """A model fine-tuned on v1.1 evaluated as it is on v2.0 data (the acceptance run on the v2.0 sample)."""
    out = tmp_path / "eval_only"
    assert run_qa(qa_args(smoke_run / "final", out, "--do_train", "false", "--validation_file", str(TINY_V2),
                          "--version_2_with_negative")) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["version"] == "2.0" and results["total"] == 6 and results["epochs"] == []
    assert results["params"]["delta"] == 0 and not (out / "final").exists()
    assert sorted(json.loads((out / "null_odds.json").read_text())) == [f"v2-{i}" for i in range(1, 7)]
    assert results["eval_data"] == str(TINY_V2.resolve())
    code, err = cli_qa(qa_args(tiny_bert, tmp_path / "untrained", "--do_train", "false", "--validation_file",
                               str(TINY_V1)), capsys)
    assert code == 2 and "no trained qa_outputs head" in err.strip().splitlines()[-1]


def test_answers_not_at_answer_start_are_fixed_or_reported(smoke_run, tmp_path):
    out = tmp_path / "bad_answers"
    assert run_qa(qa_args(smoke_run / "final", out, "--do_train", "false", "--validation_file",
                          str(FIX / "bad-answers-v1.1.json"))) == 0
    results = json.loads((out / "eval_results.json").read_text())
    report = results["data_report"]["validation"]
    assert (report["answers_fixed"], report["answers_dropped"], report["questions_skipped"]) == (2, 3, 2)
    assert report["skipped_ids"] == ["notfound-1", "far-1"]
    # Skipped questions get no prediction and count as missing (score 0) against the official file.
    assert results["total"] == 6 and results["missing_predictions"] == 2
    assert sorted(json.loads((out / "predictions.json").read_text())) == ["ok-1", "partly-1", "shifted-1", "space-1"]


@pytest.mark.parametrize("case", ["syntax", "duplicate", "articles", "stride", "hub_offline"])
def test_malformed_input_is_one_line_naming_the_problem(case, tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    if case == "syntax":
        argv, expect = qa_args(tiny_bert, out, "--train_file", str(FIX / "syntax-error.json"), "--validation_file",
                               str(TINY_V1)), [str(FIX / "syntax-error.json"), "invalid JSON"]
    elif case == "duplicate":
        argv = qa_args(tiny_bert, out, "--train_file", str(TINY_V1), "--validation_file",
                       str(FIX / "duplicate-ids.json"))
        expect = [str(FIX / "duplicate-ids.json"), "duplicate question id"]
    elif case == "articles":
        argv, expect = qa_args(tiny_bert, out, "--train_file", str(TINY_V1), "--train_articles", "3"), \
            [str(TINY_V1), "train_articles must be in 1..2"]
    elif case == "stride":
        argv, expect = qa_args(tiny_bert, out, "--train_file", str(TINY_V1), "--train_articles", "2", "--doc_stride",
                               "45"), ["doc_stride (45)", "context room"]
    else:  # no local files: the hub's squad, unreachable here
        argv, expect = qa_args(tiny_bert, out), ["'squad'", "Offline? Give the official SQuAD JSON files"]
    code, err = cli_qa(argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "Traceback" not in err
    for text in expect:
        assert text in last, (text, last)


def test_resume_is_bit_identical(tiny_bert, tmp_path):
    common = ("--train_file", str(TINY_V1), "--train_articles", "2", "--num_train_epochs", "2",
              "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "3",
              "--keep_last_n", "0", "--aux_metrics", "false")
    reference, every = tmp_path / "reference", tmp_path / "every_step"
    assert run_qa(qa_args(tiny_bert, reference, *common, "--checkpointing_steps", "none")) == 0
    assert run_qa(qa_args(tiny_bert, every, *common, "--checkpointing_steps", "1")) == 0
    assert_same_tensors(final_tensors(reference), final_tensors(every))
    ref_eval = json.loads((reference / "eval_results.json").read_text())
    steps_per_epoch = ref_eval["epochs"][0]["step"]
    for stop_after in (1, steps_per_epoch // 2 + 1, steps_per_epoch, steps_per_epoch + 1):
        resumed = tmp_path / f"resumed_{stop_after}"
        shutil.copytree(every, resumed, ignore=shutil.ignore_patterns("final"))
        for ckpt in (resumed / "checkpoints").glob("step_*"):
            if int(ckpt.name[5:]) > stop_after:
                shutil.rmtree(ckpt)
        assert run_qa(qa_args(tiny_bert, resumed, *common, "--checkpointing_steps", "1",
                              "--resume_from_checkpoint", "latest")) == 0
        assert_same_tensors(final_tensors(reference), final_tensors(resumed))
        got = json.loads((resumed / "eval_results.json").read_text())
        assert {k: v for k, v in got.items() if k not in ("params", "eval_data")} == \
            {k: v for k, v in ref_eval.items() if k not in ("params", "eval_data")}
        assert without(read_jsonl(resumed / "metrics.jsonl")) == without(read_jsonl(reference / "metrics.jsonl"))
        assert (resumed / "nbest.json").read_text() == (reference / "nbest.json").read_text()


def test_real_minilm_weights(tmp_path):
    """The real MiniLM (BertModel): the QA head adds 384*2 + 2, the unused pooler is dropped."""
    out = tmp_path / "minilm"
    assert run_qa(qa_args(minilm_path(), out, "--train_file", str(TINY_V1), "--train_articles", "2",
                          "--max_train_steps", "4", "--learning_rate", "1e-4", "--max_seq_length", "128",
                          "--doc_stride", "32", "--checkpointing_steps", "none")) == 0
    results = json.loads((out / "eval_results.json").read_text())
    params = results["params"]
    assert params["added"] == {"qa_outputs.weight": 768, "qa_outputs.bias": 2}
    assert params["dropped"] == {"pooler.dense.weight": 384 * 384, "pooler.dense.bias": 384}
    assert params["delta"] == 770 - 384 * 385
    assert results["exact_match"] <= results["f1"] and results["total"] == 5


@pytest.mark.multiprocess
def test_two_processes_cover_every_question_once_and_match_one_process(tiny_bert, tmp_path):
    common = ("--train_file", str(TINY_V1), "--train_articles", "1", "--max_train_steps", "6",
              "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--checkpointing_steps", "none",
              "--per_device_eval_batch_size", "3", "--aux_metrics", "false")
    two = tmp_path / "ddp2"
    accelerate_launch("cpu_ddp.yaml", "finetune_qa.py", qa_args(tiny_bert, two, *common,
                                                                "--per_device_train_batch_size", "2"))
    assert json.loads((two / "replica_check.json").read_text())["in_sync"]
    one = tmp_path / "single"
    assert run_qa(qa_args(tiny_bert, one, *common, "--per_device_train_batch_size", "4")) == 0
    a, b = final_tensors(one), final_tensors(two)
    # qa_outputs.bias shifts every position's start (end) logit equally and softmax ignores a shift, so its exact
    # gradient is 0: Adam rescales float noise into steps of up to lr. Compare it only for staying that small.
    for bias in (a.pop("qa_outputs.bias"), b.pop("qa_outputs.bias")):
        assert bias.abs().max() < 6 * 3e-3
    assert_same_tensors(a, b, exact=False, atol=1e-5)
    ids = held_out_ids(TINY_V1, 1)
    p1, p2 = (json.loads((r / "predictions.json").read_text()) for r in (one, two))
    assert sorted(p2) == sorted(ids)  # every question exactly once (a dict: no duplicates possible)
    r1, r2 = (json.loads((r / "eval_results.json").read_text()) for r in (one, two))
    assert r2["total"] == len(ids) and r2["missing_predictions"] == 0
    assert r2["eval_loss"] == pytest.approx(r1["eval_loss"], rel=1e-4)
    n1, n2 = (json.loads((r / "nbest.json").read_text()) for r in (one, two))
    for qid in ids:
        s1 = [e["start_logit"] + e["end_logit"] for e in n1[qid]]
        s2 = [e["start_logit"] + e["end_logit"] for e in n2[qid]]
        assert s2[0] == pytest.approx(s1[0], abs=1e-3)
        if len(s1) == 1 or s1[0] - s1[1] > 1e-3:  # not a near tie
            assert p1[qid] == p2[qid]
    if p1 == p2:
        assert (r1["exact_match"], r1["f1"]) == (r2["exact_match"], r2["f1"])


@pytest.mark.multiprocess
@pytest.mark.deepspeed
def test_deepspeed_zero3_trains_and_exports(tiny_bert, tmp_path):
    from transformers import AutoModelForQuestionAnswering
    run = tmp_path / "zero3"
    accelerate_launch(fp32_deepspeed_config("deepspeed_zero3.yaml"), "finetune_qa.py",
                      qa_args(tiny_bert, run, "--train_file", str(TINY_V1), "--train_articles", "2",
                              "--max_train_steps", "4", "--checkpointing_steps", "2", "--aux_metrics", "false"),
                      "--num_processes", "2")
    assert "zero_stage: 3" in (run / "config.yaml").read_text()
    model = AutoModelForQuestionAnswering.from_pretrained(run / "final")
    assert model.qa_outputs.weight.shape == (2, TINY_HIDDEN) and torch.isfinite(model.qa_outputs.weight).all()
    results = json.loads((run / "eval_results.json").read_text())
    assert results["params"]["added_total"] == TINY_HIDDEN * 2 + 2
    assert sorted(json.loads((run / "predictions.json").read_text())) == sorted(held_out_ids(TINY_V1, 2))
