#!/usr/bin/env bash
# The main job (README quick start): installs what is missing, then runs a local dev cluster —
# a 3-member etcd, agents registered to it through fault proxies, a controller and demo microVMs.
# Ctrl-C deletes the VMs, stops everything, removes the dev state and checks that nothing is left
# (twice: forced). TETHER_DEV_SKIP_DEPS=1 skips the install step (tests, or when you know).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "[dev] microVMs need taps and QEMU processes: run as root" >&2
  exit 1
fi
[ "${TETHER_DEV_SKIP_DEPS:-}" = 1 ] || bash scripts/ensure-deps.sh
# Not `exec`: npm forwards the terminal's SIGINT to its child, which already got the terminal's own
# copy (same process group), so one Ctrl-C would reach the supervisor twice and force the cleanup.
# The supervisor takes SIGINT from the terminal only; npm's copy stops here. SIGTERM and SIGHUP sent
# to this script are passed on (the supervisor treats a repeated SIGHUP as one).
node bin/tether.js dev up "$@" &
child=$!
trap ':' INT
trap 'kill -TERM "$child" 2>/dev/null || true' TERM
trap 'kill -HUP "$child" 2>/dev/null || true' HUP
while kill -0 "$child" 2>/dev/null; do
  wait "$child" || true
done
status=0
wait "$child" || status=$?
exit "$status"
