/**
 * The etcd model: one synchronous state machine of a whole etcd 3.4 cluster, on an injected
 * {@link Clock} (the model's own time). Unit tests and the simulator run Tether's stores on it
 * through {@link EtcdModel.client} (a `Kv`, src/ports/kv.ts); test/support/kv-conformance.ts runs
 * the same behaviour table against this model and against a real etcd 3.4, so where Tether depends
 * on etcd the model is proven to behave like it.
 *
 * Deterministic: no wall clock, no randomness, no timers but the clock's; ids come from counters and
 * names. Two models fed the same calls in the same order on clocks moved the same way behave alike.
 *
 * What it models (etcd 3.4, default `--heartbeat-interval 100 --election-timeout 1000`):
 *  - one revision counter; MVCC history back to the compaction point ({@link compact}), reads and
 *    watches below it refused with COMPACTED;
 *  - txns: compares on the state before the txn (a missing key compares create/mod/version/lease as 0
 *    and never matches a `value` compare), all-or-nothing, etcd's refusals (src/dev/etcd-model/txn-checks.ts:
 *    128 ops, 1.5 MiB, duplicate keys), a put on an unknown lease refuses the whole txn (etcd's gRPC
 *    NotFound, which EtcdKv reports as a retryable UNAVAILABLE: not applied);
 *  - leases: TTL rounded up to whole seconds and to the minimum TTL, which etcd derives from the raft
 *    timing: `minTTL = ceil((3 * electionTicks / 2) * heartbeat)` (etcdserver/server.go, NewServer:
 *    `MinLeaseTTL: int64(math.Ceil(minTTL.Seconds()))`), i.e. ceil(15 * 100 ms) = 2 s by default.
 *    A lease expires on the clock exactly at its expiry (etcd checks every 500 ms and revokes through
 *    raft, so a real lease may die up to ~0.5 s later, never earlier); expiry and revoke delete all
 *    its keys in ONE revision (one watch batch), keys in sorted order; a keepalive resets the
 *    expiry to a full TTL and answers the granted TTL; an unknown lease's keepalive answers TTL 0;
 *    revoking an unknown lease is not an error (the port's contract);
 *  - members with a raft term and a leader: {@link electLeader} starts a new term; the new leader's
 *    lessor `Promote(extend)` refreshes every lease to `now + extend + TTL`, `extend` being the
 *    election timeout (etcdserver applyEntryNormal: `s.lessor.Promote(s.Cfg.electionTimeout())`);
 *    while there is no quorum ({@link unavailable}) no lease expires (no primary lessor);
 *  - reads: linearizable ones see every write; serializable ones are served by the client's member,
 *    which may lag ({@link setLag});
 *  - watches: from a revision (inclusive; 0 means "from now"), history replayed one batch per
 *    revision, then live changes one batch per revision; a watch below the compaction is created
 *    and then ended with COMPACTED (as etcd sends `created` then a compacted cancel);
 *  - response headers carry the revision, the raft term and the serving member's id;
 *  - the client's gRPC receive limit: a range or txn reply over it fails RESOURCE_EXHAUSTED on the
 *    client, after the member served it (src/dev/etcd-model/client.ts);
 *  - injectable etcd 3.4 anomalies: {@link earlyRevokeOnNextElection} (etcd #15247) and
 *    {@link renewAfterRevoke} (etcd #14758).
 *
 * What it does not model: auth, nested txns, range ends other than prefixes, `prevKv`, watch
 * progress notifications and fragmenting, the lessor's pile-up spreading of expiries (more than 1000
 * leases at one promotion), lease checkpoints, watches served late by a lagging member, member
 * add/remove, defragmentation and quotas (`--quota-backend-bytes`).
 */
