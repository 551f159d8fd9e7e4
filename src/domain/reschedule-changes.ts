/**
 * Pure builders of the cluster changes that move VMs between hosts, one per change, used by the
 * controller's reschedule sweep AND by the operator commands (`tether host drain`, `tether vm create
 * --cluster`), so both write exactly the same txns:
 *
 * - {@link vmLostOnRejoinChange}: a VM of an older epoch on a host that rejoined -> `lost` (guarded by
 *   the host record and the VM's revision), with a `vm-lost` event;
 * - {@link keepLostChange}: a lost VM with restartPolicy `none` is noted once as left for the operator;
 * - {@link placementChange}: a VM placed on a host (new uid, the host's epoch, phase `pending`), guarded
 *   by the target host's record revision (a host fenced or re-epoched meanwhile gets nothing);
 * - {@link pendingChange}: no capacity: `pending` without a host, with the reason;
 * - {@link createVmChange}: a new VM record, placed or pending, that must not exist yet.
 *
 * Invariant: every change is one txn guarded by the VM's `mod_revision` (or its absence), so a VM is
 * never placed twice from one read, and never on a host whose record moved since it was read.
 */
import type { ClusterChange, Revision, VmEntry } from './cluster-change.js';
import { markLost, type ClusterVmRecord } from './cluster-vm.js';
import type { Placement } from './placement.js';
import type { VmSpec } from './vm.js';

/** The reason written once on a lost VM with restartPolicy `none`. */
export const KEEP_LOST_REASON = 'lost; restartPolicy none: left for the operator';

/** The record without its placement (`hostId`, `hostEpoch`) and reason. */
export function withoutPlacement(vm: ClusterVmRecord): ClusterVmRecord {
  const { hostId: _h, hostEpoch: _e, reason: _r, ...rest } = vm;
  return rest;
}

/** A VM of an older epoch on host `host`, which rejoined at `host.epoch`: marked `lost`. */
export function vmLostOnRejoinChange(v: VmEntry, host: { readonly hostId: string; readonly epoch: number; readonly revision: Revision }, nowWall: number): ClusterChange {
  const why = `host ${host.hostId} rejoined clean at epoch ${host.epoch}; this incarnation (epoch ${v.record.hostEpoch ?? 0}) is gone`;
  return {
    guards: [{ hostId: host.hostId, expectRevision: host.revision }],
    vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next: markLost(v.record, why, nowWall) }],
    events: [{ kind: 'vm-lost', vm: v.key, hostId: host.hostId, hostEpoch: v.record.hostEpoch ?? 0, hostRejoinedEpoch: host.epoch, at: nowWall, detail: `VM ${v.key} lost: ${why}` }],
  };
}

/** A lost VM with restartPolicy `none`: noted as left for the operator ({@link KEEP_LOST_REASON}). */
export function keepLostChange(v: VmEntry, nowWall: number): ClusterChange {
  return {
    vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next: { ...v.record, reason: KEEP_LOST_REASON, generation: v.record.generation + 1, updatedAt: nowWall } }],
    events: [{ kind: 'vm-lost-kept', vm: v.key, hostId: v.record.hostId ?? null, at: nowWall, detail: `VM ${v.key} is lost and has restartPolicy none: left for the operator` }],
  };
}

/** Input of {@link placementChange}. */
export interface PlacementInput {
  readonly vm: VmEntry;
  readonly placement: Extract<Placement, { hostId: string }>;
  /** `mod_revision` of the target host's record (guarded). */
  readonly targetRevision: Revision;
  /** The new incarnation's uid (fresh: never reused). */
  readonly uid: string;
  readonly nowWall: number;
  /** Append a `vm-rescheduled` event (the controller does; the drain command does not). */
  readonly event?: boolean;
}

/** A VM placed on `placement.hostId` as a new incarnation (`uid`), phase `pending`. */
export function placementChange(i: PlacementInput): { readonly next: ClusterVmRecord; readonly change: ClusterChange } {
  const { vm: v, placement: p, uid } = i;
  const next: ClusterVmRecord = { ...withoutPlacement(v.record), uid, hostId: p.hostId, hostEpoch: p.hostEpoch, phase: 'pending', generation: v.record.generation + 1, updatedAt: i.nowWall };
  return {
    next,
    change: {
      guards: [{ hostId: p.hostId, expectRevision: i.targetRevision }],
      vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next }],
      ...(i.event === false
        ? {}
        : { events: [{ kind: 'vm-rescheduled' as const, vm: v.key, fromHost: v.record.hostId ?? null, toHost: p.hostId, uid, at: i.nowWall, detail: `VM ${v.key} placed on ${p.hostId} (epoch ${p.hostEpoch}) as ${uid}` }] }),
    },
  };
}

/** No capacity for `v`: `pending` without a host, with the placement's reason. */
export function pendingChange(v: VmEntry, reason: string, nowWall: number): ClusterChange {
  const next: ClusterVmRecord = { ...withoutPlacement(v.record), phase: 'pending', reason, generation: v.record.generation + 1, updatedAt: nowWall };
  return {
    vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next }],
    events: [{ kind: 'vm-pending', vm: v.key, reason, at: nowWall, detail: `VM ${v.key} waits for capacity: ${reason}` }],
  };
}

/** Input of {@link createVmChange}. */
export interface CreateVmInput {
  readonly key: string;
  readonly spec: VmSpec;
  readonly uid: string;
  readonly nowWall: number;
  /** Where it goes (with the target's record revision), or why it cannot go anywhere now. */
  readonly placement: { readonly hostId: string; readonly hostEpoch: number; readonly targetRevision: Revision } | { readonly reason: string };
}

/** A new VM record (generation 1), placed (`pending` on a host, guarded by its record) or `pending` without a host. */
export function createVmChange(i: CreateVmInput): { readonly record: ClusterVmRecord; readonly change: ClusterChange } {
  const base = { uid: i.uid, spec: i.spec, generation: 1, updatedAt: i.nowWall };
  const p = i.placement;
  if ('hostId' in p) {
    const record: ClusterVmRecord = { ...base, hostId: p.hostId, hostEpoch: p.hostEpoch, phase: 'pending' };
    return { record, change: { guards: [{ hostId: p.hostId, expectRevision: p.targetRevision }], vms: [{ key: i.key, expectRevision: null, prevHostId: null, next: record }] } };
  }
  const record: ClusterVmRecord = { ...base, phase: 'pending', reason: p.reason };
  return { record, change: { guards: [], vms: [{ key: i.key, expectRevision: null, prevHostId: null, next: record }] } };
}
