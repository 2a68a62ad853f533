#!/usr/bin/env bash
# Installs everything kpeek needs on a fresh Debian machine: system packages
# (libbpf to load the shipped BPF objects, clang and llvm to rebuild them,
# Graphviz for diagrams, FUSE and Chromium for the tests, QEMU, busybox and
# gcc-12 for the crash-dump lab) and a virtualenv in .venv with kpeek itself.
set -euo pipefail
cd "$(dirname "$0")"

apt_packages=(clang llvm libbpf-dev bpftool graphviz fuse3 libfuse2 lsof chromium psmisc procps dwarves
  qemu-system-x86 makedumpfile busybox-static cpio gcc-12 make
  e2fsprogs util-linux mount gcc libc6-dev kmod)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup.sh: missing system packages (${missing[*]}); run as root or install them" >&2
    exit 3
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
# The BPF objects are committed; this rebuilds only those whose program or
# vmlinux.h changed since (a no-op on a fresh clone).
.venv/bin/python -m kpeek.sources.bpf.build
# Byte-compile kpeek now: where PYTHONDONTWRITEBYTECODE is set, an editable
# install would otherwise compile every module it imports on every run
# (kpeek ps -p 1: 85-100 ms instead of 50-60).
.venv/bin/python -m compileall -q src >/dev/null
