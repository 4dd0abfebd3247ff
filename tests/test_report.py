"""analysis.report on synthetic run folders built like the training scripts write them."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.report import ReportError, build_report, load_reference, load_run, main, sanity_checks, write_report

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SST_LABELS = ["very negative", "negative", "neutral", "positive", "very positive"]


# ----------------------------------------------------------------------------- fixtures


def write_tensorboard(folder: Path, scalars: dict) -> None:
    """Real event files, in a sub-folder as Accelerate's tracker writes them."""
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder / "tensorboard" / "run"))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def write_jsonl(path: Path, records: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_pretraining_run(folder: Path, perplexities=(60.0, 30.0, 20.0), *, with_metrics=True,
                         with_tensorboard=True, nsp=True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"task": "pretraining", "world_size": 2, "config": {"learning_rate": 1e-4, "seed": 0}}))
    train, evals, epochs, tb = [], [], [], {}
    for step in range(1, 31):
        mlm = 7.0 - 0.1 * step
        rec = {"step": step, "epoch": (step - 1) // 10, "loss": mlm + 0.6, "mlm_loss": mlm,
               "nsp_loss": 0.6 if nsp else None, "lr": 1e-4 * min(1.0, step / 5),
               "grad_norm": 1.5, "samples_per_second": 40.0, "tokens_per_second": 5120.0 + step,
               "unknown_key": "ignored"}
        train.append(rec)
        for key in ("loss", "mlm_loss", "lr", "tokens_per_second"):
            tb.setdefault(f"train/{key}", []).append((step, rec[key]))
    for i, ppl in enumerate(perplexities):
        step = 10 * (i + 1)
        loss = math.log(ppl)
        evals.append({"step": step, "epoch": i, "split": "validation", "mlm_loss": loss, "perplexity": ppl})
        epochs.append({"epoch": i, "step": step, "mlm_loss": loss, "perplexity": ppl,
                       "nsp_loss": 0.5 if nsp else None, "nsp_accuracy": 0.75 if nsp else None,
                       "masked_tokens": 1234})
        tb.setdefault("eval/perplexity", []).append((step, ppl))
    if with_metrics:
        lines = train[:10] + evals[:1] + train[10:20] + evals[1:2] + train[20:] + evals[2:]
        write_jsonl(folder / "metrics.jsonl", lines)
    test = dict(epochs[-1], epoch=None)
    (folder / "eval_results.json").write_text(json.dumps(
        {"task": "pretraining", "epochs": epochs, "test": test}))
    if with_tensorboard:
        write_tensorboard(folder, tb)
    return folder


def split_metrics(matrix) -> dict:
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    return {"accuracy": correct / total, "macro_precision": 0.4, "macro_recall": 0.4, "macro_f1": 0.38,
            "weighted_precision": 0.45, "weighted_recall": correct / total, "weighted_f1": 0.44,
            "per_class": {name: {"precision": 0.4, "recall": 0.4, "f1": 0.4, "support": sum(matrix[i])}
                          for i, name in enumerate(SST_LABELS)},
            "confusion_matrix": matrix, "labels": SST_LABELS, "num_examples": total}


