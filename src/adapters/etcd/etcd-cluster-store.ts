import { Etcd3, EtcdLeaseInvalidError, type Lease } from 'etcd3';
import { decodeAliveValue, decodeHostRecord, encodeAliveValue, encodeHostRecord } from '../../domain/codec.js';
import { TetherError } from '../../domain/errors.js';
import type { HostRecord } from '../../domain/host-record.js';
import { decideRegistration, type AliveHolder } from '../../domain/registration.js';
import type { ClusterStore, HoldAckResult, KeepaliveAnswer, LeaseId, Registration, RegistrationResult } from '../../ports/cluster-store.js';
import { asRetryable, callWithDeadline, deadlineOption, withDeadline } from './deadline.js';
import { createEtcdClient, type EtcdSecurity } from './etcd-client.js';

/** Options of {@link EtcdClusterStore}. */
export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** Key prefix, default `/tether/`. */
  readonly prefix?: string;
  /** TLS files and etcd user/password (see {@link EtcdSecurity}); files are read at construction. */
  readonly security?: EtcdSecurity;
}

/** Keys of the Tether keyspace under a prefix (ARCHITECTURE.md section 2). */
export class Keys {
  constructor(readonly prefix: string) {}
  hostRecord(id: string): string {
    return `${this.prefix}hosts/${id}/record`;
  }
  hostAlive(id: string): string {
    return `${this.prefix}hosts/${id}/alive`;
  }
  hosts(): string {
    return `${this.prefix}hosts/`;
  }
}

const CAS_ATTEMPTS = 5;

/**
 * {@link ClusterStore} on etcd (npm etcd3 against etcd 3.4).
 *
 * etcd3's own retry and circuit-breaker policies are switched off: Tether owns every deadline and
 * every retry, so a call's outcome is known by its deadline and nothing retries behind our back.
 */
export class EtcdClusterStore implements ClusterStore {
  readonly client: Etcd3;
  readonly keys: Keys;
  private readonly leases = new Map<LeaseId, Lease>();

  constructor(opts: EtcdStoreOptions) {
    this.client = createEtcdClient(opts.endpoints, opts.security);
    this.keys = new Keys(opts.prefix ?? '/tether/');
  }

