#!/usr/bin/env bash
# One-shot setup for tests/test_numa_vm.py: everything needed to boot a throw-away QEMU guest
# whose kernel sees several NUMA nodes, on a Debian 12 x86_64 host (root for the apt step).
#
#   bash tests/numa_vm/setup.sh          # output in $NUMAVM_DIR (default /tmp/shmhpc-numa-vm)
#
# What it makes, each step skipped when its result is already there (a re-run is a no-op):
#   1. host tools from apt: qemu-system-x86 (with qboot.rom), busybox-static, cpio, kmod, xz-utils;
#   2. kernel/   Debian's own kernel package (`apt-get download`, unpacked, `depmod`): no build;
#   3. initramfs.cpio.gz   busybox, the virtio/9p modules, tests/numa_vm/init (mounts the host's
#      `/` read-only over 9p and switch_roots into it, so the guest runs the host's Python and the
#      project's own .venv at the same paths) and guest-init.sh (runs the script, powers off);
#   4. vmlinux   the uncompressed kernel, booted directly (PVH) by qboot in ~3 s instead of
#      SeaBIOS + bzImage decompression under software emulation.
# Why a VM at all: this machine has one NUMA node, and first-touch placement can only be checked
# where there are two. TCG (software emulation) is enough, no KVM needed: we test where pages
# live, never speed.
set -euo pipefail
DIR=${NUMAVM_DIR:-/tmp/shmhpc-numa-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
PKGS="qemu-system-x86 busybox-static cpio kmod xz-utils"
MODULES="virtio_pci 9pnet_virtio 9p"   # the guest needs no disk and no network: 9p over virtio only
t0=$SECONDS
say() { printf 'numa-vm setup: %s\n' "$*"; }

[ "$(uname -m)" = x86_64 ] || { say "needs an x86_64 host (found $(uname -m))" >&2; exit 2; }
mkdir -p "$DIR"

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=""
for p in $PKGS; do installed "$p" || missing="$missing $p"; done
kdir=$(ls -d "$DIR"/kernel/lib/modules/*/ 2>/dev/null | head -1 || true)

# -- 1. apt ---------------------------------------------------------------------------------
if [ -n "$missing" ] || [ -z "$kdir" ]; then
    [ "$(id -u)" = 0 ] || { say "apt steps need root (missing:${missing:- the kernel package})" >&2; exit 2; }
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get update"
    apt-get update -qq
fi
if [ -n "$missing" ]; then
    say "apt-get install$missing"
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
fi

# -- 2. the kernel: Debian's package, unpacked (never installed on the host) -----------------
if [ -z "$kdir" ]; then
    # linux-image-amd64 is a metapackage; its dependency names the current kernel package.
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || { say "cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
    say "kernel: apt-get download $kpkg"
    rm -rf "$DIR/kernel" "$DIR/kernel.tmp" "$DIR/deb"; mkdir -p "$DIR/deb"
    chown _apt "$DIR/deb" 2>/dev/null || true   # apt downloads as user _apt where it can
    (cd "$DIR/deb" && apt-get download -qq "$kpkg")
    dpkg-deb -x "$DIR"/deb/"$kpkg"_*.deb "$DIR/kernel.tmp"
    kver=$(ls "$DIR/kernel.tmp/lib/modules")
    depmod -b "$DIR/kernel.tmp" "$kver"
    rm -rf "$DIR/deb"; mv "$DIR/kernel.tmp" "$DIR/kernel"
    rm -f "$DIR/initramfs.cpio.gz" "$DIR/vmlinux"   # built from the old kernel, if any
    kdir=$DIR/kernel/lib/modules/$kver/
fi
kver=$(basename "$kdir")

# -- 3. initramfs: busybox, the modules in load order, our /init -----------------------------
# The stamp ties the image to the kernel version and to the two scripts packed into it
# (run-in-vm.sh refuses a stale image).
stamp="$kver $(cat "$HERE/init" "$HERE/guest-init.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$DIR/initramfs.cpio.gz" ] || [ "$(cat "$DIR/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "initramfs for $kver"
    w=$(mktemp -d "$DIR/initramfs.XXXXXX")
    mkdir -p "$w"/{bin,dev,proc,sys,newroot,modules}
    cp /bin/busybox "$w/bin/busybox"
    for applet in sh mount umount insmod switch_root cat mkdir sleep poweroff; do ln -s busybox "$w/bin/$applet"; done
    # `modprobe --show-depends` lists each module's dependencies first ("insmod PATH") and
    # says "builtin NAME" for what is compiled in; /init insmods the list in this order.
    : > "$w/modules/order"
    for m in $MODULES; do modprobe -d "$DIR/kernel" -S "$kver" --show-depends "$m"; done |
        awk '$1 == "insmod" && !seen[$2]++ {print $2}' |
        while read -r ko; do
            name=$(basename "$ko"); name=${name%.xz}; name=${name%.zst}
            case $ko in
                *.xz) xz -dc "$ko" > "$w/modules/$name";;
                *.zst) zstd -qdc "$ko" > "$w/modules/$name";;
                *) cp "$ko" "$w/modules/$name";;
            esac
            echo "/modules/$name" >> "$w/modules/order"
        done
    cp "$HERE/init" "$w/init"; chmod 755 "$w/init"
    cp "$HERE/guest-init.sh" "$w/guest-init.sh"
    (cd "$w" && find . | cpio -o -H newc --quiet | gzip -1) > "$DIR/initramfs.cpio.gz.tmp"
    rm -rf "$w"
    mv "$DIR/initramfs.cpio.gz.tmp" "$DIR/initramfs.cpio.gz"
    echo "$stamp" > "$DIR/initramfs.stamp"
fi

# -- 4. vmlinux: the ELF kernel inside Debian's xz-compressed bzImage ------------------------
if [ ! -s "$DIR/vmlinux" ]; then
    say "vmlinux (PVH direct boot)"
    bz=$(ls "$DIR"/kernel/boot/vmlinuz-* | head -1)
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -1 | cut -d: -f1)
    [ -n "$off" ] || { say "no xz stream in $bz" >&2; exit 1; }
    # xz complains about the bytes after the stream (the rest of the bzImage); the ELF is whole.
    tail -c +$((off + 1)) "$bz" | xz -dc 2>/dev/null > "$DIR/vmlinux.tmp" || true
    [ "$(head -c 4 "$DIR/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ] ||
        { say "extracted kernel is not an ELF file" >&2; exit 1; }
    mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"
fi

for f in /usr/share/qemu/qboot.rom "$DIR/vmlinux" "$DIR/initramfs.cpio.gz"; do
    [ -s "$f" ] || { say "missing $f" >&2; exit 1; }
done
say "ready in $DIR (kernel $kver, $((SECONDS - t0)) s)"
