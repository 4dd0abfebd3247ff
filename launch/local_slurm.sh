#!/bin/bash
# A real Slurm 22.05 cluster on this one machine, for the SLURM tests: munge, slurmctld and two simulated
# compute nodes (slurmd -N n1 / -N n2, NodeAddr=127.0.0.1, own ports). No systemd, no cgroups, no accounting
# database (jobcomp/filetxt: use `sacct -c`). Needs root (apt-get, munge, /etc/slurm).
#
#   bash launch/local_slurm.sh start    # install packages if missing, start, wait until all nodes are idle
#   bash launch/local_slurm.sh status   # sinfo + squeue; exit 1 when the cluster is not up
#   bash launch/local_slurm.sh stop     # cancel jobs, stop only the daemons this script started
#
# Env: LOCAL_SLURM_BASE (state, logs, pid files; default /tmp/local-slurm), LOCAL_SLURM_NODES (default 2),
#      LOCAL_SLURM_CPUS (CPUs per node; default nproc), SLURM_CONF (default /etc/slurm/slurm.conf).
set -euo pipefail

BASE=${LOCAL_SLURM_BASE:-/tmp/local-slurm}
NODES=${LOCAL_SLURM_NODES:-2}
CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
RUN=$BASE/run
MARK="# written by launch/local_slurm.sh"
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[local_slurm t+%d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { echo "local_slurm: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_names() { local i; for i in $(seq 1 "$NODES"); do echo "n$i"; done; }

# Up = the controller answers and every node is in a usable state (idle, mixed or allocated; not down/unknown).
cluster_up() {
    local states
    # sinfo needs ~9 s to give up on a dead controller; a closed port answers at once.
    (exec 3<>/dev/tcp/127.0.0.1/6817) 2>/dev/null || return 1
    states=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    [ "$(echo "$states" | grep -cE ' (idle|mixed|allocated|completing)$')" -ge "$NODES" ]
}

install_packages() {
    local missing=""
    command -v slurmctld >/dev/null || missing="$missing slurmctld"
    command -v slurmd >/dev/null || missing="$missing slurmd"
    command -v sbatch >/dev/null || missing="$missing slurm-client"
    command -v munged >/dev/null || missing="$missing munge"
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || die "packages missing ($missing) and not root"
    log "installing$missing"
    # Keep the packages' init scripts from starting daemons: this script starts its own.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    log "packages installed"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0   # already running (ours from an earlier start, or the machine's own): leave it
    fi
    [ -s /etc/munge/munge.key ] || mungekey -c
    install -d -o munge -g munge -m 755 /run/munge
    rm -f /run/munge/munged.pid
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$RUN/munged.pid"   # a copy here marks it as ours for `stop`
    munge -n | unmunge >/dev/null || die "munged does not answer"
}

write_conf() {
    local host mem_mb i
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away or set SLURM_CONF"
    fi
    host=$(hostname -s)
    mem_mb=$(( ($(awk '/^MemAvailable:/{print int($2/1024)}' /proc/meminfo) - 1024) / NODES ))
    [ "$mem_mb" -ge 512 ] || mem_mb=512
    mkdir -p "$(dirname "$CONF")"
    {
        echo "$MARK (base $BASE)"
        cat <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job restarts only after the credential expires (default 120 s; below 5 is rejected).
AuthInfo=cred_expire=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=300
KillWait=5
InactiveLimit=0
EOF
        for i in $(seq 1 "$NODES"); do
            echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
    } > "$CONF"
}

stop_daemons() {
    local f pid pids=""
    for f in "$RUN"/slurmd-*.pid "$RUN"/slurmctld.pid "$RUN"/munged.pid; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if kill "$pid" 2>/dev/null; then pids="$pids $pid"; echo "stopped $(basename "$f" .pid) (pid $pid)"; fi
        rm -f "$f"
    done
    for _ in $(seq 1 50); do
        local left=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
        [ -z "$left" ] && return 0
        sleep 0.2
    done
    for pid in $left; do kill -9 "$pid" 2>/dev/null || true; done
}

cmd_start() {
    install_packages
    if cluster_up; then
        log "already running"; sinfo; return 0
    fi
    mkdir -p "$BASE"/{state,log} "$RUN"
    stop_daemons >/dev/null   # leftovers of an earlier, half-dead start
    start_munge
    write_conf
    local n
    for n in $(node_names); do rm -rf "$BASE/spool/$n"; mkdir -p "$BASE/spool/$n"; done
    # -c: cold start, no jobs recovered from an earlier cluster in the same base folder.
    slurmctld -c
    for n in $(node_names); do slurmd -N "$n"; done
    for _ in $(seq 1 120); do
        cluster_up && [ "$(sinfo -h -o '%T' | sort -u)" = idle ] && break
        sleep 0.25
    done
    if ! cluster_up; then
        tail -n 20 "$BASE"/log/slurmctld.log "$BASE"/log/slurmd-*.log >&2 || true
        die "cluster did not come up (logs in $BASE/log)"
    fi
    sinfo
    log "cluster ready ($NODES nodes, base $BASE)"
}

cmd_stop() {
    local jobs
    if jobs=$(timeout 10 squeue -h -o %A 2>/dev/null) && [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs || true
        for _ in $(seq 1 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
    fi
    stop_daemons
}

cmd_status() {
    if cluster_up; then sinfo; squeue; return 0; fi
    echo "local_slurm: cluster is not up (no controller on port 6817, or nodes not idle; logs in $BASE/log)" >&2
    (exec 3<>/dev/tcp/127.0.0.1/6817) 2>/dev/null && timeout 10 sinfo -N >&2
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
