#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing bptrain's batch jobs (and for trying the
# SLURM workflow on a laptop). Needs root (it installs packages and starts daemons).
#
#   sudo scripts/slurm/local_cluster.sh start     # install if needed, configure, start (idempotent)
#   sudo scripts/slurm/local_cluster.sh stop      # stop the daemons this script started
#   sudo scripts/slurm/local_cluster.sh status
#   eval "$(scripts/slurm/local_cluster.sh env)"  # point sbatch/squeue/scontrol at it
#
# Everything lives under $BPTRAIN_SLURM_DIR (default /tmp/bptrain-slurm): its own slurm.conf
# (used through SLURM_CONF, so an existing /etc/slurm/slurm.conf is never touched), state, logs
# and pid files. The daemons listen on ports 16817/16818, not SLURM's default 6817/6818, so they
# do not collide with a real cluster's. munged is shared: if it already runs, it is reused.
#
# The node is this host (`hostname -s`, reached on 127.0.0.1 only) with its CPUs; no cgroups (proctrack/linuxproc,
# task/none), so it also works in containers. JobRequeue=1 lets jobs requeue themselves.
set -euo pipefail

DIR=${BPTRAIN_SLURM_DIR:-/tmp/bptrain-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
CPUS=${BPTRAIN_SLURM_CPUS:-$(nproc)}

log() { echo "[local_cluster] $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$DIR/ctld" "$DIR/d" "$DIR/log"
    cat >"$CONF.new" <<EOF
# Written by bptrain scripts/slurm/local_cluster.sh: a one-node test cluster.
ClusterName=bptrain-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobRequeue=1
# a requeued job waits cred_expire+1 seconds before it may start again (default 120 s); starting it
# earlier (scontrol update StartTime=now) fails with "Job credential revoked"
AuthInfo=cred_expire=10
ReturnToService=2
KillWait=30
MinJobAge=600
# schedule every 2 s (default 60 s), so a requeued job restarts soon after it becomes eligible
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if ! cmp -s "$CONF.new" "$CONF"; then
        mv "$CONF.new" "$CONF"
        log "wrote $CONF"
        stop_daemon "$DIR/slurmd.pid"  # daemons of an older config restart with the new one
        stop_daemon "$DIR/slurmctld.pid"
    else
        rm -f "$CONF.new"
    fi
}

running() {  # running NAME PIDFILE: is the daemon from our pid file alive?
    [[ -f $2 ]] && kill -0 "$(cat "$2" 2>/dev/null)" 2>/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged already answers (ours from an earlier run, or the system's)
    fi
    [[ -f /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    log "starting munged"
    runuser -u munge -- munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up"; exit 1
}

start_slurm() {
    export SLURM_CONF=$CONF
    if ! running slurmctld "$DIR/slurmctld.pid"; then
        log "starting slurmctld"
        slurmctld -f "$CONF"
    fi
    if ! running slurmd "$DIR/slurmd.pid"; then
        log "starting slurmd"
        slurmd -f "$CONF"
    fi
    for _ in $(seq 100); do
        if sinfo -h -n "$HOST" -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
            log "up: $(sinfo -h -o '%P %D %t %C' 2>/dev/null)"
            return
        fi
        # a node left down/drained by an earlier run comes back
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        sleep 0.3
    done
    log "the node did not become idle; see $DIR/log/"; sinfo >&2 || true; exit 1
}

stop_daemon() {
    local pidfile=$1
    if running x "$pidfile"; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        for _ in $(seq 50); do running x "$pidfile" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

case ${1:-start} in
    start)
        [[ $(id -u) == 0 ]] || { log "run as root (it installs packages and starts daemons)"; exit 2; }
        install_packages
        write_config
        start_munge
        start_slurm
        ;;
    stop)
        export SLURM_CONF=$CONF
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        stop_daemon "$DIR/slurmd.pid"
        stop_daemon "$DIR/slurmctld.pid"
        log "stopped slurmd and slurmctld (munged is left running; it is harmless)"
        ;;
    status)
        export SLURM_CONF=$CONF
        sinfo && squeue
        ;;
    env)
        echo "export SLURM_CONF=$CONF"
        ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2; exit 2
        ;;
esac
