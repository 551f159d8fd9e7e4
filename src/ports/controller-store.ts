import type { ClusterEvent } from '../domain/cluster-event.js';
import type { ClusterChange, Revision, TxnLimits, VmEntry } from '../domain/cluster-change.js';
import type { HostRecord } from '../domain/host-record.js';
import type { LeaseId } from './cluster-store.js';
import type { InvalidRecordError } from '../domain/codec.js';
import type { InvalidRecordLog } from '../domain/codec/invalid-record-log.js';

export type { HostWrite, Revision, TxnLimits, VmEntry, VmWrite } from '../domain/cluster-change.js';

/** Value of `hosts/<id>/alive` and the lease it is attached to. */
export interface AliveInfo {
  readonly epoch: number;
  readonly agentVersion: string;
  readonly lease: LeaseId;
}

/** Outcome of {@link ControllerStore.scanVms}. */
export interface VmScan {
  /** Records that passed the codec. */
  readonly entries: VmEntry[];
  /** Records that exist but failed the codec (`error.key`, `error.field`, `error.revision`). */
  readonly invalid: InvalidRecordError[];
  /** The store revision the scan read at: watch from `revision + 1` to miss nothing after it. */
  readonly revision: Revision;
}

/**
 * One change under `vms/` seen by {@link ControllerStore.watchVms}: a record put (that passes the
 * codec), or gone — deleted, or put with a value the codec refuses (`invalid`, reported in
 * `invalidRecords`; a reader that only places and marks VMs treats it as absent, as listings do).
 */
export type VmWatchEvent =
  | { readonly kind: 'put'; readonly entry: VmEntry }
  | { readonly kind: 'deleted'; readonly key: string; readonly revision: Revision; readonly invalid?: true };

/**
 * The changes of one watch response, in store order. Invariant: etcd never splits one revision's
 * changes across responses, so after applying a batch the reader has seen EVERY change under `vms/`
 * up to `revision` (the highest `mod_revision` in it): what a capacity guard's bound relies on.
 */
export interface VmWatchBatch {
  readonly revision: Revision;
  readonly events: readonly VmWatchEvent[];
}

/**
 * One host as the store holds it: its record (if any) and its `alive` key (if any). A record that
 * fails the codec is absent here and reported in {@link ControllerStore.invalidRecords}.
 */
export interface HostEntry {
  readonly hostId: string;
  readonly record?: HostRecord;
  /** `mod_revision` of the record: what a txn on it compares. */
  readonly recordRevision?: Revision;
  readonly alive?: AliveInfo;
}

/** Every host at one store revision. */
export interface HostsSnapshot {
  /** Watch from `revision + 1` to miss nothing after this snapshot. */
  readonly revision: Revision;
  readonly hosts: readonly HostEntry[];
}

/** One host as read by {@link ControllerStore.getHost}, with the read's header revision. */
export interface HostRead extends HostEntry {
  /** The store's revision when the read was served: every change up to it is in what it read. */
  readonly readRevision: Revision;
}

/** A change under `hosts/`, in store order. `revision` is the change's `mod_revision`. */
export type HostWatchEvent =
  | { readonly kind: 'record'; readonly hostId: string; readonly record: HostRecord; readonly revision: Revision }
  | { readonly kind: 'record-deleted'; readonly hostId: string; readonly revision: Revision }
  | { readonly kind: 'alive'; readonly hostId: string; readonly alive: AliveInfo; readonly revision: Revision }
  | { readonly kind: 'alive-deleted'; readonly hostId: string; readonly revision: Revision };

/**
 * Callbacks of a watch. After `onError` the subscription may have missed changes: the caller closes
 * it, lists again and watches from the new snapshot (re-list on watch errors).
 */
export interface WatchHandlers<E> {
  onEvent(e: E): void;
  onError(err: Error): void;
}

/** Callbacks of the host watch: `onProgress(revision)` when the controller's barrier written at `revision` is delivered (every change before it was). */
export interface HostWatchHandlers extends WatchHandlers<HostWatchEvent> {
  onProgress?(revision: Revision): void;
}

/** A running watch. */
export interface Subscription {
  /** Stops the watch; no callback runs after it resolves. */
  close(): Promise<void>;
}

/**
 * Proof of leadership: the controller's `controller/leader` key, created on `lease` at
 * `createRevision`. Every controller txn compares that create revision, so a replica that lost the
 * key (lease expired, resigned) can change nothing — its token is a fencing token.
 */
export interface Leadership {
  readonly candidateId: string;
  readonly lease: LeaseId;
  readonly createRevision: Revision;
  readonly ttlMs: number;
}

