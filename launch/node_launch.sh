#!/bin/bash
# Per-node step of a SLURM job: runs as ONE srun task per node (see launch/slurm_job.sbatch) and starts
# `accelerate launch` with this node's machine rank. Everything node-specific is computed here, inside the
# step: in the batch shell $SLURM_NODEID/$SLURM_PROCID are those of the first node on every node.
#
#   srun --ntasks-per-node=1 launch/node_launch.sh SCRIPT [SCRIPT ARGS...]
#
# Env (exported by the batch script; srun passes the environment on):
#   ACCELERATE_CONFIG   accelerate config yaml (required)
#   PROCS_PER_NODE      training processes per node (default: $SLURM_GPUS_ON_NODE, else 1)
#   MAIN_PROCESS_IP     override the main node's address (default: NodeAddr of the job's first node)
#   MAIN_PROCESS_PORT   override the rendezvous port (default: derived from job id and restart count)
#   ACCELERATE          launcher command (default: accelerate)
#
# Signals: srun delivers a forwarded signal to EVERY process of the step (proctrack signals the whole step,
# new sessions included), so the launcher (accelerate / the torchrun agent) is started with SIGUSR1 ignored:
# USR1's default action would kill it. The training processes inherit "ignored" and must install their own
# SIGUSR1/SIGTERM handlers first thing. USR1/TERM that reach only this shell are passed on to the launcher's
# children (the training processes); DataLoader workers and the launcher itself are left alone.
set -uo pipefail

[ $# -ge 1 ] || { echo "usage: node_launch.sh SCRIPT [ARGS...]" >&2; exit 2; }
: "${ACCELERATE_CONFIG:?ACCELERATE_CONFIG is not set}"
: "${SLURM_JOB_ID:?node_launch.sh must run inside a SLURM job step (srun)}"
node=${SLURMD_NODENAME:-$(hostname -s)}
say() { echo "[node_launch $node] $*"; }

num_machines=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-1}}
if [ "${SLURM_STEP_NUM_TASKS:-$num_machines}" != "$num_machines" ]; then
    say "error: needs exactly one task per node (step has ${SLURM_STEP_NUM_TASKS} tasks on $num_machines nodes)" >&2
    exit 2
fi
machine_rank=${SLURM_NODEID:-${SLURM_PROCID:?neither SLURM_NODEID nor SLURM_PROCID is set}}
procs_per_node=${PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
num_processes=$((num_machines * procs_per_node))

# Main process address: the first node of the job. On a real cluster its NodeAddr is its hostname or IP; on
# the local test cluster the node names n1/n2 do not resolve and NodeAddr is 127.0.0.1.
if [ -z "${MAIN_PROCESS_IP:-}" ]; then
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MAIN_PROCESS_IP=$(scontrol show node "$first" 2>/dev/null | grep -oE 'NodeAddr=[^ ]+' | head -n 1 | cut -d= -f2)
    MAIN_PROCESS_IP=${MAIN_PROCESS_IP:-$first}
fi
# Same on every node without talking to each other; changes on requeue so a port still held by the previous
# run of this job does not block the rerun.
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-$((20000 + (SLURM_JOB_ID % 2000) * 10 + ${SLURM_RESTART_COUNT:-0} % 10))}

if [ "$num_machines" -gt 1 ] && grep -qE "^distributed_type: *['\"]?DEEPSPEED" "$ACCELERATE_CONFIG" \
    && ! grep -qE "^ *deepspeed_multinode_launcher: *['\"]?standard" "$ACCELERATE_CONFIG"; then
    say "error: multi-node DeepSpeed needs 'deepspeed_multinode_launcher: standard' in $ACCELERATE_CONFIG" >&2
    exit 2
fi

say "machine_rank=$machine_rank num_machines=$num_machines num_processes=$num_processes" \
    "main_process_ip=$MAIN_PROCESS_IP main_process_port=$MAIN_PROCESS_PORT restart=${SLURM_RESTART_COUNT:-0}"

pending=""
forward() {
    say "got SIG$1, forwarding to the training processes"
    pkill -"$1" -P "$agent" 2>/dev/null || pending=$1   # launcher has no children yet: retry below
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# The launcher ignores USR1 (its default action would kill it) and TERM: SLURM sends TERM to every process of the
# step, and a one-process launcher that died of it would end the step, and the training process with it, before
# its checkpoint is written. This script forwards both to the training processes; the launcher waits for them.
# (They install their own handlers first thing, so the inherited "ignore" does not reach them.)
# shellcheck disable=SC2086
(trap '' USR1 TERM; exec ${ACCELERATE:-accelerate} launch \
    --config_file "$ACCELERATE_CONFIG" \
    --num_machines "$num_machines" --machine_rank "$machine_rank" --num_processes "$num_processes" \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    "$@") &
agent=$!

# `wait` returns early whenever a trapped signal arrives; keep waiting until the launcher is gone.
while :; do
    wait "$agent"; rc=$?
    while [ -n "$pending" ] && kill -0 "$agent" 2>/dev/null; do
        sleep 0.5
        pkill -"$pending" -P "$agent" 2>/dev/null && { say "forwarded SIG$pending"; pending=""; }
    done
    kill -0 "$agent" 2>/dev/null && continue
    wait "$agent" 2>/dev/null; rc2=$?   # 127: status already collected above
    [ "$rc2" = 127 ] || rc=$rc2
    break
done
say "launcher exited with status $rc"
exit "$rc"