import { TetherError } from '../../domain/errors.js';
import { ETCD_CLIENT_MAX_RECV_BYTES } from '../../domain/kv-read-limits.js';
import type { Clock, TimerHandle } from '../../ports/clock.js';
import type {
  Kv,
  KvCompare,
  KvEntry,
  KvHeader,
  KvLeaseId,
  KvOpResult,
  KvRangeRequest,
  KvRangeResponse,
  KvStatus,
  KvTxnRequest,
  KvTxnResponse,
  KvWatchEvent,
  KvWatchHandlers,
  KvWatchRequest,
} from '../../ports/kv.js';
import { ModelKv, NoQuorumSignal } from './client.js';
import { inRange, MvccStore, type MvccWrite } from './mvcc.js';
import { checkTxn, ETCD_34_LIMITS, type EtcdLimits } from './txn-checks.js';
import { immediateTransport, type ModelTransport } from './transport.js';

/** Options of {@link EtcdModel}. */
export interface EtcdModelOptions {
  /** Member names, in order (default `m1`, `m2`, `m3`). The first one leads at start. */
  readonly members?: readonly string[];
  /** etcd `--heartbeat-interval` in ms (default 100). */
  readonly heartbeatMs?: number;
  /** etcd `--election-timeout` in ms (default 1000). */
  readonly electionMs?: number;
  /** Server limits (default etcd 3.4's: 128 ops, 1.5 MiB). */
  readonly limits?: EtcdLimits;
  /** Reported by Status (default `3.4.23`). */
  readonly version?: string;
  /** Raft term at start (default 2, what a fresh etcd cluster reports after its first election). */
  readonly initialTerm?: number;
  /**
   * Auto-compaction (etcd's `--auto-compaction-mode=revision`): keep this many revisions of history,
   * compacting once the history is twice that long. Default: never compact on its own (tests call
   * {@link EtcdModel.compact}); long simulations set it to bound memory.
   */
  readonly retainRevisions?: number;
  /**
   * The gRPC receive limit of the clients it hands out (default ETCD_CLIENT_MAX_RECV_BYTES, what
   * Tether sets on its etcd client): a reply over it fails RESOURCE_EXHAUSTED like grpc-js. Tests set
   * grpc-js's default (4 MiB) or less to prove that a read is paged.
   */
  readonly clientMaxRecvBytes?: number;
}

/** How requests fail while the cluster has no quorum (see {@link EtcdModel.unavailable}). */
export type NoQuorumMode = 'hang' | 'refuse';

/** A member of the modelled cluster. */
export interface ModelMember {
  readonly name: string;
  /** 16 hex digits, derived from the name (as etcd derives ids from its configuration). */
  readonly id: string;
  /** Revisions this member's applied state trails the cluster by (serializable reads see it). */
  readonly lag: number;
}

/** A lease as the model holds it. */
export interface ModelLease {
  readonly id: KvLeaseId;
  /** Granted TTL in ms (whole seconds, at least the minimum TTL). */
  readonly ttlMs: number;
  /** Monotonic time (model clock) it expires at; undefined while no member leads (no expiry). */
  readonly expiresAt: number | undefined;
  /** Keys attached to it. */
  readonly keys: readonly string[];
}

interface LeaseState {
  id: KvLeaseId;
  ttlMs: number;
  expiresAt: number | undefined;
  timer: TimerHandle | undefined;
  keys: Set<string>;
}

type WatchState = 'pending' | 'open' | 'ended' | 'closed';

interface WatchState_ {
  readonly id: number;
  readonly client: string;
  readonly member: string;
  readonly range: { key: string; prefix?: boolean };
  readonly from: number;
  readonly handlers: KvWatchHandlers;
  readonly transport: ModelTransport;
  state: WatchState;
  /** Batches produced while pending (before the client saw `created`). */
  buffer: { events: KvWatchEvent[]; header: KvHeader }[];
  /** An error to deliver once started (a compacted start revision). */
  startError?: TetherError;
}

/** etcd's largest lease TTL (`MaxLeaseTTL`, 9 000 000 000 s). */
const MAX_LEASE_TTL_S = 9_000_000_000;
/** High bits of model lease ids: ids are large int64s like etcd's, so a caller that parses them as numbers loses precision and shows it. */
const LEASE_ID_BASE = 0x694dn << 48n;