/** Value of `controller/leader`. */
export interface LeaderInfo {
  readonly candidateId: string;
  /** Wall-clock ms of the election (display only). */
  readonly since: number;
}

/**
 * Writes applied in ONE txn: all of them or none. Its size must fit the store's {@link TxnLimits}
 * (counted by `txnOpCounts`); a change that does not fit is refused with a non-retryable error.
 */
export interface Change extends ClusterChange {
  /** When given, the txn also requires that this leadership still holds `controller/leader`. */
  readonly leader?: Leadership;
}

/** Outcome of {@link ControllerStore.commit}. `revision` is the txn's revision: the new `mod_revision` of every key it wrote. */
export type CommitResult =
  | { readonly ok: true; readonly revision: Revision }
  | { readonly ok: false; readonly reason: 'conflict' | 'not-leader' };

/** An event with its key (`events/<ms>-<rand>`, ordered by time). */
export interface StoredEvent {
  readonly key: string;
  readonly event: ClusterEvent;
}

/** One host's line of the published controller status. */
export interface ControllerHostStatus {
  readonly hostId: string;
  /** Wall-clock ms at which this controller will fence (after failover: its own rule). */
  readonly fenceAt?: number;
  /** Why it will not fence this host automatically, or that the freeze holds it. */
  readonly blocked?: string;
  /** Unsafe timings, as a message naming the violated inequalities. */
  readonly unsafeTimings?: string;
}

/** `controller/status`: what the active controller thinks, on its leader lease (gone with it). */
export interface ControllerStatus {
  readonly controllerId: string;
  /** Wall-clock ms of the election. */
  readonly leaderSince: number;
  /** Wall-clock ms of this document. */
  readonly at: number;
  readonly freeze: {
    readonly mode: 'normal' | 'frozen' | 'resuming';
    readonly detached: number;
    readonly total: number;
    readonly limit: number;
    /** Wall-clock ms at which fencing resumes (mode `resuming`). */
    readonly resumeAt?: number;
    readonly reason?: string;
  };
  readonly hosts: readonly ControllerHostStatus[];
  /**
   * Non-retryable failures this replica stopped retrying (newest last, at most 20): each needs an
   * operator. Absent or empty when there are none.
   */
  readonly failures?: readonly ControllerFailure[];
  /** What the controller assumes about the store's lease behaviour (from its version, read at election). */
  readonly store?: { readonly version: string; readonly assumption: string };
}

/** A write the controller gave up on because retrying cannot help (e.g. a txn etcd refuses as too large). */
export interface ControllerFailure {
  readonly hostId: string | null;
  /** What it was doing: `fence`, `mark-lost`, `detach`, ... */
  readonly action: string;
  /** The error's stable code. */
  readonly code: string;
  readonly message: string;
  /** Wall-clock ms. */
  readonly at: number;
}

/** What the store's server says about itself (etcd: Maintenance.Status). */
export interface StoreServerStatus {
  /** Server version, e.g. `3.4.23`. */
  readonly version: string;
  /** Raft term of the answering member. */
  readonly raftTerm: number;
}

/**
 * The controller's view of the cluster store (etcd in production): hosts and their `alive` keys,
 * cluster VM records, events, leader election and the controller's status document.
 *
 * Invariants: every call has a deadline (`deadlineMs`, relative) and rejects with a retryable
 * TIMEOUT/UNAVAILABLE when no answer came by then (quorum loss makes etcd calls hang); every write is
 * ONE txn guarded by `mod_revision` compares (and, for the controller, by its leadership), so a
 * decision taken on a stale view loses instead of overwriting.
 */
