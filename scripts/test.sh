#!/usr/bin/env bash
# The test command (README quick start, and what .ci/run calls): installs what is missing, builds,
# lints, then runs the unit tests and the integration tests on real QEMU, taps, SQLite and etcd.
# Prints a closing line "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "[test] the integration tests drive real taps and QEMU processes: run as root" >&2
  exit 1
fi
bash scripts/ensure-deps.sh
echo "[test] lint"
npm run --silent lint
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
echo "[test] unit + integration tests"
npx vitest run --reporter=default --reporter=json --outputFile.json="$out/results.json" "$@" || status=$?
node -e '
const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : ""));
if (r.numTotalTests === 0) process.exitCode = 1;
' "$out/results.json" || status=1
# A short chaos run on real parts (docs/chaos.md): fails on a double run, non-convergence or a leftover.
# Only on a full run (no test files named); TETHER_SKIP_CHAOS=1 skips it, CHAOS_SEED picks the seed.
if [ $# -eq 0 ] && [ "${TETHER_SKIP_CHAOS:-0}" != 1 ]; then
  echo "[test] chaos (1 min of faults, seed ${CHAOS_SEED:=$RANDOM})"
  chaos_out=/tmp/tether-chaos/ci-seed-$CHAOS_SEED   # kept (report, timeline, logs) only when the run fails
  if npm run --silent chaos -- --minutes 1 --seed "$CHAOS_SEED" --converge-timeout 90 --out "$chaos_out"; then rm -rf "$chaos_out"
  else status=1; echo "[test] chaos failed: report, timeline and logs in $chaos_out"; fi
fi
bash scripts/check-leaks.sh || status=1
exit $status
