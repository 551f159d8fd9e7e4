#!/usr/bin/env bash
# After the tests: fails if any test left a QEMU process, tap device or etcd member behind.
# Test host ids start with "test-"; a developer's own dev cluster is not counted.
set -uo pipefail
leaks=0
procs=$(pgrep -af 'tether:test-' | grep -v pgrep || true)
if [ -n "$procs" ]; then echo "[leaks] processes left by tests:"; echo "$procs"; leaks=1; fi
# Guardians (docs/guardian.md) serving a test state dir: detached, so nothing else would stop them.
guardians=$(pgrep -af 'tether\.js guardian .*--state-dir[ =]/tmp/tether-test-' | grep -v pgrep || true)
if [ -n "$guardians" ]; then echo "[leaks] guardian processes left by tests:"; echo "$guardians"; leaks=1; fi
taps=$(ip -o link show | grep -o 'alias tether:test-[^ ]*' || true)
if [ -n "$taps" ]; then echo "[leaks] tap devices left by tests:"; echo "$taps"; leaks=1; fi
locks=$(ls /run/tether/host-test-*.lock 2>/dev/null || true)
if [ -n "$locks" ]; then echo "[leaks] host-id locks left by tests:"; echo "$locks"; leaks=1; fi
# Per-host VM cgroups (docs/guardian.md) of test hosts: one still holding a process is a leak; an empty
# one holds nothing (a VM started late in a test's teardown can re-create it) and is removed here.
for cg in $(ls -d /sys/fs/cgroup/tether/test-* /sys/fs/cgroup/unified/tether/test-* 2>/dev/null); do
  if [ -n "$(cat "$cg/cgroup.procs" 2>/dev/null)" ]; then echo "[leaks] VM cgroup with processes left by tests: $cg"; cat "$cg/cgroup.procs"; leaks=1
  else rmdir "$cg" 2>/dev/null && echo "[leaks] note: removed the empty VM cgroup $cg"; fi
done
dirs=$(ls -d /tmp/tether-test-* 2>/dev/null || true)
if [ -n "$dirs" ]; then echo "[leaks] temp folders left by tests:"; echo "$dirs"; leaks=1; fi
[ $leaks = 0 ] && echo "[leaks] none: no test process, guardian, tap, lock, cgroup or temp folder left"
exit $leaks
