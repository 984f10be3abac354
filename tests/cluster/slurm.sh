#!/usr/bin/env bash
# A throwaway one-node Slurm cluster on this machine, for `make test-cluster` (tests/cluster/run.sh).
#
#   tests/cluster/slurm.sh install   Slurm 22.05 and munge from Debian (apt-get; skipped when present)
#   tests/cluster/slurm.sh start     munged, slurmctld and slurmd in the background, as root; waits for the node
#   tests/cluster/slurm.sh stop      stops the daemons `start` started (their recorded PIDs), nothing else
#
# Everything lives in $GEOPLM_SLURM_DIR (default /tmp/geoplm-slurm): slurm.conf, gres.conf, a fresh munge
# key, sockets, spool, logs and PIDs. Clients find the cluster through SLURM_CONF=$GEOPLM_SLURM_DIR/slurm.conf
# (`slurm.sh env` prints the export); /etc/slurm and /etc/munge are not touched, a system Slurm or munged
# is left alone. The daemons talk over 127.0.0.1 only (ports $GEOPLM_SLURM_PORT and +1, default 16817-16818;
# they listen on every interface, as Slurm has no bind-address setting, but only holders of the run's own
# munge key get an answer). No cgroups (containers seldom delegate them): proctrack/linuxproc, task/none.
#
# The node is what `slurmd -C` reports, plus one GPU (a GRES whose device file is an empty stand-in): the workflow's
# GPU rules (`resources: gpu=1` -> sbatch --gpus=1) are scheduled exactly as on a GPU node; with no CUDA
# the training runs on the CPU (config `device: auto`). Where the machine has less memory than the
# largest request ($GEOPLM_SLURM_MEMORY_MB, default 16000 = train_model's mem_mb), the node is declared
# with that much (SlurmdParameters=config_overrides): memory is not enforced without cgroups, and the
# demo's jobs use a fraction of it.
set -euo pipefail

DIR=${GEOPLM_SLURM_DIR:-/tmp/geoplm-slurm}
PORT=${GEOPLM_SLURM_PORT:-16817}
NEED_MB=${GEOPLM_SLURM_MEMORY_MB:-16000}
CONF=$DIR/slurm.conf
RUN_LINK=/run/slurm/conf

say() { echo "slurm.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        say "$(slurmd -V) and munge already installed"
        return
    fi
    [ "$(id -u)" = 0 ] || die "installing Slurm needs root (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || die "no apt-get: install Slurm (slurmctld, slurmd, sbatch) and munge yourself"
    say "installing slurm-wlm and munge from Debian ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    # no systemd in a container: the packages' service starts fail harmlessly (start runs the daemons itself)
    apt-get install -y -q --no-install-recommends slurm-wlm munge >"${TMPDIR:-/tmp}/geoplm-slurm-apt.log" 2>&1 \
        || { tail -n 20 "${TMPDIR:-/tmp}/geoplm-slurm-apt.log" >&2; die "apt-get install slurm-wlm munge failed"; }
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        || die "slurm-wlm / munge installed, but slurmctld, slurmd or munged is not on PATH"
}

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

