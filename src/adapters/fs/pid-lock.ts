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
 * Takes an exclusive pid lock at `path` (created with O_EXCL). A lock left by a dead process, or
 * by a live process whose command line does not carry `mark` (pid reused), is stale and taken over.
 * A live holder makes this fail with FAILED_PRECONDITION naming its pid.
 */
export function acquirePidLock(path: string, mark: string): HeldLock {
  mkdirSync(dirname(path), { recursive: true });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o644);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return {
        path,
        release: () => {
          try {
            if (Number(readFileSync(path, 'utf8').trim()) === process.pid) rmSync(path, { force: true });
          } catch {
            /* already gone */
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new TetherError('INTERNAL', `creating lock ${path}: ${String(err)}`, { cause: err });
      }
      const pid = Number(readFileSync(path, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && holderAlive(pid, mark)) {
        throw new TetherError('FAILED_PRECONDITION', `another tether agent (pid ${pid}) holds ${path}; stop it first or use another --state-dir`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new TetherError('INTERNAL', `could not take lock ${path}`);
}
