/**
 * The production stores (`KvControllerStore`, `KvClusterStore`, src/adapters/kv) over the etcd model
 * (src/dev/etcd-model), with the test hooks the unit tests need: what the old in-memory controller
 * store and the agent tests' fake cluster offered, now as writes and faults on the model. Nothing
 * here decides anything a store decides: every read, txn and watch of the code under test goes
 * through the real store code and the model.
 *
 * `ModelControllerStore` is a `KvControllerStore` plus hooks (raw puts, leases, elections, watch
 * failures, no quorum). `ModelClusterStore` is a `KvClusterStore` for ONE host, plus the knobs the
 * agent tests steer (a hanging cluster, a lost lease, an alive key taken over, a hold set by an
 * operator, an ambiguous hold acknowledgement), and spies on registrations and hold acks.
 */
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { TxnLimits } from '../../src/domain/cluster-change.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { KvClusterStore } from '../../src/adapters/kv/kv-cluster-store.js';
import { KvControllerStore } from '../../src/adapters/kv/kv-controller-store.js';
import { ControlledTransport, EtcdModel, type NoQuorumMode } from '../../src/dev/etcd-model/index.js';
import type { Clock } from '../../src/ports/clock.js';
import type { HoldAckResult, LeaseId, Registration, RegistrationResult } from '../../src/ports/cluster-store.js';
import type { Revision } from '../../src/ports/controller-store.js';

/** A deterministic event-key id source: 8 hex digits counting up (keys of one ms sort in write order). */
export function counterIds(): () => string {
  let n = 0;
  return () => (n++).toString(16).padStart(8, '0');
}

/** Options of {@link ModelControllerStore}. */
export interface ModelControllerStoreOptions {
  /** The store's txn limits (what the controller batches to; the model still enforces etcd's own). */
  readonly txnLimits?: TxnLimits;
  /** Reported as the server version (default the model's, `3.4.23`). */
  readonly version?: string;
  /** An existing model to use (default: a new one on the clock). */
  readonly model?: EtcdModel;
  /**
   * How requests fail while {@link ModelControllerStore.unavailable} is set: `refuse` (default, what
   * the former in-memory store did: every call fails at once, retryable) or `hang` (TIMEOUT at each
   * call's deadline, what a client of a real etcd without quorum sees).
   */
  readonly noQuorum?: NoQuorumMode;
}

/**
 * `KvControllerStore` over the etcd model, with the hooks of the former in-memory store. Keys given
 * to the hooks are relative to the prefix; values are JSON-encoded.
 */
export class ModelControllerStore extends KvControllerStore {
  readonly model: EtcdModel;
  private readonly noQuorum: NoQuorumMode;

  constructor(clock: Clock, prefix = '/tether/', opts: ModelControllerStoreOptions = {}) {
    const model = opts.model ?? new EtcdModel(clock, opts.version !== undefined ? { version: opts.version } : {});
    super(model.client('controller-store'), { clock, prefix, idSource: counterIds(), ...(opts.txnLimits ? { txnLimits: opts.txnLimits } : {}) });
    this.model = model;
    this.noQuorum = opts.noQuorum ?? 'refuse';
  }

  /** The key prefix. */
  get prefix(): string {
    return this.keys.prefix;
  }

  /** No quorum (true): every request of the store fails (see {@link ModelControllerStoreOptions.noQuorum}); back (false): a new raft term. */
  set unavailable(on: boolean) {
    this.model.unavailable(on, this.noQuorum);
  }
  get unavailable(): boolean {
    return this.model.isUnavailable;
  }

  /** A leader election in the etcd cluster (new raft term; every lease refreshed). Returns the new term. */
  changeRaftTerm(): number {
    return this.model.electLeader();
  }

  /** Grants a lease of `ttlMs` (rounded as etcd does) directly on the model. */
  grantLease(ttlMs: number): LeaseId {
    return this.model.leaseGrant(ttlMs).id;
  }

  /** One keepalive directly on the model; false when the lease is gone. */
  keepaliveLease(id: LeaseId): boolean {
    return this.model.leaseKeepAlive(id).ttlMs > 0;
  }

  /** Revokes a lease now, deleting its keys. */
  revokeLease(id: LeaseId): void {
    this.model.leaseRevoke(id);
  }

