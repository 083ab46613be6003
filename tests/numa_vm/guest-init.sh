# PID 1 of the NUMA test guest, run by the host's /bin/sh after the initramfs switch_root'ed into
# the host's `/` (read-only). Mounts what Python needs, mounts the writable share (9p tag "share")
# at /run/share, runs ./cmd.sh there (stdout+stderr -> out.txt, exit status -> rc.txt), powers off.
# The host's /tmp stays visible (a CI clone may live there): scratch goes to TMPDIR=/run/tmp.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/run/tmp TMPDIR=/run/tmp LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/shm /run/share /run/tmp
# /dev/shm holds the shared arrays: a tmpfs, whose pages land on the node that first touches them.
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
rc=125
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /run/share; then
    cd /run/share && sh ./cmd.sh > out.txt 2>&1
    rc=$?
    echo "$rc" > rc.txt
    cd /
    sync
    umount /run/share
else
    echo "numa-vm guest: cannot mount the share"
fi
echo "numa-vm guest: cmd.sh exited $rc"
# sysrq "o" powers off at once. PID 1 must not exit before that (the kernel would panic; with
# panic=-1 and QEMU's -no-reboot that also ends the VM, which is the fallback here).
echo o > /proc/sysrq-trigger
exec sleep 30
