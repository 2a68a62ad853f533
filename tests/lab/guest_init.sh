#!/bin/sh
# PID 1 of a HostRootGuest (see hostroot.py): the root is an overlay of the
# host's root over a tmpfs. Mount what a system has, run the command named
# by kpeek.command= on the kernel command line, print its exit code, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t fusectl fusectl /sys/fs/fuse/connections
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
busybox ip link set lo up 2>/dev/null || ip link set lo up
busybox hostname kpeek-guest
command=$(sed -n 's/.*kpeek\.command=\([^ ]*\).*/\1/p' /proc/cmdline)
script=$(cat "$command")
# A file system of its own for /tmp, as on a real machine: on the overlay,
# /proc/locks and BPF see the overlay's device while stat sees the tmpfs'.
# A checkout under /tmp (kpeek.keep=) stays visible through it by a bind mount.
keep=$(sed -n 's/.*kpeek\.keep=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$keep" ]; then mkdir -p /run/host-tmp && mount --bind /tmp /run/host-tmp; fi
mount -t tmpfs tmp /tmp
if [ -n "$keep" ]; then
  mkdir -p "$keep" && mount --bind "/run/host-tmp/${keep#/tmp/}" "$keep"
fi
echo "KPEEK-GUEST-START $(uname -r)"
sh -c "$script" </dev/null 2>&1
echo "KPEEK-GUEST-EXIT $?"
sync
echo o >/proc/sysrq-trigger
sleep 60