def make_classification_run(folder: Path, params=None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": "classification", "world_size": 1}))
    records = [{"step": s, "epoch": (s - 1) // 5, "loss": 1.6 - 0.05 * s, "lr": 2e-5, "grad_norm": 3.0,
                "samples_per_second": 30.0, "tokens_per_second": 1900.0} for s in range(1, 11)]
    records.insert(5, {"step": 5, "epoch": 0, "split": "dev", "accuracy": 0.40, "macro_f1": 0.33})
    records.append({"step": 10, "epoch": 1, "split": "dev", "accuracy": 0.47, "macro_f1": 0.41})
    write_jsonl(folder / "metrics.jsonl", records)
    dev = [[50, 60, 20, 8, 1], [30, 200, 40, 15, 4], [10, 70, 60, 80, 9], [2, 20, 30, 200, 27],
           [1, 5, 8, 90, 61]]
    test = [[60, 80, 30, 8, 1], [40, 400, 80, 50, 63], [10, 100, 150, 100, 29], [5, 40, 60, 300, 105],
            [2, 10, 15, 150, 222]]
    results = {
        "task": "classification",
        "splits": {"dev": split_metrics(dev), "test": split_metrics(test),
                   "dev_phrases": split_metrics(dev), "test_phrases": split_metrics(test)},
        "epochs": [{"epoch": 0, "step": 5, "dev_accuracy": 0.40, "dev_macro_f1": 0.33},
                   {"epoch": 1, "step": 10, "dev_accuracy": 0.47, "dev_macro_f1": 0.41}],
        "params": params or {"before": {"total": 100, "trainable": 100, "architecture": "BertModel"},
                             "after": {"total": 3945, "trainable": 3945,
                                       "architecture": "BertForSequenceClassification"},
                             "added": {"classifier.weight": 3840, "classifier.bias": 5},
                             "dropped": {}, "added_total": 3845, "dropped_total": 0,
                             "explanation": "classifier 5x768 + 5"},
        "majority_baseline": {"dev": 0.253, "test": 0.231},
        "seeds": {"runs": [{"seed": 0}, {"seed": 1}, {"seed": 2}],
                  "mean": {"test": {"accuracy": 0.51}}, "std": {"test": {"accuracy": 0.01}}},
    }
    (folder / "eval_results.json").write_text(json.dumps(results))
    write_tensorboard(folder, {"train/loss": [(r["step"], r["loss"]) for r in records if "split" not in r],
                               "eval/accuracy": [(5, 0.40), (10, 0.47)]})
    return folder


def make_qa_run(folder: Path, em=78.5, f1=86.25) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": "qa", "world_size": 2}))
    records = [{"step": s, "epoch": 0, "loss": 3.0 / s, "lr": 3e-5, "grad_norm": 2.0,
                "samples_per_second": 12.0, "tokens_per_second": 4600.0} for s in range(1, 9)]
    records.append({"step": 8, "epoch": 0, "split": "dev", "exact_match": em, "f1": f1})
    write_jsonl(folder / "metrics.jsonl", records)
    results = {"task": "qa", "version": "2.0", "exact_match": em, "f1": f1, "total": 200,
               "HasAns_exact": 70.0, "HasAns_f1": 85.0, "NoAns_exact": 87.0, "NoAns_f1": 87.0,
               "best_exact": 79.0, "best_exact_thresh": -1.2, "best_f1": 86.5, "best_f1_thresh": -1.0,
               "auxiliary": {"bleu": 41.2, "rouge1": 0.81, "rouge2": 0.52, "rougeL": 0.8,
                             "rougeLsum": 0.8, "meteor": 0.66},
               "epochs": [{"epoch": 0, "step": 8, "exact_match": em, "f1": f1}],
               "params": {"added_total": 1538}}
    (folder / "eval_results.json").write_text(json.dumps(results))
    return folder


def png_links(report: Path) -> list:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def assert_valid_png(path: Path) -> None:
    import matplotlib.image
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 2000, path
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "pretraining": make_pretraining_run(root / "bert_pretrain"),
        "rising": make_pretraining_run(root / "bert_pretrain_rising", perplexities=(30.0, 35.0, 41.0),
                                       with_tensorboard=False, nsp=False),
        "classification": make_classification_run(root / "sst5"),
        "qa": make_qa_run(root / "squad_v2"),
    }


@pytest.fixture(scope="module")
def params_diff_file(tmp_path_factory):
    """A real diff JSON from `python -m analysis.params A B --json` on tiny models."""
    import torch
    from transformers import BertConfig, BertForPreTraining, BertForSequenceClassification

    from analysis import params
    root = tmp_path_factory.mktemp("diff")
    config = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=20, max_position_embeddings=32)
    torch.manual_seed(0)
    pre = BertForPreTraining(BertConfig(**config))
    cls = BertForSequenceClassification(BertConfig(num_labels=5, **config))
    cls.bert.load_state_dict(pre.bert.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(cls.bert.encoder.layer):
            for p in layer.parameters():
                p.add_(0.01 * (i + 1) * torch.randn_like(p))
    pre.save_pretrained(root / "pre")
    cls.save_pretrained(root / "cls")
    out = root / "diff.json"
    assert params.main([str(root / "pre"), str(root / "cls"), "--json", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- reading


def test_load_run_reads_everything(runs):
    run = load_run(runs["pretraining"])
    assert run.task == "pretraining" and run.world_size == 2
    assert len(run.train_records) == 30 and len(run.eval_records("validation")) == 3
    assert run.last_step == 30
    assert run.scalars["train/loss"][0] == (1, pytest.approx(7.5))
    steps, ppl = run.series("perplexity", split="validation")
    assert steps == [10, 20, 30] and ppl == [60.0, 30.0, 20.0]
    assert run.notes == []


def test_tensorboard_fallback_without_metrics(tmp_path):
    folder = make_pretraining_run(tmp_path / "tb_only", with_metrics=False)
    run = load_run(folder)
    assert run.records == []
    steps, losses = run.series("loss")
    assert steps == list(range(1, 31)) and losses[0] == pytest.approx(7.5)
    assert run.series("perplexity", split="validation")[1] == [60.0, 30.0, 20.0]
    assert any("TensorBoard" in n for n in run.notes)
    report = build_report([folder], tmp_path / "out")
    assert "tb_only_loss.png" in report.read_text()


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    folder = make_qa_run(tmp_path / "bad_metrics")
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"step": 3, "loss": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=re.escape(f"{path}:3:")):
        load_run(folder)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ReportError, match=re.escape(f"{path}:2: expected a JSON object")):
        load_run(folder)


@pytest.mark.parametrize("name, content", [("eval_results.json", "{not json"),
                                           ("config.yaml", "task: [unclosed"),
                                           ("eval_results.json", "[1, 2]")])
def test_malformed_files_name_the_file(tmp_path, name, content):
    folder = make_qa_run(tmp_path / "run")
    (folder / name).write_text(content)
    with pytest.raises(ReportError, match=re.escape(str(folder / name))):
        load_run(folder)


def test_missing_run_folder_and_empty_folder(tmp_path):
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "nowhere"))):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run files"):
        load_run(tmp_path / "empty")