  /** Puts `value` (JSON-encoded) at `key` under the prefix, optionally on a lease. Returns the revision. */
  putRaw(key: string, value: unknown, lease?: LeaseId): Revision {
    return String(this.model.put(this.prefix + key, JSON.stringify(value), lease));
  }

  /** Deletes `key` under the prefix. */
  deleteRaw(key: string): void {
    this.model.delete(this.prefix + key);
  }

  /** The JSON value at `key` under the prefix, parsed. */
  getRaw<T>(key: string): T | undefined {
    const e = this.model.get(this.prefix + key);
    return e ? (JSON.parse(e.value) as T) : undefined;
  }

  /** Fails every open watch (a broken etcd watch stream): each gets `onError` once and ends. */
  failWatches(err: Error = new Error('simulated watch failure')): void {
    this.model.endWatches(undefined, err);
  }

  /** Number of open watches. */
  get openWatches(): number {
    return this.model.openWatches();
  }

  /** Every event stored, oldest first. */
  allEvents(): ClusterEvent[] {
    return this.model.list(`${this.prefix}events/`).map((e) => JSON.parse(e.value) as ClusterEvent);
  }

  /** Breaches of the per-host index invariant in the model now (see {@link hostIndexProblems}); empty when it holds. */
  hostIndexProblems(): string[] {
    return hostIndexProblems(this.model, this.prefix);
  }
}

/**
 * Breaches of the per-host index invariant (Keyspace.hostVm) in `model` under `prefix`: every VM
 * record `vms/<key>` with `hostId` H has `hostvms/H/<key>` with the same value and `mod_revision`,
 * and every `hostvms/` entry has such a record. Empty when the invariant holds.
 */
export function hostIndexProblems(model: EtcdModel, prefix = '/tether/'): string[] {
  const problems: string[] = [];
  const records = new Map(model.list(`${prefix}vms/`).map((e) => [e.key.slice(`${prefix}vms/`.length), e]));
  const index = new Map(model.list(`${prefix}hostvms/`).map((e) => [e.key.slice(`${prefix}hostvms/`.length), e]));
  for (const [key, e] of records) {
    let hostId: string | undefined;
    try {
      hostId = (JSON.parse(e.value) as { hostId?: string }).hostId;
    } catch {
      continue;
    }
    if (hostId === undefined) continue;
    const copy = index.get(`${hostId}/${key}`);
    if (!copy) problems.push(`vms/${key} is on ${hostId} but hostvms/${hostId}/${key} is missing`);
    else if (copy.value !== e.value || String(copy.modRevision) !== String(e.modRevision)) problems.push(`hostvms/${hostId}/${key} differs from vms/${key}`);
  }
  for (const ik of index.keys()) {
    const [hostId, ...rest] = ik.split('/');
    const key = rest.join('/');
    const rec = records.get(key);
    let recHost: string | undefined;
    try {
      recHost = rec ? (JSON.parse(rec.value) as { hostId?: string }).hostId : undefined;
    } catch {
      recHost = undefined;
    }
    if (recHost !== hostId) problems.push(`hostvms/${ik} has no record on ${hostId} (record ${rec ? `on ${recHost ?? 'no host'}` : 'gone'})`);
  }
  return problems;
}

/** Knobs of {@link ModelClusterStore}: what the cluster does to the agent. */
export type ClusterMode =
  /** Answers at once. */
  | 'ok'
  /** Answers nothing: every call times out at its deadline, nothing applied. */
  | 'hang'
  /** The agent's lease is gone (revoked when the mode is set); the cluster answers again. */
  | 'lost'
  /** Another agent's lease holds `alive` (put when the mode is set); the cluster answers. */
  | 'taken';

/**
 * `KvClusterStore` of host `hostId` over the etcd model, through a {@link ControlledTransport}, with
 * the knobs the agent tests steer (see {@link ClusterMode}) and spies on what the agent sends.
 * `state`, `epoch` and `hold` write the host record in the model as a controller or operator would.
 */
export class ModelClusterStore extends KvClusterStore {
  readonly model: EtcdModel;
  readonly transport: ControlledTransport;
  readonly hostId: string;
  /** Every registration the agent sent, in order. */
  readonly registrations: Registration[] = [];
  /** Every hold acknowledgement the agent sent: what it acknowledged, and whether it held at the call. */
  readonly acks: { seen: boolean; heldAtCall: boolean }[] = [];
  /** Whether the agent holds (read at each hold acknowledgement). */
  heldProbe: () => boolean = () => false;
  /** While true, hold acknowledgements are applied but their answer is lost (TIMEOUT at the deadline). */
  ackAmbiguous = false;
  private current: ClusterMode = 'ok';
  private readonly prefix: string;

