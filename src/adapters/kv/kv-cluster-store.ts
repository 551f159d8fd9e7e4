import { decodeAliveValue, decodeHostRecord } from '../../domain/codec.js';
import { TetherError } from '../../domain/errors.js';
import { contractAckTxn } from '../../domain/freeze-contract-ack.js';
import { parseFreezeContract, type FreezeContract } from '../../domain/freeze-contract.js';
import type { HostRecord } from '../../domain/host-record.js';
import { Keyspace } from '../../domain/keyspace.js';
import { holdAckTxn, registrationTxn, setHoldTxn, type HoldAckPlan, type ReadAlive, type ReadRecord } from '../../domain/registration-txn.js';
import type { Clock } from '../../ports/clock.js';
import type { ClusterStore, HoldAckResult, KeepaliveAnswer, LeaseId, Registration, RegistrationResult } from '../../ports/cluster-store.js';
import type { Kv } from '../../ports/kv.js';

/** Options of {@link KvClusterStore}. */
export interface KvClusterStoreOptions {
  /** Key prefix, default `/tether/`. */
  readonly prefix?: string;
  /** Wall time of `updatedAt` and the monotonic time that splits one deadline over a keepalive and its read. */
  readonly clock: Clock;
}

/** Compare-and-swap attempts of one register / ackHold / setHold before a retryable UNAVAILABLE. */
export const CAS_ATTEMPTS = 5;

/**
 * {@link ClusterStore} over any {@link Kv}: real etcd ({@link EtcdKv}, through `EtcdClusterStore`)
 * or the etcd model. The txns come from the pure builders of src/domain/registration-txn.ts.
 *
 * Invariants: every call is bounded by its deadline (the `Kv` failure contract: retryable
 * UNAVAILABLE/TIMEOUT); every write is one txn comparing the `mod_revision` of each key the
 * decision read, retried at most {@link CAS_ATTEMPTS} times on a lost compare; a keepalive is
 * `alive` only when a linearizable read after it finds `alive` on this lease.
 */
export class KvClusterStore implements ClusterStore {
  readonly keys: Keyspace;
  /** Leases this store granted and still believes in: a keepalive of any other is `lease-lost`. */
  private readonly leases = new Set<LeaseId>();
  private readonly clock: Clock;

  constructor(
    readonly kv: Kv,
    opts: KvClusterStoreOptions,
  ) {
    this.keys = new Keyspace(opts.prefix ?? '/tether/');
    this.clock = opts.clock;
  }

  async grantLease(ttlMs: number, deadlineMs: number): Promise<LeaseId> {
    const { id } = await this.kv.leaseGrant(ttlMs, deadlineMs);
    this.leases.add(id);
    return id;
  }

  /**
   * One keepalive, then a linearizable read of `hosts/<hostId>/alive`: the answer is `alive` only
   * when the key is still on this lease. etcd 3.4.23 can acknowledge a keepalive of a lease that was
   * already revoked (#14758), and a deposed leader can revoke a lease early (#15247): the read makes
   * an acknowledgement mean "the cluster still sees this host on this lease", which is what every
   * host-side deadline is measured from.
   */
  async keepalive(hostId: string, id: LeaseId, deadlineMs: number): Promise<KeepaliveAnswer> {
    if (!this.leases.has(id)) return { kind: 'lease-lost', detail: `lease ${id} is not held by this agent` };
    const t0 = this.clock.nowMono();
    const ka = await this.kv.leaseKeepAlive(id, deadlineMs);
    if (ka.ttlMs <= 0) {
      this.leases.delete(id);
      return { kind: 'lease-lost', detail: `etcd no longer knows lease ${id}` };
    }
    const left = Math.max(1, deadlineMs - (this.clock.nowMono() - t0));
    const alive = (await this.readAlive(hostId, left))?.holder;
    if (alive?.lease === id) return { kind: 'alive' };
    this.leases.delete(id);
    if (!alive) return { kind: 'lease-lost', detail: `lease ${id} renewed but hosts/${hostId}/alive is gone (revoked lease)` };
    return { kind: 'taken-over', detail: `hosts/${hostId}/alive is now on lease ${alive.lease}, held by ${alive.holder ?? alive.agentId ?? 'another agent'}` };
  }

  async leaseExists(id: LeaseId, deadlineMs: number): Promise<boolean> {
    return (await this.kv.leaseTimeToLive(id, deadlineMs)) !== undefined;
  }

  async revokeLease(id: LeaseId, deadlineMs: number): Promise<void> {
    const known = this.leases.delete(id);
    if (known) await this.kv.leaseRevoke(id, deadlineMs);
  }

