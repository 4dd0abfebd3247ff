"""Stand-in for a training script that follows the project's preemption protocol, for testing the SLURM shell
side (launch/slurm_job.sbatch, launch/node_launch.sh) without a model.

    accelerate launch ... tests/slurm_helpers/fake_train.py --output_dir DIR [--max_train_steps N]
        [--step_seconds S] [--resume_from_checkpoint latest]

Protocol, as the real scripts do it: SIGUSR1/SIGTERM only set a flag; at the next step boundary all ranks
agree on it (all-reduce MAX when several processes run), save a checkpoint, the main process writes
OUTPUT_DIR/PREEMPTED (JSON: step, signal, time) and every rank exits 0. With `--resume_from_checkpoint latest`
it continues from the newest complete checkpoint; a stale PREEMPTED marker is removed at start.

With WORLD_SIZE > 1 (torchrun through accelerate launch) the ranks really rendezvous with torch.distributed
(gloo); with one process it is pure Python. Each rank appends a JSON line per event to DIR/events-rank{R}.jsonl.
"""

import argparse
import json
import os
import signal
import sys
import time

_received = []


def _on_signal(signum, frame):
    _received.append(signal.Signals(signum).name)


def parse_args(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_train_steps", type=int, default=5)
    p.add_argument("--step_seconds", type=float, default=0.2)
    p.add_argument("--resume_from_checkpoint", default=None)
    args, _unknown = p.parse_known_args(argv)  # presets and other flags of the real scripts are ignored
    return args


def latest_checkpoint(output_dir):
    root = os.path.join(output_dir, "checkpoints")
    steps = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        state = os.path.join(root, name, "state.json")
        if name.startswith("step_") and os.path.isfile(state):  # no state.json: incomplete, skipped
            with open(state) as f:
                steps.append(json.load(f)["step"])
    return max(steps, default=0)


def save_checkpoint(output_dir, step):
    final = os.path.join(output_dir, "checkpoints", f"step_{step:06d}")
    tmp = final + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step}, f)
    os.replace(tmp, final)


def main(argv=None):
    # Handlers first: the launcher starts this process with SIGUSR1 ignored, and a signal that arrives
    # before they are installed is lost, not fatal.
    signal.signal(signal.SIGUSR1, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    args = parse_args(sys.argv[1:] if argv is None else argv)

    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    is_main = rank == 0
    dist = None
    if world_size > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")

    def agree(value):
        if dist is None:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    os.makedirs(args.output_dir, exist_ok=True)
    events = open(os.path.join(args.output_dir, f"events-rank{rank}.jsonl"), "a")

    def event(name, **fields):
        fields.update(event=name, rank=rank, time=time.time(), restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)))
        events.write(json.dumps(fields) + "\n")
        events.flush()

    marker = os.path.join(args.output_dir, "PREEMPTED")
    if is_main and os.path.exists(marker):
        os.remove(marker)
    start = latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest" else 0
    env = {k: os.environ.get(k) for k in ("SLURMD_NODENAME", "SLURM_NODEID", "SLURM_PROCID", "SLURM_JOB_ID",
                                          "GROUP_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    event("start", world_size=world_size, start_step=start, pid=os.getpid(), argv=sys.argv[1:], env=env)
    if dist is not None:
        t = torch.tensor([rank], dtype=torch.int64)
        dist.all_reduce(t)  # proof of a real rendezvous: the sum of all ranks
        event("rendezvous", rank_sum=int(t.item()))

    step = start
    while step < args.max_train_steps:
        time.sleep(args.step_seconds)
        step += 1
        event("step", step=step)
        if agree(1 if _received else 0):
            if is_main:
                save_checkpoint(args.output_dir, step)
            if dist is not None:
                dist.barrier()
            if is_main:
                with open(marker + ".tmp", "w") as f:
                    json.dump({"step": step, "signal": _received[0] if _received else "peer", "time": time.time()}, f)
                os.replace(marker + ".tmp", marker)
            event("preempted", step=step, signals=_received)
            break
    else:
        if is_main:
            os.makedirs(os.path.join(args.output_dir, "final"), exist_ok=True)
            with open(os.path.join(args.output_dir, "final", "done.json"), "w") as f:
                json.dump({"step": step}, f)
        event("done", step=step)
    if dist is not None:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
