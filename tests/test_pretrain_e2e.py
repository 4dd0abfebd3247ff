"""End-to-end pretraining runs in this process: the run-folder contract, resume, refusals."""

import json
import math
import re
import shutil

import pytest
import torch
import yaml

from tests.conftest import assert_same_tensors, final_tensors, pretrain_args, read_jsonl, run_pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    assert run_pretrain(pretrain_args(corpus_dir, out, "--num_train_epochs", "3", "--logging_steps", "1",
                                      "--keep_last_n", "2", "--train_tokenizer", "300")) == 0
    return out


def test_run_folder_contract(smoke_run):
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["task"] == "pretraining" and config["world_size"] == 1
    assert config["config"]["hidden_size"] == 32 and config["git_sha"] and config["versions"]["torch"]
    assert config["distributed"]["mixed_precision"] == "no"

    lines = read_jsonl(smoke_run / "metrics.jsonl")
    train_lines = [line for line in lines if "split" not in line]
    for key in ("step", "epoch", "loss", "mlm_loss", "nsp_loss", "lr", "grad_norm", "samples_per_second",
                "tokens_per_second"):
        assert all(key in line and line[key] is not None for line in train_lines), key
    assert [line["step"] for line in train_lines] == list(range(1, len(train_lines) + 1))
    assert all(math.isclose(line["loss"], line["mlm_loss"] + line["nsp_loss"]) for line in train_lines)

    results = json.loads((smoke_run / "eval_results.json").read_text())
    assert len(results["epochs"]) == 3
    keys = {"epoch", "step", "mlm_loss", "perplexity", "nsp_loss", "nsp_accuracy", "masked_tokens"}
    for record in results["epochs"] + [results["test"]]:
        assert keys <= record.keys()
        assert math.isclose(record["perplexity"], math.exp(record["mlm_loss"]), rel_tol=1e-12)
        assert 0.0 <= record["nsp_accuracy"] <= 1.0 and record["masked_tokens"] > 0
    assert [e["epoch"] for e in results["epochs"]] == [1.0, 2.0, 3.0]
    ppl = [e["perplexity"] for e in results["epochs"]]
    assert ppl[0] > ppl[1] > ppl[2], f"validation perplexity must fall: {ppl}"
    assert results["epochs"][0]["masked_tokens"] == results["epochs"][2]["masked_tokens"]  # fixed masks

    checkpoints = sorted(p.name for p in (smoke_run / "checkpoints").iterdir())
    steps_per_epoch = train_lines[-1]["step"] // 3
    assert checkpoints == [f"step_{2 * steps_per_epoch:06d}", f"step_{3 * steps_per_epoch:06d}"]  # keep_last_n 2
    assert not list((smoke_run / "checkpoints").glob(".tmp-*"))


def test_learning_rate_warmup_then_linear_decay(smoke_run):
    lines = [line for line in read_jsonl(smoke_run / "metrics.jsonl") if "split" not in line]
    total = lines[-1]["step"]
    warmup = math.ceil(0.1 * total)
    peak = 2e-3
    for line in lines:  # the LR logged at step s is the one the next step will use
        step = line["step"]
        expected = peak * step / warmup if step < warmup else peak * (total - step) / (total - warmup)
        assert math.isclose(line["lr"], expected, rel_tol=1e-9, abs_tol=1e-12), line


