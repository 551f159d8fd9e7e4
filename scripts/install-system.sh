#!/usr/bin/env bash
# Installs the Debian packages Tether needs, only those that are missing.
# Idempotent: on a warm machine it installs nothing and does not touch apt.
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils busybox-static lz4 iproute2 e2fsprogs etcd-server etcd-client procps chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install-system] all system packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[install-system] missing packages ${missing[*]} and not root: install them or rerun as root" >&2
  exit 1
fi
echo "[install-system] installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[install-system] done"
