"""Typed configuration shared by the training scripts.

One dataclass per concern (run, optimisation) plus the task dataclasses, parsed with
transformers' HfArgumentParser. ``--config preset.yaml`` supplies defaults, the command line
overrides them, and keys that no dataclass knows are errors (a typo in a preset must not
silently fall back to a default). Derived values are methods, never mutations of parsed args.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message says which key and how."""


def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class RunArguments:
    output_dir: str = _help("Run folder: config.yaml, metrics.jsonl, eval_results.json, tensorboard/, "
                            "checkpoints/, final/.", default="runs/pretrain")
    overwrite_output_dir: bool = _help("Start afresh in an output folder that already holds another run.",
                                       default=False)
    seed: int = _help("Seed for initialisation, data order, pair creation and training masks.", default=42)
    logging_steps: int = _help("Log training metrics every N optimizer steps.", default=50)
    eval_steps: int | None = _help("Also evaluate every N optimizer steps (always at each epoch end).", default=None)
    checkpointing_steps: str = _help("'epoch', an integer N (every N optimizer steps), or 'none'.", default="epoch")
    keep_last_n: int = _help("Keep only the newest N checkpoints (0 keeps all).", default=2)
    resume_from_checkpoint: str | None = _help(
        "'latest' (newest complete checkpoint in OUTPUT_DIR/checkpoints, or a fresh start if there is none) or a path.",
        default=None)
    report_to: str = _help("'tensorboard' or 'none'.", default="tensorboard")
    dataloader_num_workers: int | None = _help("DataLoader worker processes (default: 4 on a GPU, 0 on CPU, "
                                                  "where workers only compete with the model for cores).",
                                                  default=None)
    nan_policy: str = _help("On a non-finite loss or gradient: 'skip' the update, or 'stop' after saving.",
                            default="stop")
    process_group_timeout: int = _help("Seconds a collective may wait before the job fails (a crashed rank).",
                                       default=1800)
    push_to_hub: bool = _help("Upload final/ to the Hugging Face Hub at the end (token from HF_TOKEN or the login).",
                              default=False)
    hub_model_id: str | None = _help("Repository id for --push_to_hub, e.g. user/bert-wikitext.", default=None)
    hub_private: bool = _help("Create the hub repository as private.", default=False)
    peak_tflops: float | None = _help("Peak TFLOP/s of one device for MFU; default from a table of known GPUs.",
                                         default=None)
    log_level: str = _help("'info' (our lines; the libraries only warn) or 'debug' (everything, libraries too).",
                           default="info")
    disable_progress_bar: bool = _help("Plain log lines instead of progress bars (bars only show on a terminal).",
                                       default=False)

    def __post_init__(self):
        _choice("report_to", self.report_to, ("tensorboard", "none"))
        _choice("nan_policy", self.nan_policy, ("skip", "stop"))
        _choice("log_level", self.log_level, ("info", "debug"))
        if self.checkpointing_steps not in ("epoch", "none"):
            try:
                if int(self.checkpointing_steps) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"checkpointing_steps must be 'epoch', 'none' or a positive integer, "
                                  f"got {self.checkpointing_steps!r}") from None
        _positive("logging_steps", self.logging_steps)
        if self.eval_steps is not None:
            _positive("eval_steps", self.eval_steps)
        if self.keep_last_n < 0:
            raise ConfigError("keep_last_n must be >= 0 (0 keeps every checkpoint)")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id NAME (e.g. your-user/bert-wikitext)")

    def checkpoint_every_steps(self) -> int | None:
        return int(self.checkpointing_steps) if self.checkpointing_steps not in ("epoch", "none") else None