def test_missing_eval_results_still_reports(tmp_path):
    folder = make_classification_run(tmp_path / "partial")
    (folder / "eval_results.json").unlink()
    report = build_report([folder], tmp_path / "out")
    text = report.read_text()
    assert "eval_results.json is missing" in text
    assert "partial_loss.png" in text
    assert "| partial | 1 | 10 | 0.4700 |" in text  # dev accuracy from the metrics.jsonl eval records


# ----------------------------------------------------------------------------- checks


def test_perplexity_checks(runs):
    good = sanity_checks(load_run(runs["pretraining"]))
    assert any(c.level == "ok" and "perplexity fell every epoch" in c.message for c in good)
    assert not [c for c in good if c.level in ("warning", "bug")]
    rising = sanity_checks(load_run(runs["rising"]))
    warnings = [c for c in rising if c.level == "warning" and "perplexity did not fall" in c.message]
    assert len(warnings) == 2
    assert "30.000 (epoch 0) -> 35.000 (epoch 1)" in warnings[0].message


def test_perplexity_not_exp_of_mlm_loss(tmp_path):
    folder = make_pretraining_run(tmp_path / "combined", with_tensorboard=False)
    results = json.loads((folder / "eval_results.json").read_text())
    results["epochs"][1]["perplexity"] = math.exp(results["epochs"][1]["mlm_loss"] + 0.6)  # exp(MLM+NSP)
    results["epochs"][2]["perplexity"] = 10.0
    (folder / "eval_results.json").write_text(json.dumps(results))
    checks = sanity_checks(load_run(folder))
    assert any(c.level == "warning" and "epoch 1: perplexity" in c.message and "exp(mlm_loss)" in c.message
               for c in checks)


def test_em_above_f1_is_flagged_as_bug(tmp_path):
    checks = sanity_checks(load_run(make_qa_run(tmp_path / "qa_bug", em=90.0, f1=85.0)))
    bugs = [c for c in checks if c.level == "bug"]
    assert bugs and all("EM can never exceed F1" in c.message for c in bugs)
    assert len(bugs) == 3  # final result, epoch record, dev eval record
    ok = sanity_checks(load_run(make_qa_run(tmp_path / "qa_ok")))
    assert any(c.level == "ok" and "EM <= F1" in c.message for c in ok)


def test_classification_consistency_checks(tmp_path):
    folder = make_classification_run(tmp_path / "sst_bad")
    results = json.loads((folder / "eval_results.json").read_text())
    results["splits"]["test"]["accuracy"] = 0.9
    results["majority_baseline"]["dev"] = 0.9
    (folder / "eval_results.json").write_text(json.dumps(results))
    checks = sanity_checks(load_run(folder))
    assert any(c.level == "bug" and "test: accuracy 0.9000 disagrees" in c.message for c in checks)
    assert any(c.level == "warning" and "dev: accuracy" in c.message and "majority" in c.message
               for c in checks)


# ----------------------------------------------------------------------------- report


