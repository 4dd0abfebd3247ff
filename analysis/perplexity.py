"""Masked-LM perplexity of a BERT checkpoint on text, exactly as the pretraining script measures it.

Two measures:

* ``mlm`` (default): the token-weighted perplexity of pretraining evaluation,
  exp(sum of masked-token NLL / number of masked tokens), with the same instance construction (NSP
  pairs or MLM-only chunks) and the same FIXED, seeded masks: one implementation
  (train.common.pretraining_eval), so `--file wiki.test.raw` on a run's final/ reproduces the
  run's test perplexity. Settings default to the run's config.yaml when MODEL is RUN/final.
* ``pseudo``: pseudo-perplexity (Salazar et al., 2020): mask each token of a sequence in turn and score
  it, PPPL = exp(-sum log p(token | rest) / tokens). Deterministic (no sampling); `--max_tokens` caps
  the number of scored tokens (one forward pass each).

Both run on several processes under `accelerate launch` (examples are sharded and gathered). The model must carry
its MLM head (a pretraining run's final/, or a BertForMaskedLM, whose missing NSP head only drops the NSP metrics): a
classifier or a bare BertModel is refused, since transformers would fill the head with random weights.

    python -m analysis.perplexity --model runs/smoke/final --file wiki.test.raw
    python -m analysis.perplexity --model runs/smoke/final --dataset wikitext --dataset_config wikitext-2-raw-v1 \\
        --split test
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m analysis.perplexity --model ... --mode pseudo
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.console import quiet_model_loading
from train.common.data.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.data.pretraining import DataError, InstanceSettings, build_instances, ranges_dataset
from train.common.evaluation import evaluate_pretraining
from train.common.models import PretrainingObjective
from train.common.run_folder import RunFolder

DEFAULTS = {"max_seq_length": 128, "short_seq_prob": 0.1, "nsp": True, "mlm_probability": 0.15,
            "whole_word_masking": False, "eval_mask_seed": 0, "document_boundary": "auto"}


class PerplexityError(ValueError):
    pass


def run_settings(model_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Data settings: defaults < the training run's config.yaml (if MODEL is RUN/final) < flags."""
    settings = dict(DEFAULTS)
    run_config = (RunFolder(model_dir.parent).read_config() or {}).get("config", {})
    settings.update({k: run_config[k] for k in DEFAULTS if k in run_config})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


TEXT_FIX = "give a UTF-8 text file (WikiText raw, or documents separated by blank lines)"
READ_CHUNK_BYTES = 1 << 20
# Control bytes that text does not contain (tab, newline, vertical tab, form feed, carriage return, ESC are).
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b") + b"\x7f"


def binary_offset(chunk: bytes, first: bool) -> int | None:
    """Where `chunk` shows it is not text: a NUL byte anywhere, or (in the file's first chunk, where a weights or
    archive file shows it) more than 1% control bytes; None for text, including text in another encoding."""
    if 0 in chunk:
        return chunk.index(0)
    controls = len(chunk) - len(chunk.translate(None, CONTROL_BYTES))
    if first and controls > len(chunk) // 100:
        return next(i for i, byte in enumerate(chunk) if byte in CONTROL_BYTES)
    return None


