import { readFile, readdir } from 'node:fs/promises';

/**
 * Reading processes through `/proc`. Nothing here signals a process.
 *
 * Invariant: a zombie (exited, not yet reaped: QEMU daemonises to pid 1, which may never reap)
 * and a kernel thread both have an empty `/proc/<pid>/cmdline`; {@link readArgv} returns
 * undefined for them, exactly as for a pid that does not exist. So "argv readable and marked"
 * means "alive and ours".
 */

/** The argv of `pid` from `/proc/<pid>/cmdline`, or undefined when gone, a zombie or unreadable. */
export async function readArgv(pid: number, procRoot = '/proc'): Promise<string[] | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let raw: Buffer;
  try {
    raw = await readFile(`${procRoot}/${pid}/cmdline`);
  } catch {
    return undefined;
  }
  if (raw.length === 0) return undefined;
  const text = raw.toString('utf8');
  const parts = text.split('\0');
  if (parts[parts.length - 1] === '') parts.pop();
  return parts;
}

/** Every numeric entry of `/proc` (pids alive or zombie at the time of the scan). */
export async function listPids(procRoot = '/proc'): Promise<number[]> {
  const names = await readdir(procRoot);
  const pids: number[] = [];
  for (const n of names) if (/^[0-9]+$/.test(n)) pids.push(Number(n));
  return pids;
}

/**
 * The pid stored in a pid file, or undefined when the file is missing, empty or not a positive
 * integer (a stale or half-written file is not an error: it simply names no process).
 */
export async function readPidFile(path: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^\s*([0-9]+)\s*$/.exec(text);
  if (!m) return undefined;
  const pid = Number(m[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}
