import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findProcessesByMark, startOrphanReaper, type OrphanReaper } from '../../src/dev/child-guard.js';
import { killHostLeftovers, processesWith, qemusOf, tapsOf } from '../../src/dev/host-probe.js';
import { progress } from './progress.js';

/** Every bench host id starts with this (leak checks and `tether:bench-` marks look for it). */
export const HOST_ID_PREFIX = 'bench-';

/** A cleanup action; runs once, last registered first. */
interface Task {
  readonly name: string;
  readonly run: () => Promise<void>;
  done: boolean;
}

/** Bound of one cleanup action before the next one runs anyway. */
const TASK_TIMEOUT_MS = 30_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Everything the bench creates on this machine — host ids (their agents, QEMU processes, taps),
 * temp folders, etcd clusters (by mark) — and how to remove it.
 *
 * Invariants:
 *  - every host id starts with {@link HOST_ID_PREFIX} and is unique to this run;
 *  - {@link cleanup} runs every registered action (last first), then SIGKILLs any QEMU of our host
 *    ids, deletes their taps and removes every temp folder; it is idempotent and safe to call from a
 *    signal handler while a scenario is still running;
 *  - if this process dies without running it (SIGKILL), an orphan reaper per host id SIGKILLs every
 *    process whose command line carries the host id (agents and QEMUs); taps and folders then stay
 *    and the next leak check names them;
 *  - {@link leaks} looks at the real system (/proc, `ip link`, the file system), not at our records.
 */
export class BenchResources {
  private readonly tasks: Task[] = [];
  private readonly hostIds = new Set<string>();
  private readonly dirs = new Set<string>();
  private readonly marks = new Set<string>();
  private readonly reapers: OrphanReaper[] = [];
  private cleaning: Promise<void> | undefined;

  constructor(
    /** Where agent logs of failed runs are kept (outside the temp folders, which are removed). */
    private readonly logDir: string,
    /** File name prefix of kept logs (the run's start time). */
    private readonly stamp: string,
  ) {}

  /** Copies a log to `<logDir>/<stamp>-<name>.log` (it would go with its temp folder); returns the copy's path. */
  keepLog(path: string, name: string): string | undefined {
    try {
      mkdirSync(this.logDir, { recursive: true });
      const dest = join(this.logDir, `${this.stamp}-${name}.log`);
      copyFileSync(path, dest);
      return dest;
    } catch {
      return undefined;
    }
  }

  /** A fresh host id `bench-<tag>-<6 hex>`, watched by an orphan reaper and the leak check. */
  newHostId(tag: string): string {
    const id = `${HOST_ID_PREFIX}${tag}-${randomBytes(3).toString('hex')}`;
    this.hostIds.add(id);
    this.reapers.push(startOrphanReaper(id));
    return id;
  }

  /** A fresh folder `$TMPDIR/tether-bench-<tag>-*`, removed by {@link cleanup}. */
  tempDir(tag: string): string {
    const dir = mkdtempSync(join(tmpdir(), `tether-bench-${tag}-`));
    this.dirs.add(dir);
    return dir;
  }

  /** Watches processes carrying `mark` (an etcd cluster's `tether:<clusterId>`) in the leak check. */
  watchMark(mark: string): void {
    this.marks.add(mark);
  }

  /**
   * Registers a cleanup action. Returns a function that runs it now (once) — for the normal end of
   * a scenario — so that {@link cleanup} does not run it again.
   */
  onCleanup(name: string, run: () => Promise<void>): () => Promise<void> {
    const task: Task = { name, run, done: false };
    this.tasks.push(task);
    return async () => {
      if (task.done) return;
      task.done = true;
      await run();
    };
  }

  /** Runs every pending action, then the last-resort sweep of our host ids and folders. Idempotent. */
  cleanup(): Promise<void> {
    this.cleaning ??= this.doCleanup();
    return this.cleaning;
  }

  private async doCleanup(): Promise<void> {
    for (const task of [...this.tasks].reverse()) {
      if (task.done) continue;
      task.done = true;
      try {
        await withTimeout(task.run(), TASK_TIMEOUT_MS, task.name);
      } catch (err) {
        progress(`cleanup: ${task.name} failed: ${(err as Error).message}`);
      }
    }
    for (const id of this.hostIds) {
      const left = qemusOf(id).size + tapsOf(id).length;
      if (left > 0) progress(`cleanup: ${id}: killing ${qemusOf(id).size} QEMU process(es), deleting ${tapsOf(id).length} tap(s)`);
      try {
        killHostLeftovers(id);
      } catch (err) {
        progress(`cleanup: ${id}: ${(err as Error).message}`);
      }
    }
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true });
  }

  /**
   * What of ours is still on the system: processes carrying one of our host ids or etcd marks,
   * taps marked with one of our host ids, temp folders. Empty when clean.
   */
  leaks(): string[] {
    const out: string[] = [];
    for (const id of this.hostIds) {
      for (const [pid, argv] of processesWith(id)) {
        if (pid !== process.pid) out.push(`process ${pid} (${argv.slice(0, 3).join(' ')} ...) carries ${id}`);
      }
      for (const tap of tapsOf(id)) out.push(`tap ${tap} marked tether:${id}`);
    }
    for (const mark of this.marks) for (const pid of findProcessesByMark(mark)) out.push(`process ${pid} carries ${mark}`);
    for (const dir of this.dirs) if (existsSync(dir)) out.push(`folder ${dir}`);
    return out;
  }

  /** Ends the orphan reapers (after the leak check: their last scan must not hide a leak). */
  releaseReapers(): void {
    for (const r of this.reapers) r.release();
  }

  /** The host ids handed out in this run. */
  get ids(): string[] {
    return [...this.hostIds];
  }
}