/** 16 hex digits from a name (FNV-1a 64): stable member ids. */
function memberIdOf(name: string): string {
  let h = 0xcbf29ce484222325n;
  for (const ch of name) {
    h ^= BigInt(ch.codePointAt(0)!);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, '0');
}

function compareNumber(op: '=' | '!=' | '<' | '>', a: number, b: number): boolean {
  switch (op) {
    case '=':
      return a === b;
    case '!=':
      return a !== b;
    case '<':
      return a < b;
    case '>':
      return a > b;
  }
}

function leaseNum(id: string): bigint {
  try {
    return BigInt(id);
  } catch {
    return -1n;
  }
}

/** See the module doc. */
export class EtcdModel {
  /** The minimum lease TTL in ms (2000 with etcd's default timing). */
  readonly minLeaseTtlMs: number;
  /** The election timeout in ms: how far {@link electLeader} extends every lease beyond its TTL. */
  readonly electionMs: number;
  readonly limits: EtcdLimits;
  readonly version: string;
  /** The receive limit of the clients it hands out (see {@link EtcdModelOptions.clientMaxRecvBytes}). */
  readonly clientMaxRecvBytes: number;
  private readonly store = new MvccStore();
  private readonly memberList: { name: string; id: string; lag: number }[];
  private term: number;
  private leaderName: string | undefined;
  private noQuorum: NoQuorumMode | undefined;
  private readonly leaseMap = new Map<KvLeaseId, LeaseState>();
  /** Granted TTL of every lease ever granted (for {@link renewAfterRevoke}). */
  private readonly grantedTtl = new Map<KvLeaseId, number>();
  private nextLease = 1n;
  private readonly earlyRevoke = new Set<KvLeaseId>();
  private readonly renewAfter = new Set<KvLeaseId>();
  private readonly watches = new Map<number, WatchState_>();
  private nextWatch = 1;
  private readonly retain: number | undefined;

  constructor(
    readonly clock: Clock,
    opts: EtcdModelOptions = {},
  ) {
    const heartbeat = opts.heartbeatMs ?? 100;
    this.electionMs = opts.electionMs ?? 1000;
    const electionTicks = Math.floor(this.electionMs / heartbeat);
    // etcdserver/server.go: minTTL := time.Duration((3*cfg.ElectionTicks)/2) * heartbeat; MinLeaseTTL = ceil(minTTL.Seconds())
    this.minLeaseTtlMs = Math.ceil((Math.floor((3 * electionTicks) / 2) * heartbeat) / 1000) * 1000;
    this.limits = opts.limits ?? ETCD_34_LIMITS;
    this.version = opts.version ?? '3.4.23';
    this.clientMaxRecvBytes = opts.clientMaxRecvBytes ?? ETCD_CLIENT_MAX_RECV_BYTES;
    const names = opts.members ?? ['m1', 'm2', 'm3'];
    if (names.length === 0 || new Set(names).size !== names.length) throw new TetherError('INVALID_ARGUMENT', 'etcd model: member names must be unique and at least one');
    this.memberList = names.map((name) => ({ name, id: memberIdOf(name), lag: 0 }));
    this.term = opts.initialTerm ?? 2;
    this.retain = opts.retainRevisions !== undefined ? Math.max(1, Math.floor(opts.retainRevisions)) : undefined;
    this.leaderName = names[0];
  }

  // ---- clients ------------------------------------------------------------------------------

  /**
   * A `Kv` client named `name` (the name the transport sees), connected to `opts.member` (default:
   * the first member). Requests and watch notifications travel through `transport` (default: at once).
   * `opts.maxRecvBytes` overrides the model's `clientMaxRecvBytes` for this client.
   */
  client(
    name: string,
    transport: ModelTransport = immediateTransport,
    opts: { readonly member?: string; readonly maxRecvBytes?: number } = {},
  ): Kv & { readonly name: string; readonly member: string } {
    const member = opts.member ?? this.memberList[0]!.name;
    this.member(member);
    return new ModelKv(this, name, member, transport, opts.maxRecvBytes ?? this.clientMaxRecvBytes);
  }

