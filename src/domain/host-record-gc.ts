/**
 * Host-record GC, pure (issue 4, item 7): a host fenced and absent (no `alive` key) for longer than
 * `hostRecordTtl` (default 24 h) is `retired`; a retired, absent record is removed `removeAfter` later.
 *
 * Times are wall-clock ms: the age comes from the record's `updatedAt`, written by the fence and the
 * retire txns. This is not a safety decision (a removed host can only rejoin through a `ready`
 * registration with a new epoch), so wall time is good enough and survives controller failover.
 */
import type { ClusterChange, Revision } from './cluster-change.js';
import type { HostRecord } from './host-record.js';

/** Default `hostRecordTtl`: 24 h. */
export const DEFAULT_HOST_RECORD_TTL = 24 * 3_600_000;

/** What the GC does with one record now. */
export type HostGcAction = 'retire' | 'remove' | undefined;

/**
 * `retire` for a record `fenced` with no `alive` key since `updatedAt + ttl`; `remove` for a record
 * `retired` with no `alive` key since `updatedAt + removeAfter`; otherwise nothing.
 * Invariant: a host whose `alive` key exists is never retired or removed.
 */
export function hostGcAction(
  record: Pick<HostRecord, 'state' | 'updatedAt'>,
  alive: boolean,
  nowWall: number,
  opts: { readonly ttl: number; readonly removeAfter: number },
): HostGcAction {
  if (alive) return undefined;
  const age = nowWall - record.updatedAt;
  if (record.state === 'fenced' && age >= opts.ttl) return 'retire';
  if (record.state === 'retired' && age >= opts.removeAfter) return 'remove';
  return undefined;
}

/**
 * The retire txn: record (at `revision`) -> `retired`, only while the `alive` key is absent, with a
 * `host-retired` event.
 */
export function retireChange(hostId: string, record: HostRecord, revision: Revision, nowWall: number, ttlMs: number): ClusterChange {
  return {
    hosts: [{ hostId, expectRevision: revision, requireAliveAbsent: true, next: { ...record, state: 'retired', updatedAt: nowWall } }],
    events: [{ kind: 'host-retired', hostId, epoch: record.epoch, at: nowWall, detail: `host ${hostId} fenced and absent for over ${Math.round(ttlMs / 1000)}s: retired` }],
  };
}

/** The remove txn: the retired record (at `revision`) is deleted, only while the `alive` key is absent, with a `host-removed` event. */
export function removeChange(hostId: string, revision: Revision, nowWall: number): ClusterChange {
  return {
    hosts: [{ hostId, expectRevision: revision, requireAliveAbsent: true, next: null }],
    events: [{ kind: 'host-removed', hostId, at: nowWall, detail: `retired host record ${hostId} removed` }],
  };
}
