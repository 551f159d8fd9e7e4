/**
 * A cluster of simulated hosts around the Controller, on one fake clock and the production
 * `KvControllerStore` over the etcd model (src/dev/etcd-model: revisions, txns and etcd's limits,
 * leases with etcd's minimum TTL that expire on the clock, raft terms in response headers, leases
 * refreshed on a leader change). Simulated hosts are lease holders with a record and an `alive` key, as the
 * agent's registration writes them, and they acknowledge holds (`holdSeen`) while they are live, as
 * the agent's hold protocol does.
 *
 * A controller's first raft-term observation counts as a term change (the history before it is
 * unknown), so a lease lost within one TTL of a controller's start gets `ttl + window`: tests about
 * other rules cut hosts only after {@link Sim.settleTerm}.
 */
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { DEFAULT_TIMINGS, type GcTimings } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { decideRegistration } from '../../src/domain/registration.js';
import type { VmSpec } from '../../src/domain/vm.js';
import { Controller, type ControllerOptions } from '../../src/controller/controller.js';
import type { LeaseId } from '../../src/ports/cluster-store.js';
import { FakeClock } from './fake-clock.js';
import { silentLogger } from './fake-ports.js';
import { bareSpec } from './host-harness.js';
import { ModelControllerStore, type ModelControllerStoreOptions } from './model-cluster.js';

/** The timings simulated hosts publish by default (ttl 6 s, fenceWindow 10 s). */
export const T = DEFAULT_TIMINGS;

/** A bare VM spec. */
export const spec = (name: string, vcpu = 1, memoryMb = 128): VmSpec => bareSpec(name, vcpu, memoryMb);

/** Lets pending microtasks and immediates run (watch deliveries, queued inputs). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

/** A cluster of simulated hosts on one fake clock. */
export class Sim {
  readonly clock = new FakeClock();
  readonly store: ModelControllerStore;
  /** Leases kept alive by {@link run}. */
  readonly live = new Map<string, LeaseId>();
  readonly controllers: Controller[] = [];
  /** Live hosts that do NOT acknowledge hold changes (an agent that has not polled its record yet). */
  readonly noAck = new Set<string>();
  private uid = 0;

  /** Every controller's log lines (`<level> <msg> <fields>`). */
  readonly logs: string[] = [];

  constructor(
    storeOptions: ModelControllerStoreOptions = {},
    makeStore: (clock: FakeClock, opts: ModelControllerStoreOptions) => ModelControllerStore = (clock, opts) => new ModelControllerStore(clock, '/tether/', opts),
  ) {
    this.store = makeStore(this.clock, storeOptions);
  }

  controller(opts: Partial<ControllerOptions> = {}): Controller {
    const c = new Controller(this.store, this.clock, silentLogger(this.logs), {
      controllerId: `c${this.controllers.length + 1}`,
      leaderTtl: 3000,
      newUid: () => `uid-${++this.uid}`,
      ...opts,
    });
    this.controllers.push(c);
    c.start();
    return c;
  }

  /** What the agent's registration does: CAS on the record, alive key on a fresh lease. */
  register(hostId: string, opts: { mode?: 'reattach' | 'ready'; epoch?: number; timings?: GcTimings; capacity?: HostRecord['capacity'] } = {}): void {
    const cur = this.store.getRaw<HostRecord>(`hosts/${hostId}/record`);
    const d = decideRegistration({ mode: opts.mode ?? 'reattach', epoch: opts.epoch ?? cur?.epoch ?? 0 }, cur);
    if (!d.ok) throw new Error(`registration refused: ${d.detail}`);
    const lease = this.store.grantLease((opts.timings ?? T).ttl);
    const record: HostRecord = {
      hostId,
      state: d.state,
      epoch: d.epoch,
      timings: opts.timings ?? cur?.timings ?? T,
      hold: cur?.hold ?? false,
      ...(cur?.holdSeen !== undefined ? { holdSeen: cur.holdSeen } : {}),
      capacity: opts.capacity ?? cur?.capacity ?? { vcpu: 4, memoryMb: 1024 },
      labels: {},
      agentVersion: 'test',
      updatedAt: this.clock.now(),
    };
    this.store.putRaw(`hosts/${hostId}/record`, record);
    this.store.putRaw(`hosts/${hostId}/alive`, { epoch: d.epoch, agentVersion: 'test' }, lease);
    this.live.set(hostId, lease);
  }

  /** Stops the host's keepalives: its lease expires a TTL after the last one. */
  cut(hostId: string): void {
    this.live.delete(hostId);
  }

  putVm(name: string, over: Partial<ClusterVmRecord>): void {
    this.store.putRaw(`vms/ns/${name}`, { uid: `orig-${name}`, spec: spec(name), phase: 'running', generation: 1, ...over });
  }

  record(hostId: string): HostRecord | undefined {
    return this.store.getRaw<HostRecord>(`hosts/${hostId}/record`);
  }

  vm(name: string): ClusterVmRecord | undefined {
    return this.store.getRaw<ClusterVmRecord>(`vms/ns/${name}`);
  }

  events(kind?: ClusterEvent['kind'], hostId?: string): ClusterEvent[] {
    return this.store.allEvents().filter((e) => (kind === undefined || e.kind === kind) && (hostId === undefined || ('hostId' in e && e.hostId === hostId)));
  }

  /** What a live agent's hold protocol does: writes `holdSeen = hold` on its record when they differ. */
  private ackHolds(): void {
    for (const hostId of this.live.keys()) {
      if (this.noAck.has(hostId)) continue;
      const r = this.record(hostId);
      if (!r || (r.state !== 'attached' && r.state !== 'ready') || (r.holdSeen ?? false) === r.hold) continue;
      this.store.putRaw(`hosts/${hostId}/record`, { ...r, holdSeen: r.hold });
    }
  }

  /** Runs past one TTL after the controllers' first raft-term observation (see the module doc). */
  async settleTerm(): Promise<void> {
    await this.run(T.ttl + 500, undefined, 500);
  }

  /** Advances `ms` in steps, renewing live leases every step, and calls `each` after every step. */
  async run(ms: number, each?: () => void, step = 100): Promise<void> {
    for (let t = 0; t < ms; t += step) {
      for (const l of this.live.values()) this.store.keepaliveLease(l);
      this.ackHolds();
      await this.clock.advance(step);
      await settle();
      each?.();
    }
  }

  /** Runs until `pred` holds (checked every step), failing after `maxMs`. Returns the clock's wall time then. */
  async until(pred: () => boolean, maxMs: number, step = 100): Promise<number> {
    for (let t = 0; t <= maxMs; t += step) {
      if (pred()) return this.clock.now();
      await this.run(step, undefined, step);
    }
    throw new Error(`condition not met within ${maxMs} ms`);
  }

  async stop(): Promise<void> {
    for (const c of this.controllers) await c.stop();
  }
}

