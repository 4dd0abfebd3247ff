"""What the two fine-tuning scripts share, apart from their loops.

* Model loading (`load_model_for_task`): any BERT checkpoint, hub id or local folder (a pretraining run's final/
  too), with the task head set up from the seed, and errors that say what to pass instead. The load report
  (newly initialised / dropped tensors) and `parameter_block` (metrics.params.parameter_summary of the
  checkpoint before vs the fine-tuned model after) go into eval_results.json.
* Batching for throughput: `PaddingCollator` pads each batch to its longest sequence (rounded up to a multiple
  of 8); `LengthGroupedSampler` makes training batches of similar length, deterministically per seed and epoch;
  evaluation datasets are sorted by length (`build_eval_dataloader`) and `EvalCollector` puts the gathered
  outputs back into the original order.
* Per-example losses in fp32 (`classification_nll`, `span_nll`): the loops sum them and divide by the window's
  example count (or class weight) over all ranks, as pretraining does for masked tokens.
* `IntervalStats`: loss and throughput (samples/s, non-padding tokens/s, padding share) summed on the device and
  reduced across ranks only when logged.
* Run set-up and ending shared by both scripts (`distributed.start_run` prepares the folder and accelerator):
  `start_logging` (metrics.jsonl, eval_results.json so far, TensorBoard), `stop_early` (preemption marker / non-finite
  stop), `run_seeds` with `aggregate_seeds` (one run per seed, then mean and sample standard deviation).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler

from .args import ConfigError, flat_config
from .batching import build_dataloader, default_num_workers
from .console import eval_batches
from .distributed import output_path
from .preemption import write_marker
from .run_folder import (
    MetricsLogger,
    check_output_dir,
    clear_run_files,
    load_eval_results,
    numeric_summary,
    write_json_atomic,
    write_run_config,
)
from .tokenizer import load_tokenizer

logger = get_logger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class FinetuneModelError(RuntimeError):
    """The checkpoint to fine-tune cannot be used; the message names it and says what to do."""


class FinetuneDataError(ValueError):
    """Data that cannot be trained or evaluated on as given; the message names the source and the fix."""


class EvaluationCountError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------- model


def load_model_for_task(model_args, auto_class, seed: int, **task_config):
    """(model, tokenizer, load_report) for `auto_class` (AutoModelForSequenceClassification, ...).

    The seed is set right before loading so that the new head's initialisation depends on --seed only.
    load_report = {"source", "newly_initialized": [...], "dropped": [...], "mismatched": [...]}."""
    from transformers import AutoConfig

    name = model_args.model_name_or_path
    hint = ("give a local folder written by save_pretrained (config.json + weights, e.g. a pretraining run's final/) "
            "or a hub id such as bert-base-uncased (needs the Hub or its local cache)")
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise FinetuneModelError(f"model {name!r}: no such local folder; {hint}")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=model_args.trust_remote_code, **task_config)
    except (OSError, ValueError) as err:
        raise FinetuneModelError(f"model {name!r} could not be loaded ({' '.join(str(err).split())[:300]}); "
                                 f"{hint}") from None
    for key, value in model_args.config_overrides().items():
        setattr(config, key, value)
    tokenizer = load_tokenizer(model_args.tokenizer_name or name, model_args.trust_remote_code)
    if len(tokenizer) > config.vocab_size:
        raise FinetuneModelError(f"tokenizer {model_args.tokenizer_name or name!r} has {len(tokenizer)} tokens but "
                                 f"model {name!r} embeds only {config.vocab_size}; use the tokenizer saved with the "
                                 "model (leave --tokenizer_name unset)")
    set_seed(seed)
    try:
        model, info = auto_class.from_pretrained(name, config=config, output_loading_info=True,
                                                 attn_implementation=model_args.attn_implementation,
                                                 trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise FinetuneModelError(f"model {name!r}: could not load weights as {auto_class.__name__}: "
                                 f"{' '.join(str(err).split())[:300]}") from None
    report = {"source": str(name), "architecture": type(model).__name__,
              "newly_initialized": sorted(info.get("missing_keys", ())),
              "dropped": sorted(info.get("unexpected_keys", ())),
              "mismatched": sorted(str(k) for k in info.get("mismatched_keys", ()))}
    fresh = [k for k in report["newly_initialized"] if k.startswith(model.base_model_prefix + ".")]
    encoder = [k for k in fresh if ".pooler." not in k]  # a checkpoint saved without pooler gets a new one
    if len(fresh) > len(encoder):
        logger.warning(f"model {name!r} has no pooler: it is newly initialised and trained with the head",
                       main_process_only=True)
    if encoder:
        raise FinetuneModelError(f"model {name!r}: {len(encoder)} encoder tensors are missing from the checkpoint "
                                 f"(e.g. {encoder[:3]}); it is not a {config.model_type} checkpoint this script "
                                 "can fine-tune")
    if model_args.torch_compile:
        getattr(model, model.base_model_prefix).compile()  # in place: parameter names stay unchanged
    return model, tokenizer, report


def check_max_seq_length(model, max_seq_length: int, source: str) -> None:
    """Windows longer than the model's position table would fail deep inside the embedding lookup."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        raise ConfigError(f"--max_seq_length {max_seq_length} is longer than model {source!r} can take "
                          f"(max_position_embeddings {positions}); pass --max_seq_length {positions} or less")


