import { changeTxn } from '../../domain/change-txn.js';
import { DEFAULT_TXN_LIMITS, type TxnLimits } from '../../domain/cluster-change.js';
import {
  decodeAliveValue,
  decodeClusterEvent,
  decodeClusterVm,
  decodeControllerStatus,
  decodeHostRecord,
  decodeLeaderInfo,
  type Decoded,
  type InvalidRecordError,
  type RawValue,
} from '../../domain/codec.js';
import { InvalidRecordLog } from '../../domain/codec/invalid-record-log.js';
import { NotFoundError, TetherError } from '../../domain/errors.js';
import type { HostRecord } from '../../domain/host-record.js';
import { Keyspace, type IdSource } from '../../domain/keyspace.js';
import { createIs, del, put } from '../../domain/kv-txn.js';
import type { Clock } from '../../ports/clock.js';
import type { LeaseId } from '../../ports/cluster-store.js';
import type {
  AliveInfo,
  Change,
  CommitResult,
  ControllerStatus,
  ControllerStore,
  HostRead,
  HostsSnapshot,
  HostWatchHandlers,
  HostWatchEvent,
  LeaderInfo,
  Leadership,
  Revision,
  StoredEvent,
  StoreServerStatus,
  Subscription,
  VmEntry,
  VmScan,
  VmWatchBatch,
  VmWatchEvent,
  WatchHandlers,
} from '../../ports/controller-store.js';
import type { Kv, KvEntry, KvHeader } from '../../ports/kv.js';
import type { HostVmBatch, HostVmIndexStore, HostVmList, VmRead } from '../../ports/host-vm-index.js';
import { getVm, listHostVms, watchHostVms, type HostVmIndexDeps } from './host-vm-index.js';
import { rangePaged, type PagedResult, type RangePagedOptions } from './range-paged.js';

/** Options of {@link KvControllerStore}. */
export interface KvControllerStoreOptions {
  /** Key prefix, default `/tether/`. */
  readonly prefix?: string;
  /** Wall time of the leader record's `since`. */
  readonly clock: Clock;
  /**
   * The etcd servers' txn limits (`--max-txn-ops`, request bytes). Default {@link DEFAULT_TXN_LIMITS}
   * (etcd 3.4's defaults); set it when the servers run with other values.
   */
  readonly txnLimits?: TxnLimits;
  /** The 8-hex-digit random part of event keys (the etcd factory uses `randomBytes`; a simulation seeds it). */
  readonly idSource: IdSource;
}

/** Compare-and-swap attempts of one {@link KvControllerStore.setHold} before a retryable UNAVAILABLE. */
const CAS_ATTEMPTS = 5;
/** Concurrent reads of one {@link KvControllerStore.listEvents}. */
const EVENT_READS = 8;

type HostAcc = { hostId: string; record?: HostRecord; recordRevision?: Revision; alive?: AliveInfo };

/**
 * {@link ControllerStore} over any {@link Kv}: real etcd (`EtcdControllerStore`) or the etcd model.
 *
 * Invariants: every call is bounded by its deadline (the `Kv` failure contract); every write is
 * ONE txn built by a pure builder ({@link changeTxn}) and guarded by `mod_revision` compares (and,
 * for the controller, by its leadership's create revision); a txn over {@link txnLimits}, or one
 * the store refuses as malformed or too large, is a NON-retryable FAILED_PRECONDITION; every record
 * read goes through the codec, and a refused one is skipped and reported once per key and revision
 * in {@link invalidRecords}; the raft term of every response header is tracked (watch batches'
 * headers before their changes are delivered). Leader election is a lease + txn campaign driven by
 * the caller's keepalives (not etcd3's `Election`, whose keepalive declares loss only after 2 x TTL).
 */
export class KvControllerStore implements ControllerStore, HostVmIndexStore {
  readonly keys: Keyspace;
  /** Records refused by the codec while reading, once per key and revision (see {@link ControllerStore.invalidRecords}). */
  readonly invalidRecords = new InvalidRecordLog();
  readonly txnLimits: TxnLimits;
  private readonly clock: Clock;
  /** Leader leases this store holds (granted by {@link campaign}). */
  private readonly leases = new Set<LeaseId>();
  private readonly watches = new Set<Subscription>();
  private term = 0;
  private readonly termListeners = new Set<(term: number) => void>();