def test_tensorboard_scalars_read_back(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(smoke_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/mlm_loss", "train/nsp_loss", "train/lr", "train/grad_norm",
                "train/tokens_per_second", "eval/perplexity", "eval/mlm_loss", "eval/nsp_accuracy"):
        assert tag in tags, tag
    perplexities = [e.value for e in acc.Scalars("eval/perplexity")]
    results = json.loads((smoke_run / "eval_results.json").read_text())
    assert perplexities == pytest.approx([e["perplexity"] for e in results["epochs"]], rel=1e-6)


def test_final_model_reloads(smoke_run):
    from transformers import AutoModel, AutoTokenizer, BertForPreTraining
    model = BertForPreTraining.from_pretrained(smoke_run / "final")
    base = AutoModel.from_pretrained(smoke_run / "final")
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "final")
    assert model.config.hidden_size == 32 and len(tokenizer) == model.config.vocab_size <= 300
    assert (smoke_run / "tokenizer" / "tokenizer.json").is_file()  # the trained vocabulary, kept for resume
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    saved = final_tensors(smoke_run)
    assert torch.equal(base.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"])
    assert "NSP" in (smoke_run / "final" / "README.md").read_text() or "next sentence" in \
        (smoke_run / "final" / "README.md").read_text()


def test_resume_is_bit_identical(corpus_dir, tmp_path):
    """Stop after several optimizer steps (mid-epoch, with accumulation) and resume: the final
    parameters and every logged metric equal those of the uninterrupted run."""
    common = ("--num_train_epochs", "2", "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "4",
              "--logging_steps", "3", "--eval_steps", "5")
    reference = tmp_path / "reference"
    assert run_pretrain(pretrain_args(corpus_dir, reference, *common, "--checkpointing_steps", "none")) == 0
    every = tmp_path / "every_step"
    assert run_pretrain(pretrain_args(corpus_dir, every, *common, "--checkpointing_steps", "1",
                                      "--keep_last_n", "0")) == 0
    assert_same_tensors(final_tensors(reference), final_tensors(every))  # saving does not perturb training
    steps = sorted(int(p.name[5:]) for p in (every / "checkpoints").glob("step_*"))
    steps_per_epoch = steps[-1] // 2
    drop = ("samples_per_second", "tokens_per_second", "mfu", "mfu_dense_head")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    for stop_after in (1, 4, steps_per_epoch, steps_per_epoch + 2):  # start, mid-epoch, epoch end, next epoch
        resumed = tmp_path / f"resumed_{stop_after}"
        shutil.copytree(every, resumed, ignore=shutil.ignore_patterns("final"))
        for ckpt in (resumed / "checkpoints").glob("step_*"):
            if int(ckpt.name[5:]) > stop_after:
                shutil.rmtree(ckpt)
        assert run_pretrain(pretrain_args(corpus_dir, resumed, *common, "--checkpointing_steps", "1",
                                          "--keep_last_n", "0", "--resume_from_checkpoint", "latest")) == 0
        assert_same_tensors(final_tensors(reference), final_tensors(resumed))
        ref_eval = json.loads((reference / "eval_results.json").read_text())
        assert json.loads((resumed / "eval_results.json").read_text()) == ref_eval
        assert strip(read_jsonl(resumed / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))


def test_loss_is_normalised_over_the_accumulation_window(corpus_dir, tmp_path):
    """2 micro-batches of 4 accumulate to exactly the step of one batch of 8 (dropout off): the MLM
    loss is divided by the masked tokens of the whole window, not averaged per micro-batch."""
    no_dropout = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "6",
                  "--checkpointing_steps", "none", "--num_train_epochs", "1")
    one = tmp_path / "bs8"
    two = tmp_path / "bs4x2"
    assert run_pretrain(pretrain_args(corpus_dir, one, *no_dropout, "--per_device_train_batch_size", "8")) == 0
    assert run_pretrain(pretrain_args(corpus_dir, two, *no_dropout, "--per_device_train_batch_size", "4",
                                      "--gradient_accumulation_steps", "2")) == 0
    assert_same_tensors(final_tensors(one), final_tensors(two), exact=False, atol=2e-6)


def test_output_folder_of_another_run_is_refused(corpus_dir, tmp_path, smoke_run):
    from train.common.run_folder import RunFolderError
    with pytest.raises(RunFolderError, match="already holds a run"):
        run_pretrain(pretrain_args(corpus_dir, smoke_run))
    with pytest.raises(RunFolderError, match="different configuration.*hidden_size: 32 -> 64"):
        run_pretrain(pretrain_args(corpus_dir, smoke_run, "--hidden_size", "64", "--resume_from_checkpoint",
                                   "latest"))
    before = final_tensors(smoke_run)
    assert_same_tensors(before, final_tensors(smoke_run))  # nothing was overwritten


def test_corrupt_latest_checkpoint_is_skipped(corpus_dir, tmp_path, caplog):
    run = tmp_path / "run"
    args = ("--max_train_steps", "6", "--checkpointing_steps", "2", "--keep_last_n", "0")
    assert run_pretrain(pretrain_args(corpus_dir, run, *args)) == 0
    reference = final_tensors(run)
    # Damage the newest checkpoint, leave an unfinished temporary one, and rerun from "latest".
    weights = run / "checkpoints" / "step_000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (run / "checkpoints" / ".tmp-step_000008").mkdir()
    shutil.rmtree(run / "final")
    with caplog.at_level("WARNING"):
        assert run_pretrain(pretrain_args(corpus_dir, run, *args, "--resume_from_checkpoint", "latest")) == 0
    assert "skipping checkpoint step_000006" in caplog.text
    assert_same_tensors(reference, final_tensors(run))  # resumed from step 4 and replayed 5-6 exactly


