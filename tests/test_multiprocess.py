"""Real multi-process runs through `accelerate launch` (gloo DDP on CPU) and DeepSpeed ZeRO on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, fp32_deepspeed_config, free_port, launch_env, pretrain_args, run_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
NO_DROPOUT = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0")


def accelerate_launch(config: str, args: list[str], *launch_args: str, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "accelerate_configs" / config), "--main_process_port", str(free_port()),
           *launch_args, str(REPO / "train" / "pretrain.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def tensors(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def test_two_processes_match_one_process_with_the_same_global_batch(corpus_dir, tmp_path):
    common = (*NO_DROPOUT, "--max_train_steps", "8", "--checkpointing_steps", "none", "--eval_steps", "4")
    two = tmp_path / "ddp2"
    accelerate_launch("cpu_ddp.yaml", pretrain_args(corpus_dir, two, *common, "--per_device_train_batch_size", "4"))
    config = (two / "config.yaml").read_text()
    assert "world_size: 2" in config and "distributed_type: MULTI_CPU" in config
    check = json.loads((two / "replica_check.json").read_text())
    assert check["in_sync"] and len(check["fingerprints"]) == 2  # both ranks hold identical parameters
    one = tmp_path / "single"
    assert run_pretrain(pretrain_args(corpus_dir, one, *common, "--per_device_train_batch_size", "8")) == 0
    a, b = tensors(one), tensors(two)
    for key in a:  # same samples, masks and normalisation; only the summation order differs
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    ra, rb = (json.loads((r / "eval_results.json").read_text()) for r in (one, two))
    for ea, eb in zip(ra["epochs"] + [ra["test"]], rb["epochs"] + [rb["test"]], strict=True):
        assert ea["masked_tokens"] == eb["masked_tokens"]  # every example evaluated exactly once
        assert ea["perplexity"] == pytest.approx(eb["perplexity"], rel=1e-4)


@pytest.fixture(scope="module")
def ddp_reference(corpus_dir, tmp_path_factory):
    """The 2-process DDP run each DeepSpeed run is compared with, per gradient-accumulation setting."""
    runs = {}

    def run_for(gas: int) -> dict:
        if gas not in runs:
            folder = tmp_path_factory.mktemp(f"ddp_gas{gas}") / "run"
            accelerate_launch("cpu_ddp.yaml", pretrain_args(corpus_dir, folder, *ZERO_COMMON,
                                                            "--gradient_accumulation_steps", str(gas)))
            runs[gas] = tensors(folder)
        return runs[gas]
    return run_for


# Dropout off: DeepSpeed and DDP draw from the RNG in different orders; the maths is the same without it.
ZERO_COMMON = (*NO_DROPOUT, "--max_train_steps", "6", "--checkpointing_steps", "3", "--keep_last_n", "0",
               "--per_device_train_batch_size", "4")


@pytest.mark.deepspeed
@pytest.mark.parametrize("gas", [1, 2])
@pytest.mark.parametrize("zero", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_zero_equals_ddp_saves_resumes_and_exports(corpus_dir, tmp_path, zero, gas, ddp_reference):
    from transformers import BertForPreTraining
    run = tmp_path / zero.split(".")[0]
    args = pretrain_args(corpus_dir, run, *ZERO_COMMON, "--gradient_accumulation_steps", str(gas))
    launch = ("--num_processes", "2")
    zero = fp32_deepspeed_config(zero)
    accelerate_launch(zero, args, *launch)
    config = (run / "config.yaml").read_text()
    assert f"zero_stage: {zero[-6]}" in config and f"gradient_accumulation_steps: {gas}" in config
    reference = tensors(run)
    # The same samples, masks, loss normalisation, clipping and AdamW as DDP: only the reduction order differs.
    for key, expected in ddp_reference(gas).items():
        torch.testing.assert_close(reference[key], expected, atol=1e-5, rtol=0, msg=key)
    model = BertForPreTraining.from_pretrained(run / "final")  # the ZeRO export is a plain HF model
    assert model.config.hidden_size == 32
    # Resume from step 3 and replay 4-6: the same final model, bit for bit.
    import shutil
    shutil.rmtree(run / "checkpoints" / "step_000006")
    shutil.rmtree(run / "final")
    accelerate_launch(zero, args + ["--resume_from_checkpoint", "latest"], *launch)
    resumed = tensors(run)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


@pytest.mark.deepspeed
@pytest.mark.parametrize("zero", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_shipped_deepspeed_configs_start_as_documented(corpus_dir, tmp_path, zero):
    """The shipped config, no precision flag (the README's command): accelerate used to refuse it at start
    (`mixed_precision` beside a deepspeed_config_file). bf16 comes from the json."""
    run = tmp_path / "run"
    accelerate_launch(zero, pretrain_args(corpus_dir, run, "--max_train_steps", "2", "--checkpointing_steps", "none"),
                      "--num_processes", "2")
    config = (run / "config.yaml").read_text()
    assert f"zero_stage: {zero[-6]}" in config and "mixed_precision: bf16" in config
    assert (run / "final" / "model.safetensors").is_file()
