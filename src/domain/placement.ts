/**
 * Capacity-aware placement of VMs on hosts, pure. Hosts publish `capacity` (vCPU, MiB) in their
 * record; a VM uses its spec's `vcpu` and `memoryMb` on its host while it holds capacity (placed and
 * not `lost`, see {@link holdsCapacity}).
 *
 * Strategy: spread — the schedulable host with the most free memory, then the most free vCPUs, then
 * the smallest host id (deterministic). VMs are placed one after the other, each seeing the capacity the
 * previous ones took.
 */
import { holdsCapacity, type ClusterVmRecord } from './cluster-vm.js';
import { timingProblems } from './fence-window.js';
import type { HostRecord } from './host-record.js';
import type { VmSpec } from './vm.js';

/** A host that may take new VMs, with its capacity. */
export interface SchedulableHost {
  readonly hostId: string;
  readonly epoch: number;
  readonly capacity: { readonly vcpu: number; readonly memoryMb: number };
}

/**
 * True when a host may take new VMs: `attached` or `ready`, its `alive` key present, not held
 * (a held host gets no new work: neither a requested `hold` nor one the host still applies,
 * `holdSeen`), not draining, and publishing safe timings (a host that can never be fenced
 * automatically must not collect VMs).
 */
export function isSchedulable(record: HostRecord | undefined, alive: boolean): boolean {
  if (record === undefined || !alive || record.hold || record.holdSeen === true || record.draining) return false;
  if (record.state !== 'attached' && record.state !== 'ready') return false;
  return timingProblems(record) === undefined;
}

/** One VM to place. */
export interface PlacementRequest {
  /** `ns/name`. */
  readonly key: string;
  readonly spec: Pick<VmSpec, 'vcpu' | 'memoryMb'>;
}

/** Where a VM goes, or why it cannot go anywhere now. */
export type Placement =
  | { readonly key: string; readonly hostId: string; readonly hostEpoch: number }
  | { readonly key: string; readonly reason: string };

/**
 * Places `requests` in order on `hosts`, given the VMs already in the cluster (`existing`, whose
 * capacity-holding ones count against their host).
 *
 * Invariants: no host is given more vCPUs or memory than its capacity minus what `existing` and the
 * earlier placements hold; a request that fits nowhere gets a `reason` naming what it needs. The reason
 * depends only on the request and the number of schedulable hosts (not on free amounts), so it stays
 * the same while nothing changes and the VM record is not rewritten at every retry.
 */
export function placeVms(
  requests: readonly PlacementRequest[],
  hosts: readonly SchedulableHost[],
  existing: readonly Pick<ClusterVmRecord, 'hostId' | 'phase' | 'spec'>[],
): Placement[] {
  const free = new Map<string, { vcpu: number; memoryMb: number; host: SchedulableHost }>();
  for (const h of hosts) free.set(h.hostId, { vcpu: h.capacity.vcpu, memoryMb: h.capacity.memoryMb, host: h });
  for (const vm of existing) {
    if (!holdsCapacity(vm)) continue;
    const f = free.get(vm.hostId!);
    if (!f) continue;
    f.vcpu -= vm.spec.vcpu;
    f.memoryMb -= vm.spec.memoryMb;
  }
  const out: Placement[] = [];
  for (const r of requests) {
    const candidates = [...free.values()].sort(
      (a, b) => b.memoryMb - a.memoryMb || b.vcpu - a.vcpu || (a.host.hostId < b.host.hostId ? -1 : a.host.hostId > b.host.hostId ? 1 : 0),
    );
    const fit = candidates.find((c) => c.vcpu >= r.spec.vcpu && c.memoryMb >= r.spec.memoryMb);
    if (fit) {
      fit.vcpu -= r.spec.vcpu;
      fit.memoryMb -= r.spec.memoryMb;
      out.push({ key: r.key, hostId: fit.host.hostId, hostEpoch: fit.host.epoch });
      continue;
    }
    const need = `${r.spec.vcpu} vCPU and ${r.spec.memoryMb} MiB`;
    out.push({
      key: r.key,
      reason:
        candidates.length === 0
          ? `no schedulable host (attached or ready, alive, not held) for ${need}`
          : `no host has ${need} free (${candidates.length} schedulable host${candidates.length === 1 ? '' : 's'})`,
    });
  }
  return out;
}
