#!/usr/bin/env bash
# Start a throw-away, single-node SLURM cluster on this machine (loopback only).
#
# Idempotent: installs slurm-wlm + munge with apt if missing, creates a munge key
# if missing, (re)writes /etc/slurm/slurm.conf (refusing to touch one it did not
# write), starts munged, slurmctld and slurmd unless they are already running with
# the same configuration, waits until the node is idle and runs a one-task `srun`.
# Needs root (or passwordless sudo) and a Debian/Ubuntu system.
#
# There is no accounting database (no slurmdbd): `sacct` does not work on this
# cluster, use `--slurm-status-command squeue` with the Snakemake executor plugin.
# Finished jobs stay visible to `squeue` for MinJobAge seconds.
#
# Environment knobs (all optional):
#   SLURM_START_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   SLURM_MIN_JOB_AGE     MinJobAge in seconds (default 300)
#
# Stop it again with tests/slurm/stop_cluster.sh.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=SLURM_START_TIMEOUT,SLURM_MIN_JOB_AGE bash "$0" "$@"
    fi
    echo "start_cluster.sh: needs root or passwordless sudo" >&2
    exit 2
fi

TIMEOUT=${SLURM_START_TIMEOUT:-60}
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-300}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CGROUP_CONF=$CONF_DIR/cgroup.conf
MARKER="# Written by tests/slurm/start_cluster.sh"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge

log() { echo "start_cluster.sh: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

pid_alive() { # pidfile
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# --- 1. packages -------------------------------------------------------------
need_install=0
for bin in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$bin ]]; then
        need_install=1
    fi
done
if [[ $need_install -eq 1 ]]; then
    command -v apt-get >/dev/null 2>&1 || die "slurm is not installed and apt-get is unavailable"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin

# --- 2. host name (munged and the slurm daemons look it up) ---------------------
HOST=$(hostname -s)
[[ -n $HOST ]] || die "hostname -s is empty"
if ! getent ahostsv4 "$HOST" >/dev/null 2>&1; then
    log "adding '127.0.0.1 $HOST' to /etc/hosts (the host name did not resolve)"
    echo "127.0.0.1 $HOST" >>/etc/hosts
fi

# --- 3. munge ----------------------------------------------------------------
getent group munge >/dev/null || groupadd --system munge
id munge >/dev/null 2>&1 || useradd --system --gid munge --home-dir /nonexistent \
    --shell /usr/sbin/nologin munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
