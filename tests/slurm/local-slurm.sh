#!/usr/bin/env bash
# A real Slurm on this machine, for the tests marked `slurm` (tests/test_slurm.py):
# munge + slurmctld + slurmd on localhost, no systemd, everything under one state directory.
#
#   bash tests/slurm/local-slurm.sh start     # installs Debian's packages if needed, starts, waits idle
#   bash tests/slurm/local-slurm.sh stop      # cancels jobs, stops the daemons by pid
#   bash tests/slurm/local-slurm.sh status    # exit 0 when the nodes answer
#   export SLURM_CONF=$SHMHPC_SLURM_DIR/etc/slurm.conf   # what every client (sbatch, squeue…) needs
#
# Settings (environment):
#   SHMHPC_SLURM_DIR    state, logs, config          (default /tmp/shmhpc-slurm)
#   SHMHPC_SLURM_NODES  0: one real node named after this host (default);
#                       N >= 2: N emulated nodes n1..nN, all on 127.0.0.1 (for multi-node tests)
#   SHMHPC_SLURM_PORT   slurmctld's port (default 6817); slurmd takes the next, emulated node i the
#                       port + 3 + i: a second Slurm (e.g. a 2-node one) can run beside the first
#
# Choices, and why:
# - proctrack/linuxproc + task/affinity: no systemd and no cgroup delegation here, yet
#   `srun --cpu-bind=…` must really bind (tests check which CPUs workers ran on).
# - select/cons_tres with CR_Core_Memory and DefMemPerCPU: without a default memory per CPU a
#   job with no --mem is given the whole node's memory, and two jobs never run side by side.
# - munged runs as user munge with its socket in the state directory (AuthInfo=socket=…), so it
#   neither needs nor disturbs a system munge.
# - slurmd does not create its spool or TmpFS directories; emulated nodes each get their own
#   (pmix puts per-step directories under TmpFS, and two nodes on one host would collide).
# - MinJobAge keeps finished jobs visible to `scontrol show job` (there is no slurmdbd, so no
#   sacct); the tests poll squeue/scontrol, never `sbatch --wait` (it backs off to 42 s polls).
set -euo pipefail

DIR=${SHMHPC_SLURM_DIR:-/tmp/shmhpc-slurm}
NODES=${SHMHPC_SLURM_NODES:-0}
PORT=${SHMHPC_SLURM_PORT:-6817}
export SLURM_CONF=$DIR/etc/slurm.conf
MSOCK=$DIR/munge/munge.socket.2
say() { printf 'local-slurm: %s\n' "$*"; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    # libpmix-dev: Slurm's mpi/pmix plugin (srun --mpi=pmix) dlopen()s the unversioned libpmix.so that only
    # the -dev package ships.
    command -v slurmctld >/dev/null && command -v munged >/dev/null &&
        dpkg-query -W -f='${Status}' libpmix-dev 2>/dev/null | grep -q "install ok installed" && return 0
    [[ $(id -u) == 0 ]] || { say "installing slurm-wlm, munge and libpmix-dev needs root" >&2; exit 2; }
    say "apt-get install slurm-wlm munge libpmix-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurm-wlm munge libpmix-dev \
        >/dev/null || { apt-get update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                            --no-install-recommends slurm-wlm munge libpmix-dev >/dev/null; }
}

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then   # Debian's postinst makes one; make it if an image skipped that
        install -d -o munge -g munge -m 0700 /etc/munge
        head -c 1024 /dev/urandom > $key
        chown munge:munge $key; chmod 0400 $key
    fi
    install -d -o munge -g munge -m 0755 "$DIR/munge"
    munge -n -S "$MSOCK" >/dev/null 2>&1 && return 0
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --socket="$MSOCK" --key-file=$key \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 100); do munge -n -S "$MSOCK" >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "munged did not answer; see $DIR/munge/munged.log" >&2; exit 1
}

write_conf() {
    local host cpus sockets cores threads mem lines nodelist i
    host=$(hostname -s)
    # slurmd -C prints this machine's NodeName line (CPUs, sockets, cores, threads, memory).
    read -r cpus sockets cores threads mem < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
        $1=="CPUs"{c=$2} $1=="SocketsPerBoard"{s=$2} $1=="CoresPerSocket"{k=$2}
        $1=="ThreadsPerCore"{t=$2} $1=="RealMemory"{m=$2} END{print c, s, k, t, m}')
    mem=$(( mem * 9 / 10 ))   # slack, so the node is never drained for "low RealMemory"
    if (( NODES >= 2 )); then
        nodelist="n[1-$NODES]"; lines=""
        for i in $(seq 1 "$NODES"); do
            lines+="NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 3 + i)) CPUs=$cpus"
            lines+=" Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$((mem / NODES))"$'\n'
        done
    else
        nodelist=$host
        lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores"
        lines+=" ThreadsPerCore=$threads RealMemory=$mem"
    fi
    cat > "$SLURM_CONF" <<CONF
# Written by tests/slurm/local-slurm.sh: a throw-away Slurm for shmhpc's tests.
ClusterName=shmhpc-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d/%n
TmpFS=$DIR/tmp/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=10
Waittime=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$lines
PartitionName=debug Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    install_packages
    mkdir -p "$DIR"/{etc,log,pids,spool/ctld}
    start_munge
    write_conf
    if running "$DIR/pids/slurmctld.pid"; then
        scontrol reconfigure
    else
        say "starting slurmctld"
        /usr/sbin/slurmctld -f "$SLURM_CONF" -i   # -i: ignore stale state from an earlier start
    fi
    local names
    if (( NODES >= 2 )); then names=$(seq -f 'n%g' 1 "$NODES"); else names=$(hostname -s); fi
    for n in $names; do
        mkdir -p "$DIR/spool/d/$n" "$DIR/tmp/$n"
        running "$DIR/pids/slurmd-$n.pid" && continue
        say "starting slurmd $n"
        if (( NODES >= 2 )); then /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n"; else /usr/sbin/slurmd -f "$SLURM_CONF"; fi
    done
    local states=""
    for _ in $(seq 120); do
        states=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        [[ $states == "idle " ]] && break
        sleep 0.25
    done
    [[ $states == "idle " ]] || { say "nodes are not idle ($states); logs in $DIR/log" >&2; exit 1; }
    say "ready in ${SECONDS}s: export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {   # NAME PIDFILE: TERM, wait up to 10 s, then KILL
    local pid
    [[ -s $2 ]] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { say "$1 ($pid) ignored TERM for 10 s: KILL"; kill -KILL "$pid"; }
        say "stopped $1 ($pid)"
    fi
    rm -f "$2"
}

stop() {
    [[ -f $SLURM_CONF ]] || { say "nothing to stop in $DIR"; return 0; }
    if running "$DIR/pids/slurmctld.pid"; then
        scancel --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 40); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.25; done
    fi
    local f
    for f in "$DIR"/pids/slurmd-*.pid; do [[ -e $f ]] && stop_pid "slurmd $(basename "$f" .pid)" "$f"; done
    stop_pid slurmctld "$DIR/pids/slurmctld.pid"
    stop_pid munged "$DIR/munge/munged.pid"
    if pgrep -x slurmstepd >/dev/null; then say "slurmstepd still running: $(pgrep -x slurmstepd | tr '\n' ' ')"; fi
    return 0
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) [[ -f $SLURM_CONF ]] && sinfo -h -N -o '%N %T' ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