def from_hub(load: Callable, name: str, *args, local_hint: str):
    """Run a hub dataset loader; failures that are not format errors (offline, unknown name, permissions) become
    one clear error saying which local files to give instead."""
    from .squad_data import SquadFormatError
    from .sst_data import SSTFormatError
    try:
        return load(name, *args)
    except (SSTFormatError, SquadFormatError):
        raise
    except Exception as err:  # the user's next step is the same whatever the cause
        cause = " ".join(str(err).split())[:200]
        raise FinetuneDataError(f"could not load the hub dataset {name!r} ({type(err).__name__}: {cause}). "
                                f"Offline? {local_hint}") from None


def require_trained_head(report: dict, head_prefix: str) -> None:
    """--do_train false evaluates a model as it is: a head initialised just now would score noise."""
    fresh = [k for k in report["newly_initialized"] if k.startswith(head_prefix)]
    if fresh:
        raise FinetuneModelError(f"model {report['source']!r} has no trained {head_prefix} head ({fresh} would be "
                                 "newly initialised): --do_train false needs a fine-tuned model, e.g. the final/ "
                                 "folder of a fine-tuning run")


def parameter_block(before_source: str, after, trust_remote_code: bool = False) -> dict:
    """metrics.params.parameter_summary(checkpoint before, fine-tuned model after) for eval_results.json."""
    from metrics.params import ParamsError, parameter_summary

    try:
        return parameter_summary(before_source, after)
    except ParamsError:
        # Pickled or remote-code checkpoints: count the original architecture as loaded by transformers.
        import transformers
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(before_source, trust_remote_code=trust_remote_code)
        architecture = getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
        return parameter_summary(architecture.from_pretrained(before_source), after)


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


# ----------------------------------------------------------------------------------------------------------- loss