  constructor(
    readonly kv: Kv,
    opts: KvControllerStoreOptions,
  ) {
    this.keys = new Keyspace(opts.prefix ?? '/tether/', opts.idSource);
    this.txnLimits = opts.txnLimits ?? DEFAULT_TXN_LIMITS;
    this.clock = opts.clock;
  }

  onRaftTerm(listener: (term: number) => void): () => void {
    this.termListeners.add(listener);
    return () => this.termListeners.delete(listener);
  }

  raftTerm(): number | undefined {
    return this.term > 0 ? this.term : undefined;
  }

  async serverStatus(deadlineMs: number): Promise<StoreServerStatus> {
    const res = this.noted(await this.kv.status(deadlineMs));
    return { version: res.version, raftTerm: res.raftTerm };
  }

  async listHosts(deadlineMs: number): Promise<HostsSnapshot> {
    const res = await this.paged(this.keys.hosts(), {}, deadlineMs);
    const byId = new Map<string, HostAcc>();
    for (const kv of res.kvs) this.addHostKv(byId, kv);
    return { revision: String(res.revision), hosts: [...byId.values()] };
  }

  async getHost(hostId: string, deadlineMs: number): Promise<HostRead> {
    const res = await this.paged(this.keys.host(hostId), {}, deadlineMs);
    const byId = new Map<string, HostAcc>();
    for (const kv of res.kvs) this.addHostKv(byId, kv);
    return { ...(byId.get(hostId) ?? { hostId }), readRevision: String(res.revision) };
  }

  async watchHosts(fromRevision: Revision, handlers: HostWatchHandlers, deadlineMs: number): Promise<Subscription> {
    const barrier = this.keys.hostsBarrier();
    return this.watch(this.keys.hosts(), fromRevision, handlers, deadlineMs, (kv, type): HostWatchEvent | undefined => {
      if (kv.key === barrier) {
        if (type === 'put') handlers.onProgress?.(String(kv.modRevision));
        return undefined;
      }
      const k = this.keys.parseHostKey(kv.key);
      if (!k) return undefined;
      const revision = String(kv.modRevision);
      if (type === 'delete') return k.part === 'record' ? { kind: 'record-deleted', hostId: k.hostId, revision } : { kind: 'alive-deleted', hostId: k.hostId, revision };
      if (k.part === 'record') {
        const record = this.decoded(kv, decodeHostRecord);
        return record ? { kind: 'record', hostId: k.hostId, record, revision } : undefined;
      }
      return { kind: 'alive', hostId: k.hostId, alive: this.aliveOf(kv), revision };
    });
  }

  /** One callback per watch response: etcd never splits a revision across responses (see {@link VmWatchBatch}). */
  async watchVms(fromRevision: Revision, handlers: WatchHandlers<VmWatchBatch>, deadlineMs: number): Promise<Subscription> {
    return this.watch(
      this.keys.vms(),
      fromRevision,
      handlers,
      deadlineMs,
      () => undefined,
      (events): VmWatchBatch | undefined => {
        const out: VmWatchEvent[] = [];
        let top = 0;
        for (const { kv, type } of events) {
          const key = this.keys.parseVmKey(kv.key);
          if (key === undefined) continue;
          const revision = String(kv.modRevision);
          if (kv.modRevision > top) top = kv.modRevision;
          if (type === 'delete') {
            out.push({ kind: 'deleted', key, revision });
            continue;
          }
          const record = this.decoded(kv, decodeClusterVm);
          out.push(record ? { kind: 'put', entry: { key, record, revision } } : { kind: 'deleted', key, revision, invalid: true });
        }
        return out.length > 0 ? { revision: String(top), events: out } : undefined;
      },
    );
  }

  /** One host's VM index, paged at one revision (the agent's list; src/adapters/kv/host-vm-index.ts). */
  listHostVms(hostId: string, deadlineMs: number): Promise<HostVmList> {
    return listHostVms(this.indexDeps(), hostId, deadlineMs);
  }

  /** Watches one host's VM index from `fromRevision` (inclusive), one callback per response. */
  watchHostVms(hostId: string, fromRevision: Revision, handlers: WatchHandlers<HostVmBatch>, deadlineMs: number): Promise<Subscription> {
    return watchHostVms(this.indexDeps(), hostId, fromRevision, handlers, deadlineMs);
  }

  /** `vms/<key>` by name (one single-key read). */
  getVm(key: string, deadlineMs: number): Promise<VmRead> {
    return getVm(this.indexDeps(), key, deadlineMs);
  }

