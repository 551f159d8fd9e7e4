import { randomBytes } from 'node:crypto';
import { Etcd3, EtcdLeaseInvalidError, GRPCInvalidArgumentError, type IKeyValue, type IResponseHeader, type Lease, type Watcher } from 'etcd3';
import { DEFAULT_TXN_LIMITS, txnLimitProblem, txnOpCounts, utf8Length, type TxnLimits } from '../../domain/cluster-change.js';
import {
  decodeAliveValue,
  decodeClusterEvent,
  decodeClusterVm,
  decodeControllerStatus,
  decodeHostRecord,
  decodeLeaderInfo,
  type Decoded,
  encodeClusterEvent,
  encodeClusterVm,
  encodeHostRecord,
  type InvalidRecordError,
  type RawValue,
} from '../../domain/codec.js';
import { InvalidRecordLog } from '../../domain/codec/invalid-record-log.js';
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
  StoreServerStatus,
  Subscription,
  VmEntry,
  VmScan,
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

/** Options of {@link EtcdControllerStore}. */
export interface EtcdControllerStoreOptions extends EtcdStoreOptions {
  /**
   * The etcd servers' txn limits (`--max-txn-ops`, request bytes). Default {@link DEFAULT_TXN_LIMITS}
   * (etcd 3.4's defaults); set it when the servers run with other values.
   */
  readonly txnLimits?: TxnLimits;
}

