import { randomBytes } from 'node:crypto';
import { Etcd3, EtcdLeaseInvalidError, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import type { ClusterEvent } from '../../domain/cluster-event.js';
import type { ClusterVmRecord } from '../../domain/cluster-vm.js';
import { NotFoundError, TetherError } from '../../domain/errors.js';
import type { HostRecord } from '../../domain/host-record.js';
import type { LeaseId } from '../../ports/cluster-store.js';
import type {
  AliveInfo,
  Change,
  CommitResult,
  ControllerStatus,
  ControllerStore,
  HostEntry,
  HostsSnapshot,
  HostWatchEvent,
  LeaderInfo,
  Leadership,
  Revision,
  StoredEvent,
  Subscription,
  VmEntry,
  WatchHandlers,
} from '../../ports/controller-store.js';
import { asRetryable, callWithDeadline, deadlineOption, withDeadline } from './deadline.js';
import { createEtcdClient } from './etcd-client.js';
import { Keys, type EtcdStoreOptions } from './etcd-cluster-store.js';

/** Keys of the controller's part of the keyspace (ARCHITECTURE.md section 2), under a prefix. */
export class ControllerKeys extends Keys {
  /** Prefix of every cluster VM record. */
  vms(): string {
    return `${this.prefix}vms/`;
  }
  /** `vms/<ns>/<name>` for `key` = `<ns>/<name>`. */
  vm(key: string): string {
    return `${this.prefix}vms/${key}`;
  }
  /** Prefix of every event. */
  events(): string {
    return `${this.prefix}events/`;
  }
  /** `events/<15-digit ms>-<8 hex>`: lexical order is time order. */
  event(at: number): string {
    return `${this.prefix}events/${String(Math.max(0, Math.floor(at))).padStart(15, '0')}-${randomBytes(4).toString('hex')}`;
  }
  /** The election key, on the leader's lease. */
  leader(): string {
    return `${this.prefix}controller/leader`;
  }
  /** The active controller's status document, on the leader's lease. */
  status(): string {
    return `${this.prefix}controller/status`;
  }
  /** `{hostId, part}` of a key under `hosts/`, or undefined for anything else. */
  parseHostKey(key: string): { hostId: string; part: 'record' | 'alive' } | undefined {
    const m = /^hosts\/([^/]+)\/(record|alive)$/.exec(key.slice(this.prefix.length));
    return key.startsWith(this.prefix) && m ? { hostId: m[1]!, part: m[2] as 'record' | 'alive' } : undefined;
  }
}

/** The most ops one txn may carry (etcd's default `--max-txn-ops`). */
export const MAX_TXN_OPS = 128;

const CAS_ATTEMPTS = 5;

function parseJson<T>(kv: IKeyValue): T | undefined {
  try {
    return JSON.parse(kv.value.toString()) as T;
  } catch {
    return undefined;
  }
}

/**
 * {@link ControllerStore} on etcd (npm etcd3 against etcd 3.4).
 *
 * Like {@link EtcdClusterStore}, etcd3's retry and circuit-breaker policies are off: every call is
 * bounded by its own deadline ({@link withDeadline} plus the gRPC deadline), and a miss is a
 * retryable error for the caller to handle. Leader election is our own lease + txn campaign rather
 * than etcd3's `Election`, whose lease keepalive declares loss only after 2 x TTL (etcd3 issue #155):
 * the controller drives the keepalives on its own clock.
 */
export class EtcdControllerStore implements ControllerStore {
  readonly client: Etcd3;
  readonly keys: ControllerKeys;
  private readonly leases = new Map<LeaseId, Lease>();
  private readonly watchers = new Set<Watcher>();

  constructor(opts: EtcdStoreOptions) {
    this.client = createEtcdClient(opts.endpoints);
    this.keys = new ControllerKeys(opts.prefix ?? '/tether/');
  }

  async listHosts(deadlineMs: number): Promise<HostsSnapshot> {
    const res = await this.call('list hosts', deadlineMs, () => this.client.getAll().prefix(this.keys.hosts()).options(deadlineOption(deadlineMs)).exec());
    const byId = new Map<string, { hostId: string; record?: HostRecord; recordRevision?: Revision; alive?: AliveInfo }>();
    for (const kv of res.kvs) this.addHostKv(byId, kv);
    return { revision: res.header.revision, hosts: [...byId.values()] };
  }

  async getHost(hostId: string, deadlineMs: number): Promise<HostEntry> {
    const res = await this.call(`get host ${hostId}`, deadlineMs, () =>
      this.client.getAll().prefix(`${this.keys.hosts()}${hostId}/`).options(deadlineOption(deadlineMs)).exec(),
    );
    const byId = new Map<string, { hostId: string; record?: HostRecord; recordRevision?: Revision; alive?: AliveInfo }>();
    for (const kv of res.kvs) this.addHostKv(byId, kv);
    return byId.get(hostId) ?? { hostId };
  }

  async watchHosts(fromRevision: Revision, handlers: WatchHandlers<HostWatchEvent>, deadlineMs: number): Promise<Subscription> {
    return this.watch(this.keys.hosts(), fromRevision, handlers, deadlineMs, (kv, op): HostWatchEvent | undefined => {
      const k = this.keys.parseHostKey(kv.key.toString());
      if (!k) return undefined;
      const revision = kv.mod_revision;
      if (op === 'delete') return k.part === 'record' ? { kind: 'record-deleted', hostId: k.hostId, revision } : { kind: 'alive-deleted', hostId: k.hostId, revision };
      if (k.part === 'record') {
        const record = parseJson<HostRecord>(kv);
        return record ? { kind: 'record', hostId: k.hostId, record, revision } : undefined;
      }
      return { kind: 'alive', hostId: k.hostId, alive: this.aliveOf(kv), revision };
    });
  }

  async listVms(deadlineMs: number): Promise<VmEntry[]> {
    const res = await this.call('list vms', deadlineMs, () => this.client.getAll().prefix(this.keys.vms()).options(deadlineOption(deadlineMs)).exec());
    const out: VmEntry[] = [];
    for (const kv of res.kvs) {
      const record = parseJson<ClusterVmRecord>(kv);
      if (record) out.push({ key: kv.key.toString().slice(this.keys.vms().length), record, revision: kv.mod_revision });
    }
    return out;
  }

  async commit(change: Change, deadlineMs: number): Promise<CommitResult> {
    const cmps: [string, 'Create' | 'Mod', Revision | number][] = [];
    const ops: ReturnType<Etcd3['put']>[] = [];
    const dels: ReturnType<Etcd3['delete']>[] = [];
    if (change.leader) cmps.push([this.keys.leader(), 'Create', change.leader.createRevision]);
    for (const h of change.hosts ?? []) {
      const key = this.keys.hostRecord(h.hostId);
      cmps.push([key, 'Mod', h.expectRevision]);
      if (h.requireAliveAbsent) cmps.push([this.keys.hostAlive(h.hostId), 'Create', 0]);
      if (h.next === null) dels.push(this.client.delete().key(key));
      else ops.push(this.client.put(key).value(JSON.stringify(h.next)));
    }
    for (const g of change.guards ?? []) cmps.push([this.keys.hostRecord(g.hostId), 'Mod', g.expectRevision]);
    for (const v of change.vms ?? []) {
      const key = this.keys.vm(v.key);
      cmps.push(v.expectRevision === null ? [key, 'Create', 0] : [key, 'Mod', v.expectRevision]);
      if (v.next === null) dels.push(this.client.delete().key(key));
      else ops.push(this.client.put(key).value(JSON.stringify(v.next)));
    }
    for (const e of change.events ?? []) {
      const key = this.keys.event(e.at);
      if (cmps.length === 0) cmps.push([key, 'Create', 0]);
      ops.push(this.client.put(key).value(JSON.stringify(e)));
    }
    if (ops.length + dels.length === 0) throw new TetherError('INVALID_ARGUMENT', 'commit: nothing to write');
    if (cmps.length + ops.length + dels.length > MAX_TXN_OPS) {
      throw new TetherError('FAILED_PRECONDITION', `commit: ${cmps.length} compares and ${ops.length + dels.length} writes exceed etcd's ${MAX_TXN_OPS} ops per txn`);
    }
    const [first, ...rest] = cmps;
    const res = await this.call('controller txn', deadlineMs, () => {
      let b = this.client.if(first![0], first![1], '==', first![2]);
      for (const [k, col, v] of rest) b = b.and(k, col, '==', v);
      return b.then(...ops, ...dels).options(deadlineOption(deadlineMs)).commit();
    });
    if (res.succeeded) return { ok: true, revision: res.header.revision };
    if (change.leader) {
      const cur = await this.call('get leader', deadlineMs, () => this.client.get(this.keys.leader()).options(deadlineOption(deadlineMs)).exec());
      if (cur.kvs[0]?.create_revision !== change.leader.createRevision) return { ok: false, reason: 'not-leader' };
    }
    return { ok: false, reason: 'conflict' };
  }

  async campaign(candidateId: string, ttlMs: number, deadlineMs: number): Promise<Leadership | undefined> {
    const key = this.keys.leader();
    const cur = await this.call('get leader', deadlineMs, () => this.client.get(key).options(deadlineOption(deadlineMs)).exec());
    if (cur.kvs.length > 0) return undefined;
    const lease = this.client.lease(Math.max(1, Math.round(ttlMs / 1000)), { autoKeepAlive: false, ...deadlineOption(deadlineMs) });
    lease.on('lost', () => undefined);
    const id = await this.call('grant leader lease', deadlineMs, () => lease.grant());
    const info: LeaderInfo = { candidateId, since: Date.now() };
    let res;
    try {
      res = await this.call('campaign txn', deadlineMs, () =>
        this.client
          .if(key, 'Create', '==', 0)
          .then(this.client.put(key).value(JSON.stringify(info)).lease(id))
          .options(deadlineOption(deadlineMs))
          .commit(),
      );
    } catch (err) {
      void lease.revoke(deadlineOption(deadlineMs)).catch(() => undefined);
      throw err;
    }
    if (!res.succeeded) {
      await lease.revoke(deadlineOption(deadlineMs)).catch(() => undefined);
      return undefined;
    }
    this.leases.set(id, lease);
    return { candidateId, lease: id, createRevision: res.header.revision, ttlMs };
  }

  async keepLeadership(leadership: Leadership, deadlineMs: number): Promise<'alive' | 'lost'> {
    const lease = this.leases.get(leadership.lease);
    if (!lease) return 'lost';
    try {
      await withDeadline(`keepalive of leader lease ${leadership.lease}`, deadlineMs, lease.keepaliveOnce(deadlineOption(deadlineMs)));
      return 'alive';
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError) {
        this.leases.delete(leadership.lease);
        return 'lost';
      }
      throw asRetryable(`keepalive of leader lease ${leadership.lease}`, err);
    }
  }

  async resign(leadership: Leadership, deadlineMs: number): Promise<void> {
    const lease = this.leases.get(leadership.lease);
    this.leases.delete(leadership.lease);
    if (lease) await this.call('resign', deadlineMs, () => lease.revoke(deadlineOption(deadlineMs)));
  }

  async getLeader(deadlineMs: number): Promise<LeaderInfo | undefined> {
    const res = await this.call('get leader', deadlineMs, () => this.client.get(this.keys.leader()).options(deadlineOption(deadlineMs)).exec());
    const kv = res.kvs[0];
    return kv ? parseJson<LeaderInfo>(kv) : undefined;
  }

  async putStatus(leadership: Leadership, status: ControllerStatus, deadlineMs: number): Promise<void> {
    await this.call('put status', deadlineMs, () =>
      this.client
        .if(this.keys.leader(), 'Create', '==', leadership.createRevision)
        .then(this.client.put(this.keys.status()).value(JSON.stringify(status)).lease(leadership.lease))
        .options(deadlineOption(deadlineMs))
        .commit(),
    );
  }

  async getStatus(deadlineMs: number): Promise<ControllerStatus | undefined> {
    const res = await this.call('get status', deadlineMs, () => this.client.get(this.keys.status()).options(deadlineOption(deadlineMs)).exec());
    const kv = res.kvs[0];
    return kv ? parseJson<ControllerStatus>(kv) : undefined;
  }

  async listEvents(limit: number, deadlineMs: number): Promise<{ revision: Revision; events: StoredEvent[] }> {
    const res = await this.call('list events', deadlineMs, () =>
      this.client.getAll().prefix(this.keys.events()).sort('Key', 'Descend').limit(Math.max(1, limit)).options(deadlineOption(deadlineMs)).exec(),
    );
    const events: StoredEvent[] = [];
    for (const kv of [...res.kvs].reverse()) {
      const event = parseJson<ClusterEvent>(kv);
      if (event) events.push({ key: kv.key.toString().slice(this.keys.events().length), event });
    }
    return { revision: res.header.revision, events };
  }

  async watchEvents(fromRevision: Revision, handlers: WatchHandlers<StoredEvent>, deadlineMs: number): Promise<Subscription> {
    return this.watch(this.keys.events(), fromRevision, handlers, deadlineMs, (kv, op) => {
      if (op === 'delete') return undefined;
      const event = parseJson<ClusterEvent>(kv);
      return event ? { key: kv.key.toString().slice(this.keys.events().length), event } : undefined;
    });
  }

  async pruneEvents(keep: number, deadlineMs: number): Promise<number> {
    const prefix = this.keys.events();
    let end: string;
    if (keep > 0) {
      const res = await this.call('list event keys', deadlineMs, () =>
        this.client.getAll().prefix(prefix).sort('Key', 'Descend').limit(keep + 1).options(deadlineOption(deadlineMs)).keys(),
      );
      if (res.length <= keep) return 0;
      end = res[keep - 1]!; // the oldest event kept: delete [prefix, end)
    } else {
      end = `${prefix.slice(0, -1)}0`; // '/' + 1: the whole prefix
    }
    const del = await this.call('prune events', deadlineMs, () =>
      this.client.delete().inRange({ start: prefix, end }).options(deadlineOption(deadlineMs)).exec(),
    );
    return Number(del.deleted);
  }

  async leaseTtl(lease: LeaseId, deadlineMs: number): Promise<{ remainingMs: number; grantedMs: number } | undefined> {
    const res = await this.call(`lease ttl ${lease}`, deadlineMs, () => this.client.leaseClient.leaseTimeToLive({ ID: lease }, deadlineOption(deadlineMs)));
    const ttl = Number(res.TTL);
    if (!(ttl >= 0)) return undefined;
    return { remainingMs: ttl * 1000, grantedMs: Number(res.grantedTTL) * 1000 };
  }

  async setHold(hostId: string, hold: boolean, nowWall: number, deadlineMs: number): Promise<HostRecord> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const cur = await this.getHost(hostId, deadlineMs);
      if (!cur.record || cur.recordRevision === undefined) throw new NotFoundError(`host ${hostId}`);
      if (cur.record.hold === hold) return cur.record;
      const next: HostRecord = { ...cur.record, hold, updatedAt: nowWall };
      const res = await this.commit(
        {
          hosts: [{ hostId, expectRevision: cur.recordRevision, next }],
          events: [{ kind: 'host-hold-changed', hostId, hold, at: nowWall, detail: `operator ${hold ? 'held' : 'released'} host ${hostId}` }],
        },
        deadlineMs,
      );
      if (res.ok) return next;
    }
    throw new TetherError('UNAVAILABLE', `hold of ${hostId}: record kept changing under ${CAS_ATTEMPTS} attempts`, { retryable: true });
  }

  async close(): Promise<void> {
    for (const w of this.watchers) void w.cancel().catch(() => undefined);
    this.watchers.clear();
    this.leases.clear();
    this.client.close();
  }

  private addHostKv(byId: Map<string, { hostId: string; record?: HostRecord; recordRevision?: Revision; alive?: AliveInfo }>, kv: IKeyValue): void {
    const k = this.keys.parseHostKey(kv.key.toString());
    if (!k) return;
    const e = byId.get(k.hostId) ?? { hostId: k.hostId };
    byId.set(k.hostId, e);
    if (k.part === 'alive') {
      e.alive = this.aliveOf(kv);
      return;
    }
    const record = parseJson<HostRecord>(kv);
    if (record) {
      e.record = record;
      e.recordRevision = kv.mod_revision;
    }
  }

  private aliveOf(kv: IKeyValue): AliveInfo {
    const v = parseJson<{ epoch?: number; agentVersion?: string }>(kv) ?? {};
    return { epoch: Number(v.epoch ?? 0), agentVersion: String(v.agentVersion ?? ''), lease: kv.lease };
  }

  /**
   * A prefix watch from `fromRevision`. Any `error` or `disconnected` of the watcher is reported once
   * through `onError` and ends the subscription: the caller re-lists (a reconnecting etcd3 watcher would
   * resume on its own, but a compacted revision or a long outage can lose changes, so we never trust it).
   */
  private async watch<E>(
    prefix: string,
    fromRevision: Revision,
    handlers: WatchHandlers<E>,
    deadlineMs: number,
    map: (kv: IKeyValue, op: 'put' | 'delete') => E | undefined,
  ): Promise<Subscription> {
    const w = this.client.watch().prefix(prefix).startRevision(fromRevision).watcher();
    this.watchers.add(w);
    let open = true;
    const close = async (): Promise<void> => {
      if (!open) return;
      open = false;
      this.watchers.delete(w);
      await withDeadline('cancel watch', 1000, w.cancel()).catch(() => undefined);
    };
    const fail = (err: Error): void => {
      if (!open) return;
      void close();
      handlers.onError(err);
    };
    w.on('put', (kv) => {
      if (!open) return;
      const e = map(kv, 'put');
      if (e !== undefined) handlers.onEvent(e);
    });
    w.on('delete', (kv) => {
      if (!open) return;
      const e = map(kv, 'delete');
      if (e !== undefined) handlers.onEvent(e);
    });
    const connected = new Promise<void>((resolve, reject) => {
      w.once('connected', () => resolve());
      w.on('error', (err) => {
        reject(err);
        fail(err);
      });
      w.on('disconnected', (err) => {
        reject(err);
        fail(err);
      });
    });
    try {
      await withDeadline(`watch ${prefix}`, deadlineMs, connected);
    } catch (err) {
      open = false;
      this.watchers.delete(w);
      void w.cancel().catch(() => undefined);
      throw asRetryable(`watch ${prefix}`, err);
    }
    return { close };
  }

  private call<T>(what: string, deadlineMs: number, fn: () => Promise<T>): Promise<T> {
    return callWithDeadline(what, deadlineMs, fn);
  }
}
