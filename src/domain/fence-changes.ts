/**
 * Pure builders of the fence's cluster changes, one per step, used by the controller AND by the
 * operator's `tether host fence --confirm` (so both write exactly the same txns):
 *
 * 1. {@link detachChange}: lease gone -> record `detached` with its deadline (guarded: record unchanged,
 *    `alive` absent), plus a `host-detached` event.
 * 2. {@link fenceChange}: deadline passed -> record `fenced` (guarded: record still `detached` at the
 *    same `mod_revision`, `alive` absent), plus a `host-fenced` event. Constant size whatever the
 *    number of VMs: 2 compares (+1 leadership), 2 puts.
 * 3. {@link vmsLostChanges}: the host's VMs at (or below) the fenced epoch -> `lost`, in as many txns
 *    as etcd's limits require ({@link TxnLimits}). Each txn is guarded by the host record being
 *    unchanged since it was read `fenced` at that epoch and by each VM's `mod_revision`, and carries a
 *    `host-vms-lost` event naming its VMs. Idempotent: a VM already lost is not in the next batch; a
 *    batch that lost a race is rebuilt from a fresh read. A crash between steps 2 and 3, or between
 *    two batches, leaves a `fenced` record with VMs not yet lost: whoever leads next finishes them
 *    (the controller does on sync and on every sweep).
 */
import {
  estimateTxnBytes,
  KEY_BYTES_ALLOWANCE,
  txnOpCounts,
  utf8Length,
  vmWriteOps,
  type ClusterChange,
  type Revision,
  type TxnLimits,
  type VmEntry,
} from './cluster-change.js';
import { lostWithHost, markLost, type ClusterVmRecord } from './cluster-vm.js';
import { detachRecord, fencedRecord, lossToFenceMs } from './fence-window.js';
import type { HostRecord } from './host-record.js';

/** Who fences: the controller at the deadline, or an operator who confirmed the host is powered off. */
export type FenceBy = 'controller' | 'operator';

/** How many VM keys a `host-fenced` event names (all of them are named by `host-vms-lost` events). */
export const LOST_VMS_LISTED = 100;

const iso = (ms: number): string => new Date(ms).toISOString();

/** Input of {@link detachChange}. */
export interface DetachInput {
  readonly hostId: string;
  readonly record: HostRecord;
  /** `mod_revision` of `record`. */
  readonly revision: Revision;
  /** Controller wall-clock ms when the lease was seen gone. */
  readonly observedWall: number;
  readonly nowWall: number;
  readonly fenceWindowOverride?: number;
  /** Set when a raft term change was seen within one TTL of the loss (etcd #15247): the window gets the TTL on top. */
  readonly termChange?: { readonly term: number };
}

/**
 * Step 1: `detached` with `fenceDeadline = observed + window` (`+ ttl` when `termChange`), guarded by
 * the record's revision and the `alive` key's absence, with its `host-detached` event (whose detail
 * says why the window was lengthened).
 */
export function detachChange(i: DetachInput): { readonly next: HostRecord; readonly change: ClusterChange } {
  const earlyRevoke = i.termChange !== undefined;
  const next = detachRecord(i.record, i.observedWall, { fenceWindowOverride: i.fenceWindowOverride, earlyRevoke });
  const deadline = next.fenceDeadline!;
  const extendedByMs = earlyRevoke ? lossToFenceMs(i.record.timings, { fenceWindowOverride: i.fenceWindowOverride, earlyRevoke }) - lossToFenceMs(i.record.timings, { fenceWindowOverride: i.fenceWindowOverride }) : 0;
  const why = earlyRevoke
    ? `; the lease vanished within one TTL of a raft term change (term ${i.termChange!.term}): etcd 3.4 may have revoked it early (#15247), so the window is lengthened by the TTL (${extendedByMs} ms)`
    : '';
  return {
    next,
    change: {
      hosts: [{ hostId: i.hostId, expectRevision: i.revision, requireAliveAbsent: true, next }],
      events: [
        {
          kind: 'host-detached',
          hostId: i.hostId,
          epoch: i.record.epoch,
          fenceDeadline: deadline,
          heldAtDetach: next.heldAtDetach === true,
          ...(earlyRevoke ? { termChange: { term: i.termChange!.term, extendedByMs } } : {}),
          at: i.nowWall,
          detail: `lease of ${i.hostId} gone; ${next.heldAtDetach ? 'it applies a hold (acknowledged): it will not be fenced automatically' : `its VMs are treated as gone at ${iso(deadline)} unless it re-registers first`}${why}`,
        },
      ],
    },
  };
}

