/**
 * The subset of etcd's v3 API that Tether depends on, as a port: ranges, txns, leases, watches and
 * member status, each answer carrying etcd's response header (revision, raft term).
 *
 * Two implementations: `EtcdKv` (src/adapters/etcd, npm etcd3 against a real etcd 3.4) and the etcd
 * model (src/dev/etcd-model, for unit tests and the simulator). The cluster and controller stores are
 * written once on top of this port, so production and simulation run the same keyspace, codec and
 * txn code; only what sits under this interface differs.
 *
 * Failure contract (every method; all errors are `TetherError`):
 *  - `UNAVAILABLE`, retryable: the request was not applied (no connection, no leader, refused).
 *  - `TIMEOUT`, retryable: no answer by the deadline; a write MAY have been applied (ambiguous).
 *  - `FAILED_PRECONDITION`, not retryable: etcd refused the request as malformed or too big
 *    (too many operations in a txn, request too large, duplicate key in a txn).
 *  - `RESOURCE_EXHAUSTED`, not retryable as is (`details.reason = 'reply-too-large'`, `details.bytes`,
 *    `details.limit`): the reply was larger than the client's gRPC receive limit; read fewer keys
 *    (the pager, src/adapters/kv/range-paged.ts, halves its page).
 *  - `COMPACTED`, not retryable as is (`details.compactRevision`): a watch or range at a revision
 *    older than the compaction; the caller must re-list.
 *  - `UNAUTHENTICATED` / `PERMISSION_DENIED`, not retryable: etcd refused the credentials or the key.
 *
 * Invariants both implementations keep (etcd 3.4 semantics):
 *  - one revision counter per cluster; a successful txn with at least one write bumps it by one, and
 *    every key it writes gets that `modRevision`;
 *  - a txn is all-or-nothing; compares see the state before the txn;
 *  - a key put with a lease is deleted (a delete event, one revision) when the lease expires or is
 *    revoked; a lease's TTL is at least etcd's minimum TTL;
 *  - a watch from revision R delivers every change with revision >= R, in revision order, each
 *    txn's events in one batch, or fails with COMPACTED when R is compacted away;
 *  - a linearizable read (the default) reflects every write acknowledged before it was sent; a
 *    serializable one may be stale.
 */
import type { KvLeaseId, KvTxnRequest } from '../domain/kv-txn.js';
import type { Subscription } from './controller-store.js';

/**
 * The request side of a txn lives in the domain (src/domain/kv-txn.ts), so that pure builders there
 * can produce txns without importing a port: `KvLeaseId` (an etcd lease id, as a decimal string),
 * `KvCompare` (a txn compare: on a missing key, create/mod/version compare as 0 and `value` never
 * matches), `KvOp` (an operation inside a txn branch) and `KvTxnRequest` (if every compare holds,
 * `success` runs, else `failure`).
 */
export type { KvCompare, KvLeaseId, KvOp, KvTxnRequest } from '../domain/kv-txn.js';

/** etcd's response header: the store revision when the request was served, and the member's raft term. */
export interface KvHeader {
  readonly revision: number;
  readonly raftTerm: number;
  /** The member that served the request (hex id or name), when known. */
  readonly memberId?: string;
}

/** One key as etcd stores it. Values are UTF-8 strings (Tether stores JSON). */
export interface KvEntry {
  readonly key: string;
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  /** Number of puts since the key was (re)created; 1 after the first put. */
  readonly version: number;
  /** The lease the key is attached to, absent for none. */
  readonly lease?: KvLeaseId;
}

/** A range request; `prefix` turns `key` into every key starting with it. */
export interface KvRangeRequest {
  readonly key: string;
  readonly prefix?: boolean;
  /**
   * With `prefix`: start at this key (inclusive; it must start with `key`) instead of at `key`, the
   * range still ending where the prefix ends (etcd: `key = from`, `range_end = prefixEnd(key)`).
   * Used by paged reads (src/adapters/kv/range-paged.ts) to continue after the last key of a page.
   */
  readonly from?: string;
  /** At most this many keys (0 or absent: all), in key order. */
  readonly limit?: number;
  /** Serve from the member's local state without a quorum round (may be stale). Default false. */
  readonly serializable?: boolean;
  /** Read the store as of this revision (COMPACTED if compacted away). */
  readonly revision?: number;
  readonly keysOnly?: boolean;
}

/** Result of one {@link KvOp}, in the order of the branch that ran. */
export type KvOpResult =
  | { readonly op: 'put' }
  | { readonly op: 'delete'; readonly deleted: number }
  | { readonly op: 'range'; readonly kvs: readonly KvEntry[]; readonly more: boolean; readonly count: number };

/** Answer of a txn. */
export interface KvTxnResponse {
  readonly header: KvHeader;
  readonly succeeded: boolean;
  readonly responses: readonly KvOpResult[];
}

/** Answer of a range. */
export interface KvRangeResponse {
  readonly header: KvHeader;
  readonly kvs: readonly KvEntry[];
  /** More keys matched than `limit` returned. */
  readonly more: boolean;
  readonly count: number;
}

/** One change seen by a watch. `prevValue` is not requested (Tether never needs it). */
export interface KvWatchEvent {
  readonly type: 'put' | 'delete';
  /** For a delete, `value` is empty and `modRevision` is the deletion's revision. */
  readonly kv: KvEntry;
}

/** Callbacks of a watch. After `onError` the watch is over: the caller re-lists and watches again. */
export interface KvWatchHandlers {
  /** One batch per revision (all events of one txn together), in revision order. */
  onEvents(events: readonly KvWatchEvent[], header: KvHeader): void;
  onError(err: Error): void;
}

/** A watch request from a revision (inclusive). */
export interface KvWatchRequest {
  readonly key: string;
  readonly prefix?: boolean;
  readonly fromRevision: number;
}

/** A member's status (etcd's Maintenance.Status). */
export interface KvStatus {
  readonly header: KvHeader;
  /** Server version, e.g. `3.4.23`. */
  readonly version: string;
  /** Raft term of the member that answered. */
  readonly raftTerm: number;
  /** Id of the current leader as that member knows it (hex or name), absent when it has none. */
  readonly leader?: string;
}

/** The etcd v3 API subset Tether uses. Every call is bounded by `deadlineMs` (see the failure contract above). */
export interface Kv {
  range(req: KvRangeRequest, deadlineMs: number): Promise<KvRangeResponse>;
  txn(req: KvTxnRequest, deadlineMs: number): Promise<KvTxnResponse>;
  /** Grants a lease of at least `ttlMs` (rounded up to whole seconds and to etcd's minimum TTL). */
  leaseGrant(ttlMs: number, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly id: KvLeaseId; readonly ttlMs: number }>;
  /** One keepalive; `ttlMs` 0 means etcd does not know the lease (expired or revoked). */
  leaseKeepAlive(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly ttlMs: number }>;
  /** Revokes a lease (deleting its keys); revoking an unknown lease is not an error. */
  leaseRevoke(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader }>;
  /** Remaining and granted TTL, or undefined when etcd does not know the lease. */
  leaseTimeToLive(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly remainingMs: number; readonly grantedMs: number } | undefined>;
  /** Starts a watch; resolves once etcd confirmed it (`created`), rejects if it could not. */
  watch(req: KvWatchRequest, handlers: KvWatchHandlers, deadlineMs: number): Promise<Subscription>;
  status(deadlineMs: number): Promise<KvStatus>;
  close(): Promise<void>;
}