  constructor(
    private readonly wallClock: Clock,
    opts: { readonly hostId?: string; readonly model?: EtcdModel; readonly prefix?: string } = {},
  ) {
    const model = opts.model ?? new EtcdModel(wallClock);
    const transport = new ControlledTransport(wallClock);
    const prefix = opts.prefix ?? '/tether/';
    super(model.client(`agent-${opts.hostId ?? 'host-a'}`, transport), { clock: wallClock, prefix });
    this.model = model;
    this.transport = transport;
    this.hostId = opts.hostId ?? 'host-a';
    this.prefix = prefix;
  }

  get mode(): ClusterMode {
    return this.current;
  }
  set mode(m: ClusterMode) {
    this.current = m;
    this.transport.mode = m === 'hang' ? 'hang' : 'ok';
    const alive = this.model.get(this.aliveKey());
    if (m === 'lost' && alive?.lease) this.model.leaseRevoke(alive.lease);
    if (m === 'taken') this.takeAlive('agent-2');
  }

  /** Another agent (`agentId`) holds `alive` on its own long lease (set before the agent starts: a duplicate). */
  set otherAgent(agentId: string | undefined) {
    if (agentId !== undefined) this.takeAlive(agentId);
  }

  /** The host record in the model, or undefined. */
  record(): HostRecord | undefined {
    const e = this.model.get(`${this.prefix}hosts/${this.hostId}/record`);
    return e ? (JSON.parse(e.value) as HostRecord) : undefined;
  }

  get state(): HostRecord['state'] | undefined {
    return this.record()?.state;
  }
  set state(state: HostRecord['state'] | undefined) {
    if (state !== undefined) this.writeRecord({ state });
  }
  get epoch(): number {
    return this.record()?.epoch ?? 0;
  }
  set epoch(epoch: number) {
    this.writeRecord({ epoch });
  }
  /** The operator's hold on the record (setting it writes the record, as `tether host hold` does). */
  get hold(): boolean {
    return this.record()?.hold ?? false;
  }
  set hold(hold: boolean) {
    this.writeRecord({ hold });
  }
  get holdSeen(): boolean {
    return this.record()?.holdSeen ?? false;
  }

  override register(reg: Registration, deadlineMs: number): Promise<RegistrationResult> {
    this.registrations.push(reg);
    return super.register(reg, deadlineMs);
  }

  override async ackHold(hostId: string, epoch: number, lease: LeaseId, holdSeen: boolean, deadlineMs: number): Promise<HoldAckResult> {
    this.acks.push({ seen: holdSeen, heldAtCall: this.heldProbe() });
    if (!this.ackAmbiguous) return super.ackHold(hostId, epoch, lease, holdSeen, deadlineMs);
    this.transport.modeFor.set('txn', 'ambiguous');
    try {
      return await super.ackHold(hostId, epoch, lease, holdSeen, deadlineMs);
    } finally {
      this.transport.modeFor.delete('txn');
    }
  }

  private aliveKey(): string {
    return `${this.prefix}hosts/${this.hostId}/alive`;
  }

  private takeAlive(agentId: string): void {
    const lease = this.model.leaseGrant(3_600_000).id;
    const epoch = this.record()?.epoch ?? 0;
    this.model.put(this.aliveKey(), JSON.stringify({ epoch, agentVersion: 'other', agentId, holder: `${agentId} (another agent)` }), lease);
  }

  private writeRecord(change: Partial<HostRecord>): void {
    const cur: HostRecord = this.record() ?? {
      hostId: this.hostId,
      state: 'attached',
      epoch: 0,
      timings: DEFAULT_TIMINGS,
      hold: false,
      capacity: { vcpu: 1, memoryMb: 1 },
      labels: {},
      agentVersion: 't',
      updatedAt: this.wallClock.now(),
    };
    this.model.put(`${this.prefix}hosts/${this.hostId}/record`, JSON.stringify({ ...cur, ...change, updatedAt: this.wallClock.now() }));
  }
}
