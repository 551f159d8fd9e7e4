import { openSync, readFileSync, rmSync, writeSync, closeSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { TetherError } from '../../domain/errors.js';

/** A held lock; `release()` removes the lock file if it is still ours. */
export interface HeldLock {
  readonly path: string;
  release(): void;
}

function holderAlive(pid: number, mark: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return argv.includes(mark);
  } catch {
    return false;
  }
}

/**
 * Takes an exclusive pid lock at `path` (created with O_EXCL, mode 0600; a missing folder is made 0700). A lock left by a dead process, or
 * by a live process whose command line does not carry `mark` (pid reused), is stale and taken over.
 * A live holder makes this fail with FAILED_PRECONDITION naming its pid and the `about` text it
 * wrote (second line of the file), after `what` (default: another tether agent holds the lock).
 */
export function acquirePidLock(path: string, mark: string, about?: { what?: string; info?: string }): HeldLock {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n${about?.info ?? ''}\n`);
      closeSync(fd);
      return {
        path,
        release: () => {
          try {
            if (Number(readFileSync(path, 'utf8').split('\n')[0]?.trim()) === process.pid) rmSync(path, { force: true });
          } catch {
            /* already gone */
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new TetherError('INTERNAL', `creating lock ${path}: ${String(err)}`, { cause: err });
      }
      const [first, info] = readFileSync(path, 'utf8').split('\n');
      const pid = Number(first?.trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && holderAlive(pid, mark)) {
        const what = about?.what ?? 'another tether agent holds it; stop it first or use another --state-dir';
        throw new TetherError('FAILED_PRECONDITION', `${path} is held by pid ${pid}${info ? ` (${info})` : ''}: ${what}`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new TetherError('INTERNAL', `could not take lock ${path}`);
}
