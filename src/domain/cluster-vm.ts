import type { VmSpec } from './vm.js';

/**
 * A VM as the cluster knows it: `vms/<ns>/<name>` in etcd (ARCHITECTURE.md section 2). Desired state
 * plus placement; the agent of `hostId` runs it while its own record is at `hostEpoch`.
 */

/** What the controller does with a VM whose host was fenced. `reschedule` is the default. */
export type RestartPolicy = 'reschedule' | 'none';

/**
 * Phase of a cluster VM record.
 * - `pending`: placed (`hostId` set) and waiting for that agent, or waiting for capacity (no `hostId`, `reason` says why);
 * - `creating` / `running` / `stopped` / `failed` / `deleting`: written by the agent of `hostId`;
 * - `lost`: its host was fenced; the controller reschedules it (policy `reschedule`) or leaves it to the operator (`none`).
 */
export type ClusterVmPhase = 'pending' | 'creating' | 'running' | 'stopped' | 'failed' | 'deleting' | 'lost';

/** `vms/<ns>/<name>`, JSON. */
export interface ClusterVmRecord {
  /** Unique per incarnation: a rescheduled VM gets a new uid, so the old host's leftovers never match it. */
  readonly uid: string;
  readonly spec: VmSpec;
  /** Host it is placed on; absent while waiting for capacity. */
  readonly hostId?: string;
  /** Epoch of `hostId`'s record at placement. A host never acts on records of an older epoch. */
  readonly hostEpoch?: number;
  readonly phase: ClusterVmPhase;
  /** Bumped on every change. */
  readonly generation: number;
  /** Absent means `reschedule`. */
  readonly restartPolicy?: RestartPolicy;
  /**
   * Set with phase `deleting` by a drain: once its host has stopped it and removed its resources,
   * the host marks it `lost` (to be placed elsewhere) instead of removing the record.
   */
  readonly drain?: boolean;
  /** Why the VM is `pending` without a host, or why it is `lost`. */
  readonly reason?: string;
  /** Wall-clock ms of the last write (display only). */
  readonly updatedAt?: number;
}

/** `ns/name` of a cluster VM (the part of its key after `vms/`). */
export type ClusterVmKey = string;

/** The VM's restart policy, with the default applied. */
export function restartPolicyOf(vm: Pick<ClusterVmRecord, 'restartPolicy'>): RestartPolicy {
  return vm.restartPolicy ?? 'reschedule';
}

/**
 * True when the VM uses capacity on its host: it is placed there and not `lost`.
 * Invariant: a lost VM never counts, so a fenced host's VMs do not block their own reschedule.
 */
export function holdsCapacity(vm: Pick<ClusterVmRecord, 'hostId' | 'phase'>): boolean {
  return vm.hostId !== undefined && vm.phase !== 'lost';
}

/**
 * True when fencing `hostId` at `epoch` makes this VM `lost`: it is placed on that host at that
 * epoch or an older one, and not already lost.
 */
export function lostWithHost(vm: Pick<ClusterVmRecord, 'hostId' | 'hostEpoch' | 'phase'>, hostId: string, epoch: number): boolean {
  return vm.hostId === hostId && (vm.hostEpoch ?? 0) <= epoch && vm.phase !== 'lost';
}

/** The record marked `lost` (generation + 1). Keeps `hostId`/`hostEpoch` to say where it was lost. */
export function markLost(vm: ClusterVmRecord, reason: string, nowWall: number): ClusterVmRecord {
  return { ...vm, phase: 'lost', generation: vm.generation + 1, reason, updatedAt: nowWall };
}

/**
 * True when the VM's incarnation is stale: its host has since registered at a newer epoch (it rejoined
 * `ready` after a verified cleanup, or re-registered after a fence), so this incarnation is gone and the
 * host will never act on it. Such a VM must be marked `lost` (then rescheduled), or it would stay
 * assigned to nobody forever.
 */
export function staleOnRejoinedHost(
  vm: Pick<ClusterVmRecord, 'hostId' | 'hostEpoch' | 'phase'>,
  host: { readonly hostId: string; readonly epoch: number; readonly state: string },
): boolean {
  return vm.hostId === host.hostId && vm.phase !== 'lost' && (vm.hostEpoch ?? 0) < host.epoch && (host.state === 'ready' || host.state === 'attached');
}
