#!/usr/bin/env bash
# Boot a throw-away QEMU guest with NUMA nodes, run one script in it, power it off.
#
#   tests/numa_vm/run-in-vm.sh [-n NODES] [-c CPUS_PER_NODE] [-m MIB_PER_NODE] [-x MIB] [-t TIMEOUT_S] SHARE [SCRIPT]
#   tests/numa_vm/run-in-vm.sh --check     # exit 0 if setup.sh's output is there and current, else 2
#
# SHARE is a host directory shared read-write with the guest (9p, at /run/share in it); SCRIPT,
# if given, is copied to SHARE/cmd.sh. The guest runs `sh cmd.sh` as root with SHARE as its cwd,
# on the host's own `/` shared read-only (so host paths such as a repo's .venv work unchanged),
# and leaves SHARE/out.txt (stdout+stderr) and SHARE/rc.txt; SHARE/console.log is the serial
# console. Exit status: the script's, 124 when TIMEOUT_S (default 240) ran out, 125 when the
# guest never ran it (boot failure: see console.log). Defaults: 2 nodes × 2 CPUs × 1024 MiB.
# -x MIB adds one memory-only node (MIB MiB, no CPUs) after them, as node NODES (default: none).
# Needs `bash tests/numa_vm/setup.sh` once; uses $NUMAVM_DIR (default /tmp/shmhpc-numa-vm).
set -uo pipefail
DIR=${NUMAVM_DIR:-/tmp/shmhpc-numa-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
NODES=2 CPN=2 MPN=1024 XMB=0 TMO=240
usage() { sed -n '4,5p' "$0" | sed 's/^# *//' >&2; exit 2; }
# Everything the boot needs, from setup.sh; the initramfs must hold this checkout's scripts.
check() {
    local f stamp
    command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is not installed"; return 1; }
    for f in "$DIR/vmlinux" "$DIR/initramfs.cpio.gz" /usr/share/qemu/qboot.rom; do
        [ -s "$f" ] || { echo "missing $f"; return 1; }
    done
    stamp="$(ls "$DIR/kernel/lib/modules" 2>/dev/null) $(cat "$HERE/init" "$HERE/guest-init.sh" | sha256sum | cut -c1-16)"
    [ "$(cat "$DIR/initramfs.stamp" 2>/dev/null)" = "$stamp" ] ||
        { echo "$DIR/initramfs.cpio.gz was built from other scripts than $HERE"; return 1; }
}
if [ "${1:-}" = --check ]; then
    msg=$(check) || { echo "run-in-vm: $msg; run: bash tests/numa_vm/setup.sh" >&2; exit 2; }
    exit 0
fi
while getopts "n:c:m:x:t:" o; do
    case $o in
        n) NODES=$OPTARG;; c) CPN=$OPTARG;; m) MPN=$OPTARG;; x) XMB=$OPTARG;; t) TMO=$OPTARG;; *) usage;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] && [ $# -le 2 ] || usage
msg=$(check) || { echo "run-in-vm: $msg; run: bash tests/numa_vm/setup.sh" >&2; exit 2; }
SHARE=$(cd "$1" && pwd) || exit 2
[ $# -eq 2 ] && { cp "$2" "$SHARE/cmd.sh" || exit 2; }
[ -f "$SHARE/cmd.sh" ] || { echo "run-in-vm: no $SHARE/cmd.sh" >&2; exit 2; }
rm -f "$SHARE/out.txt" "$SHARE/rc.txt" "$SHARE/console.log"

# One memory backend and one CPU range per node: the guest kernel sees a real NUMA machine
# (SRAT/SLIT from QEMU), so first-touch placement and move_pages(2) behave as on hardware.
numa=() cpu=0
for ((n = 0; n < NODES; n++)); do
    numa+=(-object "memory-backend-ram,id=mem$n,size=${MPN}M"
           -numa "node,nodeid=$n,cpus=$cpu-$((cpu + CPN - 1)),memdev=mem$n")
    cpu=$((cpu + CPN))
done
# -x: a CPU-less node, as CXL or HBM memory shows up (has_memory but not has_cpu).
[ "$XMB" -gt 0 ] && numa+=(-object "memory-backend-ram,id=mem$NODES,size=${XMB}M"
                          -numa "node,nodeid=$NODES,memdev=mem$NODES")

start=$(date +%s%N)
# TCG (software emulation, one host thread per vCPU): no /dev/kvm needed. qboot boots the
# uncompressed vmlinux directly (PVH); -no-reboot turns a guest panic into a QEMU exit.
timeout -k 5 "$TMO" qemu-system-x86_64 -nodefaults -no-user-config -machine pc \
    -accel tcg,thread=multi -cpu max -smp $((NODES * CPN)) -m $((NODES * MPN + XMB))M "${numa[@]}" \
    -bios /usr/share/qemu/qboot.rom -kernel "$DIR/vmlinux" -initrd "$DIR/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1" \
    -virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=none" \
    -display none -serial "file:$SHARE/console.log" -no-reboot </dev/null
qrc=$?
wall=$(( ($(date +%s%N) - start) / 1000000 ))
rc=$(cat "$SHARE/rc.txt" 2>/dev/null)
echo "run-in-vm: guest rc=${rc:-none}, qemu rc=$qrc, ${wall} ms, share $SHARE" >&2
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "run-in-vm: timed out after ${TMO} s; console tail:" >&2; tail -20 "$SHARE/console.log" >&2; exit 124
fi
if [ -z "$rc" ]; then
    echo "run-in-vm: the guest did not run the script; console tail:" >&2; tail -30 "$SHARE/console.log" >&2; exit 125
fi
exit "$rc"