if [[ ! -s $MUNGE_KEY ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f "$MUNGE_RUN/munged.pid"
    # munged refuses to run as root; run it as the munge user like the service does.
    if command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        su -s /bin/sh munge -c munged
    fi
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- 4. slurm.conf -----------------------------------------------------------
# With NoInAddrAny/NoCtldInAddrAny, slurmd and slurmctld bind to whatever the host name
# resolves to (not to NodeAddr/SlurmctldHost). So: if the name resolves to a loopback
# address (127.0.0.1, or 127.0.1.1 as Debian/Ubuntu write it), use that address and
# bind to it only; otherwise use 127.0.0.1 and let the daemons bind to all addresses.
ADDR=127.0.0.1
COMM_PARAMS="# (host name not on loopback: daemons bind to all addresses)"
resolved=$(getent ahostsv4 "$HOST" | awk 'NR == 1 {print $1}')
if [[ $resolved == 127.* ]]; then
    ADDR=$resolved
    COMM_PARAMS="CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
fi
NCPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# A bit below the machine's memory: slurmd drains a node whose RealMemory is too high.
REAL_MEM=$((MEM_MB * 9 / 10))
((REAL_MEM >= 256)) || die "too little memory (${MEM_MB} MB)"

install -d -m 0755 "$CONF_DIR" "$LOG_DIR"
install -d -m 0700 "$CTLD_SPOOL" "$SLURMD_SPOOL"

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
${MARKER}: single-node test cluster on loopback.
ClusterName=localcluster
SlurmctldHost=${HOST}(${ADDR})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
${COMM_PARAMS}
StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Trust the node definition below instead of the detected hardware (containers).
SlurmdParameters=config_overrides
# No accounting database (AccountingStorageType unset): keep finished jobs visible
# to squeue for a while.
MinJobAge=${MIN_JOB_AGE}
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=${HOST} NodeAddr=${ADDR} NodeHostname=${HOST} CPUs=${NCPUS} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

for f in "$CONF" "$CGROUP_CONF"; do
    if [[ -f $f && $(head -n 1 "$f") != "$MARKER"* ]]; then
        die "$f exists and was not written by this script; refusing to overwrite it"
    fi
done
conf_changed=1
if [[ -f $CONF ]] && cmp -s "$new_conf" "$CONF"; then
    conf_changed=0
fi
if [[ $conf_changed -eq 1 ]]; then
    log "writing $CONF (node ${HOST}: ${NCPUS} CPUs, ${REAL_MEM} MB)"
    install -m 0644 "$new_conf" "$CONF"
fi

# --- 5. daemons --------------------------------------------------------------
stop_daemon() { # name pidfile
    if pid_alive "$2"; then
        local pid
        pid=$(cat "$2")
        log "stopping $1 (pid $pid) to apply the new configuration"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$2"
}
if [[ $conf_changed -eq 1 ]]; then
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
fi

start_daemon() { # name pidfile logfile command...: start it, wait for its pid file
    local name=$1 pidfile=$2 logfile=$3 offset
    shift 3
    log "starting $name"
    rm -f "$pidfile"
    offset=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
    "$@" || return 1
    # newer versions write the pid file a few seconds after the command returned
    for _ in $(seq 1 75); do
        pid_alive "$pidfile" && return 0
        [[ $(tail -c +$((offset + 1)) "$logfile" 2>/dev/null) == *"initialization failed"* ]] &&
            return 1
        sleep 0.2
    done
    return 1
}
show_logs() {
    sinfo -N -l >&2 2>/dev/null || true
    scontrol show node "$HOST" >&2 2>/dev/null || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
}

if ! pid_alive "$CTLD_PID"; then
    start_daemon slurmctld "$CTLD_PID" "$LOG_DIR/slurmctld.log" slurmctld -f "$CONF" ||
        die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
if ! pid_alive "$SLURMD_PID"; then
    if ! start_daemon slurmd "$SLURMD_PID" "$LOG_DIR/slurmd.log" slurmd -f "$CONF"; then
        # Slurm >= 23.x initialises a cgroup plugin in slurmd even with
        # proctrack/linuxproc + task/none, which fails in most containers.
        if [[ ! -f $CGROUP_CONF && $(tail -n 5 "$LOG_DIR/slurmd.log" 2>/dev/null) == *cgroup* ]]; then
            log "slurmd cannot use cgroups here: writing $CGROUP_CONF (CgroupPlugin=disabled)"
            echo "$MARKER" >"$CGROUP_CONF"
            echo "CgroupPlugin=disabled" >>"$CGROUP_CONF"
            start_daemon slurmd "$SLURMD_PID" "$LOG_DIR/slurmd.log" slurmd -f "$CONF" || {
                show_logs
                die "slurmd did not start (see $LOG_DIR/slurmd.log)"
            }
        else
            show_logs
            die "slurmd did not start (see $LOG_DIR/slurmd.log)"
        fi
    fi
fi

# --- 6. wait for the node --------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
state=""
resumed=0
ready=0
while ((SECONDS < deadline)); do
    state=$(sinfo --noheader --nodes="$HOST" --format='%T' 2>/dev/null | head -n1 || true)
    case $state in
    idle | mixed | allocated | completing)
        # the state may be restored from StateSaveLocation: also ask both daemons
        if [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]] &&
            scontrol show slurmd >/dev/null 2>&1; then
            ready=1
            break
        fi
        ;;
    down* | drain* | fail*)
        # e.g. left down by a previous run with another configuration
        if [[ $resumed -eq 0 ]]; then
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        ;;
    esac
    pid_alive "$CTLD_PID" || { show_logs; die "slurmctld died (see $LOG_DIR/slurmctld.log)"; }
    pid_alive "$SLURMD_PID" || { show_logs; die "slurmd died (see $LOG_DIR/slurmd.log)"; }
    sleep 1
done
if [[ $ready -ne 1 ]]; then
    log "node state: '${state:-unknown}'"
    show_logs
    die "node ${HOST} did not become idle within ${TIMEOUT}s"
fi

# The node state can be restored from StateSaveLocation before slurmd has registered,
# so prove that a job step really runs (only when the node is free, to never block).
if [[ $state == idle ]]; then
    left=$((deadline - SECONDS))
    ((left >= 10)) || left=10
    if ! out=$(timeout "$left" srun --immediate="$left" --job-name=start_cluster_smoke \
        --nodes=1 --ntasks=1 --time=1 --mem=10 echo ok 2>&1) || [[ $out != *ok* ]]; then
        log "smoke test 'srun echo ok' failed: $out"
        show_logs
        die "node ${HOST} is ${state} but cannot run a job step"
    fi
fi
log "node ${HOST} is ${state}; cluster ready"