def check_text_file(file: str) -> None:
    """Refuse what `datasets`' text loader would turn into a traceback: a missing file, a directory, binary data,
    non-UTF-8 bytes, or no text at all. Reads the whole file (streamed): a bad byte late in a large file fails the
    loader just the same."""
    path = Path(file)
    if path.is_dir():
        raise PerplexityError(f"--file {file}: is a directory, not a text file; give a file in it, "
                              f"e.g. --file {path / 'wiki.test.raw'}")
    if not path.is_file():
        raise PerplexityError(f"--file {file}: no such file; {TEXT_FIX}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK_BYTES):
                at = binary_offset(chunk, first=offset == 0)
                if at is not None:
                    raise PerplexityError(f"--file {file}: looks binary (byte {chunk[at]:#04x} at offset "
                                          f"{offset + at}), not text; {TEXT_FIX}")
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
                try:
                    has_text = bool(decoder.decode(chunk).strip()) or has_text
                except UnicodeDecodeError as err:
                    where = offset - pending + err.start
                    raise PerplexityError(f"--file {file}: not UTF-8 (invalid byte at offset {where}); {TEXT_FIX}, "
                                          "e.g. convert it with iconv -t utf-8") from None
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PerplexityError(f"--file {file}: not UTF-8 (ends inside a multi-byte character); {TEXT_FIX}") from None
    except OSError as err:
        raise PerplexityError(f"--file {file}: cannot read ({err.strerror}); {TEXT_FIX}") from None
    if offset == 0:
        raise PerplexityError(f"--file {file}: is empty; {TEXT_FIX}")
    if not has_text:
        raise PerplexityError(f"--file {file}: contains only whitespace, no text; {TEXT_FIX}")


def load_lines(file: str | None, dataset: str | None, dataset_config: str | None, split: str):
    import datasets
    if file:  # compute_perplexity has run check_text_file on it
        return datasets.load_dataset("text", data_files={"eval": file})["eval"]
    try:
        return datasets.load_dataset(dataset, dataset_config, split=split)
    except Exception as err:
        raise PerplexityError(f"could not load {dataset}/{dataset_config} split {split} ({err}); "
                              "offline? use --file with a local text file") from None


# Weights that only feed next sentence prediction: a BertForMaskedLM checkpoint lacks them, and its MLM perplexity
# is still exact (the NSP metrics are then dropped, not computed from a random head).
NSP_ONLY_PREFIXES = ("cls.seq_relationship.", "bert.pooler.")


def checkpoint_architecture(model_dir: Path) -> str:
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    return "/".join(architectures) or "unknown architecture (config.json has no 'architectures')"


def load_model(model_dir: Path):
    """BertForPreTraining with every MLM weight read from the checkpoint, the tokenizer, and whether the checkpoint
    has the NSP head. transformers fills missing weights with random values and only logs it, so a classifier or a
    bare BertModel would give a perplexity of a random MLM head: refuse those from the missing keys."""
    from transformers import AutoTokenizer, BertForPreTraining
    if not (model_dir / "config.json").is_file():
        raise PerplexityError(f"--model {model_dir}: no config.json (give a save_pretrained folder, e.g. RUN/final)")
    # Quiet: its load report and progress bar would bury the one-line error below (we act on the missing keys).
    with quiet_model_loading():
        model, info = BertForPreTraining.from_pretrained(str(model_dir), output_loading_info=True)
    missing = sorted(info["missing_keys"])
    fix = "give a pretraining run's final/ (a BertForPreTraining or BertForMaskedLM checkpoint)"
    if any(key.startswith("cls.predictions.") for key in missing):
        raise PerplexityError(f"--model {model_dir}: {checkpoint_architecture(model_dir)} checkpoint has no MLM head "
                              f"(cls.predictions.* not in its weights), so a perplexity would score random weights; "
                              f"{fix}")
    encoder_missing = [key for key in missing if not key.startswith(NSP_ONLY_PREFIXES)]
    if encoder_missing:
        shown = ", ".join(encoder_missing[:3]) + (", ..." if len(encoder_missing) > 3 else "")
        raise PerplexityError(f"--model {model_dir}: {checkpoint_architecture(model_dir)} checkpoint lacks "
                              f"{len(encoder_missing)} weights ({shown}), which would be random; {fix}")
    has_nsp_head = not any(key.startswith(NSP_ONLY_PREFIXES) for key in missing)
    return model, AutoTokenizer.from_pretrained(str(model_dir)), has_nsp_head


def pseudo_perplexity(objective: PretrainingObjective, instances, tokenizer, accelerator, max_tokens: int,
                      batch_size: int) -> dict[str, Any]:
    """Score each token of each sequence with that token masked; sequences are taken in order until
    the token budget is spent, sharded over processes, and the per-token log-probs gathered."""
    special = set(tokenizer.all_special_ids)
    plan, budget = [], max_tokens
    for index in range(len(instances)):
        ids = instances[index]["input_ids"]
        positions = [p for p, t in enumerate(ids) if t not in special][:budget]
        if not positions:
            continue
        plan.append((index, positions))
        budget -= len(positions)
        if budget <= 0:
            break
    model = objective.model.to(accelerator.device).eval()
    scores = []
    with accelerator.split_between_processes(plan) as shard, torch.no_grad():
        for index, positions in shard:
            row = instances[index]
            ids = torch.tensor(row["input_ids"], device=accelerator.device)
            types = torch.tensor(row["token_type_ids"], device=accelerator.device)
            for start in range(0, len(positions), batch_size):
                chunk = torch.tensor(positions[start:start + batch_size], device=accelerator.device)
                batch = ids.repeat(len(chunk), 1)
                batch[torch.arange(len(chunk)), chunk] = tokenizer.mask_token_id
                hidden = model.bert(input_ids=batch, token_type_ids=types.repeat(len(chunk), 1),
                                    attention_mask=torch.ones_like(batch), return_dict=False)[0]
                logits = model.cls.predictions(hidden[torch.arange(len(chunk)), chunk]).float()
                logp = torch.log_softmax(logits, dim=-1).gather(1, ids[chunk].unsqueeze(1)).squeeze(1)
                scores.extend(logp.double().cpu().tolist())
    from accelerate.utils import gather_object
    all_scores = gather_object(scores) if accelerator.num_processes > 1 else scores
    total = -sum(all_scores)
    return {"pseudo_perplexity": math.exp(total / len(all_scores)) if all_scores else float("nan"),
            "pseudo_nll": total / len(all_scores) if all_scores else float("nan"),
            "tokens_scored": len(all_scores), "sequences": len(plan)}


def compute_perplexity(model_dir: str | Path, *, file: str | None = None, dataset: str | None = None,
                       dataset_config: str | None = None, split: str = "test", mode: str = "mlm",
                       batch_size: int = 64, max_tokens: int = 10_000, split_name: str = "test",
                       **overrides) -> dict[str, Any]:
    from accelerate import Accelerator

    from train.common.distributed import check_launch, deepspeed_requested

    model_dir = Path(model_dir)
    source = file or f"{dataset}/{dataset_config}:{split}"
    if file:
        check_text_file(file)  # before the model loads: a wrong --file should fail in a second
    settings = run_settings(model_dir, overrides)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_launch(accelerator, deepspeed_requested(), max_grad_norm=0.0)
    model, tokenizer, has_nsp_head = load_model(model_dir)
    with accelerator.local_main_process_first():
        lines = load_lines(file, dataset, dataset_config, split)
        ranges, boundary = ranges_dataset(lines, settings["document_boundary"])
        if settings["nsp"] and len(ranges) == 1:
            # build_instances would say so too, but with the pretraining script's flags.
            raise PerplexityError(f"{source}: one document; next sentence prediction pairs segments of different "
                                  "documents, so give text with at least two documents, or pass --no-nsp")
        instance_settings = InstanceSettings(max_seq_length=settings["max_seq_length"],
                                             short_seq_prob=settings["short_seq_prob"], nsp=settings["nsp"],
                                             seed=settings["eval_mask_seed"], wikitext=boundary == "wikitext")
        # The split name is part of the pair-sampling seed: "test" reproduces the script's test split.
        try:
            instances = build_instances(lines, ranges, tokenizer, instance_settings, split_name)
        except DataError as err:
            raise PerplexityError(f"{source}: {err}") from None
    objective = PretrainingObjective(model, sparse_mlm_head=True, nsp=settings["nsp"])
    result: dict[str, Any] = {"model": str(model_dir), "source": source,
                              "mode": mode, "num_processes": accelerator.num_processes, "settings": settings}
    if mode == "pseudo":
        result.update(pseudo_perplexity(objective, instances, tokenizer, accelerator, max_tokens, batch_size))
        return result
    collator = PretrainingCollator(tokenizer, settings["mlm_probability"], settings["whole_word_masking"],
                                   seed=settings["eval_mask_seed"], mlm_positions_per_row=max_predictions_per_seq(
                                       settings["mlm_probability"], settings["max_seq_length"]))
    loader = torch.utils.data.DataLoader(IndexedDataset(instances), batch_size=batch_size, shuffle=False,
                                         collate_fn=collator)
    objective, loader = accelerator.prepare(objective, loader)
    result.update(evaluate_pretraining(objective, loader, accelerator, len(instances), settings["nsp"]))
    if settings["nsp"] and not has_nsp_head:
        # The instances are still NSP pairs (as the run evaluated them), but the head scoring them would be random.
        result.update(nsp_loss=None, nsp_accuracy=None,
                      nsp_note="the checkpoint has no NSP head (e.g. BertForMaskedLM): NSP metrics omitted")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="save_pretrained folder with an MLM head: a pretraining run's final/ (BertForPreTraining) "
                             "or a BertForMaskedLM; classifiers and bare BertModels are refused")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="local text (WikiText raw or blank-line separated documents)")
    source.add_argument("--dataset", help="hub dataset with a 'text' column, e.g. wikitext")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--split", default="test", help="hub split (with --dataset)")
    parser.add_argument("--mode", choices=("mlm", "pseudo"), default="mlm")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_tokens", type=int, default=10_000, help="pseudo mode: tokens to score at most")
    parser.add_argument("--split_name", default="test", help="seeds pair sampling as the script's split of that name")
    parser.add_argument("--max_seq_length", type=int)
    parser.add_argument("--short_seq_prob", type=float)
    parser.add_argument("--nsp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--mlm_probability", type=float)
    parser.add_argument("--whole_word_masking", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--eval_mask_seed", type=int)
    parser.add_argument("--out", help="also write the JSON result here")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    try:
        result = compute_perplexity(args.pop("model"), **args)
    except PerplexityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(result, indent=2)
        print(text)
        if out:
            Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
