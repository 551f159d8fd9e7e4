#!/usr/bin/env bash
# The main job (README quick start): installs what is missing, then runs a local dev cluster —
# a 3-member etcd, an agent registered to it through a fault proxy, and a demo microVM.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "[dev] microVMs need taps and QEMU processes: run as root" >&2
  exit 1
fi
bash scripts/ensure-deps.sh
exec node bin/tether.js dev up "$@"