  async register(reg: Registration, deadlineMs: number): Promise<RegistrationResult> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const [cur, alive] = await Promise.all([this.readRecord(reg.hostId, deadlineMs), this.readAlive(reg.hostId, deadlineMs)]);
      const plan = registrationTxn(this.keys, reg, cur, alive, this.clock.now());
      if (!plan.ok) return plan;
      const res = await this.kv.txn(plan.txn, deadlineMs);
      if (res.succeeded) return { ok: true, epoch: plan.record.epoch, hold: plan.record.hold };
    }
    throw new TetherError('UNAVAILABLE', `registration of ${reg.hostId}: record kept changing under ${CAS_ATTEMPTS} attempts`, { retryable: true });
  }

  async ackHold(hostId: string, epoch: number, lease: LeaseId, holdSeen: boolean, deadlineMs: number): Promise<HoldAckResult> {
    return this.ackInRecord(hostId, deadlineMs, 'hold acknowledgement', (cur, alive) => holdAckTxn(this.keys, { hostId, epoch, lease, holdSeen }, cur, alive, this.clock.now()));
  }

  /** Reads the record and `alive`, plans the acknowledgement, writes it; again when the record changed meanwhile. */
  private async ackInRecord(hostId: string, deadlineMs: number, what: string, plan: (cur: ReadRecord | undefined, alive: ReadAlive | undefined) => HoldAckPlan): Promise<HoldAckResult> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const [cur, alive] = await Promise.all([this.readRecord(hostId, deadlineMs), this.readAlive(hostId, deadlineMs)]);
      const p = plan(cur, alive);
      if ('done' in p) return p.done;
      const res = await this.kv.txn(p.txn, deadlineMs);
      if (res.succeeded) return { ok: true };
    }
    throw new TetherError('UNAVAILABLE', `${what} of ${hostId}: record kept changing`, { retryable: true });
  }

  async getFreezeContract(deadlineMs: number): Promise<FreezeContract | undefined> {
    const key = this.keys.freezeContract();
    const kv = (await this.kv.range({ key }, deadlineMs)).kvs[0];
    if (!kv) return undefined;
    try {
      return parseFreezeContract(JSON.parse(kv.value));
    } catch (err) {
      if (err instanceof TetherError) throw err;
      throw new TetherError('INVALID_RECORD', `${this.keys.rel(key)}: not JSON`, { cause: err });
    }
  }

  async ackFreezeContract(hostId: string, epoch: number, lease: LeaseId, version: number, deadlineMs: number): Promise<HoldAckResult> {
    return this.ackInRecord(hostId, deadlineMs, 'freeze contract acknowledgement', (cur, alive) => contractAckTxn(this.keys, { hostId, epoch, lease, version }, cur, alive, this.clock.now()));
  }

  async getHost(hostId: string, deadlineMs: number): Promise<HostRecord | undefined> {
    return (await this.readRecord(hostId, deadlineMs))?.record;
  }

  async setHold(hostId: string, hold: boolean, deadlineMs: number): Promise<HostRecord> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.readRecord(hostId, deadlineMs);
      if (!cur) throw new TetherError('NOT_FOUND', `host ${hostId} not found in the cluster`);
      const plan = setHoldTxn(this.keys, hostId, hold, cur, this.clock.now());
      const res = await this.kv.txn(plan.txn, deadlineMs);
      if (res.succeeded) return plan.record;
    }
    throw new TetherError('UNAVAILABLE', `hold of ${hostId}: record kept changing`, { retryable: true });
  }

  /** The version the answering store member reports (etcd Maintenance.Status). */
  async serverVersion(deadlineMs: number): Promise<string> {
    return (await this.kv.status(deadlineMs)).version;
  }

  async close(): Promise<void> {
    this.leases.clear();
    await this.kv.close();
  }

  /** The host record (linearizable read); a record that fails its schema throws INVALID_RECORD (not retryable), naming key and field. */
  private async readRecord(hostId: string, deadlineMs: number): Promise<ReadRecord | undefined> {
    const key = this.keys.hostRecord(hostId);
    const kv = (await this.kv.range({ key }, deadlineMs)).kvs[0];
    if (!kv) return undefined;
    const decoded = decodeHostRecord(this.keys.rel(key), kv.value);
    if (!decoded.ok) throw decoded.error.at(String(kv.modRevision));
    return { record: decoded.value, modRevision: kv.modRevision };
  }

  /**
   * `hosts/<id>/alive` with its lease and `mod_revision` (linearizable read), or undefined. An
   * unreadable value names no agent: registration then treats its writer as another agent (refused
   * as duplicate until its lease expires), never as this one.
   */
  private async readAlive(hostId: string, deadlineMs: number): Promise<ReadAlive | undefined> {
    const key = this.keys.hostAlive(hostId);
    const kv = (await this.kv.range({ key }, deadlineMs)).kvs[0];
    if (!kv) return undefined;
    const decoded = decodeAliveValue(this.keys.rel(key), kv.value);
    const v = decoded.ok ? decoded.value : undefined;
    const value = v ? { ...(v.agentId ? { agentId: v.agentId } : {}), ...(v.machineId ? { machineId: v.machineId } : {}), ...(v.holder ? { holder: v.holder } : {}) } : {};
    return { holder: { ...value, lease: kv.lease ?? '0' }, modRevision: kv.modRevision };
  }
}
