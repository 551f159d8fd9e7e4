/**
 * An in-memory {@link ControllerStore} with etcd's semantics where the controller relies on them:
 * one revision counter, `mod_revision`/`create_revision` compares, all-or-nothing txns, leases that
 * expire on a {@link Clock} and take their keys with them, ordered prefix watches from a revision.
 * For unit tests on a fake clock and for simulations; hosts are simulated with {@link putRaw},
 * {@link grantLease}, {@link keepaliveLease} and {@link revokeLease}.
 */
import { DEFAULT_TXN_LIMITS, estimateTxnBytes, txnLimitProblem, txnOpCounts, type TxnLimits } from '../domain/cluster-change.js';
import type { ClusterEvent } from '../domain/cluster-event.js';
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
} from '../domain/codec.js';
import { InvalidRecordLog } from '../domain/codec/invalid-record-log.js';
import { NotFoundError, TetherError } from '../domain/errors.js';
import type { HostRecord } from '../domain/host-record.js';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type { LeaseId } from '../ports/cluster-store.js';
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
} from '../ports/controller-store.js';

interface Kv {
  value: string;
  create: number;
  mod: number;
  lease?: LeaseId;
}

interface MemLease {
  ttlMs: number;
  timer: TimerHandle;
}

interface MemWatch {
  prefix: string;
  fn: (key: string, kv: Kv, op: 'put' | 'delete') => void;
  onError: (err: Error) => void;
}

/** Options of {@link MemoryControllerStore}. */
export interface MemoryControllerStoreOptions {
  /** Txn limits enforced like etcd's (default {@link DEFAULT_TXN_LIMITS}). */
  readonly txnLimits?: TxnLimits;
  /** What {@link MemoryControllerStore.serverStatus} reports as the version (default `3.4.23`). */
  readonly version?: string;
}

/**
 * See the module doc. `prefix` defaults to `/tether/` like the etcd adapter. Txns over
 * `txnLimits` are refused as etcd refuses them (counted by {@link txnOpCounts}). A raft term is
 * simulated: {@link changeRaftTerm} starts a new one, reported in the "header" of every later call
 * and watch delivery.
 */
export class MemoryControllerStore implements ControllerStore {
  readonly txnLimits: TxnLimits;
  private readonly version: string;
  private term = 1;
  private reportedTerm = 0;
  private readonly termListeners = new Set<(term: number) => void>();
  private rev = 1;
  private readonly kv = new Map<string, Kv>();
  private readonly leases = new Map<LeaseId, MemLease>();
  private readonly watches = new Set<MemWatch>();
  /** Recent changes, for watches that start at an older revision (bounded). */
  private readonly history: { key: string; kv: Kv; op: 'put' | 'delete' }[] = [];
  /** Records refused by the codec while reading, once per key and revision. */
  readonly invalidRecords = new InvalidRecordLog();
  private nextLease = 1000;
  private nextEvent = 0;
  /** When true, every call rejects with a retryable TIMEOUT (a store that hangs, seen through deadlines). */
  unavailable = false;

  constructor(
    private readonly clock: Clock,
    readonly prefix = '/tether/',
    opts: MemoryControllerStoreOptions = {},
  ) {
    this.txnLimits = opts.txnLimits ?? DEFAULT_TXN_LIMITS;
    this.version = opts.version ?? '3.4.23';
  }

  /** Simulates a raft leader change: a new term, seen in the headers of later responses. */
  changeRaftTerm(): number {
    return ++this.term;
  }

  // ---- simulation helpers -------------------------------------------------------------------

  /** Grants a lease of `ttlMs` that expires unless kept alive. */
  grantLease(ttlMs: number): LeaseId {
    const id = String(this.nextLease++);
    this.leases.set(id, { ttlMs, timer: this.clock.setTimer(ttlMs, () => this.expire(id)) });
    return id;
  }

