/**
 * Vitest setup file: when a test fails, copies the logs of every live test folder
 * (`/tmp/tether-test-*`: agent, controller, guardian journal, etcd) to
 * `/tmp/tether-failed-logs/<file>--<test>/` before the test's own teardown removes them, so a
 * failure on a loaded CI can be diagnosed after the fact. scripts/test.sh clears that folder before
 * a run and prints the tails of what was kept after it.
 *
 * Test files run one at a time (vitest.config.ts), so the live folders are the failing file's own.
 * Bounded: files named `*.log`, `*.jsonl` (guardian journals) or `fired.json` (not disks or sockets),
 * at most 8 levels deep, the last 4 MiB of each.
 */
import { closeSync, cpSync, mkdirSync, openSync, readdirSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach } from 'vitest';

const KEEP_ROOT = '/tmp/tether-failed-logs';
const MAX_BYTES = 4 * 1024 * 1024;

function logFiles(dir: string, depth: number, out: string[]): void {
  if (depth > 8) return;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return; // removed meanwhile
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) logFiles(p, depth + 1, out);
    else if (e.isFile() && (e.name.endsWith('.log') || e.name.endsWith('.jsonl') || e.name === 'fired.json')) out.push(p);
  }
}

function copyTail(from: string, to: string): void {
  const size = statSync(from).size;
  if (size <= MAX_BYTES) return cpSync(from, to);
  const fd = openSync(from, 'r');
  try {
    const buf = Buffer.alloc(MAX_BYTES);
    const n = readSync(fd, buf, 0, MAX_BYTES, size - MAX_BYTES);
    writeFileSync(to, buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
}

const safe = (s: string): string => s.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);

afterEach((ctx) => {
  if (ctx.task.result?.state !== 'fail') return;
  const dest = join(KEEP_ROOT, `${safe(ctx.task.file?.name ?? 'unknown')}--${safe(ctx.task.name)}`);
  const files: string[] = [];
  for (const d of readdirSync('/tmp').filter((n) => n.startsWith('tether-test-'))) logFiles(join('/tmp', d), 0, files);
  for (const f of files) {
    try {
      mkdirSync(dest, { recursive: true });
      copyTail(f, join(dest, f.slice('/tmp/'.length).replace(/\//g, '__')));
    } catch {
      /* a folder removed while copying: keep what can be kept */
    }
  }
});