def test_full_report(runs, params_diff_file, tmp_path):
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({"pretraining": {"perplexity": 4.0, "source": "BERT paper (sketch)"},
                                     "classification": {"test_accuracy": 0.53},
                                     "qa": {"exact_match": 80.8, "f1": 88.5}}))
    out = tmp_path / "report"
    report, checks = write_report(list(runs.values()), out, reference=reference,
                                  params_diffs=[params_diff_file])
    assert report == out / "report.md" and report.is_file()
    text = report.read_text()
    for folder in runs.values():
        assert f"`{folder.name}`" in text
    links = png_links(report)
    assert len(links) >= 15
    for link in links:
        assert_valid_png(out / link)
    expected = ["plots/bert_pretrain_loss.png", "plots/bert_pretrain_perplexity.png",
                "plots/bert_pretrain_lr.png", "plots/bert_pretrain_throughput.png",
                "plots/sst5_confusion_test.png", "plots/sst5_confusion_dev.png", "plots/sst5_eval.png",
                "plots/squad_v2_squad.png", "plots/squad_v2_auxiliary.png", "plots/params_diff.png"]
    for link in expected:
        assert link in links, link
    # results tables with the reference rows
    assert "| *reference* | – | – | – | – | – | 4.0000 |" in text
    assert "| sst5 | 1 | 10 | 0.5186 |" in text  # 571 / 1101 from the dev confusion matrix
    assert "0.5300" in text and "80.80" in text and "88.50" in text
    assert "Reference: BERT paper (sketch)" in text
    # sanity checks stated plainly
    assert "**WARNING** `bert_pretrain_rising`: perplexity did not fall" in text
    assert "**OK** `bert_pretrain`: perplexity fell every epoch" in text
    assert "**OK** `squad_v2`: EM <= F1" in text
    assert {c.level for c in checks} >= {"ok", "warning"}
    # auxiliary metrics labelled as such, params summary and diff table shown
    assert "Auxiliary metrics (not official SQuAD metrics)" in text
    assert "`classifier.weight` 3,840" in text
    assert "## Parameter change after fine-tuning" in text
    assert "| encoder.layer.2 |" in text


def test_params_diff_in_run_folder(runs, params_diff_file, tmp_path):
    import shutil
    folder = tmp_path / "sst_with_diff"
    shutil.copytree(runs["classification"], folder)
    shutil.copy(params_diff_file, folder / "params_diff.json")
    report = build_report([folder], tmp_path / "out")
    links = png_links(report)
    heatmaps = [link for link in links if link.startswith("plots/params_")]
    assert heatmaps == ["plots/params_sst_with_diff_params_diff.png"]
    assert_valid_png(tmp_path / "out" / heatmaps[0])


def test_duplicate_run_names_are_disambiguated(tmp_path):
    a = make_qa_run(tmp_path / "a" / "final_run")
    b = make_qa_run(tmp_path / "b" / "final_run")
    text = build_report([a, b], tmp_path / "out").read_text()
    assert "`a/final_run`" in text and "`b/final_run`" in text
    assert "plots/a_final_run_squad.png" in text and "plots/b_final_run_squad.png" in text


def test_reference_validation(tmp_path):
    assert load_reference({"qa": {"f1": 88.5}}) == {"qa": {"f1": 88.5}}
    with pytest.raises(ReportError, match="unknown task 'translation'"):
        load_reference({"translation": {"bleu": 30}})
    with pytest.raises(ReportError, match="unknown qa column 'bleu'"):
        load_reference({"qa": {"bleu": 30}})
    with pytest.raises(ReportError, match="must be a number"):
        load_reference({"pretraining": {"perplexity": "low"}})
    bad = tmp_path / "ref.json"
    bad.write_text("{")
    with pytest.raises(ReportError, match=re.escape(str(bad))):
        load_reference(bad)


def test_bad_params_diff_names_file(runs, tmp_path):
    bad = tmp_path / "not_a_diff.json"
    bad.write_text(json.dumps({"total": 3}))
    with pytest.raises(ReportError, match=re.escape(f"{bad}: not a params diff")):
        build_report([runs["qa"]], tmp_path / "out", params_diffs=[bad])


# ----------------------------------------------------------------------------- CLI


def test_cli_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "analysis.report", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--reference" in out.stdout and "--params-diff" in out.stdout


def test_cli_run_strict_and_errors(runs, tmp_path, capsys):
    assert main([str(runs["qa"]), "--out", str(tmp_path / "r1")]) == 0
    assert (tmp_path / "r1" / "report.md").is_file()
    assert main([str(runs["rising"]), "--out", str(tmp_path / "r2")]) == 0
    assert "WARNING bert_pretrain_rising: perplexity did not fall" in capsys.readouterr().err
    assert main([str(runs["rising"]), "--out", str(tmp_path / "r3"), "--strict"]) == 1
    missing = tmp_path / "no_such_run"
    assert main([str(missing), "--out", str(tmp_path / "r4")]) == 2
    assert str(missing) in capsys.readouterr().err
