import type { ClusterEvent } from '../domain/cluster-event.js';
import type { ClusterVmKey, ClusterVmRecord } from '../domain/cluster-vm.js';
import type { HostRecord } from '../domain/host-record.js';
import type { LeaseId } from './cluster-store.js';

/** An etcd revision (decimal string): a record's `mod_revision`, or a store-wide revision. */
export type Revision = string;

/** Value of `hosts/<id>/alive` and the lease it is attached to. */
export interface AliveInfo {
  readonly epoch: number;
  readonly agentVersion: string;
  readonly lease: LeaseId;
}

/** One host as the store holds it: its record (if any) and its `alive` key (if any). */
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

/** A running watch. */
export interface Subscription {
  /** Stops the watch; no callback runs after it resolves. */
  close(): Promise<void>;
}

/** A VM record with its `mod_revision`. */
export interface VmEntry {
  readonly key: ClusterVmKey;
  readonly record: ClusterVmRecord;
  readonly revision: Revision;
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

/** Change of one host record, guarded by its `mod_revision`. */
export interface HostWrite {
  readonly hostId: string;
  readonly expectRevision: Revision;
  /** Also require that `hosts/<id>/alive` does not exist (the host has not re-registered). */
  readonly requireAliveAbsent?: boolean;
  /** New record, or null to delete it. */
  readonly next: HostRecord | null;
}

/** Change of one VM record, guarded by its `mod_revision` (null: it must not exist yet). */
export interface VmWrite {
  readonly key: ClusterVmKey;
  readonly expectRevision: Revision | null;
  /** New record, or null to delete it. */
  readonly next: ClusterVmRecord | null;
}

/** Writes applied in ONE txn: all of them or none. */
export interface Change {
  /** When given, the txn also requires that this leadership still holds `controller/leader`. */
  readonly leader?: Leadership;
  readonly hosts?: readonly HostWrite[];
  /** Host records that must be unchanged (compared, not written), e.g. the target of a placement. */
  readonly guards?: readonly { readonly hostId: string; readonly expectRevision: Revision }[];
  readonly vms?: readonly VmWrite[];
  /** Events appended in the same txn (so an event exists exactly when its change happened). */
  readonly events?: readonly ClusterEvent[];
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
  /** Every host record and `alive` key, at one revision. */
  listHosts(deadlineMs: number): Promise<HostsSnapshot>;
  /** One host's record and `alive` key. */
  getHost(hostId: string, deadlineMs: number): Promise<HostEntry>;
  /** Watches `hosts/` from `fromRevision` (inclusive). Resolves once the watch is established. */
  watchHosts(fromRevision: Revision, handlers: WatchHandlers<HostWatchEvent>, deadlineMs: number): Promise<Subscription>;
  /** Every cluster VM record. */
  listVms(deadlineMs: number): Promise<VmEntry[]>;
  /** Applies `change` in one txn; `conflict` when a compared revision moved, `not-leader` when the leadership is gone. */
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
