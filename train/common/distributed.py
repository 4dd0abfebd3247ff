"""Accelerator construction and the checks that turn silent launcher mistakes into errors.

Precision, process count and ZeRO stage come from the accelerate config (accelerate_configs/);
gradient accumulation and clipping from the script's options. The checks here catch what
ENVIRONMENT.md measured as silent: a launcher that starts N independent single-process trainings,
fp16 on CPU (which trains in fp32), and a DeepSpeed config that is quietly ignored.
"""

from __future__ import annotations

import datetime as _dt
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import DistributedType, GradientAccumulationPlugin, ProjectConfiguration, set_seed

from .config import ConfigError
from .preemption import clear_marker
from .run_folder import RunFolder, check_output_dir, clear_run_files, write_json_atomic


class LaunchError(RuntimeError):
    pass


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def build_accelerator(run_args, gradient_accumulation_steps: int, max_grad_norm: float) -> Accelerator:
    has_cuda = torch.cuda.is_available()
    use_deepspeed = deepspeed_requested()
    timeout = _dt.timedelta(seconds=run_args.process_group_timeout)
    # No GPU: gloo. Accelerator(cpu=True) makes a MULTI_GPU launch on a CPU box real DDP, but it
    # would also silently drop DeepSpeed, so DeepSpeed on CPU gets only the gloo backend.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = "gloo" if (multi_process or use_deepspeed) and not has_cuda else None
    pg_kwargs = InitProcessGroupKwargs(backend=backend, timeout=timeout)
    accelerator = Accelerator(
        cpu=not has_cuda and not use_deepspeed,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        log_with="tensorboard" if run_args.report_to == "tensorboard" else None,
        project_config=ProjectConfiguration(project_dir=run_args.output_dir, logging_dir=run_args.output_dir),
        # non_blocking: the loaders pin their batches on a GPU machine, so the copy overlaps the previous step
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=run_args.seed,
                                                  non_blocking=has_cuda),
        kwargs_handlers=[pg_kwargs],
    )
    check_launch(accelerator, use_deepspeed, max_grad_norm)
    return accelerator


def check_launch(accelerator: Accelerator, use_deepspeed: bool, max_grad_norm: float) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise LaunchError(
            f"the launcher started {launched} processes but this one sees a world of {accelerator.num_processes}: "
            "they would train independently. On CPU use `accelerate launch --config_file "
            "accelerate_configs/cpu_ddp.yaml` (see README); `--cpu --num_processes N` and MULTI_CPU configs start "
            "one process only.")
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise LaunchError("mixed_precision fp16 on CPU silently trains in fp32 through Accelerate; use bf16 "
                          "(CPUs with avx512_bf16/AMX) or 'no' in the accelerate config")
    if use_deepspeed and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise LaunchError("the accelerate config asks for DeepSpeed but Accelerate did not enable it "
                          f"(distributed type {accelerator.distributed_type}); is ACCELERATE_USE_CPU set?")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        clipping = ds_config.get("gradient_clipping", "auto")
        if clipping == "auto":
            ds_config["gradient_clipping"] = max_grad_norm
        elif float(clipping) != float(max_grad_norm):
            raise LaunchError(f"gradient clipping is set twice and disagrees: DeepSpeed json says {clipping}, "
                              f"--max_grad_norm says {max_grad_norm}; make them equal (one source of truth)")


def distributed_summary(accelerator: Accelerator, gradient_accumulation_steps: int) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "distributed_type": str(accelerator.distributed_type.value),
        "num_processes": accelerator.num_processes,
        "num_machines": int(os.environ.get("ACCELERATE_NUM_MACHINES", os.environ.get("GROUP_WORLD_SIZE", 1)) or 1),
        "mixed_precision": accelerator.mixed_precision,
        "device_type": accelerator.device.type,
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "accelerate_config_file": launcher_config_file(),
    }
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        summary["deepspeed"] = {"zero_stage": plugin.zero_stage, "config": plugin.deepspeed_config}
    return summary


