"""The README.md written into final/: what was trained on what, the headline numbers beside their baselines,
how to load it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .evaluation import baseline_notes


def finetune_model_card(title: str, tags: str, config: dict, load_report: dict, headline: dict[str, float | None],
                        train_state, distributed: dict, notes: Sequence[str] = ()) -> str:
    lines = ["---", "library_name: transformers", f"tags: [bert, {tags}]", "---", "",
             f"# {title}", "",
             f"Fine-tuned from `{load_report['source']}` ({train_state.step} optimizer steps, "
             f"{train_state.samples_seen} training examples seen, {distributed['num_processes']} process(es), "
             f"precision {distributed['mixed_precision']}, seed {config['seed']}).", "",
             f"Newly initialised: {', '.join(load_report['newly_initialized']) or 'nothing'}. "
             f"Dropped from the checkpoint: {', '.join(load_report['dropped']) or 'nothing'}.", "",
             "| metric | value |", "|---|---|"]
    for key, value in headline.items():
        shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
        lines.append(f"| {key} | {shown} |")
    lines += ["", *notes, ""]
    return "\n".join(lines)


def model_card(config: dict[str, Any], eval_results: dict[str, Any], train_state, distributed: dict[str, Any]) -> str:
    data = config.get("train_file") or f"{config.get('dataset_name')}/{config.get('dataset_config_name')}"
    last = eval_results["epochs"][-1] if eval_results.get("epochs") else {}
    test = eval_results.get("test") or {}
    nsp = config.get("nsp", True)
    pooler = ("trained by next sentence prediction" if nsp else
              "NOT trained (MLM-only run: --no_nsp); fine-tune it or use token-level outputs")
    lines = [
        "---", "library_name: transformers", "tags: [bert, fill-mask, pretraining]", "---", "",
        "# BERT pretrained from scratch", "",
        f"Masked language modelling{' + next sentence prediction' if nsp else ' only'} on `{data}`, "
        f"{train_state.step} optimizer steps ({train_state.samples_seen} sequences, "
        f"{train_state.tokens_seen} non-padding tokens), random initialisation.", "",
        "| setting | value |", "|---|---|",
        f"| layers / hidden / heads | {config['num_hidden_layers']} / {config['hidden_size']} / "
        f"{config['num_attention_heads']} |",
        f"| max sequence length | {config['max_seq_length']} |",
        f"| masking | {config['mlm_probability']:.0%} of tokens (80% [MASK] / 10% random / 10% kept)"
        f"{', whole words' if config['whole_word_masking'] else ''} |",
        f"| processes / precision | {distributed['num_processes']} / {distributed['mixed_precision']} |",
        f"| pooler | {pooler} |", "",
        "## Held-out results (fixed evaluation masks)", "",
        "| split | perplexity | unigram baseline | MLM loss | NSP accuracy | NSP majority baseline |",
        "|---|---|---|---|---|---|",
    ]

    def shown(value, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    for name, row in (("validation (last)", last), ("test", test)):
        if row:
            lines.append(f"| {name} | {row['perplexity']:.3f} | {shown(row.get('unigram_perplexity'), 3)} | "
                         f"{row['mlm_loss']:.4f} | {shown(row.get('nsp_accuracy'), 4)} | "
                         f"{shown(row.get('nsp_majority_accuracy'), 4)} |")
    lines += ["", "Perplexity = exp(summed masked-token NLL / number of masked tokens). The unigram baseline scores "
              "the same masked tokens with the training split's token frequencies (add-one smoothed); the NSP "
              "majority baseline always gives the evaluation split's more frequent answer.",
              *baseline_notes(test or last), ""]
    return "\n".join(lines)
