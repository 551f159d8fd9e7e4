import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import type { SdNotifier } from '../adapters/systemd/sd-notify.js';
import { messageOf } from '../domain/errors.js';
import {
  GUARDIAN_FEED_MAX_BYTES,
  absorbFeed,
  guardianDecision,
  guardianFiles,
  guardianMayExit,
  type GuardianDecision,
  type GuardianFeedRecord,
  type GuardianFiles,
  type GuardianFiredRecord,
} from '../domain/guardian.js';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type { GuardianLock } from './guardian-lock.js';
import type { Journal, JournalEvent } from './journal.js';
import type { VmKiller } from './vm-killer.js';
import type { WatchdogDevice } from './watchdog-device.js';

/** Everything the guardian loop needs, passed in (composed by run-guardian.ts). */
export interface GuardianOptions {
  /** The agent's state dir (resolved). */
  readonly stateDir: string;
  readonly hostId: string;
  /** This boot's id: feeds of another boot are refused. */
  readonly bootId: string;
  /** Verification budget after the fire: every VM must be gone within it. */
  readonly killTimeoutMs: number;
  /** How often the feed is re-read while nothing is due (default 200). */
  readonly pollMs: number;
  readonly clock: Clock;
  readonly killer: VmKiller;
  readonly journal: Journal;
  readonly lock: GuardianLock;
  /** Optional watchdog device, petted every `petIntervalMs` while the deadline holds. */
  readonly watchdog?: WatchdogDevice;
  readonly petIntervalMs?: number;
  /** Optional systemd notifier: READY=1 once, WATCHDOG=1 every `notifyIntervalMs`. */
  readonly notifier?: SdNotifier;
  readonly notifyIntervalMs?: number;
  /** Human log (stderr, i.e. guardian.log). */
  readonly log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

/** Why the guardian loop ended. */
export type GuardianExit = 'shutdown' | 'state-dir-gone' | 'lock-lost' | 'signal';

const JOURNALED: Partial<Record<string, JournalEvent>> = {
  armed: 'armed',
  're-armed': 're-armed',
  renewed: 'renewed',
  suspended: 'suspended',
  shutdown: 'shutdown-fed',
};

/**
 * The guardian's one loop (one owner of its state): read the feed, decide, act, sleep.
 *
 * Invariants:
 * - the feed is re-read every `pollMs` and again right at the held deadline, before deciding:
 *   it fires only when the newest valid feed's deadline has passed;
 * - a fire writes `fired.json` (state `killing`) BEFORE the first signal, then kills every
 *   verified VM of the host and verifies each gone within `killTimeoutMs`, then rewrites
 *   `fired.json` with what it killed and how long it took;
 * - while the deadline stays passed, any VM of the host that shows up is killed too, and
 *   `fired.json` rewritten with it; a pass that killed nothing never rewrites it (an acknowledged,
 *   i.e. deleted, record stays deleted until a VM is actually killed again);
 * - the watchdog device is petted only while the decision is idle, suspended or wait;
 * - it exits only on a shutdown feed with no VM of the host left, when its state dir is gone,
 *   when another guardian holds its lock, or on SIGTERM/SIGINT.
 */
export class Guardian {
  private readonly files: GuardianFiles;
  private held: GuardianFeedRecord | undefined;
  private fire: GuardianFiredRecord | undefined;
  private lastProblem = '';
  private lastPet = -Infinity;
  private lastNotify = -Infinity;
  private ready = false;
  private stopRequested = false;
  private wake: (() => void) | undefined;
  private timer: TimerHandle | undefined;

  constructor(private readonly o: GuardianOptions) {
    this.files = guardianFiles(o.stateDir);
  }

  /** The feed held now (for tests and logs). */
  get heldFeed(): GuardianFeedRecord | undefined {
    return this.held;
  }

  /** Ends the loop at its next turn (wakes it if sleeping). */
  stop(): void {
    this.stopRequested = true;
    this.wake?.();
  }

