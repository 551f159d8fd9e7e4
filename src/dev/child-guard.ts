import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';

/**
 * Keeps dev/test child processes (etcd members) from outliving the Node process that started them.
 *
 * Two layers, because neither alone covers every way a test process ends:
 *  1. {@link killOnExit}: a process `'exit'` hook that SIGKILLs every registered pid synchronously
 *     (then deletes folders registered with {@link removeOnExit}). Covers normal exit,
 *     `process.exit()`, uncaught exceptions. It cannot run on SIGKILL or on a
 *     fatal signal without a handler (a vitest worker killed from outside).
 *  2. {@link startOrphanReaper}: a tiny detached `sh` whose stdin is a pipe from this process. When
 *     this process dies for any reason the kernel closes the pipe, `cat` sees EOF, and the script
 *     SIGKILLs every process whose command line contains `mark`. The mark travels in the environment,
 *     never in argv, so the reaper never matches itself.
 */

const exitPids = new Set<number>();
const exitPaths = new Set<string>();
let exitHookInstalled = false;

function cleanupSync(): void {
  for (const pid of exitPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  exitPids.clear();
  for (const path of exitPaths) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch {
      // best effort: the process is exiting
    }
  }
  exitPaths.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  process.on('exit', cleanupSync);
  exitHookInstalled = true;
}

/**
 * Registers `pid` to be SIGKILLed synchronously when this process emits `'exit'`.
 * Invariant: call {@link forgetOnExit} as soon as the child has exited, so a recycled pid is never hit.
 */
export function killOnExit(pid: number): void {
  installExitHook();
  exitPids.add(pid);
}

/** Removes `pid` from the exit hook (the child has exited). */
export function forgetOnExit(pid: number): void {
  exitPids.delete(pid);
}

/**
 * Registers a folder to delete (recursively) on `'exit'`, after the registered pids are killed.
 * Undo with {@link keepOnExit} once the owner has cleaned up (or wants to keep it).
 */
export function removeOnExit(path: string): void {
  installExitHook();
  exitPaths.add(path);
}

/** Removes `path` from the exit hook. */
export function keepOnExit(path: string): void {
  exitPaths.delete(path);
}

const REAPER_SCRIPT = [
  'cat >/dev/null',
  // The mark reaches grep on stdin (-f -), so no argv in the scan contains it.
  'printf "%s\\n" "$TETHER_REAP_MARK" | grep -laF -f - /proc/[0-9]*/cmdline 2>/dev/null | while read -r f; do',
  '  p=${f#/proc/}; p=${p%/cmdline}; kill -9 "$p" 2>/dev/null',
  'done',
].join('\n');

/** Handle of a running orphan reaper. */
export interface OrphanReaper {
  /**
   * Ends the reaper after a normal shutdown: closes its pipe, so it does one last scan (which finds
   * nothing once the caller has stopped its children) and exits. Idempotent.
   */
  release(): void;
}

/**
 * Starts the orphan reaper for processes whose command line contains `mark`.
 *
 * Invariants: `mark` must be specific to one owner (e.g. `tether:test-1a2b3c4d`) and at least 8
 * characters, since anything containing it is SIGKILLed when this process dies. The reaper is
 * detached and unref'd: it never keeps this process's event loop alive.
 */
export function startOrphanReaper(mark: string): OrphanReaper {
  if (mark.length < 8) throw new Error(`orphan reaper mark too short: ${JSON.stringify(mark)}`);
  const child: ChildProcess = spawn('sh', ['-c', REAPER_SCRIPT], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', TETHER_REAP_MARK: mark },
  });
  child.on('error', () => undefined);
  const stdin = child.stdin;
  stdin?.on('error', () => undefined);
  child.unref();
  (stdin as unknown as { unref?: () => void } | null)?.unref?.();
  let released = false;
  return {
    release(): void {
      if (released) return;
      released = true;
      stdin?.end();
    },
  };
}

/**
 * Pids of the processes whose command line contains `mark` (read from `/proc/<pid>/cmdline`, NUL
 * separators turned into spaces). This process is never included. For leak assertions in tests.
 */
export function findProcessesByMark(mark: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`).toString('utf8').replaceAll('\0', ' ').includes(mark)) pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}