  /** Renews a lease for its full TTL; false when it is gone. */
  keepaliveLease(id: LeaseId): boolean {
    const l = this.leases.get(id);
    if (!l) return false;
    this.clock.clearTimer(l.timer);
    l.timer = this.clock.setTimer(l.ttlMs, () => this.expire(id));
    return true;
  }

  /** Revokes a lease now, deleting its keys. */
  revokeLease(id: LeaseId): void {
    this.expire(id);
  }

  /** Puts `value` (JSON-encoded) at `key` under the prefix, optionally on a lease. Returns the revision. */
  putRaw(key: string, value: unknown, lease?: LeaseId): Revision {
    const rev = ++this.rev;
    this.putAt(this.prefix + key, JSON.stringify(value), rev, lease);
    return String(rev);
  }

  /** Deletes `key` under the prefix. */
  deleteRaw(key: string): void {
    const full = this.prefix + key;
    if (!this.kv.has(full)) return;
    this.deleteAt(full, ++this.rev);
  }

  /** The JSON value at `key` under the prefix, parsed. */
  getRaw<T>(key: string): T | undefined {
    const kv = this.kv.get(this.prefix + key);
    return kv ? (JSON.parse(kv.value) as T) : undefined;
  }

  /** Fails every open watch (as a broken etcd watch stream would): each gets `onError` once and ends. */
  failWatches(err = new Error('simulated watch failure')): void {
    const ws = [...this.watches];
    this.watches.clear();
    for (const w of ws) queueMicrotask(() => w.onError(err));
  }

  /** Number of open watches. */
  get openWatches(): number {
    return this.watches.size;
  }

