"""--seeds for the fine-tuning scripts: one complete run per seed in OUTPUT_DIR/seed_N/, then the mean and
sample standard deviation of each number over the seeds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace

from .config import ConfigError, flat_config
from .distributed import output_path
from .run_folder import RunFolder, check_output_dir, clear_run_files, numeric_summary, write_run_config


def run_seeds(run_one: Callable, task_args: tuple, run_args, preemption, seeds: Sequence[int], task: str,
              summarize: Callable[[dict], dict], shared: Callable[[dict], dict]) -> int:
    """--seeds: `run_one(*task_args, run_args_for_the_seed, preemption, marker_dir)` -> (exit code, eval_results or
    None) into OUTPUT_DIR/seed_N/ for each seed, then OUTPUT_DIR/eval_results.json = {"task", "seeds": {"runs":
    [{"seed", "output_dir", **summarize(results)}], "mean", "std", "n"}, **shared(first seed's results)}.
    With --resume_from_checkpoint latest, finished seeds are reused and an interrupted one resumes in its folder.
    A preempted seed leaves OUTPUT_DIR/PREEMPTED (where the SLURM job looks) and ends the run with exit code 0."""
    output_dir = output_path(run_args)
    folder = RunFolder(output_dir)
    config = flat_config(*task_args, run_args)
    check_output_dir(folder, config, run_args.resume_from_checkpoint, run_args.overwrite_output_dir)
    if run_args.resume_from_checkpoint not in (None, "latest"):
        raise ConfigError("--seeds resumes every seed from its own folder: use --resume_from_checkpoint latest")
    if run_args.push_to_hub:
        raise ConfigError("--push_to_hub with --seeds would push every seed to one repository; push the seed you "
                          "want later from OUTPUT_DIR/seed_N/final")
    is_main = int(os.environ.get("RANK", "0")) == 0  # no accelerator exists between the seeds' runs
    if is_main:
        if run_args.overwrite_output_dir:
            clear_run_files(folder)
        write_run_config(folder, task, config, {"num_processes": int(os.environ.get("WORLD_SIZE", "1"))},
                         extra={"seeds": list(seeds), "seed_folders": [folder.seed_folder_name(s) for s in seeds]})
    runs, first = [], None
    for seed in seeds:
        seed_run = folder.seed_run(seed)
        results = (seed_run.read_eval_results() or {}) if run_args.resume_from_checkpoint else {}
        if not results.get("completed"):
            code, results = run_one(*task_args, replace(run_args, seed=seed, output_dir=str(seed_run.root)),
                                    preemption, output_dir)
            if results is None:
                return code  # preempted (0) or stopped on a non-finite loss (3)
        runs.append({"seed": seed, "output_dir": seed_run.root.name, **summarize(results)})
        first = first or results
    if is_main:
        folder.write_eval_results({"task": task, "seeds": aggregate_seeds(runs), **shared(first)})
    return 0


def aggregate_seeds(runs: list[dict]) -> dict:
    """{"runs": runs, "mean": {k: mean}, "std": {k: sample std}, "n": len(runs)} over the numeric keys that every
    run has (std is 0.0 for a single run)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "seed" and all(isinstance(r.get(k), (int, float)) for r in runs)]
    summaries = {k: numeric_summary(float(r[k]) for r in runs) for k in keys}
    return {"runs": runs, "mean": {k: s["mean"] for k, s in summaries.items()},
            "std": {k: s["std"] for k, s in summaries.items()}, "n": len(runs)}