def test_mlm_only_run(corpus_dir, tmp_path):
    run = tmp_path / "mlm_only"
    assert run_pretrain(pretrain_args(corpus_dir, run, "--no_nsp", "--max_train_steps", "4",
                                      "--checkpointing_steps", "none")) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["test"]["nsp_accuracy"] is None and results["test"]["perplexity"] > 1
    card = (run / "final" / "README.md").read_text()
    assert "NOT trained" in card  # the pooler


def test_fp16_on_cpu_is_refused(corpus_dir, tmp_path, monkeypatch):
    from train.common.distributed import LaunchError
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(LaunchError, match="fp16 on CPU"):
        run_pretrain(pretrain_args(corpus_dir, tmp_path / "fp16"))


def test_push_to_hub_offline_fails_after_saving(corpus_dir, tmp_path, monkeypatch):
    from train.common.run_folder import HubUploadError
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    run = tmp_path / "push"
    with pytest.raises(HubUploadError, match="could not push") as err:
        run_pretrain(pretrain_args(corpus_dir, run, "--max_train_steps", "2", "--checkpointing_steps", "none",
                                   "--push_to_hub", "--hub_model_id", "someone/tiny-bert"))
    assert (run / "final" / "model.safetensors").is_file()
    assert "hf_abcdefghij" not in str(err.value)
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".jsonl", ".md"):
            assert "hf_abcdefghij" not in path.read_text(), path


def test_torch_compile_trains_and_exports_like_eager(corpus_dir, tmp_path):
    """--torch_compile (the whole objective, one graph): the same losses, evaluation and exported weights as
    the eager run (dropout off: compiled dropout draws other random numbers), under the same names."""
    no_dropout = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "4",
                  "--logging_steps", "1", "--checkpointing_steps", "none")
    from torch._dynamo.utils import counters
    runs = {}
    for name, extra in (("eager", ()), ("compiled", ("--torch_compile",))):
        runs[name] = tmp_path / name
        torch._dynamo.reset()
        counters.clear()
        assert run_pretrain(pretrain_args(corpus_dir, runs[name], *no_dropout, *extra)) == 0
    # Training and evaluation graphs (and a recompile for another batch width), never a graph break.
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters)
    torch._dynamo.reset()
    lines = {k: read_jsonl(v / "metrics.jsonl") for k, v in runs.items()}
    for eager, compiled in zip(lines["eager"], lines["compiled"], strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "perplexity"):
            if key in eager:
                assert compiled[key] == pytest.approx(eager[key], rel=1e-4), (key, eager, compiled)
    assert_same_tensors(final_tensors(runs["eager"]), final_tensors(runs["compiled"]), exact=False, atol=1e-4)


def test_packed_run_pads_less(corpus_dir, tmp_path):
    # Mostly short instances (as on a corpus of short documents), so that two or more fit in one row. Dropout 0:
    # packed and padded rows then train the same model (NSP normalised per instance, not per row).
    args = ("--max_train_steps", "4", "--logging_steps", "1", "--checkpointing_steps", "none", "--short_seq_prob", "1",
            "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0")
    fractions, seen, losses = {}, {}, {}
    runs = (("padded", ()), ("packed", ("--pack_sequences",)),
            ("packed_fused", ("--pack_sequences", "--fused_encoder")))
    for name, extra in runs:
        assert run_pretrain(pretrain_args(corpus_dir, tmp_path / name, *args, *extra)) == 0
        lines = [line for line in read_jsonl(tmp_path / name / "metrics.jsonl") if "split" not in line]
        assert len(lines) == 4 and all(math.isfinite(line["loss"]) for line in lines)
        fractions[name] = sum(line["padding_fraction"] for line in lines) / len(lines)
        losses[name] = [(line["mlm_loss"], line["nsp_loss"]) for line in lines]
        card = (tmp_path / name / "final" / "README.md").read_text()
        seen[name] = re.search(r"\((\d+) sequences, (\d+) non-padding tokens\)", card).groups()
    assert fractions["packed"] < 0.75 * fractions["padded"], fractions
    # The same instances are trained on, and counted per instance, not per row.
    assert seen["packed"] == seen["padded"] == seen["packed_fused"], seen
    # after three updates the losses still agree (3e-8 here; normalising NSP per row instead: 2e-4), also through
    # the fused encoder's own packed attention (its block-diagonal SDPA on CPU)
    for name in ("packed", "packed_fused"):
        assert all(math.isclose(a, b, rel_tol=1e-5) for pair in zip(losses[name], losses["padded"], strict=True)
                   for a, b in zip(*pair, strict=True)), (name, losses)
