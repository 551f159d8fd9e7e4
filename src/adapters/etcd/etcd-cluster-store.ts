import { Etcd3, EtcdLeaseInvalidError, type Lease } from 'etcd3';
import { TetherError } from '../../domain/errors.js';
import type { HostRecord } from '../../domain/host-record.js';
import type { ClusterStore, KeepaliveAnswer, LeaseId, Registration, RegistrationResult } from '../../ports/cluster-store.js';
import { asRetryable, callWithDeadline, deadlineOption, withDeadline } from './deadline.js';
import { createEtcdClient } from './etcd-client.js';

/** Options of {@link EtcdClusterStore}. */
export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** Key prefix, default `/tether/`. */
  readonly prefix?: string;
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
    this.client = createEtcdClient(opts.endpoints);
    this.keys = new Keys(opts.prefix ?? '/tether/');
  }

  async grantLease(ttlMs: number, deadlineMs: number): Promise<LeaseId> {
    const lease = this.client.lease(Math.round(ttlMs / 1000), { autoKeepAlive: false, ...deadlineOption(deadlineMs) });
    lease.on('lost', () => undefined);
    const id = await this.call('lease grant', deadlineMs, () => lease.grant());
    this.leases.set(id, lease);
    return id;
  }

  async keepalive(id: LeaseId, deadlineMs: number): Promise<KeepaliveAnswer> {
    const lease = this.leases.get(id);
    if (!lease) return 'lease-lost';
    try {
      await withDeadline(`keepalive of lease ${id}`, deadlineMs, lease.keepaliveOnce(deadlineOption(deadlineMs)));
      return 'alive';
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError) {
        this.leases.delete(id);
        return 'lease-lost';
      }
      throw asRetryable(`keepalive of lease ${id}`, err);
    }
  }

  async revokeLease(id: LeaseId, deadlineMs: number): Promise<void> {
    const lease = this.leases.get(id);
    this.leases.delete(id);
    if (lease) await this.call(`revoke lease ${id}`, deadlineMs, () => lease.revoke(deadlineOption(deadlineMs)));
  }

  async register(reg: Registration, deadlineMs: number): Promise<RegistrationResult> {
    const key = this.keys.hostRecord(reg.hostId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.readRecord(key, deadlineMs);
      const decision = decideRegistration(reg, cur?.record);
      if (!decision.ok) return decision;
      const record: HostRecord = {
        ...reg.record,
        state: decision.state,
        epoch: decision.epoch,
        hold: cur?.record.hold ?? false,
        ...(cur?.record.draining ? { draining: true } : {}),
        updatedAt: Date.now(),
      };
      const cmp = cur ? this.client.if(key, 'Mod', '==', cur.modRevision) : this.client.if(key, 'Create', '==', 0);
      const res = await this.call('registration txn', deadlineMs, () =>
        cmp
          .then(
            this.client.put(key).value(JSON.stringify(record)),
            this.client.put(this.keys.hostAlive(reg.hostId)).value(JSON.stringify({ epoch: record.epoch, agentVersion: reg.record.agentVersion })).lease(reg.lease),
          )
          .options(deadlineOption(deadlineMs))
          .commit(),
      );
      if (res.succeeded) return { ok: true, epoch: record.epoch, hold: record.hold };
    }
    throw new TetherError('UNAVAILABLE', `registration of ${reg.hostId}: record kept changing under ${CAS_ATTEMPTS} attempts`, { retryable: true });
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
        this.client.if(key, 'Mod', '==', cur.modRevision).then(this.client.put(key).value(JSON.stringify(next))).options(deadlineOption(deadlineMs)).commit(),
      );
      if (res.succeeded) return next;
    }
    throw new TetherError('UNAVAILABLE', `hold of ${hostId}: record kept changing`, { retryable: true });
  }

  async close(): Promise<void> {
    this.leases.clear();
    this.client.close();
  }

  private async readRecord(key: string, deadlineMs: number): Promise<{ record: HostRecord; modRevision: string } | undefined> {
    const res = await this.call(`get ${key}`, deadlineMs, () => this.client.get(key).options(deadlineOption(deadlineMs)).exec());
    const kv = res.kvs[0];
    if (!kv) return undefined;
    return { record: JSON.parse(kv.value.toString()) as HostRecord, modRevision: kv.mod_revision };
  }

  private call<T>(what: string, deadlineMs: number, fn: () => Promise<T>): Promise<T> {
    return callWithDeadline(what, deadlineMs, fn);
  }
}

/**
 * The registration rules, pure: what state and epoch a registration gets, or why it is refused.
 * - first registration (no record, epoch 0): `attached` at epoch 1;
 * - `reattach` only at the same epoch and while the record is not fenced or retired;
 * - `ready` (after a verified cleanup) always gets epoch + 1.
 */
export function decideRegistration(
  reg: Pick<Registration, 'mode' | 'epoch'>,
  cur: Pick<HostRecord, 'state' | 'epoch'> | undefined,
): { ok: true; state: HostRecord['state']; epoch: number } | { ok: false; reason: 'fenced' | 'epoch-mismatch'; detail: string } {
  if (reg.mode === 'ready') return { ok: true, state: 'ready', epoch: Math.max(cur?.epoch ?? 0, reg.epoch) + 1 };
  if (!cur) {
    if (reg.epoch === 0) return { ok: true, state: 'attached', epoch: 1 };
    return { ok: false, reason: 'fenced', detail: `no record for this host although it had epoch ${reg.epoch}: treated as fenced` };
  }
  if (cur.state === 'fenced' || cur.state === 'retired') return { ok: false, reason: 'fenced', detail: `record is ${cur.state} at epoch ${cur.epoch}` };
  if (cur.epoch !== reg.epoch) return { ok: false, reason: 'epoch-mismatch', detail: `record epoch ${cur.epoch}, host epoch ${reg.epoch}` };
  return { ok: true, state: 'attached', epoch: cur.epoch };
}
