#!/usr/bin/env bash
# Stop the single-node test cluster started by tests/slurm/start_cluster.sh:
# slurmd, slurmctld and munged, each by the pid in its pid file.  Idempotent.
# Leaves the installed packages, /etc/slurm/slurm.conf and the munge key in place.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n bash "$0" "$@"
    fi
    echo "stop_cluster.sh: needs root or passwordless sudo" >&2
    exit 2
fi

log() { echo "stop_cluster.sh: $*" >&2; }

stop_pidfile() { # name pidfile
    local name=$1 pidfile=$2 pid
    if [[ ! -s $pidfile ]]; then
        return 0
    fi
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile munged /run/munge/munged.pid
log "stopped"