  async grantLease(ttlMs: number, deadlineMs: number): Promise<LeaseId> {
    const lease = this.client.lease(Math.round(ttlMs / 1000), { autoKeepAlive: false, ...deadlineOption(deadlineMs) });
    lease.on('lost', () => undefined);
    const id = await this.call('lease grant', deadlineMs, () => lease.grant());
    this.leases.set(id, lease);
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
    const lease = this.leases.get(id);
    if (!lease) return { kind: 'lease-lost', detail: `lease ${id} is not held by this agent` };
    const t0 = Date.now();
    try {
      await withDeadline(`keepalive of lease ${id}`, deadlineMs, lease.keepaliveOnce(deadlineOption(deadlineMs)));
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError) {
        this.leases.delete(id);
        return { kind: 'lease-lost', detail: `etcd no longer knows lease ${id}` };
      }
      throw asRetryable(`keepalive of lease ${id}`, err);
    }
    const left = Math.max(1, deadlineMs - (Date.now() - t0));
    const alive = await this.readAlive(hostId, left);
    if (alive?.lease === id) return { kind: 'alive' };
    this.leases.delete(id);
    if (!alive) return { kind: 'lease-lost', detail: `lease ${id} renewed but hosts/${hostId}/alive is gone (revoked lease)` };
    return { kind: 'taken-over', detail: `hosts/${hostId}/alive is now on lease ${alive.lease}, held by ${alive.holder ?? alive.agentId ?? 'another agent'}` };
  }

  async revokeLease(id: LeaseId, deadlineMs: number): Promise<void> {
    const lease = this.leases.get(id);
    this.leases.delete(id);
    if (lease) await this.call(`revoke lease ${id}`, deadlineMs, () => lease.revoke(deadlineOption(deadlineMs)));
  }

  async register(reg: Registration, deadlineMs: number): Promise<RegistrationResult> {
    const key = this.keys.hostRecord(reg.hostId);
    const aliveKey = this.keys.hostAlive(reg.hostId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const [cur, alive] = await Promise.all([this.readRecord(key, deadlineMs), this.readAliveKv(reg.hostId, deadlineMs)]);
      const decision = decideRegistration(reg, cur?.record, alive?.holder);
      if (!decision.ok) return decision;
      const record: HostRecord = {
        ...reg.record,
        state: decision.state,
        epoch: decision.epoch,
        hold: cur?.record.hold ?? false,
        holdSeen: reg.holdApplied,
        ...(cur?.record.draining ? { draining: true } : {}),
        updatedAt: Date.now(),
      };
      const aliveValue = { epoch: record.epoch, agentVersion: reg.record.agentVersion, agentId: reg.agentId, holder: reg.holder };
      const res = await this.call('registration txn', deadlineMs, () =>
        this.client
          .if(key, cur ? 'Mod' : 'Create', '==', cur ? cur.modRevision : 0)
          .and(aliveKey, alive ? 'Mod' : 'Create', '==', alive ? alive.modRevision : 0)
          .then(this.client.put(key).value(this.encodeRecord(key, record)), this.client.put(aliveKey).value(encodeAliveValue(this.rel(aliveKey), aliveValue)).lease(reg.lease))
          .options(deadlineOption(deadlineMs))
          .commit(),
      );
      if (res.succeeded) return { ok: true, epoch: record.epoch, hold: record.hold };
    }
    throw new TetherError('UNAVAILABLE', `registration of ${reg.hostId}: record kept changing under ${CAS_ATTEMPTS} attempts`, { retryable: true });
  }

  async ackHold(hostId: string, epoch: number, lease: LeaseId, holdSeen: boolean, deadlineMs: number): Promise<HoldAckResult> {
    const key = this.keys.hostRecord(hostId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const [cur, alive] = await Promise.all([this.readRecord(key, deadlineMs), this.readAliveKv(hostId, deadlineMs)]);
      if (!cur) return { ok: false, detail: `host ${hostId} has no record` };
      if (cur.record.epoch !== epoch || (cur.record.state !== 'attached' && cur.record.state !== 'ready')) {
        return { ok: false, detail: `record is ${cur.record.state} at epoch ${cur.record.epoch}, this host is at epoch ${epoch}` };
      }
      if (alive?.holder.lease !== lease) return { ok: false, detail: `hosts/${hostId}/alive is not on this host's lease ${lease}` };
      if ((cur.record.holdSeen ?? false) === holdSeen) return { ok: true };
      const next: HostRecord = { ...cur.record, holdSeen, updatedAt: Date.now() };
      const res = await this.call('hold ack txn', deadlineMs, () =>
        this.client
          .if(key, 'Mod', '==', cur.modRevision)
          .and(this.keys.hostAlive(hostId), 'Mod', '==', alive.modRevision)
          .then(this.client.put(key).value(this.encodeRecord(key, next)))
          .options(deadlineOption(deadlineMs))
          .commit(),
      );
      if (res.succeeded) return { ok: true };
    }
    throw new TetherError('UNAVAILABLE', `hold acknowledgement of ${hostId}: record kept changing`, { retryable: true });
  }

  async getHost(hostId: string, deadlineMs: number): Promise<HostRecord | undefined> {
    return (await this.readRecord(this.keys.hostRecord(hostId), deadlineMs))?.record;
  }

  async setHold(hostId: string, hold: boolean, deadlineMs: number): Promise<HostRecord> {
    const key = this.keys.hostRecord(hostId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.readRecord(key, deadlineMs);
      if (!cur) throw new TetherError('NOT_FOUND', `host ${hostId} not found in the cluster`);
      const next: HostRecord = { ...cur.record, hold, updatedAt: Date.now() };
      const res = await this.call('hold txn', deadlineMs, () =>
        this.client.if(key, 'Mod', '==', cur.modRevision).then(this.client.put(key).value(this.encodeRecord(key, next))).options(deadlineOption(deadlineMs)).commit(),
      );
      if (res.succeeded) return next;
    }
    throw new TetherError('UNAVAILABLE', `hold of ${hostId}: record kept changing`, { retryable: true });
  }

  /** The version the answering etcd member reports (Maintenance.Status). */
  async serverVersion(deadlineMs: number): Promise<string> {
    const res = await this.call('etcd status', deadlineMs, () => this.client.maintenance.status(deadlineOption(deadlineMs)));
    return res.version;
  }

  async close(): Promise<void> {
    this.leases.clear();
    this.client.close();
  }

  private async readRecord(key: string, deadlineMs: number): Promise<{ record: HostRecord; modRevision: string } | undefined> {
    const res = await this.call(`get ${key}`, deadlineMs, () => this.client.get(key).options(deadlineOption(deadlineMs)).exec());
    const kv = res.kvs[0];
    if (!kv) return undefined;
    // Validated (domain/codec.ts): a record that fails its schema throws INVALID_RECORD (not retryable), naming key and field.
    const decoded = decodeHostRecord(this.rel(key), kv.value);
    if (!decoded.ok) throw decoded.error.at(kv.mod_revision);
    return { record: decoded.value, modRevision: kv.mod_revision };
  }

  /** `hosts/<id>/alive` with its lease and mod_revision (linearizable read), or undefined. */
  private async readAliveKv(hostId: string, deadlineMs: number): Promise<{ holder: AliveHolder; modRevision: string } | undefined> {
    const key = this.keys.hostAlive(hostId);
    const res = await this.call(`get ${key}`, deadlineMs, () => this.client.get(key).options(deadlineOption(deadlineMs)).exec());
    const kv = res.kvs[0];
    if (!kv) return undefined;
    // An unreadable value names no agent: registration then treats its writer as another agent
    // (refused as duplicate until its lease expires), never as this one.
    const decoded = decodeAliveValue(this.rel(key), kv.value);
    const value = decoded.ok ? { ...(decoded.value.agentId ? { agentId: decoded.value.agentId } : {}), ...(decoded.value.holder ? { holder: decoded.value.holder } : {}) } : {};
    return { holder: { ...value, lease: kv.lease }, modRevision: kv.mod_revision };
  }

  private async readAlive(hostId: string, deadlineMs: number): Promise<AliveHolder | undefined> {
    return (await this.readAliveKv(hostId, deadlineMs))?.holder;
  }

  /** `key` relative to the prefix, as the codec names it. */
  private rel(key: string): string {
    return key.slice(this.keys.prefix.length);
  }

  /** Encodes through the codec: never writes what a reader would refuse. */
  private encodeRecord(key: string, record: HostRecord): string {
    return encodeHostRecord(this.rel(key), record);
  }

  private call<T>(what: string, deadlineMs: number, fn: () => Promise<T>): Promise<T> {
    return callWithDeadline(what, deadlineMs, fn);
  }
}
