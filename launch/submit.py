"""Submit a training run to SLURM through launch/slurm_job.sbatch.

    python launch/submit.py pretrain --config train/configs/bert_base.yaml --accelerate-config multi_node \\
        --nodes 2 --gpus-per-node 4 --time 12:00:00 --output-dir runs/bert_base -- --max_train_steps 100000
    python launch/submit.py classification --config train/configs/sst5.yaml --accelerate-config cpu \\
        --gpus-per-node 0 --output-dir runs/sst5 --dry-run

Prints the exact sbatch command (--dry-run) or submits it and prints the job id on stdout. The job runs one
srun task per node; each starts `accelerate launch` with its machine rank, and the training command gets
`--output_dir DIR --resume_from_checkpoint latest`, so a requeued or resubmitted job resumes by itself.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

if __package__ in (None, ""):  # `python launch/submit.py`: make `train.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.common.run_folder import RunFolder

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "pretrain": "train/pretrain.py",
    "classification": "train/finetune_classification.py",
    "qa": "train/finetune_qa.py",
}
# Flags the batch script owns; given again after `--` they would contradict it.
RESERVED = ("--output_dir", "--resume_from_checkpoint")


class SubmitError(Exception):
    pass


def parse_time_limit(text):
    """Seconds in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise SubmitError(f"bad --time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:
        h, mi, s = a, b or 0, c or 0
    elif c is not None:
        h, mi, s = a, b, c
    elif b is not None:
        h, mi, s = 0, a, b
    else:
        h, mi, s = 0, a, 0
    return (days or 0) * 86400 + h * 3600 + mi * 60 + s


def readable_file(path, what):
    p = Path(path)
    if not p.is_file() or not os.access(p, os.R_OK):
        raise SubmitError(f"{what} {path} does not exist or is not readable")
    return p.resolve()


def resolve_accelerate_config(name_or_path):
    """A name from accelerate_configs/ (with or without .yaml) or a path to a yaml file."""
    candidates = [Path(name_or_path)]
    if os.sep not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        candidates.insert(0, REPO / "accelerate_configs" / f"{name_or_path}.yaml")
    for p in candidates:
        if p.is_file():
            path = readable_file(p, "accelerate config")
            break
    else:
        available = sorted(p.stem for p in (REPO / "accelerate_configs").glob("*.yaml"))
        raise SubmitError(f"accelerate config {name_or_path!r} not found "
                          f"(accelerate_configs/ has: {', '.join(available) or 'nothing'})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SubmitError(f"accelerate config {path} is not valid YAML: {e}") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise SubmitError(f"accelerate config {path} has no distributed_type: not an accelerate config")
    return path


def resolve_script(name):
    if name in SCRIPTS:
        path = REPO / SCRIPTS[name]
    elif name.endswith(".py"):
        path = Path(name)
    else:
        raise SubmitError(f"unknown training script {name!r}: choose {', '.join(SCRIPTS)} or give a .py path")
    return readable_file(path, "training script")


def partition_nodes(partition):
    """Node count of the partition (default partition when None), or None with a note when sinfo cannot tell."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        print("note: sinfo not found, node count not checked", file=sys.stderr)
        return None
    try:
        out = subprocess.run([sinfo, "-h", "-o", "%P %D"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        out = None
    if out is None or out.returncode != 0:
        print("note: sinfo failed, node count not checked", file=sys.stderr)
        return None
    counts = {}
    default = None
    for line in out.stdout.splitlines():
        name, nodes = line.split()
        if name.endswith("*"):
            name = default = name[:-1]
        counts[name] = counts.get(name, 0) + int(nodes)  # one line per node state
    name = partition or default
    if name not in counts:
        raise SubmitError(f"partition {name!r} not found (sinfo lists: {', '.join(sorted(counts)) or 'none'})")
    return counts[name]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Arguments after `--` go to the training script.")
    p.add_argument("script", help=f"{' | '.join(SCRIPTS)}, or a path to a .py training script")
    p.add_argument("--config", help="training preset, e.g. train/configs/smoke.yaml")
    p.add_argument("--accelerate-config", required=True,
                   help="name in accelerate_configs/ (cpu, cpu_ddp, multi_gpu, multi_node, ...) or a yaml path")
    p.add_argument("--output-dir", required=True, help="run folder; also holds the job logs (logs/)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="0 = CPU only")
    p.add_argument("--procs-per-node", type=int,
                   help="training processes per node (default: GPUs per node, or 1 on CPU)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs for each node's task (all its processes)")
    p.add_argument("--time", default="01:00:00", help="time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    p.add_argument("--partition", help="default: the cluster's default partition")
    p.add_argument("--job-name", help="default: SCRIPT-basename of output dir")
    p.add_argument("--signal-lead", type=int, default=300,
                   help="seconds before the time limit at which the job gets SIGUSR1 to checkpoint and requeue")
    p.add_argument("--sbatch-arg", action="append", default=[],
                   help="extra sbatch option, e.g. --sbatch-arg=--account=abc (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command, submit nothing")
    return p


def build_command(args, extra):
    script = resolve_script(args.script)
    accelerate_config = resolve_accelerate_config(args.accelerate_config)
    preset = readable_file(args.config, "training preset") if args.config else None
    for flag in extra:
        if flag.split("=")[0] in RESERVED:
            raise SubmitError(f"{flag.split('=')[0]} is set by the job itself; use --output-dir")
    if args.nodes < 1 or args.gpus_per_node < 0:
        raise SubmitError("--nodes must be >= 1 and --gpus-per-node >= 0")
    procs = args.procs_per_node or args.gpus_per_node or 1
    if args.gpus_per_node and procs > args.gpus_per_node:
        raise SubmitError(f"--procs-per-node {procs} is more than --gpus-per-node {args.gpus_per_node}")
    limit = parse_time_limit(args.time)
    if not 0 < args.signal_lead < limit:
        raise SubmitError(f"--signal-lead {args.signal_lead}s must be positive and below the time limit ({limit}s)")
    available = partition_nodes(args.partition)
    if available is not None and args.nodes > available:
        raise SubmitError(f"asked for {args.nodes} nodes but partition "
                          f"{args.partition or '(default)'} has {available}")

    output_dir = Path(args.output_dir).resolve()
    logs = RunFolder(output_dir).logs_dir
    job_name = args.job_name or f"{script.stem}-{output_dir.name}"
    cmd = ["sbatch", f"--job-name={job_name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
           f"--time={args.time}", "--requeue", f"--signal=B:USR1@{args.signal_lead}", "--open-mode=append",
           f"--output={logs / '%x-%j.out'}", f"--chdir={REPO}"]
    if args.partition:
        cmd.append(f"--partition={args.partition}")
    if args.gpus_per_node:
        cmd.append(f"--gpus-per-node={args.gpus_per_node}")
    if args.cpus_per_task:
        cmd.append(f"--cpus-per-task={args.cpus_per_task}")
    cmd += args.sbatch_arg
    cmd += [str(REPO / "launch" / "slurm_job.sbatch"), "--config_file", str(accelerate_config),
            "--output_dir", str(output_dir), "--procs_per_node", str(procs), "--", str(script)]
    if preset:
        cmd += ["--config", str(preset)]
    return cmd + extra, output_dir


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    try:
        cmd, output_dir = build_command(args, extra)
    except SubmitError as e:
        print(f"submit: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if shutil.which("sbatch") is None:
        print("submit: error: sbatch not found (is this a SLURM login node?)", file=sys.stderr)
        return 2
    logs = RunFolder(output_dir).logs_dir
    logs.mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    found = re.search(r"Submitted batch job (\d+)", out.stdout)
    if out.returncode != 0 or not found:
        print(f"submit: error: sbatch failed: {(out.stderr or out.stdout).strip()}", file=sys.stderr)
        return out.returncode or 1
    job_id = found.group(1)
    job_name = cmd[1].split("=", 1)[1]
    print(f"submitted job {job_id}; log: {logs / f'{job_name}-{job_id}.out'}", file=sys.stderr)
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