  // ---- cluster state and fault injection ------------------------------------------------------

  /** The current revision. */
  get revision(): number {
    return this.store.revision;
  }

  /** The compaction revision (0 when never compacted). */
  get compactRevision(): number {
    return this.store.compactRevision;
  }

  /** The current raft term. */
  get raftTerm(): number {
    return this.term;
  }

  /** The leading member's name, undefined while there is no quorum. */
  get leader(): string | undefined {
    return this.noQuorum ? undefined : this.leaderName;
  }

  /** The members, in order. */
  members(): ModelMember[] {
    return this.memberList.map((m) => ({ ...m }));
  }

  /**
   * A leader election: the term goes up by one and `member` (default: the next member after the
   * current leader) leads. Leases flagged by {@link earlyRevokeOnNextElection} are revoked first (the
   * deposed leader's revoke, etcd #15247); then the new leader's lessor refreshes every lease to
   * `now + electionMs + TTL` (etcd's `Promote`). Returns the new term.
   */
  electLeader(member?: string): number {
    if (this.noQuorum) throw new TetherError('FAILED_PRECONDITION', 'etcd model: no quorum, no election (call unavailable(false))');
    for (const id of [...this.earlyRevoke]) {
      this.earlyRevoke.delete(id);
      this.revokeLease(id);
    }
    const i = this.memberList.findIndex((m) => m.name === this.leaderName);
    this.leaderName = member !== undefined ? this.member(member).name : this.memberList[(i + 1) % this.memberList.length]!.name;
    this.term++;
    this.promote();
    return this.term;
  }

  /**
   * No quorum (`on`): no leader, no lease expires, and every request fails: `hang` (default, what a
   * client of a real etcd without quorum sees) answers TIMEOUT at the request's deadline on the
   * model's clock without applying it; `refuse` answers UNAVAILABLE at once. Watches stay open and
   * see nothing (nothing is written). Back (`on` false): a member wins an election (see
   * {@link electLeader}: new term, every lease refreshed), as etcd's CheckQuorum forces one.
   */
  unavailable(on: boolean, how: NoQuorumMode = 'hang'): void {
    if (on) {
      if (!this.noQuorum) for (const l of this.leaseMap.values()) this.stopTimer(l);
      this.noQuorum = how;
      for (const l of this.leaseMap.values()) l.expiresAt = undefined;
      return;
    }
    if (!this.noQuorum) return;
    this.noQuorum = undefined;
    this.electLeader(this.leaderName);
  }

  /** Whether requests currently fail (see {@link unavailable}). */
  get isUnavailable(): boolean {
    return this.noQuorum !== undefined;
  }

  /** `member`'s applied state trails by `revisions`: its serializable reads are that stale. */
  setLag(member: string, revisions: number): void {
    this.member(member).lag = Math.max(0, Math.floor(revisions));
  }

  /**
   * Compacts the history below `revision` (etcd's Compact). Refuses a revision above the current one
   * (FAILED_PRECONDITION, "future revision") or at or below the last compaction (COMPACTED).
   */
  compact(revision: number): void {
    if (revision > this.store.revision) throw new TetherError('FAILED_PRECONDITION', `mvcc: required revision is a future revision (${revision} > ${this.store.revision})`);
    if (revision <= this.store.compactRevision) throw this.compactedError(revision);
    this.store.compact(revision);
  }

  /** The next {@link electLeader} revokes lease `id` first, before its TTL ran out (etcd #15247). */
  earlyRevokeOnNextElection(id: KvLeaseId): void {
    this.earlyRevoke.add(id);
  }

  /** The next keepalive of lease `id`, once it is revoked or expired, answers its granted TTL instead of 0 (etcd #14758). */
  renewAfterRevoke(id: KvLeaseId): void {
    this.renewAfter.add(id);
  }

