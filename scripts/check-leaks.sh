#!/usr/bin/env bash
# After the tests: fails if any test left a QEMU or etcd process, agent, guardian, tap, lock, cgroup or
# temp folder.
# Test host ids start with "test-"; a developer's own dev cluster is not counted.
#
# With --remove-stale (scripts/test.sh, before any test starts): the same scan, but what it finds is
# the leftover of an earlier, interrupted test run (nothing of this run exists yet), so it is named and
# removed, and the run starts clean. Only test-marked things are touched: processes whose command line
# carries "tether:test-", agents and guardians of /tmp/tether-test-* dirs, taps aliased "tether:test-*",
# /run/tether/host-test-*.lock, tether/test-* cgroups and /tmp/tether-test-* folders.
set -uo pipefail
remove=0
[ "${1:-}" = --remove-stale ] && remove=1
leaks=0
found() { # $1 what, $2 list (one per line)
  if [ $remove = 1 ]; then echo "[leaks] left by an earlier, interrupted test run, removed now: $1:"; else echo "[leaks] $1 left by tests:"; fi
  echo "$2"
  leaks=1
}
marked() { pgrep -af 'tether:test-' | grep -v pgrep || true; }
# Agents and guardians (docs/guardian.md) serving a test state dir: their command lines carry no
# "tether:test-" mark, and a guardian is detached, so nothing else would stop them.
serving() { pgrep -af "tether\\.js $1 .*--state-dir[ =]/tmp/tether-test-" | grep -v pgrep || true; }
procs=$(marked)
agents=$(serving agent)
guardians=$(serving guardian)
[ -n "$procs" ] && found processes "$procs"
[ -n "$agents" ] && found "agent processes" "$agents"
[ -n "$guardians" ] && found "guardian processes" "$guardians"
if [ $remove = 1 ] && [ -n "$procs$agents$guardians" ]; then
  # Agents first (a live agent restarts its guardian), then guardians (a live guardian would take
  # the kill of a VM for a fire of its own), then the marked processes (VMs, etcd, controllers).
  for list in "$agents" "$guardians" "$procs"; do
    [ -n "$list" ] && kill -9 $(echo "$list" | awk '{print $1}') 2>/dev/null
  done
  for _ in $(seq 50); do
    [ -z "$(marked)$(serving '(agent|guardian)')" ] && break
    sleep 0.1
  done
fi
taps=$(ip -o link show | grep -o 'alias tether:test-[^ ]*' || true)
[ -n "$taps" ] && found "tap devices" "$taps"
if [ $remove = 1 ] && [ -n "$taps" ]; then
  for dev in $(ip -o link show | grep 'alias tether:test-' | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$dev" 2>/dev/null; done
fi
locks=$(ls /run/tether/host-test-*.lock 2>/dev/null || true)
[ -n "$locks" ] && found "host-id locks" "$locks"
[ $remove = 1 ] && [ -n "$locks" ] && rm -f $locks
# Per-host VM cgroups (docs/guardian.md) of test hosts: one still holding a process is a leak; an empty
# one holds nothing (a VM started late in a test's teardown can re-create it) and is removed here.
for cg in $(ls -d /sys/fs/cgroup/tether/test-* /sys/fs/cgroup/unified/tether/test-* 2>/dev/null); do
  if [ $remove = 0 ] && [ -n "$(cat "$cg/cgroup.procs" 2>/dev/null)" ]; then echo "[leaks] VM cgroup with processes left by tests: $cg"; cat "$cg/cgroup.procs"; leaks=1
  else rmdir "$cg" 2>/dev/null && echo "[leaks] note: removed the empty VM cgroup $cg"; fi
done
dirs=$(ls -d /tmp/tether-test-* 2>/dev/null || true)
[ -n "$dirs" ] && found "temp folders" "$dirs"
[ $remove = 1 ] && [ -n "$dirs" ] && rm -rf $dirs
if [ $remove = 1 ]; then
  # A leftover that cannot be removed (a process that survives SIGKILL, a busy tap) would be blamed
  # on this run at its end: refuse to start instead, naming it.
  [ $leaks = 1 ] && exec bash "$0"
  exit 0
fi
[ $leaks = 0 ] && echo "[leaks] none: no test process, agent, guardian, tap, lock, cgroup or temp folder left"
exit $leaks
