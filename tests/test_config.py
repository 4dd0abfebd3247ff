"""Presets, command-line overrides, unknown keys, and every config file in the repository."""

import json
from pathlib import Path

import pytest
import yaml

from train.common.config import ConfigError, OptimizationArguments, RunArguments, parse_config
from train.common.task_config import PretrainingDataArguments, PretrainingModelArguments

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = (PretrainingModelArguments, PretrainingDataArguments, OptimizationArguments, RunArguments)


def test_preset_then_command_line_override(tmp_path):
    model, data, opt, run = parse_config(PRETRAIN, ["--config", str(REPO / "train/configs/smoke.yaml"),
                                                    "--learning_rate", "3e-4", "--no_nsp"])
    assert model.hidden_size == 128 and opt.learning_rate == 3e-4 and data.nsp is False
    assert data.train_tokenizer == 8000 and run.output_dir == "runs/smoke"
    _, data, _, _ = parse_config(PRETRAIN, ["--config", str(REPO / "train/configs/smoke.yaml"),
                                            "--train_tokenizer", "none"])
    assert data.train_tokenizer is None  # an optional preset value can be reset
    model, data, opt, run = parse_config(PRETRAIN, [])
    assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads) == (768, 12, 12)
    assert opt.num_train_epochs == 5 and data.max_seq_length == 128 and data.nsp


def test_unknown_keys_are_rejected(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("learning_rat: 0.1\nhidden_size: 64\n")
    with pytest.raises(ConfigError,
                       match=r"bad.yaml: unknown option\(s\) 'learning_rat' \(did you mean 'learning_rate'"):
        parse_config(PRETRAIN, ["--config", str(preset)])
    with pytest.raises(ConfigError, match="not used"):
        parse_config(PRETRAIN, ["--learning_rat", "0.1"])
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(PRETRAIN, ["--config", str(tmp_path / "missing.yaml")])
    preset.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(PRETRAIN, ["--config", str(preset)])


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        parse_config(PRETRAIN, ["--lr_scheduler_type", "exponential"])
    with pytest.raises(ConfigError, match="divisible"):
        parse_config(PRETRAIN, ["--hidden_size", "100", "--num_attention_heads", "12"])
    with pytest.raises(ConfigError, match="hub_model_id"):
        parse_config(PRETRAIN, ["--push_to_hub"])
    with pytest.raises(ConfigError, match="checkpointing_steps"):
        parse_config(PRETRAIN, ["--checkpointing_steps", "often"])


def test_torch_compile_mode_is_validated():
    from train.common.task_config import COMPILE_MODES
    assert parse_config(PRETRAIN, [])[0].torch_compile_mode == "default"
    for mode in COMPILE_MODES:
        assert parse_config(PRETRAIN, ["--torch_compile", "--torch_compile_mode", mode])[0].torch_compile_mode == mode
    with pytest.raises(ConfigError, match="^torch_compile_mode must be one of default, reduce-overhead, "
                                          "max-autotune-no-cudagraphs; got 'fast'$"):
        parse_config(PRETRAIN, ["--torch_compile", "--torch_compile_mode", "fast"])
    with pytest.raises(ConfigError, match="--torch_compile_mode reduce-overhead needs --torch_compile"):
        parse_config(PRETRAIN, ["--torch_compile_mode", "reduce-overhead"])


@pytest.mark.slow
def test_a_bad_torch_compile_mode_is_one_error_line():
    import subprocess
    import sys

    from tests.conftest import launch_env
    proc = subprocess.run([sys.executable, "train/pretrain.py", "--torch_compile", "--torch_compile_mode", "max"],
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: torch_compile_mode must be one of default, reduce-overhead, max-autotune-no-cudagraphs; got 'max'"], \
        proc.stderr[-3000:]


def test_cpu_small_preset_parses_and_works_on_a_fresh_clone():
    model, data, opt, run = parse_config(PRETRAIN, ["--config", str(REPO / "train/configs/cpu_small.yaml")])
    assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads) == (256, 4, 4)
    assert data.train_tokenizer == 4000 and run.output_dir == "runs/cpu_small"
    assert 0 < opt.warmup_ratio <= 0.1 and opt.lr_scheduler_type == "linear"
    # Its default input is the embedded sample, never our machines' ../shared copy: a fresh clone runs it as is.
    assert data.train_file == "data/sample/wikitext-2-raw/sample-train.raw" and (REPO / data.train_file).is_file()


@pytest.mark.parametrize("preset", sorted((REPO / "train/configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_validates(preset):
    text = yaml.safe_load(preset.read_text())
    task = text.get("task_script", None)
    assert task is None
    from train.common.task_config import known_dataclasses_for_preset
    parse_config(known_dataclasses_for_preset(preset), ["--config", str(preset)])


@pytest.mark.parametrize("config", sorted((REPO / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file
    cfg = load_config_from_file(str(config))
    assert cfg.distributed_type is not None and cfg.num_processes >= 1
    raw = yaml.safe_load(config.read_text())
    if raw["distributed_type"] == "DEEPSPEED":
        ds_file = REPO / raw["deepspeed_config"]["deepspeed_config_file"]
        assert ds_file.is_file()
        assert "mixed_precision" not in raw, "accelerate refuses mixed_precision with a deepspeed_config_file"
    if raw.get("use_cpu"):
        assert raw["mixed_precision"] != "fp16", "fp16 on CPU trains silently in fp32"


@pytest.mark.parametrize("ds_json", sorted((REPO / "accelerate_configs").glob("ds_*.json")), ids=lambda p: p.name)
def test_deepspeed_json_leaves_script_owned_settings_auto(ds_json):
    cfg = json.loads(ds_json.read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert cfg[key] == "auto"
    # Precision is the json's: accelerate refuses mixed_precision beside a deepspeed_config_file.
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert isinstance(cfg["gradient_clipping"], float), "clipping must be explicit (DeepSpeed defaults differ)"
    assert cfg["zero_optimization"]["stage"] in (2, 3)
    assert "optimizer" not in cfg and "scheduler" not in cfg  # the script owns both


def test_one_gpu_preset_is_the_main_recipe_with_its_global_batch():
    """bert_base_1gpu.yaml must not drift from bert_base.yaml: the same recipe, 8 x 32 = 256 on one device."""
    main = yaml.safe_load((REPO / "train/configs/bert_base.yaml").read_text())
    one_gpu = yaml.safe_load((REPO / "train/configs/bert_base_1gpu.yaml").read_text())
    assert one_gpu["per_device_train_batch_size"] == 8 * main["per_device_train_batch_size"]
    assert one_gpu["gradient_accumulation_steps"] == main["gradient_accumulation_steps"] == 1
    own = {"per_device_train_batch_size", "per_device_eval_batch_size", "torch_compile", "logging_steps", "output_dir"}
    assert {k: v for k, v in one_gpu.items() if k not in own} == {k: v for k, v in main.items() if k not in own}
