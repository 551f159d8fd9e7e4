/**
 * The guardian in the simulator: the agent's side ({@link SimGuardianFeed}, the `Guardian` port the
 * agent's HostGc feeds) and the guardian process itself ({@link SimGuardianProcess}), a sim process
 * of its own on the host's machine. They share only the machine's feed and fire "files", as the real
 * ones share `<stateDir>/guardian/feed.json` and `fired.json`; the guardian's decisions are the pure
 * rules of src/domain/guardian.ts (absorbFeed, guardianDecision), exactly as the real one uses them.
 *
 * Invariants (mirroring src/guardian/guardian.ts):
 * - the feed is re-read every `pollMs` and right at the held deadline; it fires only when the newest
 *   valid feed's deadline passed;
 * - a fire writes the fire record (state `killing`) before the first kill, kills every VM process
 *   of the host, then records `done`; while the deadline stays passed, VMs that appear are killed too;
 * - it runs on without the agent: an agent crash or hang does not touch it.
 */
import { absorbFeed, guardianDecision, validateFiredRecord, type GuardianFeedRecord, type GuardianFiredRecord } from '../../domain/guardian.js';
import type { Guardian } from '../../ports/guardian.js';
import type { ProcessClock } from './clock.js';
import { SimProcess, type Scheduler } from './scheduler.js';
import type { SimMachine } from './substrate.js';

/** The agent's `Guardian` port over the machine's feed. `start` launches a guardian process. */
export class SimGuardianFeed implements Guardian {
  private last: Pick<GuardianFeedRecord, 'deadlineMono' | 'epoch' | 'reason'> | undefined;

  constructor(
    private readonly machine: SimMachine,
    private readonly clock: ProcessClock,
    private readonly start: () => SimGuardianProcess,
    private readonly running: () => SimGuardianProcess | undefined,
  ) {}

  feed(deadlineMono: number | null, info: { epoch: number; reason: string }): void {
    const l = this.last;
    if (l && l.deadlineMono === deadlineMono && l.epoch === info.epoch && l.reason === info.reason) return;
    this.write({ deadlineMono, epoch: info.epoch, reason: info.reason });
  }

  shutdown(): void {
    this.write({ deadlineMono: this.last?.deadlineMono ?? null, epoch: this.last?.epoch ?? 0, reason: 'agent-shutdown' }, true);
  }

  private write(f: Pick<GuardianFeedRecord, 'deadlineMono' | 'epoch' | 'reason'>, shutdown = false): void {
    const m = this.machine;
    m.feedSeq = Math.max(m.feedSeq + 1, Math.floor(this.clock.nowMono() * 1000));
    const record: GuardianFeedRecord = { v: 1, hostId: m.hostId, bootId: m.bootId, seq: m.feedSeq, ...f, ...(shutdown ? { shutdown: true as const } : {}) };
    m.feedText = `${JSON.stringify(record)}\n`;
    this.last = shutdown ? undefined : f;
  }

  fired(): GuardianFiredRecord | undefined {
    const text = this.machine.firedText;
    if (text === undefined) return undefined;
    return validateFiredRecord(JSON.parse(text));
  }

  acknowledgeFired(): void {
    this.machine.firedText = undefined;
  }

  async ensureRunning(): Promise<{ started: boolean; pid: number }> {
    const g = this.running();
    if (g && g.proc.alive) return { started: false, pid: 1 };
    this.start();
    return { started: true, pid: 1 };
  }
}

/** The guardian process of one machine. */
export class SimGuardianProcess {
  private held: GuardianFeedRecord | undefined;
  private fire: GuardianFiredRecord | undefined;
  /** Number of fires (new deadlines passed), for the report. */
  fires = 0;

  constructor(
    readonly proc: SimProcess,
    private readonly machine: SimMachine,
    private readonly clock: ProcessClock,
    private readonly killTimeoutMs: number,
    private readonly pollMs = 200,
  ) {}

  /** Starts the loop (one turn now). */
  start(): void {
    this.clock.setTimer(0, () => this.turn());
  }

  private turn(): void {
    const m = this.machine;
    const r = absorbFeed(this.held, m.feedText, { hostId: m.hostId, bootId: m.bootId });
    if (r.outcome !== 'rejected' && r.outcome !== 'stale') this.held = r.held;
    const now = this.clock.nowMono();
    const d = guardianDecision(this.held, m.bootId, now);
    if (d.kind === 'fire') this.onFire(d.seq, d.deadlineMono, now);
    let next = now + this.pollMs;
    if (d.kind === 'wait') next = Math.min(next, d.until);
    this.clock.setTimer(Math.max(0, next - now), () => this.turn());
  }

  private onFire(seq: number, deadlineMono: number, now: number): void {
    const m = this.machine;
    const vms = [...m.vmm.procs.values()].filter((p) => p.hostId === m.hostId);
    if (this.fire?.seq === seq) {
      if (vms.length === 0) return;
      for (const p of vms) m.vmm.remove(p.uid, 'guardian');
      this.fire = { ...this.fire, killed: [...this.fire.killed, ...vms.map((p) => ({ pid: p.pid, uid: p.uid, goneAfterMs: 0 }))] };
      m.firedText = JSON.stringify(this.fire);
      return;
    }
    this.fires++;
    const feed = this.held!;
    const start: GuardianFiredRecord = {
      v: 1, hostId: m.hostId, bootId: m.bootId, seq, epoch: feed.epoch, reason: feed.reason, deadlineMono,
      firedAtMono: now, firedAt: this.clock.now(), state: 'killing', killed: [], survivors: [], leaks: [],
    };
    m.firedText = JSON.stringify(start);
    m.sched.trace.add(m.sched.now, `guardian fired ${m.hostId} seq ${seq} vms ${vms.length}`);
    for (const p of vms) m.vmm.remove(p.uid, 'guardian');
    this.fire = { ...start, state: 'done', killed: vms.map((p) => ({ pid: p.pid, uid: p.uid, goneAfterMs: 0 })), tookMs: 0 };
    m.firedText = JSON.stringify(this.fire);
    void this.killTimeoutMs;
  }
}

/** Starts a guardian process on `machine` (a new sim process named `<host>/guardian#n`). */
export function launchGuardian(sched: Scheduler, machine: SimMachine, n: number, killTimeoutMs: number): SimGuardianProcess {
  const proc = new SimProcess(`${machine.hostId}/guardian#${n}`, sched);
  const g = new SimGuardianProcess(proc, machine, machine.clock.forProcess(proc), killTimeoutMs);
  g.start();
  return g;
}
