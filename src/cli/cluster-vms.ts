import { randomBytes } from 'node:crypto';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import { NotFoundError, TetherError } from '../domain/errors.js';
import { isSchedulable, placeVms, type SchedulableHost } from '../domain/placement.js';
import { createVmChange } from '../domain/reschedule-changes.js';
import type { VmSpec } from '../domain/vm.js';
import type { ControllerStore, HostEntry } from '../ports/controller-store.js';

const DEADLINE = 5000;

/** The hosts of a snapshot that may take new VMs (see {@link isSchedulable}), as placement wants them. */
export function schedulableHosts(hosts: readonly HostEntry[]): SchedulableHost[] {
  return hosts
    .filter((h) => h.record && isSchedulable(h.record, h.alive !== undefined))
    .map((h) => ({ hostId: h.hostId, epoch: h.record!.epoch, capacity: h.record!.capacity }));
}

/** Result of {@link clusterCreate}: the record as written. */
export interface ClusterCreated {
  readonly key: string;
  readonly record: ClusterVmRecord;
}

/**
 * Creates `vms/<ns>/<name>` placed by capacity (spread) on a schedulable host, or on `host` when
 * given. The write is one txn: the key must not exist, the target host's record must be
 * unchanged since it was read (so a host fenced or re-epoched meanwhile gets nothing), and nothing
 * may have been placed on the target since the VM listing the capacity check used (its capacity
 * guard, `ClusterChange.capacityGuards`): two creates that both saw room for one VM cannot both
 * commit — the second fails with a retryable UNAVAILABLE and, tried again, sees the first. With no
 * capacity the VM is recorded `pending` without a host and with the reason; the controller places
 * it when capacity appears.
 */
export async function clusterCreate(store: Pick<ControllerStore, 'listHosts' | 'scanVms' | 'commit'>, spec: VmSpec, host?: string): Promise<ClusterCreated> {
  const key = `${spec.id.namespace}/${spec.id.name}`;
  const [snapshot, { entries: vms, invalid, revision: seen }] = await Promise.all([store.listHosts(DEADLINE), store.scanVms(DEADLINE)]);
  const existing = vms.find((v) => v.key === key);
  if (existing) throw new TetherError('ALREADY_EXISTS', `microvm ${key} already exists (uid ${existing.record.uid}, ${existing.record.phase} on ${existing.record.hostId ?? 'no host'})`);
  const unreadable = invalid.find((e) => e.key === `vms/${key}`);
  if (unreadable) throw new TetherError('ALREADY_EXISTS', `microvm ${key} already exists but its record cannot be read (${unreadable.message}); delete it first`, { cause: unreadable });
  if (host && !snapshot.hosts.some((h) => h.hostId === host)) throw new NotFoundError(`host "${host}" (known: ${snapshot.hosts.map((h) => h.hostId).join(', ') || 'none'})`);
  const candidates = schedulableHosts(snapshot.hosts).filter((h) => !host || h.hostId === host);
  if (host && candidates.length === 0) {
    const h = snapshot.hosts.find((x) => x.hostId === host)!;
    throw new TetherError('FAILED_PRECONDITION', `host ${host} takes no new VMs now (state ${h.record?.state ?? 'unknown'}${h.record?.hold ? ', held' : ''}${h.alive ? '' : ', not alive'})`);
  }
  const [p] = placeVms([{ key, spec }], candidates, vms.map((v) => v.record));
  if (!(p && 'hostId' in p) && host) throw new TetherError('FAILED_PRECONDITION', `host ${host} has no room: ${p?.reason ?? 'no capacity'}`);
  // the same builder family as the controller's placements (domain/reschedule-changes.ts)
  const { record, change } = createVmChange({
    key,
    spec,
    uid: randomBytes(16).toString('hex'),
    nowWall: Date.now(),
    placement: p && 'hostId' in p ? { hostId: p.hostId, hostEpoch: p.hostEpoch, targetRevision: snapshot.hosts.find((h) => h.hostId === p.hostId)!.recordRevision! } : { reason: p?.reason ?? 'no schedulable host' },
  });
  const guarded = p && 'hostId' in p ? { ...change, capacityGuards: [{ hostId: p.hostId, seenRevision: seen }] } : change;
  const res = await store.commit(guarded, DEADLINE);
  if (!res.ok) throw new TetherError('UNAVAILABLE', `microvm ${key}: the cluster changed while placing it (${res.reason}); try again`, { retryable: true });
  return { key, record };
}

/**
 * Asks for the deletion of `vms/<key>`: a placed VM is marked `deleting` (its host stops it,
 * removes its resources, then the record); an unplaced or lost one is removed at once. A record
 * that exists but fails the codec cannot be marked: it is removed at once (guarded by its revision),
 * which its host, if any, reads as "record gone" and deletes the VM.
 */
export async function clusterDelete(store: Pick<ControllerStore, 'scanVms' | 'commit'>, key: string): Promise<'deleting' | 'removed'> {
  const { entries, invalid } = await store.scanVms(DEADLINE);
  const v = entries.find((x) => x.key === key);
  const unreadable = invalid.find((e) => e.key === `vms/${key}`);
  if (!v && unreadable?.revision !== undefined) {
    const res = await store.commit({ vms: [{ key, expectRevision: unreadable.revision, prevHostId: null, next: null }] }, DEADLINE);
    if (!res.ok) throw new TetherError('UNAVAILABLE', `microvm ${key} changed meanwhile; try again`, { retryable: true });
    return 'removed';
  }
  if (!v) throw new NotFoundError(`microvm ${key}`);
  const placed = v.record.hostId !== undefined && v.record.phase !== 'lost';
  const next: ClusterVmRecord | null = placed ? { ...v.record, phase: 'deleting', generation: v.record.generation + 1, updatedAt: Date.now() } : null;
  const res = await store.commit({ vms: [{ key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next }] }, DEADLINE);
  if (!res.ok) throw new TetherError('UNAVAILABLE', `microvm ${key} changed meanwhile; try again`, { retryable: true });
  return placed ? 'deleting' : 'removed';
}
