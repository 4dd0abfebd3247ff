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

Both run on several processes under `accelerate launch` (examples are sharded and gathered).

    python -m analysis.perplexity --model runs/smoke/final --file wiki.test.raw
    python -m analysis.perplexity --model runs/smoke/final --dataset wikitext --dataset_config wikitext-2-raw-v1 --split test
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m analysis.perplexity --model ... --mode pseudo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.masking import IndexedDataset, PretrainingCollator, max_predictions_per_seq
from train.common.pretraining_data import InstanceSettings, build_instances, ranges_dataset
from train.common.pretraining_eval import evaluate_pretraining
from train.common.pretraining_model import PretrainingObjective

DEFAULTS = {"max_seq_length": 128, "short_seq_prob": 0.1, "nsp": True, "mlm_probability": 0.15,
            "whole_word_masking": False, "eval_mask_seed": 0, "document_boundary": "auto"}


class PerplexityError(ValueError):
    pass


def run_settings(model_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Data settings: defaults < the training run's config.yaml (if MODEL is RUN/final) < flags."""
    settings = dict(DEFAULTS)
    config_file = model_dir.parent / "config.yaml"
    if config_file.is_file():
        import yaml
        run_config = (yaml.safe_load(config_file.read_text()) or {}).get("config", {})
        settings.update({k: run_config[k] for k in DEFAULTS if k in run_config})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def load_lines(file: Optional[str], dataset: Optional[str], dataset_config: Optional[str], split: str):
    import datasets
    if file:
        if not Path(file).is_file():
            raise PerplexityError(f"--file {file}: no such file")
        return datasets.load_dataset("text", data_files={"eval": file})["eval"]
    try:
        return datasets.load_dataset(dataset, dataset_config, split=split)
    except Exception as err:
        raise PerplexityError(f"could not load {dataset}/{dataset_config} split {split} ({err}); "
                              "offline? use --file with a local text file") from None


def load_model(model_dir: Path):
    from transformers import AutoTokenizer, BertForPreTraining
    if not (model_dir / "config.json").is_file():
        raise PerplexityError(f"--model {model_dir}: no config.json (give a save_pretrained folder, e.g. RUN/final)")
    model = BertForPreTraining.from_pretrained(str(model_dir))
    return model, AutoTokenizer.from_pretrained(str(model_dir))


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


def compute_perplexity(model_dir: str | Path, *, file: Optional[str] = None, dataset: Optional[str] = None,
                       dataset_config: Optional[str] = None, split: str = "test", mode: str = "mlm",
                       batch_size: int = 64, max_tokens: int = 10_000, split_name: str = "test",
                       **overrides) -> dict[str, Any]:
    from accelerate import Accelerator
    from train.common.distributed import check_launch, deepspeed_requested

    model_dir = Path(model_dir)
    settings = run_settings(model_dir, overrides)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_launch(accelerator, deepspeed_requested(), max_grad_norm=0.0)
    model, tokenizer = load_model(model_dir)
    with accelerator.local_main_process_first():
        lines = load_lines(file, dataset, dataset_config, split)
        ranges, boundary = ranges_dataset(lines, settings["document_boundary"])
        instance_settings = InstanceSettings(max_seq_length=settings["max_seq_length"],
                                             short_seq_prob=settings["short_seq_prob"], nsp=settings["nsp"],
                                             seed=settings["eval_mask_seed"], wikitext=boundary == "wikitext")
        # The split name is part of the pair-sampling seed: "test" reproduces the script's test split.
        instances = build_instances(lines, ranges, tokenizer, instance_settings, split_name)
    objective = PretrainingObjective(model, sparse_mlm_head=True, nsp=settings["nsp"])
    result: dict[str, Any] = {"model": str(model_dir), "source": file or f"{dataset}/{dataset_config}:{split}",
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
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="save_pretrained folder of a BertForPreTraining (RUN/final)")
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