const CAS_ATTEMPTS = 5;

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
  /** Records refused by the codec while reading, once per key and revision (see {@link ControllerStore.invalidRecords}). */
  readonly invalidRecords = new InvalidRecordLog();
  readonly txnLimits: TxnLimits;
  private term = 0;
  private readonly termListeners = new Set<(term: number) => void>();

  constructor(opts: EtcdControllerStoreOptions) {
    this.client = createEtcdClient(opts.endpoints, opts.security);
    this.keys = new ControllerKeys(opts.prefix ?? '/tether/');
    this.txnLimits = opts.txnLimits ?? DEFAULT_TXN_LIMITS;
  }

  onRaftTerm(listener: (term: number) => void): () => void {
    this.termListeners.add(listener);
    return () => this.termListeners.delete(listener);
  }

  raftTerm(): number | undefined {
    return this.term > 0 ? this.term : undefined;
  }

  async serverStatus(deadlineMs: number): Promise<StoreServerStatus> {
    const res = await this.call('server status', deadlineMs, () => this.client.maintenance.status(deadlineOption(deadlineMs)));
    return { version: String(res.version), raftTerm: Number(res.raftTerm) };
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
        const record = this.decoded(kv, decodeHostRecord);
        return record ? { kind: 'record', hostId: k.hostId, record, revision } : undefined;
      }
      return { kind: 'alive', hostId: k.hostId, alive: this.aliveOf(kv), revision };
    });
  }

  async listVms(deadlineMs: number): Promise<VmEntry[]> {
    return (await this.scanVms(deadlineMs)).entries;
  }

  async scanVms(deadlineMs: number): Promise<VmScan> {
    const res = await this.call('list vms', deadlineMs, () => this.client.getAll().prefix(this.keys.vms()).options(deadlineOption(deadlineMs)).exec());
    const entries: VmEntry[] = [];
    const invalid: InvalidRecordError[] = [];
    for (const kv of res.kvs) {
      const record = this.decoded(kv, decodeClusterVm, (e) => invalid.push(e));
      if (record) entries.push({ key: kv.key.toString().slice(this.keys.vms().length), record, revision: kv.mod_revision });
    }
    return { entries, invalid };
  }

  /** `key` relative to the prefix, as the codec names it. */
  private rel(key: string): string {
    return key.slice(this.keys.prefix.length);
  }

  /**
   * Applies `change` in one txn. Every value is written through the codec's encoders: a record a
   * reader would refuse is never written (INVALID_RECORD, not retryable).
   */
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
      else ops.push(this.client.put(key).value(encodeHostRecord(this.rel(key), h.next)));
    }
    for (const g of change.guards ?? []) cmps.push([this.keys.hostRecord(g.hostId), 'Mod', g.expectRevision]);
    for (const v of change.vms ?? []) {
      const key = this.keys.vm(v.key);
      cmps.push(v.expectRevision === null ? [key, 'Create', 0] : [key, 'Mod', v.expectRevision]);
      if (v.next === null) dels.push(this.client.delete().key(key));
      else ops.push(this.client.put(key).value(encodeClusterVm(this.rel(key), v.next)));
    }
    for (const e of change.events ?? []) {
      const key = this.keys.event(e.at);
      if (cmps.length === 0) cmps.push([key, 'Create', 0]);
      ops.push(this.client.put(key).value(encodeClusterEvent(this.rel(key), e)));
    }
    if (ops.length + dels.length === 0) throw new TetherError('INVALID_ARGUMENT', 'commit: nothing to write');
    const counts = txnOpCounts(change, change.leader !== undefined);
    if (counts.compares !== cmps.length || counts.success !== ops.length + dels.length) {
      throw new TetherError('INTERNAL', `commit: op count mismatch (${cmps.length}/${ops.length + dels.length} built, ${counts.compares}/${counts.success} counted)`);
    }
    const tooLarge = txnLimitProblem(counts, this.requestBytes(cmps, change), this.txnLimits);
    if (tooLarge !== undefined) throw new TetherError('FAILED_PRECONDITION', `commit: ${tooLarge}`, { retryable: false, details: { ...counts } });
    const [first, ...rest] = cmps;
    let res;
    try {
      res = await this.call('controller txn', deadlineMs, () => {
        let b = this.client.if(first![0], first![1], '==', first![2]);
        for (const [k, col, v] of rest) b = b.and(k, col, '==', v);
        return b.then(...ops, ...dels).options(deadlineOption(deadlineMs)).commit();
      });
    } catch (err) {
      // etcd answers InvalidArgument for a txn it will never take (too many ops, request too large,
      // duplicate keys): retrying cannot help.
      const cause = err instanceof TetherError && err.cause !== undefined ? err.cause : err;
      if (cause instanceof GRPCInvalidArgumentError) {
        throw new TetherError('FAILED_PRECONDITION', `controller txn refused by etcd: ${cause.message}`, { cause, retryable: false, details: { ...counts } });
      }
      throw err;
    }
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
      const res = await withDeadline(`keepalive of leader lease ${leadership.lease}`, deadlineMs, lease.keepaliveOnce(deadlineOption(deadlineMs)));
      this.noteHeader(res.header);
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
    return kv ? this.decoded(kv, decodeLeaderInfo) : undefined;
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
    return kv ? this.decoded(kv, decodeControllerStatus) : undefined;
  }

  async listEvents(limit: number, deadlineMs: number): Promise<{ revision: Revision; events: StoredEvent[] }> {
    const res = await this.call('list events', deadlineMs, () =>
      this.client.getAll().prefix(this.keys.events()).sort('Key', 'Descend').limit(Math.max(1, limit)).options(deadlineOption(deadlineMs)).exec(),
    );
    const events: StoredEvent[] = [];
    for (const kv of [...res.kvs].reverse()) {
      const event = this.decoded(kv, decodeClusterEvent);
      if (event) events.push({ key: kv.key.toString().slice(this.keys.events().length), event });
    }
    return { revision: res.header.revision, events };
  }

  async watchEvents(fromRevision: Revision, handlers: WatchHandlers<StoredEvent>, deadlineMs: number): Promise<Subscription> {
    return this.watch(this.keys.events(), fromRevision, handlers, deadlineMs, (kv, op) => {
      if (op === 'delete') return undefined;
      const event = this.decoded(kv, decodeClusterEvent);
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
    const record = this.decoded(kv, decodeHostRecord);
    if (record) {
      e.record = record;
      e.recordRevision = kv.mod_revision;
    }
  }

  private aliveOf(kv: IKeyValue): AliveInfo {
    // An unreadable value is reported, but the KEY still exists on its lease (the heartbeat): never treated as absent.
    const v = this.decoded(kv, decodeAliveValue);
    return { epoch: v?.epoch ?? 0, agentVersion: v?.agentVersion ?? '', lease: kv.lease };
  }

  /**
   * `kv` decoded by the codec (domain/codec.ts), or undefined when it fails its schema: then the
   * refusal (key, field, revision) is reported once per revision in {@link invalidRecords} and handed
   * to `onInvalid`. A key that reads fine again is cleared there.
   */
  private decoded<T>(kv: IKeyValue, decode: (key: string, raw: RawValue) => Decoded<T>, onInvalid?: (e: InvalidRecordError) => void): T | undefined {
    const key = kv.key.toString().slice(this.keys.prefix.length);
    const d = decode(key, kv.value);
    if (d.ok) {
      this.invalidRecords.clear(key);
      return d.value;
    }
    const err = d.error.at(kv.mod_revision);
    this.invalidRecords.report(err, kv.mod_revision);
    onInvalid?.(err);
    return undefined;
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
    // Before etcd3's own 'data' listener turns the response into put/delete events: the term of a
    // response is known before any of its changes is delivered.
    w.prependListener('data', (res: { header?: IResponseHeader }) => this.noteHeader(res.header));
    w.on('connected', (res: { header?: IResponseHeader }) => this.noteHeader(res.header));
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

  /** Bytes of the keys and values a txn for `change` sends (compare keys, put keys and values, delete keys). */
  private requestBytes(cmps: readonly [string, string, unknown][], change: Change): number {
    let bytes = 0;
    for (const [k] of cmps) bytes += utf8Length(k);
    for (const h of change.hosts ?? []) bytes += utf8Length(this.keys.hostRecord(h.hostId)) + (h.next ? utf8Length(JSON.stringify(h.next)) : 0);
    for (const v of change.vms ?? []) bytes += utf8Length(this.keys.vm(v.key)) + (v.next ? utf8Length(JSON.stringify(v.next)) : 0);
    for (const e of change.events ?? []) bytes += utf8Length(this.keys.event(e.at)) + utf8Length(JSON.stringify(e));
    return bytes;
  }

  /** Notes the raft term of a response header; a term higher than any seen before goes to the listeners. */
  private noteHeader(header: Pick<IResponseHeader, 'raft_term'> | undefined): void {
    const term = Number(header?.raft_term);
    if (!Number.isSafeInteger(term) || term <= this.term) return;
    this.term = term;
    for (const l of [...this.termListeners]) l(term);
  }

  private async call<T>(what: string, deadlineMs: number, fn: () => Promise<T>): Promise<T> {
    const res = await callWithDeadline(what, deadlineMs, fn);
    if (typeof res === 'object' && res !== null && 'header' in res) this.noteHeader((res as { header?: IResponseHeader }).header);
    return res;
  }
}