  private indexDeps(): HostVmIndexDeps {
    return { kv: this.kv, keys: this.keys, invalidRecords: this.invalidRecords, clock: this.clock, onHeader: (h) => this.noteHeader(h) };
  }

  async listVms(deadlineMs: number): Promise<VmEntry[]> {
    return (await this.scanVms(deadlineMs)).entries;
  }

  async scanVms(deadlineMs: number): Promise<VmScan> {
    const res = await this.paged(this.keys.vms(), {}, deadlineMs);
    const entries: VmEntry[] = [];
    const invalid: InvalidRecordError[] = [];
    for (const kv of res.kvs) {
      const record = this.decoded(kv, decodeClusterVm, (e) => invalid.push(e));
      if (record) entries.push({ key: this.keys.parseVmKey(kv.key)!, record, revision: String(kv.modRevision) });
    }
    return { entries, invalid, revision: String(res.revision) };
  }

  /**
   * Applies `change` in one txn (built by {@link changeTxn}: codec-encoded values, counted ops,
   * limits checked before sending). On a lost compare with a leadership, a read of the leader key
   * tells `not-leader` from `conflict`.
   */
  async commit(change: Change, deadlineMs: number): Promise<CommitResult> {
    const { txn, counts } = changeTxn(this.keys, change, this.txnLimits, change.leader?.createRevision);
    let res;
    try {
      res = this.noted(await this.kv.txn(txn, deadlineMs));
    } catch (err) {
      if (err instanceof TetherError && err.code === 'FAILED_PRECONDITION') {
        throw new TetherError('FAILED_PRECONDITION', `controller ${err.message}`, { cause: err, retryable: false, details: { ...counts } });
      }
      throw err;
    }
    if (res.succeeded) return { ok: true, revision: String(res.header.revision) };
    if (change.leader) {
      const cur = this.noted(await this.kv.range({ key: this.keys.leader() }, deadlineMs));
      if (String(cur.kvs[0]?.createRevision) !== String(change.leader.createRevision)) return { ok: false, reason: 'not-leader' };
    }
    return { ok: false, reason: 'conflict' };
  }

  async campaign(candidateId: string, ttlMs: number, deadlineMs: number): Promise<Leadership | undefined> {
    const key = this.keys.leader();
    const cur = this.noted(await this.kv.range({ key }, deadlineMs));
    if (cur.kvs.length > 0) return undefined;
    const lease = this.noted(await this.kv.leaseGrant(Math.max(1000, ttlMs), deadlineMs));
    const info: LeaderInfo = { candidateId, since: this.clock.now() };
    let res;
    try {
      res = this.noted(await this.kv.txn({ compare: [createIs(key, 0)], success: [put(key, JSON.stringify(info), lease.id)] }, deadlineMs));
    } catch (err) {
      void this.kv.leaseRevoke(lease.id, deadlineMs).catch(() => undefined);
      throw err;
    }
    if (!res.succeeded) {
      await this.kv.leaseRevoke(lease.id, deadlineMs).catch(() => undefined);
      return undefined;
    }
    this.leases.add(lease.id);
    return { candidateId, lease: lease.id, createRevision: String(res.header.revision), ttlMs };
  }

  async keepLeadership(leadership: Leadership, deadlineMs: number): Promise<'alive' | 'lost'> {
    if (!this.leases.has(leadership.lease)) return 'lost';
    const res = this.noted(await this.kv.leaseKeepAlive(leadership.lease, deadlineMs));
    if (res.ttlMs > 0) return 'alive';
    this.leases.delete(leadership.lease);
    return 'lost';
  }

  async resign(leadership: Leadership, deadlineMs: number): Promise<void> {
    const known = this.leases.delete(leadership.lease);
    if (known) this.noted(await this.kv.leaseRevoke(leadership.lease, deadlineMs));
  }

  async getLeader(deadlineMs: number): Promise<LeaderInfo | undefined> {
    const kv = this.noted(await this.kv.range({ key: this.keys.leader() }, deadlineMs)).kvs[0];
    return kv ? this.decoded(kv, decodeLeaderInfo) : undefined;
  }

  async putStatus(leadership: Leadership, status: ControllerStatus, deadlineMs: number): Promise<void> {
    const key = this.keys.status();
    this.noted(
      await this.kv.txn({ compare: [createIs(this.keys.leader(), leadership.createRevision)], success: [put(key, JSON.stringify(status), leadership.lease)] }, deadlineMs),
    );
  }