def classification_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] cross-entropy per example, in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def masked_span_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Padding is never an answer: with dynamic padding, leaving it in the softmax would make a feature's loss
    depend on the batch it landed in."""
    return logits.float().masked_fill(attention_mask == 0, torch.finfo(torch.float32).min)


def span_nll(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """[B] (CE(start) + CE(end)) / 2 per feature (BERT's SQuAD loss before the batch mean)."""
    return (F.cross_entropy(start_logits, start_positions, reduction="none")
            + F.cross_entropy(end_logits, end_positions, reduction="none")) / 2


# ------------------------------------------------------------------------------------------------------- batching


class ListDataset(Dataset):
    """Feature dicts in memory; `order` (eval) serves them in another order, each tagged with its `index`."""

    def __init__(self, features: Sequence[dict], order: Sequence[int] | None = None):
        self.features = features
        self.order = list(order) if order is not None else None

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        j = self.order[i] if self.order is not None else i
        return {**self.features[j], "index": j}


class PaddingCollator:
    """Pads input_ids / attention_mask / token_type_ids to the batch's longest sequence rounded up to a multiple of
    `multiple_of` (never beyond `max_length`); every other field is one number per example."""

    def __init__(self, pad_token_id: int, multiple_of: int, max_length: int):
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.multiple_of, self.max_length = multiple_of, max_length

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        width = max(longest, min(-(-longest // self.multiple_of) * self.multiple_of, self.max_length))
        batch = {}
        for key, value in self.pad.items():
            if key in features[0]:
                rows = [list(f[key]) + [value] * (width - len(f[key])) for f in features]
                batch[key] = torch.tensor(rows, dtype=torch.long)
        for key in features[0]:
            if key not in self.pad:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"group_by_length:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class LengthGroupedSampler(Sampler[int]):
    """Indices of one epoch such that every global batch (per-device batch x processes x accumulation steps: the
    examples of one optimizer step, consecutive in this order; accelerate hands the per-device parts to the ranks
    and the loop to the micro-steps) holds examples of similar length.

    The epoch's permutation (seeded by seed and epoch) is cut into groups of `group_batches` global batches; each
    group is sorted by length (longest first) and cut into global batches; the batches are then shuffled with the
    same generator, and the one holding the longest example goes first (an out-of-memory shows at step 1). The
    samples that do not fill a last global batch stay at the end, where the loaders' drop_last and the loop's
    whole windows leave them out. The order is a function of (seed, epoch, global batch size) only: a resumed run
    sees the same batches, and 2 processes x 4 or 1 x 4 x 2 accumulation steps take the same optimizer steps as
    1 process x 8."""

    def __init__(self, lengths: Sequence[int], global_batch_size: int, seed: int, group_batches: int = 50):
        self.lengths, self.global_batch_size = list(lengths), global_batch_size
        self.seed, self.group_batches, self.epoch = seed, group_batches, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.global_batch_size
        full = len(perm) // size * size
        batches = []
        for start in range(0, full, size * self.group_batches):
            group = sorted(perm[start:min(start + size * self.group_batches, full)], key=lambda i: -self.lengths[i])
            batches += [group[k:k + size] for k in range(0, len(group), size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if batches:
            first = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[first] = batches[first], batches[0]
        return iter([i for batch in batches for i in batch] + perm[full:])


def keep_length_grouping(train_dataloader, train_state) -> None:
    """The grouped order depends on the global batch size; a run resumed with another process count or batch size
    keeps the first run's grouping, so that the skipped part of the resumed epoch is exactly what was consumed."""
    batch_sampler = train_dataloader.batch_sampler
    sampler = getattr(getattr(batch_sampler, "batch_sampler", batch_sampler), "sampler", None)
    if isinstance(sampler, LengthGroupedSampler):
        sampler.global_batch_size = train_state.extra.setdefault("length_group_batch", sampler.global_batch_size)


def build_train_dataloader(features: Sequence[dict], collator, opt_args, run_args, data_args,
                           num_processes: int) -> DataLoader:
    dataset = ListDataset(features)
    if not data_args.group_by_length:
        return build_dataloader(dataset, collator, opt_args.per_device_train_batch_size, True,
                                run_args.dataloader_num_workers, run_args.seed)
    global_batch = opt_args.per_device_train_batch_size * num_processes * opt_args.gradient_accumulation_steps
    sampler = LengthGroupedSampler([len(f["input_ids"]) for f in features], global_batch, run_args.seed)
    return DataLoader(dataset, batch_size=opt_args.per_device_train_batch_size, sampler=sampler, drop_last=True,
                      collate_fn=collator, num_workers=default_num_workers(run_args.dataloader_num_workers),
                      pin_memory=torch.cuda.is_available())


def build_eval_dataloader(features: Sequence[dict], collator, batch_size: int,
                          num_workers: int | None) -> DataLoader:
    """Longest first (less padding); EvalCollector restores the original order from each item's `index`."""
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    return DataLoader(ListDataset(features, order), batch_size=batch_size, shuffle=False, drop_last=False,
                      collate_fn=collator, num_workers=default_num_workers(num_workers),
                      pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------------------------------------------------- evaluate


class EvalCollector:
    """Gathers per-example outputs across ranks (gather_for_metrics drops the samples the sampler repeated to even
    out the last batch) and returns them in dataset order, checking that each example came back exactly once."""

    def __init__(self, accelerator, expected: int):
        self.accelerator, self.expected = accelerator, expected
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, index: torch.Tensor, **outputs: torch.Tensor) -> None:
        padded = {k: self.accelerator.pad_across_processes(v, dim=1, pad_index=float("-inf")) if v.dim() > 1 else v
                  for k, v in outputs.items()}
        gathered = self.accelerator.gather_for_metrics({"index": index, **padded})
        for key, value in gathered.items():
            self.parts.setdefault(key, []).append(value.detach().float().cpu().numpy() if key != "index"
                                                  else value.cpu().numpy())

    def result(self) -> dict[str, np.ndarray]:
        index = np.concatenate(self.parts.get("index", [np.zeros(0, dtype=np.int64)]))
        if len(index) != self.expected or not np.array_equal(np.sort(index), np.arange(self.expected)):
            raise EvaluationCountError(f"evaluation gathered {len(index)} outputs for a split of {self.expected} "
                                       "examples (each exactly once expected): the distributed sampler padded or "
                                       "dropped samples")
        out = {}
        for key, parts in self.parts.items():
            if key == "index":
                continue
            width = max((p.shape[1] for p in parts), default=0) if parts[0].ndim > 1 else None
            if width is not None:
                parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-np.inf) for p in parts]
            values = np.concatenate(parts)
            ordered = np.empty_like(values)
            ordered[index] = values
            out[key] = ordered
        return out


@torch.no_grad()
def evaluate_outputs(model, dataloader, accelerator, expected: int,
                     outputs_fn: Callable[[Any, dict], dict[str, torch.Tensor]],
                     progress: bool = False) -> dict[str, np.ndarray]:
    """One pass over an evaluation loader: outputs_fn(model outputs, batch) -> per-example tensors, returned in
    dataset order for all `expected` examples on every rank."""
    was_training = model.training
    model.eval()
    collector = EvalCollector(accelerator, expected)
    for batch in eval_batches(dataloader, progress, accelerator.is_main_process, "eval"):
        collector.add(batch["index"], **outputs_fn(model(**model_inputs(batch)), batch))
    if was_training:
        model.train()
    return collector.result()


# ---------------------------------------------------------------------------------------------------- throughput


class IntervalStats:
    """Sums over a logging interval, on the device: loss numerator and denominator, examples, non-padding tokens,
    padded tokens. Reduced across ranks only when logged; `pending` travels with checkpoints so that a resumed
    run logs what the uninterrupted run logged."""

    NAMES = ("loss_sum", "loss_weight", "samples", "tokens", "padded_tokens")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.NAMES), device=device, dtype=torch.float64)

    def add(self, weighted_nll: torch.Tensor, weights: torch.Tensor, batch: dict) -> None:
        mask = batch["attention_mask"]
        self.sums += torch.stack([weighted_nll.detach().double().sum(), weights.double().sum(),
                                  torch.tensor(float(mask.shape[0]), device=mask.device, dtype=torch.float64),
                                  mask.sum().double(), torch.tensor(float(mask.numel()), device=mask.device,
                                                                    dtype=torch.float64)])

    def pending(self, accelerator) -> list[float]:
        return accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def restore(self, values: list[float]) -> None:
        self.sums += torch.tensor(values, device=self.sums.device, dtype=self.sums.dtype)

    def record(self, accelerator, seconds: float) -> dict:
        values = dict(zip(self.NAMES, accelerator.reduce(self.sums, reduction="sum").tolist(), strict=True))
        self.sums.zero_()
        return {"loss": values["loss_sum"] / max(values["loss_weight"], 1e-12),
                "samples_per_second": values["samples"] / seconds, "tokens_per_second": values["tokens"] / seconds,
                "padding_fraction": 1.0 - values["tokens"] / max(values["padded_tokens"], 1.0),
                "_samples": int(values["samples"]), "_tokens": int(values["tokens"])}

    def log(self, accelerator, metrics, seconds: float, train_state, lr: float, grad_norm, batches_per_epoch: int,
            progress, unit: str) -> None:
        """One metrics.jsonl / TensorBoard line for the interval that ends at this optimizer step."""
        record = self.record(accelerator, seconds)
        train_state.samples_seen += record.pop("_samples")
        train_state.tokens_seen += record.pop("_tokens")
        record.update(step=train_state.step, lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else None,
                      epoch=rounded_epoch(train_state.epoch, train_state.batches_in_epoch, batches_per_epoch))
        metrics.log(record, prefix="train")
        progress.log(train_state.step, {"loss": record["loss"], "lr": lr,
                                        f"{unit}/s": round(record["samples_per_second"], 1)})


# --------------------------------------------------------------------------------------------------------- seeds


def run_seeds(run_one: Callable, task_args: tuple, run_args, preemption, seeds: Sequence[int], task: str,
              summarize: Callable[[dict], dict], shared: Callable[[dict], dict]) -> int:
    """--seeds: `run_one(*task_args, run_args_for_the_seed, preemption, marker_dir)` -> (exit code, eval_results or
    None) into OUTPUT_DIR/seed_N/ for each seed, then OUTPUT_DIR/eval_results.json = {"task", "seeds": {"runs":
    [{"seed", "output_dir", **summarize(results)}], "mean", "std", "n"}, **shared(first seed's results)}.
    With --resume_from_checkpoint latest, finished seeds are reused and an interrupted one resumes in its folder.
    A preempted seed leaves OUTPUT_DIR/PREEMPTED (where the SLURM job looks) and ends the run with exit code 0."""
    output_dir = output_path(run_args)
    config = flat_config(*task_args, run_args)
    check_output_dir(output_dir, config, run_args.resume_from_checkpoint, run_args.overwrite_output_dir)
    if run_args.resume_from_checkpoint not in (None, "latest"):
        raise ConfigError("--seeds resumes every seed from its own folder: use --resume_from_checkpoint latest")
    if run_args.push_to_hub:
        raise ConfigError("--push_to_hub with --seeds would push every seed to one repository; push the seed you "
                          "want later from OUTPUT_DIR/seed_N/final")
    is_main = int(os.environ.get("RANK", "0")) == 0  # no accelerator exists between the seeds' runs
    if is_main:
        if run_args.overwrite_output_dir:
            clear_run_files(output_dir)
        write_run_config(output_dir, task, config, {"num_processes": int(os.environ.get("WORLD_SIZE", "1"))},
                         extra={"seeds": list(seeds), "seed_folders": [f"seed_{s}" for s in seeds]})
    runs, first = [], None
    for seed in seeds:
        seed_dir = output_dir / f"seed_{seed}"
        done = seed_dir / "eval_results.json"
        results = json.loads(done.read_text()) if run_args.resume_from_checkpoint and done.is_file() else {}
        if not results.get("completed"):
            code, results = run_one(*task_args, replace(run_args, seed=seed, output_dir=str(seed_dir)), preemption,
                                    output_dir)
            if results is None:
                return code  # preempted (0) or stopped on a non-finite loss (3)
        runs.append({"seed": seed, "output_dir": seed_dir.name, **summarize(results)})
        first = first or results
    if is_main:
        write_json_atomic(output_dir / "eval_results.json", {"task": task, "seeds": aggregate_seeds(runs),
                                                             **shared(first)})
    return 0


def aggregate_seeds(runs: list[dict]) -> dict:
    """{"runs": runs, "mean": {k: mean}, "std": {k: sample std}, "n": len(runs)} over the numeric keys that every
    run has (std is 0.0 for a single run)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "seed" and all(isinstance(r.get(k), (int, float)) for r in runs)]
    summaries = {k: numeric_summary(float(r[k]) for r in runs) for k in keys}
    return {"runs": runs, "mean": {k: s["mean"] for k, s in summaries.items()},
            "std": {k: s["std"] for k, s in summaries.items()}, "n": len(runs)}


# ---------------------------------------------------------------------------------------------------- model card


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


def start_logging(accelerator, run_args, output_dir: Path, resume_step: int | None, task: str):
    """(MetricsLogger, eval_results so far): on resume both keep only what the resumed step had written."""
    metrics = MetricsLogger(accelerator, output_dir, resume_step)
    eval_results = load_eval_results(output_dir, resume_step, task)
    eval_results.pop("test", None)
    if run_args.report_to == "tensorboard":
        purge = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else None
        accelerator.init_trackers("tensorboard", init_kwargs=purge)
    return metrics, eval_results


def stop_early(accelerator, stop: str, step: int, preemption, marker_dir: Path) -> int:
    """After the checkpoint of a preempted (exit 0, PREEMPTED marker for the SLURM job to requeue) or non-finite
    (exit 3) stop."""
    accelerator.end_training()
    if stop == "preempted":
        if accelerator.is_main_process:
            write_marker(marker_dir, step, preemption.signal_name())
        logger.info(f"preempted ({preemption.signal_name()}): checkpoint at step {step} saved; rerun with "
                    "--resume_from_checkpoint latest to continue", main_process_only=True)
        return 0
    logger.error(f"stopped at step {step}: non-finite loss or gradient (--nan_policy stop). The last checkpoint is "
                 "saved; lower the learning rate or use bf16 instead of fp16.", main_process_only=True)
    return 3


def steps_or_fail(num_batches: int, gas: int, examples: int, num_processes: int, batch_size: int) -> int:
    steps = num_batches // gas
    if steps == 0:
        raise FinetuneDataError(f"{examples} training examples make no full optimizer step of {num_processes} x "
                                 f"{batch_size} x {gas}; lower the batch size or add data")
    return steps


def rounded_epoch(epoch: int, batches_in_epoch: int, batches_per_epoch: int) -> float:
    return round(epoch + batches_in_epoch / max(batches_per_epoch, 1), 4)


def squad_gold_from_examples(examples: Sequence[dict], version: str) -> dict:
    """Official SQuAD JSON ({"version", "data": articles -> paragraphs -> qas}) of loaded examples, for
    metrics.squad and `python -m analysis.squad` when the evaluation set is not a file as it stands (hub data, a
    capped set)."""
    articles: dict[str, dict[str, list]] = {}
    for ex in examples:
        paragraphs = articles.setdefault(ex["title"], {})
        paragraphs.setdefault(ex["context"], []).append({
            "id": ex["id"], "question": ex["question"], "is_impossible": ex["is_impossible"],
            "answers": [{"text": t, "answer_start": s}
                        for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"], strict=True)]})
    return {"version": "v2.0" if version == "2.0" else "1.1",
            "data": [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
                     for title, paragraphs in articles.items()]}


def squad_repair_lines(data_report: dict) -> list[str]:
    """The answer repairs of each loaded SQuAD file, for the terminal (eval_results.json has the details)."""
    lines = []
    for role, report in data_report.items():
        if report.get("answers_fixed") or report.get("answers_dropped") or report.get("questions_skipped"):
            lines.append(f"{role} data ({report.get('source')}): {report['answers_fixed']} answer(s) moved to where "
                         f"their text is, {report['answers_dropped']} dropped (text not near answer_start), "
                         f"{report['questions_skipped']} question(s) skipped (no valid answer left); listed in "
                         "eval_results.json data_report")
    return lines