@dataclass
class OptimizationArguments:
    learning_rate: float = _help("Peak learning rate of AdamW.", default=1e-4)
    weight_decay: float = _help("Decoupled weight decay (never on biases and LayerNorm weights).", default=0.01)
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-6)
    max_grad_norm: float = _help("Clip the global gradient norm to this value (0 disables).", default=1.0)
    lr_scheduler_type: str = _help("'linear' or 'cosine' decay after warmup.", default="linear")
    warmup_steps: int | None = _help("Warmup optimizer steps (overrides warmup_ratio).", default=None)
    warmup_ratio: float = _help("Warmup as a fraction of all optimizer steps.", default=0.01)
    per_device_train_batch_size: int = _help("Micro-batch size per process.", default=32)
    per_device_eval_batch_size: int = _help("Evaluation batch size per process.", default=64)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    num_train_epochs: int = _help("Epochs over the training split (ignored when max_train_steps is set).", default=5)
    max_train_steps: int | None = _help("Stop after this many optimizer steps.", default=None)

    def __post_init__(self):
        _choice("lr_scheduler_type", self.lr_scheduler_type, ("linear", "cosine"))
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "num_train_epochs"):
            _positive(name, getattr(self, name))
        if self.max_train_steps is not None:
            _positive("max_train_steps", self.max_train_steps)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.max_train_steps is not None:
            return self.max_train_steps
        return self.num_train_epochs * steps_per_epoch

    def num_epochs(self, steps_per_epoch: int) -> int:
        return math.ceil(self.total_steps(steps_per_epoch) / steps_per_epoch)

    def num_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(math.ceil(self.warmup_ratio * total_steps))


def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _positive(name: str, value: int) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _load_preset(path: str, known: set[str]) -> dict[str, Any]:
    preset = Path(path)
    if not preset.is_file():
        raise ConfigError(f"--config {path}: no such file (presets live in train/configs/)")
    try:
        values = yaml.safe_load(preset.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value at the top level")
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"--config {path}: unknown option(s) {', '.join(hints)}; "
                          f"run the script with --help for the valid ones")
    # Presets are written for the documented way of running, from the repository root. A relative INPUT path that
    # does not exist from the working directory is taken from the repository root, so `--config .../smoke.yaml`
    # finds its embedded sample from anywhere; output_dir stays relative to the working directory.
    repo_root = Path(__file__).resolve().parents[2]
    for key in ("train_file", "validation_file", "test_file", "sst_trees_dir", "sst_dir"):
        value = values.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and not Path(value).exists() \
                and (repo_root / value).exists():
            values[key] = str(repo_root / value)
    return values


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the docstring's example commands kept one per line."""


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None,
                 description: str = "") -> tuple:
    """Parse ``--config FILE`` + command line into instances of ``dataclass_types``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    pre_args, rest = pre.parse_known_args(argv)
    optional = _optional_fields(dataclass_types)

    # No prefix abbreviations: "--learning_rat" must be an error, not a silent match.
    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False,
                              formatter_class=_HelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML preset (train/configs/*.yaml); the command line overrides it.")
    if pre_args.config:
        known = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        parser.set_defaults(**_load_preset(pre_args.config, known))
    rest = _apply_none_overrides(parser, optional, rest)
    try:
        parsed = parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return tuple(parsed[: len(dataclass_types)])


def _optional_fields(dataclass_types: Sequence[type]) -> set[str]:
    # From the annotations: HfArgumentParser rewrites dataclasses' field.type in place.
    return {name for dc in dataclass_types for name, hint in typing.get_type_hints(dc).items()
            if type(None) in typing.get_args(hint)}


def _apply_none_overrides(parser, optional: set[str], argv: list[str]) -> list[str]:
    """`--name none` resets an optional option to None (e.g. a preset's --train_tokenizer)."""
    kept, i = [], 0
    while i < len(argv):
        name = argv[i][2:] if argv[i].startswith("--") else None
        if name in optional and i + 1 < len(argv) and argv[i + 1].lower() in ("none", "null"):
            parser.set_defaults(**{name: None})
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    return kept


def flat_config(*configs) -> dict[str, Any]:
    """All options of the parsed dataclasses as one flat, YAML-friendly mapping. Options that another
    option made unused (the hub dataset when --train_file is given) are recorded as None, so config.yaml
    says what the run really used."""
    merged: dict[str, Any] = {}
    for cfg in configs:
        merged.update(dataclasses.asdict(cfg))
        if hasattr(cfg, "unused_options"):
            merged.update(dict.fromkeys(cfg.unused_options(), None))
    return merged


def check_sequence_length(max_seq_length: int, max_position_embeddings: int, where: str) -> None:
    """Before any work: a sequence longer than the position table fails deep in the model otherwise."""
    if max_seq_length > max_position_embeddings:
        raise ConfigError(f"--max_seq_length {max_seq_length} is longer than the model's position table "
                          f"(max_position_embeddings {max_position_embeddings}, {where}); lower --max_seq_length "
                          f"to at most {max_position_embeddings} or raise --max_position_embeddings")