/** Input of {@link fenceChange}. */
export interface FenceInput {
  readonly hostId: string;
  /** The record as read: `detached` (controller) or any fenceable state (operator). */
  readonly record: HostRecord;
  readonly revision: Revision;
  readonly nowWall: number;
  readonly by: FenceBy;
  /** Keys of the VMs that step 3 will mark lost (named in the event, the first {@link LOST_VMS_LISTED}). */
  readonly pendingVms: readonly string[];
}

/** Step 2: the constant-size fence txn (see the module doc). */
export function fenceChange(i: FenceInput): { readonly next: HostRecord; readonly change: ClusterChange } {
  const next = fencedRecord(i.record, i.nowWall);
  const n = i.pendingVms.length;
  const detail =
    i.by === 'operator'
      ? `operator fenced ${i.hostId} (confirmed powered off) at epoch ${i.record.epoch}: ${n} VM(s) to mark lost`
      : `fence window of ${i.hostId} passed (deadline ${iso(i.record.fenceDeadline ?? i.nowWall)}): fenced at epoch ${i.record.epoch}, ${n} VM(s) to mark lost`;
  return {
    next,
    change: {
      hosts: [{ hostId: i.hostId, expectRevision: i.revision, requireAliveAbsent: true, next }],
      events: [
        {
          kind: 'host-fenced',
          hostId: i.hostId,
          epoch: i.record.epoch,
          by: i.by,
          lostVms: i.pendingVms.slice(0, LOST_VMS_LISTED),
          lostVmCount: n,
          at: i.nowWall,
          detail,
        },
      ],
    },
  };
}

/** Input of {@link vmsLostChanges}. */
export interface VmsLostInput {
  readonly hostId: string;
  /** The host record as read; nothing is built unless it is `fenced`. */
  readonly record: HostRecord;
  /** Its `mod_revision`: every batch is guarded by it. */
  readonly revision: Revision;
  /** Every VM record (those of other hosts, newer epochs or already lost are skipped). */
  readonly vms: readonly VmEntry[];
  readonly nowWall: number;
  readonly by: FenceBy;
  readonly limits: TxnLimits;
  /** Whether the store adds a leadership compare to each txn (the controller's do). */
  readonly leader: boolean;
}

/** Output of {@link vmsLostChanges}. */
export interface VmsLostPlan {
  /** One txn each, in order; every one fits `limits`. */
  readonly changes: readonly ClusterChange[];
  /** VMs whose single lost-marking alone would not fit `limits`: they can never be marked by a txn (report them). */
  readonly oversized: readonly string[];
  /** Every VM still to be marked lost (in `changes` or `oversized`). */
  readonly pending: readonly string[];
}

/** Keys of the VMs a fence of `hostId` at `epoch` must mark lost. */
export function vmsToMarkLost(vms: readonly VmEntry[], hostId: string, epoch: number): VmEntry[] {
  return vms.filter((v) => lostWithHost(v.record, hostId, epoch));
}

/**
 * Step 3 (see the module doc). Batches greedily in key order; each batch's op counts (as etcd counts
 * them, {@link txnOpCounts}) and estimated bytes ({@link estimateTxnBytes}) fit `limits`.
 *
 * Invariants: every pending VM is in exactly one change or in `oversized`; no change is empty; each
 * change guards the host record's revision; nothing at all for a record that is not `fenced`.
 */
