#!/usr/bin/env bash
# Installs everything Tether needs on this machine, skipping what is already there:
# Debian packages, npm dependencies (from the lockfile), the built-in guest image, the build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
stamp=node_modules/.tether-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[deps] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
else
  echo "[deps] npm dependencies up to date"
fi
bash scripts/build-guest.sh
echo "[deps] building TypeScript"
npx tsc -p tsconfig.json