# a daemon in the foreground of a background job: its PID is the one recorded
launch() {
    local name=$1
    shift
    "$@" >"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

start() {
    [ "$(id -u)" = 0 ] || die "the test cluster runs its daemons as root (SlurmUser=root)"
    for daemon in munged slurmctld slurmd; do
        if running "$daemon"; then die "$daemon from an earlier start still runs (PID $(cat "$DIR/$daemon.pid")): $0 stop"; fi
    done
    # Jobs find the cluster without SLURM_CONF: the plugin's job step strips SLURM_* from the environment of
    # its `srun`, which then reads /etc/slurm/slurm.conf, else /run/slurm/conf/slurm.conf (where a configless
    # slurmd keeps its copy). The test links /run/slurm/conf to its folder, on a machine with no Slurm of its own.
    [ -e /etc/slurm/slurm.conf ] && die "/etc/slurm/slurm.conf exists: this machine has a Slurm of its own; run the test elsewhere"
    if [ -e "$RUN_LINK" ] || [ -L "$RUN_LINK" ]; then
        [ "$(readlink "$RUN_LINK")" = "$DIR" ] || die "$RUN_LINK exists (a configless Slurm node?); run the test elsewhere"
        rm "$RUN_LINK"  # left by a start without stop
    fi
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && ! grep -qs '^ClusterName=geoplm-test$' "$CONF"; then
        die "$DIR holds something else than an earlier test cluster: set GEOPLM_SLURM_DIR"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{log,state,spool,munge}
    [ -d "$(dirname "$RUN_LINK")" ] || { mkdir -p "$(dirname "$RUN_LINK")" && touch "$DIR/run-dir-created"; }
    ln -s "$DIR" "$RUN_LINK"
    chmod 700 "$DIR/munge"

    # the node as slurmd sees it: CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=..
    local host hardware cpus memory node_memory overrides=""
    host=$(hostname -s)
    hardware=$(slurmd -C | awk '/^NodeName=/ { $1 = ""; sub(/ RealMemory=[0-9]+/, ""); print }')
    cpus=$(slurmd -C | sed -n 's/^NodeName=.* CPUs=\([0-9]*\).*/\1/p')
    memory=$(slurmd -C | sed -n 's/^NodeName=.* RealMemory=\([0-9]*\).*/\1/p')
    [ -n "$cpus" ] && [ -n "$memory" ] || die "slurmd -C reported no CPUs / RealMemory: $(slurmd -C)"
    node_memory=$memory
    if [ "$memory" -lt "$NEED_MB" ]; then
        say "this machine has ${memory} MB; the node is declared with ${NEED_MB} MB (config_overrides, not enforced)"
        node_memory=$NEED_MB
        overrides="SlurmdParameters=config_overrides"
    fi

    # munge: a fresh key for this cluster only, its own socket
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    chmod 400 "$DIR/munge/munge.key"
    launch munged munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log"
    for _ in $(seq 50); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$DIR/munge/munge.socket" ] || { cat "$DIR/log/munged.out" >&2; die "munged did not start"; }

    cat >"$CONF" <<EOF
# geoplm's test cluster (tests/cluster/slurm.sh): one node, this machine, loopback only
ClusterName=geoplm-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/spool/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=${GEOPLM_SLURM_DEBUG:-info}
# no cgroups, no accounting database (the profile's documented override: --slurm-status-command squeue)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# finished jobs stay visible to squeue for an hour (the plugin's squeue status needs >= 120 s)
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
$overrides
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host $hardware RealMemory=$node_memory Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm drops a GPU without a device file: an empty stand-in (task/none constrains no devices)
    mkdir -p "$DIR/dev"
    : >"$DIR/dev/nvidia0"
    echo "NodeName=$host Name=gpu File=$DIR/dev/nvidia0" >"$DIR/gres.conf"
    mkdir -p "$DIR/spool/$host"

    export SLURM_CONF=$CONF
    launch slurmctld slurmctld -D -i -f "$CONF"
    launch slurmd slurmd -D -f "$CONF" -N "$host"

    say "waiting for node $host to come up idle ..."
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        [ "$state" = idle ] && break
        for daemon in slurmctld slurmd; do
            running "$daemon" || { tail -n 20 "$DIR/log/$daemon.out" "$DIR/log/$daemon.log" >&2 2>/dev/null || true;
                die "$daemon exited"; }
        done
        sleep 1
    done
    if [ "$state" != idle ]; then
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        die "node $host is '${state:-unknown}', not idle, after 60 s"
    fi
    say "cluster up: node $host, $cpus CPUs, $node_memory MB, 1 GPU (stand-in), partition main; SLURM_CONF=$CONF"
}

stop() {
    local pid
    for daemon in slurmd slurmctld munged; do
        [ -f "$DIR/$daemon.pid" ] || continue
        pid=$(cat "$DIR/$daemon.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
            say "stopped $daemon (PID $pid)"
        fi
        rm -f "$DIR/$daemon.pid"
    done
    if [ -L "$RUN_LINK" ] && [ "$(readlink "$RUN_LINK")" = "$DIR" ]; then
        rm "$RUN_LINK"
        [ -f "$DIR/run-dir-created" ] && rmdir "$(dirname "$RUN_LINK")" 2>/dev/null || true
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
