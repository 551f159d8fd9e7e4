import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { guardianFiles } from '../domain/guardian.js';

/**
 * Finding the guardian of a state dir: `<stateDir>/guardian/guardian.pid` names it, and its
 * command line must be `… tether.js guardian … --state-dir <that dir> …`.
 *
 * Invariant: a pid counts as the running guardian of a state dir only while `/proc/<pid>/cmdline`
 * shows both the `guardian` command and that state dir; a stale pid file or a reused pid does not.
 */

/** What `pgrep -f` / scripts/check-leaks.sh look for: every guardian's command line contains it. */
export const GUARDIAN_CMDLINE_MARK = 'tether.js guardian';

/** The `--state-dir` value of a guardian argv (either `--state-dir X` or `--state-dir=X`). */
export function stateDirArg(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--state-dir') return argv[i + 1];
    if (a.startsWith('--state-dir=')) return a.slice('--state-dir='.length);
  }
  return undefined;
}

/**
 * True when argv (from /proc/<pid>/cmdline) is a `tether guardian` (run as `node …/tether.js
 * guardian` or through an npm `tether` bin link) and, when `stateDir` is given, serves that dir.
 */
export function isGuardianArgv(argv: readonly string[], stateDir?: string): boolean {
  const i = argv.indexOf('guardian');
  if (i < 1) return false;
  const bin = basename(argv[i - 1]!);
  if (bin !== 'tether.js' && bin !== 'tether') return false;
  if (stateDir === undefined) return true;
  const arg = stateDirArg(argv.slice(i + 1));
  return arg !== undefined && resolve(arg) === resolve(stateDir);
}

function argvOf(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (raw === '') return undefined;
    return raw.split('\0').filter((s, idx, all) => !(s === '' && idx === all.length - 1));
  } catch {
    return undefined;
  }
}

/** The pid the lock file names (first line), or undefined. */
export function lockedPid(stateDir: string): number | undefined {
  try {
    const n = Number(readFileSync(guardianFiles(resolve(stateDir)).pid, 'utf8').split('\n')[0]?.trim());
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** The pid of the guardian running for `stateDir`, verified by its command line; undefined when none. */
export function runningGuardian(stateDir: string): number | undefined {
  const pid = lockedPid(stateDir);
  if (pid === undefined) return undefined;
  const argv = argvOf(pid);
  return argv !== undefined && isGuardianArgv(argv, stateDir) ? pid : undefined;
}

/** A held guardian lock. */
export interface GuardianLock {
  /** False once the lock file no longer names this process (another guardian took it, or it was removed). */
  stillOurs(): boolean;
  /** Removes the lock file if it still names this process. */
  release(): void;
}

/**
 * Takes `<stateDir>/guardian/guardian.pid` for this process. Returns `{ heldBy }` when another live
 * guardian of the same dir holds it; a stale file (dead pid, or a pid that is no guardian of this
 * dir) is replaced. Two guardians racing over a stale file may both believe they won: each checks
 * {@link GuardianLock.stillOurs} on every loop turn and the loser exits.
 */
export function acquireGuardianLock(stateDir: string): GuardianLock | { heldBy: number } {
  const path = guardianFiles(resolve(stateDir)).pid;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return {
        stillOurs: () => {
          const holder = lockedPid(stateDir);
          if (holder === process.pid) return true;
          if (holder !== undefined) return false;
          // Removed under us (not taken): write it back.
          try {
            writeFileSync(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
          } catch {
            /* a racer wrote it: decided below */
          }
          return lockedPid(stateDir) === process.pid;
        },
        release: () => {
          if (lockedPid(stateDir) === process.pid) rmSync(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = runningGuardian(stateDir);
      if (holder !== undefined && holder !== process.pid) return { heldBy: holder };
      rmSync(path, { force: true });
    }
  }
  throw new Error(`could not take the guardian lock ${path}`);
}