  async syncHosts(leadership: Leadership, deadlineMs: number): Promise<Revision> {
    const res = this.noted(
      await this.kv.txn({ compare: [createIs(this.keys.leader(), leadership.createRevision)], success: [put(this.keys.hostsBarrier(), JSON.stringify({ by: leadership.candidateId }))] }, deadlineMs),
    );
    if (!res.succeeded) throw new TetherError('FAILED_PRECONDITION', 'host-view barrier: this controller no longer holds controller/leader');
    return String(res.header.revision);
  }

  async getFreezeContract(deadlineMs: number): Promise<unknown> {
    const kv = this.noted(await this.kv.range({ key: this.keys.freezeContract() }, deadlineMs)).kvs[0];
    if (!kv) return undefined;
    try {
      return JSON.parse(kv.value) as unknown;
    } catch {
      return null; // unreadable: the core reports it and writes a new one
    }
  }

  async putFreezeContract(leadership: Leadership, contract: unknown, deadlineMs: number): Promise<void> {
    const res = this.noted(
      await this.kv.txn({ compare: [createIs(this.keys.leader(), leadership.createRevision)], success: [put(this.keys.freezeContract(), JSON.stringify(contract))] }, deadlineMs),
    );
    if (!res.succeeded) throw new TetherError('FAILED_PRECONDITION', 'freeze contract: this controller no longer holds controller/leader');
  }

  async getStatus(deadlineMs: number): Promise<ControllerStatus | undefined> {
    const kv = this.noted(await this.kv.range({ key: this.keys.status() }, deadlineMs)).kvs[0];
    return kv ? this.decoded(kv, decodeControllerStatus) : undefined;
  }