  /** Runs until one of the {@link GuardianExit} reasons. */
  async run(): Promise<GuardianExit> {
    const { clock } = this.o;
    for (;;) {
      if (this.stopRequested) return 'signal';
      if (!existsSync(this.o.stateDir)) return 'state-dir-gone';
      if (!this.o.lock.stillOurs()) return 'lock-lost';
      this.readFeed();
      const d = guardianDecision(this.held, this.o.bootId, clock.nowMono());
      if (d.kind === 'fire') await this.onFire(d);
      else this.pet();
      if (this.held?.shutdown && guardianMayExit(this.held, (await this.o.killer.owned()).length)) return 'shutdown';
      this.notify(d);
      await this.sleep(this.nextWake(d));
    }
  }

  private readFeed(): void {
    let text: string | undefined;
    try {
      // Never read a huge file whole: its size alone makes it malformed.
      if (statSync(this.files.feed).size > GUARDIAN_FEED_MAX_BYTES) text = ' '.repeat(GUARDIAN_FEED_MAX_BYTES + 1);
      else text = readFileSync(this.files.feed, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.problem('feed-rejected', `cannot read the feed: ${messageOf(err)}`, { field: 'feed' });
      text = undefined;
    }
    const r = absorbFeed(this.held, text, { hostId: this.o.hostId, bootId: this.o.bootId });
    if (r.outcome === 'rejected') {
      this.problem('feed-rejected', r.error?.message ?? 'rejected', { field: r.error?.field, keeps: this.held?.deadlineMono ?? null, keepsSeq: this.held?.seq });
      return;
    }
    if (r.outcome === 'stale') {
      this.problem('feed-stale', `the feed file has an older seq than the held ${this.held?.seq}`, { keepsSeq: this.held?.seq });
      return;
    }
    const event = JOURNALED[r.outcome];
    this.held = r.held;
    if (event && this.held) {
      this.lastProblem = '';
      const now = this.o.clock.nowMono();
      const f = this.held;
      this.o.journal.write(event, {
        seq: f.seq,
        deadlineMono: f.deadlineMono,
        inMs: f.deadlineMono === null ? null : Math.round(f.deadlineMono - now),
        epoch: f.epoch,
        reason: f.reason,
        ...(this.fire && this.fire.seq !== f.seq ? { afterFire: this.fire.seq } : {}),
      });
    }
  }

  /** Journals a feed problem once (until it changes), keeping the held feed. */
  private problem(event: JournalEvent, message: string, fields: Record<string, unknown>): void {
    if (message === this.lastProblem) return;
    this.lastProblem = message;
    this.o.journal.write(event, { why: message, ...fields });
    this.o.log('warn', `feed ignored: ${message}`, fields);
  }

  private async onFire(d: Extract<GuardianDecision, { kind: 'fire' }>): Promise<void> {
    const { clock, killer, killTimeoutMs } = this.o;
    const feed = this.held!;
    if (this.fire?.seq === d.seq) {
      // Still past the deadline: a VM of this host that appeared since is killed as well.
      if ((await killer.owned()).length === 0) return;
      const t0 = clock.nowMono();
      this.o.journal.write('fired', { seq: d.seq, again: true, lateMs: Math.round(d.lateMs) });
      const pass = await killer.killAll(t0, killTimeoutMs);
      // A pass whose processes were all gone before their kill (a straggler exiting) changed nothing:
      // rewriting fired.json would revive a record the agent may have acknowledged (deleted) already.
      const killedAny = pass.killed.length > 0;
      if (killedAny) {
        this.fire = {
          ...this.fire,
          state: pass.survivors.length > 0 ? 'incomplete' : this.fire.state,
          killed: [...this.fire.killed, ...pass.killed],
          survivors: [...this.fire.survivors, ...pass.survivors],
          leaks: pass.leaks,
        };
        this.writeFired(this.fire);
      }
      this.o.journal.write('verify', { gone: pass.killed.length - pass.survivors.length, survivors: pass.survivors, tookMs: Math.round(clock.nowMono() - t0), ...(killedAny ? {} : { nothingKilled: true }) });
      return;
    }
    const t0 = clock.nowMono();
    const start: GuardianFiredRecord = {
      v: 1,
      hostId: this.o.hostId,
      bootId: this.o.bootId,
      seq: d.seq,
      epoch: feed.epoch,
      reason: feed.reason,
      deadlineMono: d.deadlineMono,
      firedAtMono: t0,
      firedAt: clock.now(),
      state: 'killing',
      killed: [],
      survivors: [],
      leaks: [],
    };
    this.fire = start;
    this.writeFired(start);
    this.o.journal.write('fired', { seq: d.seq, deadlineMono: d.deadlineMono, lateMs: Math.round(d.lateMs * 10) / 10, epoch: feed.epoch, reason: feed.reason });
    this.o.log('warn', 'deadline passed with no newer feed: killing every VM of this host', { seq: d.seq, lateMs: Math.round(d.lateMs) });
    const pass = await killer.killAll(t0, killTimeoutMs);
    const tookMs = Math.round((clock.nowMono() - t0) * 10) / 10;
    this.fire = { ...start, state: pass.survivors.length > 0 ? 'incomplete' : 'done', killed: pass.killed, survivors: pass.survivors, leaks: pass.leaks, tookMs };
    this.writeFired(this.fire);
    this.o.journal.write('verify', { gone: pass.killed.length - pass.survivors.length, survivors: pass.survivors, leaks: pass.leaks.length, tookMs });
    if (pass.survivors.length > 0) this.o.log('error', 'VM processes survived SIGKILL past killTimeout', { survivors: pass.survivors });
    else this.o.log('warn', 'every VM of this host is gone', { killed: pass.killed.length, tookMs });
  }

  /** fired.json, replaced atomically (temp file + rename), mode 0600. */
  private writeFired(record: GuardianFiredRecord): void {
    const tmp = `${this.files.fired}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, `${JSON.stringify(record)}\n`, { mode: 0o600 });
      renameSync(tmp, this.files.fired);
    } catch (err) {
      this.o.journal.write('error', { what: 'writing fired.json', err: messageOf(err) });
    }
  }

  private pet(): void {
    const w = this.o.watchdog;
    if (!w) return;
    const now = this.o.clock.nowMono();
    if (now - this.lastPet < (this.o.petIntervalMs ?? 1000)) return;
    if (w.pet()) this.lastPet = now;
    else this.problem('watchdog', `cannot pet ${w.path}`, {});
  }

  private notify(d: GuardianDecision): void {
    const n = this.o.notifier;
    if (!n) return;
    if (!this.ready) {
      this.ready = true;
      n.ready(statusText(d));
    }
    const every = this.o.notifyIntervalMs;
    const now = this.o.clock.nowMono();
    if (every !== undefined && now - this.lastNotify >= every) {
      n.watchdog();
      this.lastNotify = now;
    }
  }

  /** Monotonic ms of the next loop turn: the poll period, the deadline, the next pet or notify. */
  private nextWake(d: GuardianDecision): number {
    const now = this.o.clock.nowMono();
    let at = now + this.o.pollMs;
    if (d.kind === 'wait') at = Math.min(at, d.until);
    if (this.o.watchdog && d.kind !== 'fire') at = Math.min(at, this.lastPet + (this.o.petIntervalMs ?? 1000));
    if (this.o.notifier && this.o.notifyIntervalMs !== undefined) at = Math.min(at, this.lastNotify + this.o.notifyIntervalMs);
    return Math.max(now, at);
  }

  private sleep(untilMono: number): Promise<void> {
    const ms = untilMono - this.o.clock.nowMono();
    if (ms <= 0 || this.stopRequested) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = () => {
        if (this.timer !== undefined) this.o.clock.clearTimer(this.timer);
        this.wake = undefined;
        resolve();
      };
      this.timer = this.o.clock.setTimer(ms, () => this.wake?.());
    });
  }
}

function statusText(d: GuardianDecision): string {
  switch (d.kind) {
    case 'idle':
      return 'no deadline fed yet';
    case 'suspended':
      return 'suspended (acknowledged hold)';
    case 'wait':
      return 'deadline armed';
    case 'fire':
      return 'deadline passed: VMs killed';
  }
}