  /** Ends every open watch (of client `client`, or all) with `err` (default UNAVAILABLE, retryable), as a broken watch stream does. */
  endWatches(client?: string, err?: Error): void {
    for (const w of this.watches.values()) {
      if (client !== undefined && w.client !== client) continue;
      if (w.state === 'closed' || w.state === 'ended') continue;
      this.endWatch(w, err ?? new TetherError('UNAVAILABLE', `watch ${w.id}: stream to etcd broken (model)`, { retryable: true }), true);
    }
  }

  /** Number of watches that are open (created and not ended or closed). */
  openWatches(client?: string): number {
    let n = 0;
    for (const w of this.watches.values()) if ((w.state === 'open' || w.state === 'pending') && (client === undefined || w.client === client)) n++;
    return n;
  }

  // ---- direct access (tests and the simulator; no transport, no availability check) ------------

  /** The live entry at `key`. */
  get(key: string): KvEntry | undefined {
    return this.store.get(key);
  }

  /** Every live entry whose key starts with `prefix`, in key order. */
  list(prefix: string): KvEntry[] {
    return this.store.rangeAt({ key: prefix, prefix: true });
  }

  /** Puts `value` at `key` (optionally on a lease) as one txn; returns the new revision. */
  put(key: string, value: string, lease?: KvLeaseId): number {
    return this.txn({ compare: [], success: [{ op: 'put', key, value, ...(lease !== undefined ? { lease } : {}) }] }).header.revision;
  }

  /** Deletes `key` (or every key under it with `prefix`); returns how many keys went. */
  delete(key: string, prefix = false): number {
    const r = this.txn({ compare: [], success: [{ op: 'delete', key, prefix }] }).responses[0];
    return r?.op === 'delete' ? r.deleted : 0;
  }

  /** The lease `id`, or undefined when it is unknown (expired, revoked, never granted). */
  lease(id: KvLeaseId): ModelLease | undefined {
    const l = this.leaseMap.get(id);
    return l ? { id: l.id, ttlMs: l.ttlMs, expiresAt: l.expiresAt, keys: [...l.keys].sort() } : undefined;
  }

  /** Every live lease id, in grant order. */
  leaseIds(): KvLeaseId[] {
    return [...this.leaseMap.keys()];
  }

  // ---- requests (what clients apply; synchronous; `member` is the member that serves) ----------

  /** Throws what a request meets while there is no quorum (see {@link unavailable}). */
  admit(what: string): void {
    if (this.noQuorum === 'refuse') throw new TetherError('UNAVAILABLE', `${what}: etcdserver: no leader (model)`, { retryable: true });
    if (this.noQuorum === 'hang') throw new NoQuorumSignal(what);
  }

  /** A range; see `KvRangeRequest`. */
  range(req: KvRangeRequest, member = this.memberList[0]!.name): KvRangeResponse {
    const m = this.member(member);
    const served = req.serializable ? Math.max(this.store.compactRevision, this.store.revision - m.lag) : this.store.revision;
    let at = served;
    if (req.revision !== undefined && req.revision > 0) {
      if (req.revision > served) throw new TetherError('FAILED_PRECONDITION', `mvcc: required revision is a future revision (${req.revision} > ${served})`);
      if (req.revision < this.store.compactRevision) throw this.compactedError(req.revision);
      at = req.revision;
    }
    const from = req.prefix ? req.from : undefined;
    const all = from === undefined ? this.store.rangeAt(req, at) : this.store.rangeAt(req, at).filter((e) => e.key >= from);
    const limit = req.limit && req.limit > 0 ? req.limit : all.length;
    const kvs = all.slice(0, limit).map((e) => (req.keysOnly ? { ...e, value: '' } : e));
    return { header: this.header(member, served), kvs, more: all.length > limit, count: all.length };
  }

