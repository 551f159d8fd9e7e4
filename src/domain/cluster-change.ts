/**
 * The shape of one change of the cluster keyspace (one etcd txn) and how etcd counts its size, pure.
 *
 * etcd 3.4 refuses a txn when `max(#compares, #success ops, #failure ops) > --max-txn-ops` (default
 * 128; `checkTxnRequest` in `etcdserver/api/v3rpc/key.go`: the three lists are each bounded, not their
 * sum), and a request larger than `--max-request-bytes` (default 1.5 MiB). A change that does not fit
 * can never succeed, so it is a non-retryable error ({@link txnLimitProblem}); builders that may touch
 * many keys split their work into batches that fit (see `fence-changes.ts`).
 */
import type { ClusterEvent } from './cluster-event.js';
import type { ClusterVmKey, ClusterVmRecord } from './cluster-vm.js';
import type { HostRecord } from './host-record.js';

/** An etcd revision (decimal string): a record's `mod_revision`, or a store-wide revision. */
export type Revision = string;

/** Change of one host record, guarded by its `mod_revision`. */
export interface HostWrite {
  readonly hostId: string;
  readonly expectRevision: Revision;
  /** Also require that `hosts/<id>/alive` does not exist (the host has not re-registered). */
  readonly requireAliveAbsent?: boolean;
  /** New record, or null to delete it. */
  readonly next: HostRecord | null;
}

/**
 * Change of one VM record, guarded by its `mod_revision` (null: it must not exist yet). The same txn
 * keeps the per-host index (`hostvms/<hostId>/<key>`, see `Keyspace.hostVm`): it puts the copy under
 * `next.hostId` and deletes the one under `prevHostId` when the host changes or the record goes.
 */
export interface VmWrite {
  readonly key: ClusterVmKey;
  readonly expectRevision: Revision | null;
  /**
   * `hostId` of the record as the writer read it at `expectRevision` (null: no record, or unplaced).
   * Must be true of that revision: the `mod_revision` compare makes the index delete exact only then.
   */
  readonly prevHostId: string | null;
  /** New record, or null to delete it. */
  readonly next: ClusterVmRecord | null;
}

/** A VM record with its `mod_revision`. */
export interface VmEntry {
  readonly key: ClusterVmKey;
  readonly record: ClusterVmRecord;
  readonly revision: Revision;
}

/** Writes applied in ONE txn: all of them or none (without the leadership guard the store adds). */
export interface ClusterChange {
  readonly hosts?: readonly HostWrite[];
  /** Host records that must be unchanged (compared, not written), e.g. the target of a placement. */
  readonly guards?: readonly { readonly hostId: string; readonly expectRevision: Revision }[];
  /**
   * Capacity guards of placements (issue 9): per target host, `placements/<hostId>` must not have been
   * written after `seenRevision` (compare `mod_revision < seenRevision + 1`), and is written (bumped)
   * by this txn. Invariant kept by every writer that places a VM on a host (create, reschedule,
   * drain): its capacity check saw every VM on the host up to `seenRevision`, so two placements
   * decided on the same view cannot both commit; one compare and one put per host.
   */
  readonly capacityGuards?: readonly { readonly hostId: string; readonly seenRevision: Revision }[];
  readonly vms?: readonly VmWrite[];
  /** Events appended in the same txn (so an event exists exactly when its change happened). */
  readonly events?: readonly ClusterEvent[];
}

/** Size limits of one txn, as the etcd server enforces them. */
export interface TxnLimits {
  /** etcd `--max-txn-ops` (default 128): bound of EACH of compares, success ops and failure ops. */
  readonly maxOps: number;
  /**
   * Bound of the request's keys and values in bytes. etcd's `--max-request-bytes` default is 1.5 MiB;
   * the default here keeps a third of it for protobuf framing and the prefix.
   */
  readonly maxBytes: number;
}

/** etcd 3.4's defaults (see {@link TxnLimits}). */
export const DEFAULT_TXN_LIMITS: TxnLimits = { maxOps: 128, maxBytes: 1024 * 1024 };

/** Bytes reserved per op for its key (prefix + `vms/<ns>/<name>` or an event key) in estimates. */
export const KEY_BYTES_ALLOWANCE = 256;

/** Op counts of a change as etcd counts them. */
export interface TxnOpCounts {
  readonly compares: number;
  readonly success: number;
  readonly failure: number;
}

/**
 * Success ops of one VM write: the record's put or delete, the put of its index copy under
 * `next.hostId` (when placed), and the delete of the index entry under `prevHostId` (when it was
 * placed and the host changes or the record is deleted).
 */
export function vmWriteOps(v: Pick<VmWrite, 'prevHostId' | 'next'>): number {
  const nextHost = v.next?.hostId ?? null;
  return 1 + (nextHost !== null ? 1 : 0) + (v.prevHostId !== null && v.prevHostId !== nextHost ? 1 : 0);
}

/**
 * How the store turns `change` into a txn: one compare per host write (`mod_revision`) plus one when it
 * requires the `alive` key absent, one per guard, one per VM write, one for the leadership when
 * `leader` (and, for an event-only change, one create compare on the event key); one success op per
 * host write and event, {@link vmWriteOps} per VM write (record + per-host index); no failure ops.
 */
export function txnOpCounts(change: ClusterChange, leader: boolean): TxnOpCounts {
  let compares = leader ? 1 : 0;
  let success = 0;
  for (const h of change.hosts ?? []) {
    compares += h.requireAliveAbsent ? 2 : 1;
    success++;
  }
  compares += (change.guards ?? []).length;
  compares += (change.capacityGuards ?? []).length;
  success += (change.capacityGuards ?? []).length;
  compares += (change.vms ?? []).length;
  for (const v of change.vms ?? []) success += vmWriteOps(v);
  const events = (change.events ?? []).length;
  success += events;
  if (compares === 0 && events > 0) compares = 1;
  return { compares, success, failure: 0 };
}

const utf8 = new TextEncoder();

/** UTF-8 length of `s`. */
export function utf8Length(s: string): number {
  return utf8.encode(s).length;
}

/**
 * Estimated request bytes of `change`: every value's JSON plus {@link KEY_BYTES_ALLOWANCE} per op; a
 * placed VM's value counts twice (the record and its per-host index copy).
 */
export function estimateTxnBytes(change: ClusterChange, leader: boolean): number {
  const c = txnOpCounts(change, leader);
  let bytes = (c.compares + c.success) * KEY_BYTES_ALLOWANCE;
  for (const h of change.hosts ?? []) if (h.next) bytes += utf8Length(JSON.stringify(h.next));
  for (const v of change.vms ?? []) if (v.next) bytes += utf8Length(JSON.stringify(v.next)) * (v.next.hostId !== undefined ? 2 : 1);
  for (const e of change.events ?? []) bytes += utf8Length(JSON.stringify(e));
  return bytes;
}

/**
 * Why etcd would refuse this txn as too large (undefined when it fits), from its op counts and its
 * measured (`bytes`) or estimated size. Invariant: a change for which this returns a message can never
 * commit, however often it is retried.
 */
export function txnLimitProblem(counts: TxnOpCounts, bytes: number, limits: TxnLimits): string | undefined {
  const worst = Math.max(counts.compares, counts.success, counts.failure);
  if (worst > limits.maxOps) {
    return `txn too large: ${counts.compares} compares, ${counts.success} success ops, ${counts.failure} failure ops (etcd allows ${limits.maxOps} of each, --max-txn-ops)`;
  }
  if (bytes > limits.maxBytes) return `txn too large: ${bytes} bytes of keys and values (limit ${limits.maxBytes})`;
  return undefined;
}