  /** Every event stored, oldest first. */
  allEvents(): ClusterEvent[] {
    return [...this.kv.entries()]
      .filter(([k]) => k.startsWith(`${this.prefix}events/`))
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([, v]) => JSON.parse(v.value) as ClusterEvent);
  }

  // ---- ControllerStore -----------------------------------------------------------------------

  onRaftTerm(listener: (term: number) => void): () => void {
    this.termListeners.add(listener);
    return () => this.termListeners.delete(listener);
  }

  raftTerm(): number | undefined {
    return this.reportedTerm > 0 ? this.reportedTerm : undefined;
  }

  async serverStatus(_deadlineMs: number): Promise<StoreServerStatus> {
    this.check();
    return { version: this.version, raftTerm: this.term };
  }

  async listHosts(_deadlineMs: number): Promise<HostsSnapshot> {
    this.check();
    const byId = new Map<string, { hostId: string; record?: HostRecord; recordRevision?: Revision; alive?: AliveInfo }>();
    for (const [key, kv] of this.kv) {
      const k = this.parseHostKey(key);
      if (!k) continue;
      const e = byId.get(k.hostId) ?? { hostId: k.hostId };
      byId.set(k.hostId, e);
      if (k.part === 'alive') e.alive = this.aliveOf(key, kv);
      else {
        const record = this.decoded(key, kv, decodeHostRecord);
        if (record) {
          e.record = record;
          e.recordRevision = String(kv.mod);
        }
      }
    }
    return { revision: String(this.rev), hosts: [...byId.values()] };
  }

  async getHost(hostId: string, deadlineMs: number): Promise<HostEntry> {
    return (await this.listHosts(deadlineMs)).hosts.find((h) => h.hostId === hostId) ?? { hostId };
  }

  async watchHosts(fromRevision: Revision, handlers: WatchHandlers<HostWatchEvent>, _deadlineMs: number): Promise<Subscription> {
    this.check();
    return this.watch(`${this.prefix}hosts/`, Number(fromRevision), handlers, (key, kv, op) => {
      const k = this.parseHostKey(key);
      if (!k) return;
      const revision = String(kv.mod);
      if (op === 'delete') handlers.onEvent(k.part === 'record' ? { kind: 'record-deleted', hostId: k.hostId, revision } : { kind: 'alive-deleted', hostId: k.hostId, revision });
      else if (k.part === 'record') {
        const record = this.decoded(key, kv, decodeHostRecord);
        if (record) handlers.onEvent({ kind: 'record', hostId: k.hostId, record, revision });
      }
      else handlers.onEvent({ kind: 'alive', hostId: k.hostId, alive: this.aliveOf(key, kv), revision });
    });
  }

  async listVms(deadlineMs: number): Promise<VmEntry[]> {
    return (await this.scanVms(deadlineMs)).entries;
  }

  async scanVms(_deadlineMs: number): Promise<VmScan> {
    this.check();
    const p = `${this.prefix}vms/`;
    const entries: VmEntry[] = [];
    const invalid: InvalidRecordError[] = [];
    for (const [k, v] of [...this.kv.entries()].filter(([key]) => key.startsWith(p)).sort(([a], [b]) => (a < b ? -1 : 1))) {
      const record = this.decoded(k, v, decodeClusterVm, (e) => invalid.push(e));
      if (record) entries.push({ key: k.slice(p.length), record, revision: String(v.mod) });
    }
    return { entries, invalid };
  }

  async commit(change: Change, _deadlineMs: number): Promise<CommitResult> {
    this.check();
    const counts = txnOpCounts(change, change.leader !== undefined);
    if (counts.success === 0) throw new TetherError('INVALID_ARGUMENT', 'commit: nothing to write');
    const tooLarge = txnLimitProblem(counts, estimateTxnBytes(change, change.leader !== undefined), this.txnLimits);
    if (tooLarge !== undefined) throw new TetherError('FAILED_PRECONDITION', `commit: ${tooLarge}`, { retryable: false, details: { ...counts } });
    const leaderOk = !change.leader || this.kv.get(this.leaderKey())?.create === Number(change.leader.createRevision);
    let ok = leaderOk;
    for (const h of change.hosts ?? []) {
      if (this.kv.get(this.hostKey(h.hostId, 'record'))?.mod !== Number(h.expectRevision)) ok = false;
      if (h.requireAliveAbsent && this.kv.has(this.hostKey(h.hostId, 'alive'))) ok = false;
    }
    for (const g of change.guards ?? []) {
      if (this.kv.get(this.hostKey(g.hostId, 'record'))?.mod !== Number(g.expectRevision)) ok = false;
    }
    for (const v of change.vms ?? []) {
      const cur = this.kv.get(`${this.prefix}vms/${v.key}`);
      if (v.expectRevision === null ? cur !== undefined : cur?.mod !== Number(v.expectRevision)) ok = false;
    }
    if (!ok) return { ok: false, reason: leaderOk ? 'conflict' : 'not-leader' };
    const rev = ++this.rev;
    for (const h of change.hosts ?? []) {
      const key = this.hostKey(h.hostId, 'record');
      if (h.next === null) this.deleteAt(key, rev);
      else this.putAt(key, JSON.stringify(h.next), rev);
    }
    for (const v of change.vms ?? []) {
      const key = `${this.prefix}vms/${v.key}`;
      if (v.next === null) this.deleteAt(key, rev);
      else this.putAt(key, JSON.stringify(v.next), rev);
    }
    for (const e of change.events ?? []) this.putAt(this.eventKey(e.at), JSON.stringify(e), rev);
    return { ok: true, revision: String(rev) };
  }

  async campaign(candidateId: string, ttlMs: number, _deadlineMs: number): Promise<Leadership | undefined> {
    this.check();
    if (this.kv.has(this.leaderKey())) return undefined;
    const lease = this.grantLease(ttlMs);
    const rev = ++this.rev;
    const info: LeaderInfo = { candidateId, since: this.clock.now() };
    this.putAt(this.leaderKey(), JSON.stringify(info), rev, lease);
    return { candidateId, lease, createRevision: String(rev), ttlMs };
  }

  async keepLeadership(leadership: Leadership, _deadlineMs: number): Promise<'alive' | 'lost'> {
    this.check();
    return this.keepaliveLease(leadership.lease) ? 'alive' : 'lost';
  }

  async resign(leadership: Leadership, _deadlineMs: number): Promise<void> {
    this.check();
    this.expire(leadership.lease);
  }

  async getLeader(_deadlineMs: number): Promise<LeaderInfo | undefined> {
    this.check();
    const kv = this.kv.get(this.leaderKey());
    return kv ? this.decoded(this.leaderKey(), kv, decodeLeaderInfo) : undefined;
  }

  async putStatus(leadership: Leadership, status: ControllerStatus, _deadlineMs: number): Promise<void> {
    this.check();
    if (this.kv.get(this.leaderKey())?.create !== Number(leadership.createRevision)) return;
    this.putAt(`${this.prefix}controller/status`, JSON.stringify(status), ++this.rev, leadership.lease);
  }

  async getStatus(_deadlineMs: number): Promise<ControllerStatus | undefined> {
    this.check();
    const kv = this.kv.get(`${this.prefix}controller/status`);
    return kv ? this.decoded(`${this.prefix}controller/status`, kv, decodeControllerStatus) : undefined;
  }

  async listEvents(limit: number, _deadlineMs: number): Promise<{ revision: Revision; events: StoredEvent[] }> {
    this.check();
    const p = `${this.prefix}events/`;
    const all = [...this.kv.entries()].filter(([k]) => k.startsWith(p)).sort(([a], [b]) => (a < b ? -1 : 1));
    const events: StoredEvent[] = [];
    for (const [k, v] of all.slice(Math.max(0, all.length - limit))) {
      const event = this.decoded(k, v, decodeClusterEvent);
      if (event) events.push({ key: k.slice(p.length), event });
    }
    return { revision: String(this.rev), events };
  }

  async watchEvents(fromRevision: Revision, handlers: WatchHandlers<StoredEvent>, _deadlineMs: number): Promise<Subscription> {
    this.check();
    const p = `${this.prefix}events/`;
    return this.watch(p, Number(fromRevision), handlers, (key, kv, op) => {
      const event = op === 'put' ? this.decoded(key, kv, decodeClusterEvent) : undefined;
      if (event) handlers.onEvent({ key: key.slice(p.length), event });
    });
  }

  async pruneEvents(keep: number, _deadlineMs: number): Promise<number> {
    this.check();
    const p = `${this.prefix}events/`;
    const all = [...this.kv.keys()].filter((k) => k.startsWith(p)).sort();
    const drop = all.slice(0, Math.max(0, all.length - keep));
    if (drop.length === 0) return 0;
    const rev = ++this.rev;
    for (const k of drop) this.deleteAt(k, rev);
    return drop.length;
  }

  async leaseTtl(lease: LeaseId, _deadlineMs: number): Promise<{ remainingMs: number; grantedMs: number } | undefined> {
    this.check();
    const l = this.leases.get(lease);
    return l ? { remainingMs: l.ttlMs, grantedMs: l.ttlMs } : undefined;
  }

  async setHold(hostId: string, hold: boolean, nowWall: number, deadlineMs: number): Promise<HostRecord> {
    const cur = await this.getHost(hostId, deadlineMs);
    if (!cur.record || cur.recordRevision === undefined) throw new NotFoundError(`host ${hostId}`);
    const next: HostRecord = { ...cur.record, hold, updatedAt: nowWall };
    const res = await this.commit(
      {
        hosts: [{ hostId, expectRevision: cur.recordRevision, next }],
        events: [{ kind: 'host-hold-changed', hostId, hold, at: nowWall, detail: `operator ${hold ? 'held' : 'released'} host ${hostId}` }],
      },
      deadlineMs,
    );
    if (!res.ok) throw new TetherError('UNAVAILABLE', `hold of ${hostId}: record changed`, { retryable: true });
    return next;
  }

  async close(): Promise<void> {
    this.watches.clear();
  }

  // ---- internals -------------------------------------------------------------------------------

  private check(): void {
    if (this.unavailable) throw new TetherError('TIMEOUT', 'memory store: unavailable (simulated)', { retryable: true });
    this.header();
  }

  /** What a response header does: reports a newer raft term to the listeners. */
  private header(): void {
    if (this.term <= this.reportedTerm) return;
    this.reportedTerm = this.term;
    for (const l of [...this.termListeners]) l(this.term);
  }

  private leaderKey(): string {
    return `${this.prefix}controller/leader`;
  }

  private hostKey(hostId: string, part: 'record' | 'alive'): string {
    return `${this.prefix}hosts/${hostId}/${part}`;
  }

  private eventKey(at: number): string {
    return `${this.prefix}events/${String(Math.floor(at)).padStart(15, '0')}-${String(this.nextEvent++).padStart(8, '0')}`;
  }

  private parseHostKey(key: string): { hostId: string; part: 'record' | 'alive' } | undefined {
    if (!key.startsWith(this.prefix)) return undefined;
    const m = /^hosts\/([^/]+)\/(record|alive)$/.exec(key.slice(this.prefix.length));
    return m ? { hostId: m[1]!, part: m[2] as 'record' | 'alive' } : undefined;
  }

  private aliveOf(key: string, kv: Kv): AliveInfo {
    // An unreadable value is reported, but the key still exists on its lease: never treated as absent.
    const v = this.decoded(key, kv, decodeAliveValue);
    return { epoch: v?.epoch ?? 0, agentVersion: v?.agentVersion ?? '', lease: kv.lease ?? '0' };
  }

  /** The codec's decode of `kv` at full key `key`, or undefined (reported once per revision in {@link invalidRecords}). */
  private decoded<T>(key: string, kv: Kv, decode: (key: string, raw: RawValue) => Decoded<T>, onInvalid?: (e: InvalidRecordError) => void): T | undefined {
    const rel = key.slice(this.prefix.length);
    const d = decode(rel, kv.value);
    if (d.ok) {
      this.invalidRecords.clear(rel);
      return d.value;
    }
    const err = d.error.at(String(kv.mod));
    this.invalidRecords.report(err, String(kv.mod));
    onInvalid?.(err);
    return undefined;
  }

  private putAt(key: string, value: string, rev: number, lease?: LeaseId): void {
    const cur = this.kv.get(key);
    const kv: Kv = { value, create: cur?.create ?? rev, mod: rev, ...(lease !== undefined ? { lease } : {}) };
    this.kv.set(key, kv);
    this.notify(key, kv, 'put');
  }

  private deleteAt(key: string, rev: number): void {
    const cur = this.kv.get(key);
    if (!cur) return;
    this.kv.delete(key);
    this.notify(key, { ...cur, mod: rev }, 'delete');
  }

  private expire(id: LeaseId): void {
    const l = this.leases.get(id);
    if (!l) return;
    this.clock.clearTimer(l.timer);
    this.leases.delete(id);
    const keys = [...this.kv.entries()].filter(([, v]) => v.lease === id).map(([k]) => k);
    if (keys.length === 0) return;
    const rev = ++this.rev;
    for (const k of keys) this.deleteAt(k, rev);
  }

  private notify(key: string, kv: Kv, op: 'put' | 'delete'): void {
    this.history.push({ key, kv, op });
    if (this.history.length > 10_000) this.history.shift();
    for (const w of [...this.watches]) {
      if (!key.startsWith(w.prefix)) continue;
      // etcd delivers watch events asynchronously, in revision order.
      queueMicrotask(() => {
        if (!this.watches.has(w)) return;
        this.header();
        w.fn(key, kv, op);
      });
    }
  }

  private watch<E>(prefix: string, from: number, handlers: WatchHandlers<E>, fn: MemWatch['fn']): Subscription {
    const w: MemWatch = { prefix, fn, onError: (err) => handlers.onError(err) };
    this.watches.add(w);
    for (const h of this.history) {
      if (h.kv.mod < from || !h.key.startsWith(prefix)) continue;
      queueMicrotask(() => {
        if (this.watches.has(w)) w.fn(h.key, h.kv, h.op);
      });
    }
    return {
      close: async () => {
        this.watches.delete(w);
      },
    };
  }
}