  /** A txn; see `KvTxnRequest` and the module doc for what is refused. */
  txn(req: KvTxnRequest, member = this.memberList[0]!.name): KvTxnResponse {
    this.member(member);
    checkTxn(req, this.limits);
    const succeeded = req.compare.every((c) => this.holds(c));
    const ops = succeeded ? req.success : (req.failure ?? []);
    for (const op of ops) {
      if (op.op === 'put' && op.lease !== undefined && op.lease !== '0' && !this.leaseMap.has(op.lease)) {
        // gRPC NotFound from etcd; EtcdKv reports it as a retryable UNAVAILABLE (not applied), so does the model.
        throw new TetherError('UNAVAILABLE', `etcdserver: requested lease not found (lease ${op.lease}, key ${op.key})`, {
          retryable: true,
          details: { reason: 'lease-not-found', lease: op.lease, key: op.key },
        });
      }
    }
    // Ops run in order on a view of the store plus the txn's own earlier writes.
    const overlay = new Map<string, KvEntry | null>();
    const nextRev = this.store.revision + 1;
    const view = (r: { key: string; prefix?: boolean }): KvEntry[] => {
      const base = new Map(this.store.rangeAt(r).map((e) => [e.key, e] as const));
      for (const [k, v] of overlay) {
        if (!inRange(r, k)) continue;
        if (v) base.set(k, v);
        else base.delete(k);
      }
      return [...base.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    };
    const writes: MvccWrite[] = [];
    const responses: KvOpResult[] = [];
    for (const op of ops) {
      if (op.op === 'range') {
        const all = view(op);
        const limit = op.limit && op.limit > 0 ? op.limit : all.length;
        responses.push({ op: 'range', kvs: all.slice(0, limit), more: all.length > limit, count: all.length });
      } else if (op.op === 'put') {
        const cur = view({ key: op.key })[0];
        const lease = op.lease !== undefined && op.lease !== '0' ? op.lease : undefined;
        overlay.set(op.key, {
          key: op.key,
          value: op.value,
          createRevision: cur?.createRevision ?? nextRev,
          modRevision: nextRev,
          version: (cur?.version ?? 0) + 1,
          ...(lease !== undefined ? { lease } : {}),
        });
        writes.push({ kind: 'put', key: op.key, value: op.value, ...(lease !== undefined ? { lease } : {}) });
        responses.push({ op: 'put' });
      } else {
        const gone = view(op);
        for (const e of gone) {
          overlay.set(e.key, null);
          writes.push({ kind: 'delete', key: e.key });
        }
        responses.push({ op: 'delete', deleted: gone.length });
      }
    }
    const before = new Map<string, KvLeaseId | undefined>();
    for (const w of writes) if (!before.has(w.key)) before.set(w.key, this.store.get(w.key)?.lease);
    const done = this.store.commit(writes);
    if (done) {
      for (const [key, old] of before) {
        const now = this.store.get(key)?.lease;
        if (old === now) continue;
        if (old !== undefined) this.leaseMap.get(old)?.keys.delete(key);
        if (now !== undefined) this.leaseMap.get(now)?.keys.add(key);
      }
      this.publish(done.revision, done.events);
    }
    return { header: this.header(member), succeeded, responses };
  }

  /** Grants a lease of at least `ttlMs`, rounded up to whole seconds and to {@link minLeaseTtlMs}. */
  leaseGrant(ttlMs: number, member = this.memberList[0]!.name): { header: KvHeader; id: KvLeaseId; ttlMs: number } {
    this.member(member);
    const seconds = Math.max(this.minLeaseTtlMs / 1000, Math.ceil(ttlMs / 1000));
    if (seconds > MAX_LEASE_TTL_S) throw new TetherError('FAILED_PRECONDITION', `etcdserver: too large lease TTL (${seconds} s)`, { retryable: false });
    const id = String(LEASE_ID_BASE + this.nextLease++);
    const l: LeaseState = { id, ttlMs: seconds * 1000, expiresAt: undefined, timer: undefined, keys: new Set() };
    this.leaseMap.set(id, l);
    this.grantedTtl.set(id, l.ttlMs);
    this.refresh(l, 0);
    return { header: this.header(member), id, ttlMs: l.ttlMs };
  }

  /** One keepalive: the lease's expiry is reset to a full TTL and the granted TTL is answered; 0 for an unknown lease. */
  leaseKeepAlive(id: KvLeaseId, member = this.memberList[0]!.name): { header: KvHeader; ttlMs: number } {
    this.member(member);
    const l = this.leaseMap.get(id);
    if (!l) {
      if (this.renewAfter.delete(id)) return { header: this.header(member), ttlMs: this.grantedTtl.get(id) ?? this.minLeaseTtlMs };
      return { header: this.header(member), ttlMs: 0 };
    }
    this.refresh(l, 0);
    return { header: this.header(member), ttlMs: l.ttlMs };
  }

  /** Revokes a lease, deleting its keys in one revision; an unknown lease is not an error. */
  leaseRevoke(id: KvLeaseId, member = this.memberList[0]!.name): { header: KvHeader } {
    this.member(member);
    this.revokeLease(id);
    return { header: this.header(member) };
  }

  /** Remaining (whole seconds, truncated, as etcd answers) and granted TTL, or undefined for an unknown lease. */
  leaseTimeToLive(id: KvLeaseId, member = this.memberList[0]!.name): { header: KvHeader; remainingMs: number; grantedMs: number } | undefined {
    this.member(member);
    const l = this.leaseMap.get(id);
    if (!l) return undefined;
    const left = l.expiresAt === undefined ? l.ttlMs : Math.max(0, l.expiresAt - this.clock.nowMono());
    return { header: this.header(member), remainingMs: Math.floor(left / 1000) * 1000, grantedMs: l.ttlMs };
  }

  /** The member's status. */
  status(member = this.memberList[0]!.name): KvStatus {
    const m = this.member(member);
    const leaderId = this.leader !== undefined ? this.member(this.leader).id : undefined;
    return { header: this.header(member, this.store.revision - m.lag), version: this.version, raftTerm: this.term, ...(leaderId !== undefined ? { leader: leaderId } : {}) };
  }

  /**
   * Creates a watch for client `client` (pending: its batches are held until {@link startWatch}, so
   * a client sees `created` before any event). Returns its id.
   */
  openWatch(client: string, member: string, transport: ModelTransport, req: KvWatchRequest, handlers: KvWatchHandlers): number {
    this.member(member);
    const from = req.fromRevision > 0 ? req.fromRevision : this.store.revision + 1;
    const w: WatchState_ = {
      id: this.nextWatch++,
      client,
      member,
      range: { key: req.key, ...(req.prefix ? { prefix: true } : {}) },
      from,
      handlers,
      transport,
      state: 'pending',
      buffer: [],
    };
    this.watches.set(w.id, w);
    if (from < this.store.compactRevision) {
      w.startError = this.compactedError(from);
      return w.id;
    }
    for (const b of this.store.historyFrom(w.range, from)) w.buffer.push({ events: b.events, header: this.header(member) });
    return w.id;
  }

  /** Starts delivering a pending watch's batches (and later ones) through its transport. */
  startWatch(id: number): void {
    const w = this.watches.get(id);
    if (!w || w.state !== 'pending') return;
    w.state = 'open';
    if (w.startError) {
      this.endWatch(w, w.startError, false);
      return;
    }
    const held = w.buffer;
    w.buffer = [];
    for (const b of held) this.deliver(w, b.events, b.header);
  }

  /** Closes a watch: no callback of it runs afterwards. */
  closeWatch(id: number): void {
    const w = this.watches.get(id);
    if (!w) return;
    w.state = 'closed';
    this.watches.delete(id);
  }

  // ---- internals -----------------------------------------------------------------------------

  private member(name: string): { name: string; id: string; lag: number } {
    const m = this.memberList.find((x) => x.name === name);
    if (!m) throw new TetherError('INVALID_ARGUMENT', `etcd model: no member ${JSON.stringify(name)} (members: ${this.memberList.map((x) => x.name).join(', ')})`);
    return m;
  }

  private header(member: string, revision = this.store.revision): KvHeader {
    return { revision, raftTerm: this.term, memberId: this.member(member).id };
  }

  private compactedError(revision: number): TetherError {
    return new TetherError('COMPACTED', `mvcc: required revision has been compacted (asked ${revision}, compacted at ${this.store.compactRevision})`, {
      retryable: false,
      details: { compactRevision: this.store.compactRevision, revision },
    });
  }

  private holds(c: KvCompare): boolean {
    const e = this.store.get(c.key);
    switch (c.target) {
      case 'value':
        // etcd: a value compare on a missing key always fails (nil and empty cannot be told apart).
        if (!e) return false;
        return c.op === '=' ? e.value === c.value : e.value !== c.value;
      case 'lease': {
        const eq = leaseNum(e?.lease ?? '0') === leaseNum(c.value);
        return c.op === '=' ? eq : !eq;
      }
      case 'create':
        return compareNumber(c.op, e?.createRevision ?? 0, c.value);
      case 'mod':
        return compareNumber(c.op, e?.modRevision ?? 0, c.value);
      case 'version':
        return compareNumber(c.op, e?.version ?? 0, c.value);
    }
  }

  /** Sets the lease's expiry to now + extend + TTL and its timer, unless no member leads. */
  private refresh(l: LeaseState, extend: number): void {
    this.stopTimer(l);
    if (this.noQuorum) {
      l.expiresAt = undefined;
      return;
    }
    const ms = extend + l.ttlMs;
    l.expiresAt = this.clock.nowMono() + ms;
    l.timer = this.clock.setTimer(ms, () => {
      l.timer = undefined;
      if (this.leaseMap.get(l.id) === l && !this.noQuorum) this.revokeLease(l.id);
    });
  }

  private stopTimer(l: LeaseState): void {
    if (l.timer !== undefined) this.clock.clearTimer(l.timer);
    l.timer = undefined;
  }

  /** The new leader's lessor: every lease refreshed to now + election timeout + TTL. */
  private promote(): void {
    for (const l of this.leaseMap.values()) this.refresh(l, this.electionMs);
  }

  /** Removes the lease and deletes its keys (sorted) in one revision, if it has any. */
  private revokeLease(id: KvLeaseId): void {
    const l = this.leaseMap.get(id);
    if (!l) return;
    this.stopTimer(l);
    this.leaseMap.delete(id);
    const keys = [...l.keys].sort();
    const done = this.store.commit(keys.map((key) => ({ kind: 'delete', key })));
    if (done) this.publish(done.revision, done.events);
  }

  /** Hands one revision's events to every watch that covers some of them (one batch per watch); auto-compacts. */
  private publish(revision: number, events: readonly KvWatchEvent[]): void {
    if (this.retain !== undefined && revision - Math.max(1, this.store.compactRevision) >= 2 * this.retain) this.store.compact(revision - this.retain);
    for (const w of this.watches.values()) {
      if (w.state !== 'open' && w.state !== 'pending') continue;
      if (revision < w.from) continue;
      const mine = events.filter((e) => inRange(w.range, e.kv.key));
      if (mine.length === 0) continue;
      const header = this.header(w.member, revision);
      if (w.state === 'pending') w.buffer.push({ events: mine, header });
      else this.deliver(w, mine, header);
    }
  }

  private deliver(w: WatchState_, events: KvWatchEvent[], header: KvHeader): void {
    w.transport.notify(w.client, w.id, () => {
      if (w.state === 'open') w.handlers.onEvents(events, header);
    });
  }

  /** Ends a watch with `err`: no event of it is delivered afterwards; `onError` runs once (unless the client closes it first). */
  private endWatch(w: WatchState_, err: Error, direct: boolean): void {
    w.state = 'ended';
    const fire = (): void => {
      if (w.state !== 'ended') return;
      w.state = 'closed';
      this.watches.delete(w.id);
      w.handlers.onError(err);
    };
    if (direct) queueMicrotask(fire);
    else w.transport.notify(w.client, w.id, fire);
  }
}
