import type { VmOwnership, OwnedVm } from '../adapters/qemu/process-owner.js';
import { readArgv } from '../adapters/qemu/proc-fs.js';
import { cgroupPids } from '../adapters/qemu/vm-cgroup.js';
import { messageOf } from '../domain/errors.js';
import type { GuardianKill } from '../domain/guardian.js';
import type { Clock } from '../ports/clock.js';
import type { Journal } from './journal.js';

/** What one kill pass did. */
export interface KillPass {
  /** Verified VMs that were sent SIGKILL, with how long each took to be gone (undefined: survivor). */
  readonly killed: GuardianKill[];
  readonly survivors: GuardianKill[];
  /** Processes in the host cgroup that no verified pid file names: reported, never signalled. */
  readonly leaks: { pid: number; why: string }[];
}

/** Pid-file reasons that only mean "this VM is not running", not worth a journal line. */
const QUIET = /^(no readable pid|pid \d+ is not running|pid file folder .* does not exist)/;

/**
 * Kills this host's VMs for the guardian.
 *
 * Invariants: a process is signalled only right after it passed every check of
 * process-owner.ts in the same async step (pid file under the state dir naming it, owner mark,
 * QEMU executable); processes found only through the host cgroup are journaled as leaks and never
 * signalled; "gone" is judged by (pid, start time), polled until `killTimeoutMs` after the fire.
 */
export class VmKiller {
  constructor(
    private readonly owner: VmOwnership,
    private readonly cgroupDir: string | undefined,
    private readonly clock: Clock,
    private readonly journal: Journal,
  ) {}

  /** Verified VM processes of this host now. */
  async owned(): Promise<OwnedVm[]> {
    return this.owner.listOwned();
  }

  /**
   * Verifies and SIGKILLs every VM of the host (each right after its own check), then waits until
   * each is gone or `firedAt + killTimeoutMs` passes. Never throws.
   */
  async killAll(firedAt: number, killTimeoutMs: number): Promise<KillPass> {
    const signalled: OwnedVm[] = [];
    let files: string[] = [];
    try {
      files = await this.owner.pidFiles();
    } catch (err) {
      this.journal.write('error', { what: 'listing pid files', err: messageOf(err) });
    }
    await Promise.all(
      files.map(async (file) => {
        try {
          const v = await this.owner.verify(file);
          if (!v.owned) {
            if (!QUIET.test(v.reason)) this.journal.write('kill-skipped', { pidFile: file, why: v.reason });
            return;
          }
          try {
            process.kill(v.vm.pid, 'SIGKILL');
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'ESRCH') return;
            throw err;
          }
          signalled.push(v.vm);
          this.journal.write('killed', { pid: v.vm.pid, uid: v.vm.uid, stateDir: v.vm.stateDir, afterFireMs: round(this.clock.nowMono() - firedAt) });
        } catch (err) {
          this.journal.write('error', { what: 'killing', pidFile: file, err: messageOf(err) });
        }
      }),
    );
    const leaks = await this.leaks(new Set(signalled.map((v) => v.pid)));
    const goneAfter = new Map<number, number>();
    const deadline = firedAt + killTimeoutMs;
    for (;;) {
      await Promise.all(
        signalled.filter((v) => !goneAfter.has(v.pid)).map(async (v) => {
          if (!(await this.owner.stillAlive(v))) goneAfter.set(v.pid, round(this.clock.nowMono() - firedAt));
        }),
      );
      if (goneAfter.size === signalled.length || this.clock.nowMono() >= deadline) break;
      await this.clock.sleep(Math.min(5, Math.max(0, deadline - this.clock.nowMono())));
    }
    const killed = signalled.map((v) => ({ pid: v.pid, uid: v.uid, ...(goneAfter.has(v.pid) ? { goneAfterMs: goneAfter.get(v.pid)! } : {}) }));
    const survivors = signalled.filter((v) => !goneAfter.has(v.pid)).map((v) => ({ pid: v.pid, uid: v.uid }));
    return { killed, survivors, leaks };
  }

  /** Processes of the host cgroup that are not among `verified`: journaled, never signalled. */
  private async leaks(verified: Set<number>): Promise<{ pid: number; why: string }[]> {
    if (this.cgroupDir === undefined) return [];
    const out: { pid: number; why: string }[] = [];
    for (const pid of await cgroupPids(this.cgroupDir)) {
      if (verified.has(pid)) continue;
      const argv = await readArgv(pid);
      if (argv === undefined) continue; // exited meanwhile
      const why = `in ${this.cgroupDir} but no pid file under ${this.owner.stateRoot}/vm names it (${argv[0] ?? '?'})`;
      out.push({ pid, why });
      this.journal.write('leak', { pid, argv0: argv[0], why: 'in the host cgroup, fails the ownership check: not signalled' });
    }
    return out;
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
