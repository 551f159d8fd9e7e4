import { spawn } from 'node:child_process';
import { openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './agent-process.js';

/**
 * How the dev cluster's supervisor reads the signals it gets (one terminal, several senders).
 *
 * - The first SIGINT, SIGTERM or SIGHUP starts the graceful cleanup.
 * - A later SIGINT or SIGTERM forces it (the user pressed Ctrl-C twice, or `kill` twice) — except a
 *   copy of the first signal within {@link NPM_DUPLICATE_MS} when the parent is npm/npx: they forward
 *   SIGINT/SIGTERM to their child, which already got the terminal's own, so one press arrives twice.
 * - A later SIGHUP never forces: a closing terminal sends it from several places at once (the kernel
 *   to the foreground group, the shell to its jobs).
 * - Once forced, every signal is ignored (the forced cleanup is already running).
 */
export type SignalAction = 'start' | 'force' | 'duplicate' | 'ignore';

/** Window in which a repeat of the first signal from an npm parent counts as npm's forwarded copy. */
export const NPM_DUPLICATE_MS = 1000;

/** The signals the supervisor handles. */
export const SUPERVISOR_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** One of {@link SUPERVISOR_SIGNALS}. */
export type SupervisorSignal = (typeof SUPERVISOR_SIGNALS)[number];

/** The signal policy above, as a small state machine (times in ms, any monotonic origin). */
export class SignalPolicy {
  private first: { signal: SupervisorSignal; at: number } | undefined;
  private forced = false;

  constructor(private readonly parentIsNpm: boolean) {}

  /** What to do with `signal` received at `at`. */
  next(signal: SupervisorSignal, at: number): SignalAction {
    if (this.forced) return 'ignore';
    if (!this.first) {
      this.first = { signal, at };
      return 'start';
    }
    if (signal === 'SIGHUP') return 'ignore';
    if (this.parentIsNpm && signal === this.first.signal && at - this.first.at < NPM_DUPLICATE_MS) return 'duplicate';
    this.forced = true;
    return 'force';
  }
}

/** True when this process's parent is an npm client (`npm run`, `npx`, `npm exec`). */
export function parentIsNpm(): boolean {
  try {
    const argv = readFileSync(`/proc/${process.ppid}/cmdline`, 'utf8').split('\0');
    return argv.slice(0, 3).some((a) => /(^|\/)(npm|npx)(-cli\.js)?$/.test(a));
  } catch {
    return false;
  }
}

/**
 * A line printer that survives its reader going away: when stdout breaks (EPIPE: the `tee` it was
 * piped into died of the same Ctrl-C; EIO: the terminal closed) it switches to the controlling
 * terminal (`/dev/tty`) if there is one, else drops lines. The cleanup never dies of a write.
 */
export function resilientOutput(): (line: string) => void {
  let fd: number | undefined = 1;
  let triedTty = false;
  for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  return (line: string) => {
    let text = Buffer.from(`${line}\n`);
    for (let again = 0; ; ) {
      if (fd === undefined) return;
      try {
        const n = writeSync(fd, text);
        if (n >= text.length) return;
        text = text.subarray(n);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' && again++ < 400) {
          Atomics.wait(pause, 0, 0, 5); // a full non-blocking pipe: the reader is slow, not gone
          continue;
        }
        if (code === 'EAGAIN') return;
        fd = undefined;
        if (!triedTty) {
          triedTty = true;
          try {
            fd = openSync('/dev/tty', 'w');
          } catch {
            fd = undefined;
          }
        }
      }
    }
  };
}

/** Handle of the supervisor's death watch. */
export interface DeathWatch {
  /**
   * The supervisor cleaned up itself: the watch exits without doing anything. Resolves once the
   * word is written (at most 1 s), so a `process.exit` right after cannot lose it.
   */
  release(): Promise<void>;
}

/**
 * Starts a tiny detached shell that runs `tether dev down --state-dir <stateDir>` if this process
 * dies without calling {@link DeathWatch.release} (SIGKILL, OOM kill, a crash): its stdin is a pipe
 * from this process, and the kernel closes the pipe whatever way this process ends. Nothing is in
 * its argv but the script (the state dir travels in its environment), so scans never mistake it
 * for a dev process. Its output goes where this process's output goes.
 */
export function startDeathWatch(stateDir: string): DeathWatch {
  const script = 'read -r line; [ "$line" = done ] && exit 0; exec "$TETHER_NODE" "$TETHER_BIN" dev down --state-dir "$TETHER_DEV_DOWN_DIR" --from-watch';
  const child = spawn('sh', ['-c', script], {
    stdio: ['pipe', 'inherit', 'inherit'],
    detached: true,
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', TETHER_NODE: process.execPath, TETHER_BIN: join(repoRoot(), 'bin/tether.js'), TETHER_DEV_DOWN_DIR: stateDir },
  });
  child.on('error', () => undefined);
  child.stdin?.on('error', () => undefined);
  child.unref();
  (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  let released = false;
  return {
    release(): Promise<void> {
      if (released || !child.stdin) return Promise.resolve();
      released = true;
      const stdin = child.stdin;
      return new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000);
        stdin.end('done\n', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