  /**
   * The newest `limit` events, oldest first: the event keys (keys only) at one revision, then the
   * values of the newest `limit` of them read at that same revision.
   */
  async listEvents(limit: number, deadlineMs: number): Promise<{ revision: Revision; events: StoredEvent[] }> {
    const keys = await this.paged(this.keys.events(), { keysOnly: true }, deadlineMs);
    const revision = keys.revision;
    const newest = keys.kvs.slice(Math.max(0, keys.kvs.length - Math.max(1, limit))).map((e) => e.key);
    const values = new Map<string, KvEntry>();
    if (newest.length === keys.kvs.length) {
      const all = await this.paged(this.keys.events(), { revision }, deadlineMs);
      for (const kv of all.kvs) values.set(kv.key, kv);
    } else {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < newest.length) {
          const key = newest[next++]!;
          const kv = this.noted(await this.kv.range({ key, revision }, deadlineMs)).kvs[0];
          if (kv) values.set(key, kv);
        }
      };
      await Promise.all(Array.from({ length: Math.min(EVENT_READS, newest.length) }, worker));
    }
    const events: StoredEvent[] = [];
    for (const key of newest) {
      const kv = values.get(key);
      const event = kv ? this.decoded(kv, decodeClusterEvent) : undefined;
      if (event) events.push({ key: this.keys.parseEventKey(key)!, event });
    }
    return { revision: String(revision), events };
  }

  async watchEvents(fromRevision: Revision, handlers: WatchHandlers<StoredEvent>, deadlineMs: number): Promise<Subscription> {
    return this.watch(this.keys.events(), fromRevision, handlers, deadlineMs, (kv, type) => {
      if (type === 'delete') return undefined;
      const event = this.decoded(kv, decodeClusterEvent);
      return event ? { key: this.keys.parseEventKey(kv.key)!, event } : undefined;
    });
  }

  /** Deletes all but the newest `keep` events, oldest first, in txns within {@link txnLimits}. */
  async pruneEvents(keep: number, deadlineMs: number): Promise<number> {
    const keys = await this.paged(this.keys.events(), { keysOnly: true }, deadlineMs);
    const old = keys.kvs.slice(0, Math.max(0, keys.kvs.length - Math.max(0, keep))).map((e) => e.key);
    let deleted = 0;
    const batch = Math.max(1, this.txnLimits.maxOps);
    for (let i = 0; i < old.length; i += batch) {
      const res = this.noted(await this.kv.txn({ compare: [], success: old.slice(i, i + batch).map(del) }, deadlineMs));
      for (const r of res.responses) if (r.op === 'delete') deleted += r.deleted;
    }
    return deleted;
  }

  async leaseTtl(lease: LeaseId, deadlineMs: number): Promise<{ remainingMs: number; grantedMs: number } | undefined> {
    const res = await this.kv.leaseTimeToLive(lease, deadlineMs);
    if (!res) return undefined;
    this.noteHeader(res.header);
    return { remainingMs: res.remainingMs, grantedMs: res.grantedMs };
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
    for (const w of [...this.watches]) void w.close().catch(() => undefined);
    this.watches.clear();
    this.leases.clear();
    await this.kv.close();
  }

  private addHostKv(byId: Map<string, HostAcc>, kv: KvEntry): void {
    const k = this.keys.parseHostKey(kv.key);
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
      e.recordRevision = String(kv.modRevision);
    }
  }

  private aliveOf(kv: KvEntry): AliveInfo {
    // An unreadable value is reported, but the KEY still exists on its lease (the heartbeat): never treated as absent.
    const v = this.decoded(kv, decodeAliveValue);
    return { epoch: v?.epoch ?? 0, agentVersion: v?.agentVersion ?? '', lease: kv.lease ?? '0' };
  }

  /**
   * `kv` decoded by the codec (domain/codec.ts), or undefined when it fails its schema: then the
   * refusal (key, field, revision) is reported once per revision in {@link invalidRecords} and handed
   * to `onInvalid`. A key that reads fine again is cleared there.
   */
  private decoded<T>(kv: KvEntry, decode: (key: string, raw: RawValue) => Decoded<T>, onInvalid?: (e: InvalidRecordError) => void): T | undefined {
    const key = this.keys.rel(kv.key);
    const d = decode(key, kv.value);
    if (d.ok) {
      this.invalidRecords.clear(key);
      return d.value;
    }
    const rev = String(kv.modRevision);
    const err = d.error.at(rev);
    this.invalidRecords.report(err, rev);
    onInvalid?.(err);
    return undefined;
  }

  /**
   * A prefix watch from `fromRevision`. Any error of the `Kv` watch (compaction, disconnect) is
   * reported once through `onError` and ends the subscription: the caller re-lists. Each batch's
   * header (raft term) is noted before its changes are delivered.
   */
  private async watch<E>(
    prefix: string,
    fromRevision: Revision,
    handlers: WatchHandlers<E>,
    deadlineMs: number,
    map: (kv: KvEntry, type: 'put' | 'delete') => E | undefined,
    batch?: (events: readonly { readonly kv: KvEntry; readonly type: 'put' | 'delete' }[]) => E | undefined,
  ): Promise<Subscription> {
    let open = true;
    const ref: { sub?: Subscription } = {};
    const close = async (): Promise<void> => {
      if (!open) return;
      open = false;
      if (ref.sub) {
        this.watches.delete(ref.sub);
        await ref.sub.close().catch(() => undefined);
      }
    };
    const sub = await this.kv.watch(
      { key: prefix, prefix: true, fromRevision: Number(fromRevision) },
      {
        onEvents: (events, header) => {
          if (!open) return;
          this.noteHeader(header);
          if (batch) {
            const e = batch(events);
            if (e !== undefined) handlers.onEvent(e);
            return;
          }
          for (const ev of events) {
            if (!open) return;
            const e = map(ev.kv, ev.type);
            if (e !== undefined) handlers.onEvent(e);
          }
        },
        onError: (err) => {
          if (!open) return;
          void close();
          handlers.onError(err);
        },
      },
      deadlineMs,
    );
    ref.sub = sub;
    if (!open) {
      // onError ran before the watch resolved: it is over already.
      void sub.close().catch(() => undefined);
      return { close: async () => undefined };
    }
    this.watches.add(sub);
    return { close };
  }

  /**
   * Every key under `prefix`, read in pages pinned to one revision ({@link rangePaged}: no reply
   * grows with the cluster), each page's raft term noted. Bounded by `deadlineMs` as a whole.
   */
  private paged(prefix: string, opts: Pick<RangePagedOptions, 'keysOnly' | 'revision'>, deadlineMs: number): Promise<PagedResult> {
    return rangePaged(this.kv, { key: prefix, prefix: true }, { ...opts, clock: this.clock, onPage: (h) => this.noteHeader(h) }, deadlineMs);
  }

  /** `res` after noting its header's raft term. */
  private noted<T extends { readonly header: KvHeader }>(res: T): T {
    this.noteHeader(res.header);
    return res;
  }

  /** Notes the raft term of a response header; a term higher than any seen before goes to the listeners. */
  private noteHeader(header: KvHeader | undefined): void {
    const term = header?.raftTerm ?? 0;
    if (!Number.isSafeInteger(term) || term <= this.term) return;
    this.term = term;
    for (const l of [...this.termListeners]) l(term);
  }
}