def launcher_config_file() -> str | None:
    """The accelerate config the launcher read: accelerate exports its settings, not the file's name, so
    it is taken from the launching process's command line (the parent, or the torchrun agent inside it)."""
    if os.environ.get("ACCELERATE_CONFIG_FILE"):
        return os.environ["ACCELERATE_CONFIG_FILE"]
    parent = Path(f"/proc/{os.getppid()}")
    try:
        argv = (parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = (parent / "cwd").resolve()
    except OSError:
        return None
    if not any("accelerate" in arg for arg in argv[:3]):
        return None  # `python train/pretrain.py`, torchrun, srun: no accelerate config
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            return str((cwd / argv[i + 1]).resolve())
        if arg.startswith("--config_file="):
            return str((cwd / arg.split("=", 1)[1]).resolve())
    from accelerate.commands.config import default_config_file
    return str(default_config_file) if Path(default_config_file).is_file() else None


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


@contextmanager
def zero3_init_as_configured(accelerator: Accelerator):
    """Build a model here: it is initialised in full on every rank unless the accelerate config sets
    `zero3_init_flag: true`.

    Accelerate registers DeepSpeed's config with transformers whatever that flag says, and transformers then
    initialises under `deepspeed.zero.Init`, partition by partition, so one seed gives other weights than under
    DDP or ZeRO-2. A BERT fits on every rank; the same seed should give the same model on every backend."""
    plugin = accelerator.state.deepspeed_plugin if is_deepspeed(accelerator) else None
    if plugin is None or plugin.zero3_init_flag:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # saving and loading under ZeRO-3 need it back


def output_path(run_args) -> Path:
    return Path(run_args.output_dir).expanduser().resolve()


def start_run(run_args, opt_args, config: dict, do_train: bool, marker_dir: Path | RunFolder | None = None):
    """Check the output folder (before anything is written), build the accelerator, seed, prepare the folder.
    Returns (accelerator, output_dir: Path); `RunFolder(output_dir)` names its parts. `marker_dir` holds
    PREEMPTED (default: the output folder)."""
    folder = RunFolder(output_path(run_args))
    if not do_train and run_args.resume_from_checkpoint:
        raise ConfigError("--do_train false evaluates --model_name_or_path; it does not resume checkpoints")
    check_output_dir(folder, config, run_args.resume_from_checkpoint, run_args.overwrite_output_dir)
    accelerator = build_accelerator(run_args, opt_args.gradient_accumulation_steps, opt_args.max_grad_norm)
    set_seed(run_args.seed)
    if accelerator.is_main_process:
        if run_args.overwrite_output_dir:
            clear_run_files(folder)
        folder.root.mkdir(parents=True, exist_ok=True)
        clear_marker(marker_dir or folder)
    accelerator.wait_for_everyone()
    return accelerator, folder


def nonfinite_flag(local_nonfinite: torch.Tensor, grad_norm) -> torch.Tensor:
    """1.0 (on the device, no host sync) when this rank's loss or the clipped gradient's norm was non-finite."""
    if grad_norm is None:
        return local_nonfinite.float()
    norm = torch.as_tensor(grad_norm, dtype=torch.float32).to(local_nonfinite.device)
    return torch.maximum(local_nonfinite.float(), (~torch.isfinite(norm)).float())


def agree_on_flags(accelerator: Accelerator, nonfinite: torch.Tensor, preempted: float) -> tuple[list[bool], bool]:
    """One all-reduce and one read of the device (a host sync): for each step's non-finite flag in `nonfinite`
    (one value per step since the last agreement), whether any rank saw one, and whether any rank got a
    preemption signal. Every rank gets the same answer and so acts at the same step."""
    flags = torch.cat([nonfinite.reshape(-1).float(),
                       torch.full((1,), float(preempted), device=nonfinite.device)])  # a fill, not a copy
    values = accelerator.reduce(flags, reduction="sum").tolist()
    return [v > 0 for v in values[:-1]], values[-1] > 0


def parameter_fingerprint(model: torch.nn.Module) -> str:
    import hashlib
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_replicas_in_sync(accelerator: Accelerator, model: torch.nn.Module, output_dir: Path | RunFolder) -> None:
    """Data-parallel replicas must end bit-identical; a silent divergence (ranks that trained on
    their own) is caught here and recorded in OUTPUT_DIR/replica_check.json. ZeRO shards
    parameters across ranks, so there is nothing to compare there."""
    if accelerator.num_processes == 1 or is_deepspeed(accelerator):
        return
    from accelerate.utils import gather_object
    fingerprints = gather_object([parameter_fingerprint(accelerator.unwrap_model(model))])
    in_sync = len(set(fingerprints)) == 1
    if accelerator.is_main_process:
        write_json_atomic(RunFolder.of(output_dir).replica_check_file,
                          {"fingerprints": fingerprints, "in_sync": in_sync})
    if not in_sync:
        raise LaunchError(f"data-parallel replicas diverged: parameter fingerprints {fingerprints}")