export interface ControllerStore {
  /** Size limits of one txn (etcd `--max-txn-ops` and request bytes): {@link commit} refuses larger changes. */
  readonly txnLimits: TxnLimits;
  /**
   * Calls `listener` (synchronously, from the response handler) each time a response header —
   * of a range, txn, keepalive, status or watch response — shows a raft term higher than any this
   * store saw before, including the first one. Watch responses report their term BEFORE their changes
   * are delivered. Returns a function that removes the listener.
   */
  onRaftTerm(listener: (term: number) => void): () => void;
  /** The highest raft term seen in a response header so far (undefined before the first response). */
  raftTerm(): number | undefined;
  /** The server's version and raft term (etcd Maintenance.Status of one member). */
  serverStatus(deadlineMs: number): Promise<StoreServerStatus>;
  /** Every host record and `alive` key, at one revision. */
  listHosts(deadlineMs: number): Promise<HostsSnapshot>;
  /** One host's record and `alive` key (linearizable), with the read's revision. */
  getHost(hostId: string, deadlineMs: number): Promise<HostRead>;
  /** Watches `hosts/` from `fromRevision` (inclusive). Resolves once the watch is established. */
  watchHosts(fromRevision: Revision, handlers: HostWatchHandlers, deadlineMs: number): Promise<Subscription>;
  /**
   * Writes the host-view barrier (`Keyspace.hostsBarrier`) in a txn guarded by the leadership;
   * resolves to its revision. Its put comes back through {@link HostWatchHandlers.onProgress}.
   */
  syncHosts(leadership: Leadership, deadlineMs: number): Promise<Revision>;
  /** The raw value of `controller/freeze-contract` (JSON), or undefined when none is published. */
  getFreezeContract(deadlineMs: number): Promise<unknown>;
  /** Writes `controller/freeze-contract` (no lease) in a txn guarded by the leadership; FAILED_PRECONDITION when it is gone. */
  putFreezeContract(leadership: Leadership, contract: unknown, deadlineMs: number): Promise<void>;
  /**
   * Watches `vms/` from `fromRevision` (inclusive), one callback per watch response (see
   * {@link VmWatchBatch}). Resolves once the watch is established. After `onError` (compaction,
   * disconnect) it is over: the caller lists again ({@link scanVms}) and watches from there.
   */
  watchVms(fromRevision: Revision, handlers: WatchHandlers<VmWatchBatch>, deadlineMs: number): Promise<Subscription>;
  /** Every cluster VM record that passes the codec (the others are skipped and reported, see {@link scanVms}). */
  listVms(deadlineMs: number): Promise<VmEntry[]>;
  /**
   * Every cluster VM record, split into those that pass the codec (domain/codec.ts) and those that do
   * not (each an INVALID_RECORD error naming key, field and revision). A reader must treat a key in
   * `invalid` as "exists, unreadable": never as deleted.
   */
  scanVms(deadlineMs: number): Promise<VmScan>;
  /**
   * Every record this store refused while reading (any kind: host records, alive values, VMs,
   * events, status), reported once per key and revision. Invariant: a refused record is skipped by
   * the read that met it, never half-used; except an `alive` value, whose KEY still counts as
   * present (its lease is the heartbeat: an unreadable value must not look like a lost host).
   */
  readonly invalidRecords: InvalidRecordLog;
  /**
   * Applies `change` in one txn; `conflict` when a compared revision moved, `not-leader` when the
   * leadership is gone. A change over {@link txnLimits}, or one etcd refuses as malformed or too
   * large, rejects with a NON-retryable FAILED_PRECONDITION (retrying cannot help).
   */
  commit(change: Change, deadlineMs: number): Promise<CommitResult>;

  /**
   * One campaign attempt: creates `controller/leader` on a fresh lease of `ttlMs` (whole seconds) if
   * nobody holds it. Undefined when another candidate does.
   */
  campaign(candidateId: string, ttlMs: number, deadlineMs: number): Promise<Leadership | undefined>;
  /** One keepalive of the leadership lease; `lost` when the store no longer knows it or the key is someone else's. */
  keepLeadership(leadership: Leadership, deadlineMs: number): Promise<'alive' | 'lost'>;
  /** Gives leadership up at once (revokes its lease; the key and status vanish). */
  resign(leadership: Leadership, deadlineMs: number): Promise<void>;
  /** Who leads, if anyone. */
  getLeader(deadlineMs: number): Promise<LeaderInfo | undefined>;
  /** Publishes `controller/status` on the leadership lease (only while the leadership holds). */
  putStatus(leadership: Leadership, status: ControllerStatus, deadlineMs: number): Promise<void>;
  /** The published status, if a leader published one. */
  getStatus(deadlineMs: number): Promise<ControllerStatus | undefined>;

  /** The newest `limit` events, oldest first, and the revision to watch from (+1). */
  listEvents(limit: number, deadlineMs: number): Promise<{ revision: Revision; events: StoredEvent[] }>;
  /** Watches new events from `fromRevision` (inclusive). */
  watchEvents(fromRevision: Revision, handlers: WatchHandlers<StoredEvent>, deadlineMs: number): Promise<Subscription>;
  /** Deletes all but the newest `keep` events; returns how many it deleted. */
  pruneEvents(keep: number, deadlineMs: number): Promise<number>;

  /** Remaining and granted TTL of a lease (undefined when the lease is gone). */
  leaseTtl(lease: LeaseId, deadlineMs: number): Promise<{ remainingMs: number; grantedMs: number } | undefined>;
  /** Sets the operator hold on a host record, with a `host-hold-changed` event (NOT_FOUND for unknown hosts). */
  setHold(hostId: string, hold: boolean, nowWall: number, deadlineMs: number): Promise<HostRecord>;
  /** Closes connections. */
  close(): Promise<void>;
}