export function vmsLostChanges(i: VmsLostInput): VmsLostPlan {
  if (i.record.state !== 'fenced') return { changes: [], oversized: [], pending: [] };
  const epoch = i.record.epoch;
  const todo = vmsToMarkLost(i.vms, i.hostId, epoch).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const reason = i.by === 'operator' ? `host ${i.hostId} fenced by the operator at epoch ${epoch}` : `host ${i.hostId} fenced at epoch ${epoch}`;
  const build = (batch: { key: string; revision: Revision; next: ClusterVmRecord }[]): ClusterChange => ({
    guards: [{ hostId: i.hostId, expectRevision: i.revision }],
    vms: batch.map((b) => ({ key: b.key, expectRevision: b.revision, prevHostId: i.hostId, next: b.next })),
    events: [
      {
        kind: 'host-vms-lost',
        hostId: i.hostId,
        epoch,
        by: i.by,
        vms: batch.map((b) => b.key),
        at: i.nowWall,
        detail: `${batch.length} VM(s) of ${i.hostId} marked lost (${reason})`,
      },
    ],
  });
  const fits = (c: ClusterChange): boolean => {
    const n = txnOpCounts(c, i.leader);
    return Math.max(n.compares, n.success, n.failure) <= i.limits.maxOps && estimateTxnBytes(c, i.leader) <= i.limits.maxBytes;
  };
  const changes: ClusterChange[] = [];
  const oversized: string[] = [];
  let batch: { key: string; revision: Revision; next: ClusterVmRecord }[] = [];
  let bytes = 0;
  let successOps = 1; // the event
  const base = estimateTxnBytes(build([]), i.leader) + 16; // + the digits of the count in the detail
  const leaderCompares = i.leader ? 1 : 0;
  for (const v of todo) {
    const item = { key: v.key, revision: v.revision, next: markLost(v.record, reason, i.nowWall) };
    const itemOps = vmWriteOps({ prevHostId: i.hostId, next: item.next }); // record put + its per-host index copy
    // compare + put allowances (record and index copy), the value twice, and the key's place in the event's list
    const cost = (1 + itemOps) * KEY_BYTES_ALLOWANCE + 2 * utf8Length(JSON.stringify(item.next)) + utf8Length(item.key) + 3;
    if (!fits(build([item]))) {
      oversized.push(v.key);
      continue;
    }
    const n = batch.length + 1;
    const ops = Math.max(leaderCompares + 1 + n, successOps + itemOps); // compares: leadership, host guard, VMs; success: event, VMs and index copies
    if (batch.length > 0 && (ops > i.limits.maxOps || base + bytes + cost > i.limits.maxBytes)) {
      changes.push(build(batch));
      batch = [];
      bytes = 0;
      successOps = 1;
    }
    batch.push(item);
    bytes += cost;
    successOps += itemOps;
  }
  if (batch.length > 0) changes.push(build(batch));
  return { changes, oversized, pending: todo.map((v) => v.key) };
}

/** Input of {@link extendDeadlineChange}. */
export interface ExtendInput {
  readonly hostId: string;
  /** The `detached` record as read. */
  readonly record: HostRecord;
  readonly revision: Revision;
  /** The new deadline (wall ms); the record keeps the later of it and its own. */
  readonly to: number;
  /** The deadline it replaces (shown in the event). */
  readonly from: number | null;
  readonly why: 'takeover' | 'raft-term-change';
  readonly nowWall: number;
  readonly detail: string;
}

/**
 * Publishes a lengthened fence deadline: record (unchanged, `alive` absent) gets
 * `fenceDeadline = max(recorded, to)`, with a `fence-deadline-extended` event. Invariant: never
 * shortens the recorded deadline.
 */
export function extendDeadlineChange(i: ExtendInput): ClusterChange {
  return {
    hosts: [{ hostId: i.hostId, expectRevision: i.revision, requireAliveAbsent: true, next: { ...i.record, fenceDeadline: Math.max(i.record.fenceDeadline ?? 0, i.to), updatedAt: i.nowWall } }],
    events: [{ kind: 'fence-deadline-extended', hostId: i.hostId, epoch: i.record.epoch, from: i.from, to: i.to, why: i.why, at: i.nowWall, detail: i.detail }],
  };
}
