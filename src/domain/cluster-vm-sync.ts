/**
 * What a host agent does with the cluster's VM records, pure: which records are its work, which
 * local VMs must go, and which status to write back. The agent acts only on records placed on it at
 * its CURRENT epoch; records of older epochs (from before a fence) are never its work.
 */
import type { ClusterVmPhase, ClusterVmRecord } from './cluster-vm.js';
import type { VmPhase } from './vm.js';

/** A local VM as the sync sees it. */
export interface LocalVm {
  readonly uid: string;
  readonly phase: VmPhase;
  readonly desired: 'present' | 'absent';
  /** `<namespace>/<name>`: the key of its cluster record (matched against unreadable records). */
  readonly key?: string;
}

/** One cluster record with its key. */
export interface ClusterVmView {
  readonly key: string;
  readonly record: ClusterVmRecord;
}

/** What to do in one sync round. */
export interface SyncPlan {
  /** Records to start locally (not in the local inventory yet). */
  readonly create: readonly ClusterVmView[];
  /** Local uids to delete: their record is gone, was moved, lost, or asks for deletion. */
  readonly deleteLocal: readonly string[];
  /** Records whose VM is gone locally after a requested delete: remove the record. */
  readonly removeRecord: readonly ClusterVmView[];
  /** Drained records whose VM is gone locally: mark them lost so they are placed elsewhere. */
  readonly release: readonly ClusterVmView[];
  /** Records whose phase must follow the local VM. */
  readonly status: readonly { readonly view: ClusterVmView; readonly phase: ClusterVmPhase }[];
  /** Local uids left exactly as they are because their record exists but cannot be read. */
  readonly kept: readonly string[];
}

/** Cluster phase that reports a local phase. */
export function clusterPhaseOf(local: VmPhase): ClusterVmPhase {
  switch (local) {
    case 'pending':
    case 'creating':
      return 'creating';
    case 'running':
      return 'running';
    case 'failed':
      return 'failed';
    case 'stopped':
      return 'stopped';
    case 'deleting':
    case 'deleted':
      return 'deleting';
  }
}

/**
 * True when the VM ran here and died: its record (placed on this host at its current epoch) says
 * `running`, and the local VM is `failed` while still wanted — the reconciler marks a running VM so
 * when its process is gone after the agent was down (a reboot shorter than the lease TTL, or the
 * guardian's kill while the host still reattached at the same epoch). A create that failed here never
 * matches: its record was never `running`. Such a VM is deleted locally (process stopped if any,
 * leftovers removed), then re-created from its record at a later round, under the same uid, on this
 * host at this epoch — the only place the cluster runs it, since the controller moves a VM only after
 * it was marked lost. Never a loop: it dies again only with another agent outage.
 */
export function diedHere(record: Pick<ClusterVmRecord, 'phase'>, local: Pick<LocalVm, 'phase' | 'desired'>): boolean {
  return record.phase === 'running' && local.desired === 'present' && local.phase === 'failed';
}

/**
 * Decides one sync round for host `hostId` at `epoch`.
 * Invariants: only records with `hostId` = this host and `hostEpoch` = `epoch` are ever created or
 * written; a local VM whose record is not such a record (and not being created from one) is deleted
 * — EXCEPT when a record exists under its key but could not be read (`unreadable`: `<ns>/<name>`
 * keys that failed the codec): an unreadable record is not a deleted one, so that VM is kept exactly
 * as it is (not deleted, not stopped, no status written) and listed in `kept`.
 */
export function planSync(
  hostId: string,
  epoch: number,
  records: readonly ClusterVmView[],
  local: readonly LocalVm[],
  unreadable: readonly string[] = [],
): SyncPlan {
  const unreadableKeys = new Set(unreadable);
  const kept: string[] = [];
  const mine = records.filter((v) => v.record.hostId === hostId && v.record.hostEpoch === epoch);
  const byUid = new Map(mine.map((v) => [v.record.uid, v]));
  const localByUid = new Map(local.map((l) => [l.uid, l]));
  const create: ClusterVmView[] = [];
  const removeRecord: ClusterVmView[] = [];
  const release: ClusterVmView[] = [];
  const status: { view: ClusterVmView; phase: ClusterVmPhase }[] = [];
  for (const v of mine) {
    const l = localByUid.get(v.record.uid);
    if (v.record.phase === 'deleting') {
      if (!l) (v.record.drain ? release : removeRecord).push(v);
      continue;
    }
    if (v.record.phase === 'lost') continue;
    if (!l) {
      // A record that failed here (e.g. an unknown image) is not retried in a loop.
      if (v.record.phase !== 'failed' && v.record.phase !== 'stopped') create.push(v);
      continue;
    }
    if (diedHere(v.record, l)) continue; // deleted locally below, re-created from the record next
    const phase = clusterPhaseOf(l.phase);
    if (l.desired === 'present' && phase !== v.record.phase && !(v.record.phase === 'pending' && phase === 'creating' && l.phase === 'pending')) {
      status.push({ view: v, phase });
    }
  }
  const deleteLocal = local
    .filter((l) => l.desired === 'present')
    .filter((l) => {
      const v = byUid.get(l.uid);
      if (v) return v.record.phase === 'deleting' || v.record.phase === 'lost' || diedHere(v.record, l);
      if (l.key !== undefined && unreadableKeys.has(l.key)) {
        kept.push(l.uid);
        return false;
      }
      return true;
    })
    .map((l) => l.uid);
  return { create, deleteLocal, removeRecord, release, status, kept };
}

/** One copy in the agent's index cache: the record and its `mod_revision` (the record's own, same txn). */
export interface CachedVm extends ClusterVmView {
  readonly revision: string;
}

/** An index copy that exists but failed the codec: "exists, unreadable". */
export interface UnreadableVm {
  readonly revision: string;
  readonly field: string;
  readonly message: string;
}

/** One change of the host's index, as the cache applies it (the watch's, in store order). */
export type IndexChange =
  | { readonly kind: 'put'; readonly entry: CachedVm }
  | { readonly kind: 'invalid'; readonly key: string; readonly revision: string; readonly field: string; readonly message: string }
  | { readonly kind: 'deleted'; readonly key: string; readonly revision: string };

/**
 * The agent's copy of its own per-host index (`hostvms/<hostId>/`), fed by ONE list at a revision and
 * then the watch from the revision after it. Pure.
 *
 * Invariants: `revision` only grows; after {@link apply} of every batch up to revision R, the cache
 * equals a list of the index at R (same keys, records and revisions; unreadable copies listed as
 * such, never as absent); a change at or below `revision` is ignored (a batch delivered again after
 * a resumed watch changes nothing).
 */
export class HostVmCache {
  private rev: number;
  private readonly vms = new Map<string, CachedVm>();
  private readonly bad = new Map<string, UnreadableVm>();

  /** @param revision the list's revision; `entries`/`unreadable` what it returned. */
  constructor(revision: number, entries: readonly CachedVm[], unreadable: readonly (UnreadableVm & { readonly key: string })[]) {
    this.rev = revision;
    for (const e of entries) this.vms.set(e.key, e);
    for (const u of unreadable) this.bad.set(u.key, { revision: u.revision, field: u.field, message: u.message });
  }

  /** Every change of the index up to this revision is in the cache. */
  get revision(): number {
    return this.rev;
  }

  /** Applies one watch batch (all changes of revisions up to `revision`). Returns true when something changed. */
  apply(revision: number, changes: readonly IndexChange[]): boolean {
    if (revision <= this.rev) return false;
    let changed = false;
    for (const c of changes) {
      if (Number(c.kind === 'put' ? c.entry.revision : c.revision) <= this.rev) continue;
      changed = true;
      if (c.kind === 'put') {
        this.bad.delete(c.entry.key);
        this.vms.set(c.entry.key, c.entry);
      } else if (c.kind === 'invalid') {
        this.vms.delete(c.key);
        this.bad.set(c.key, { revision: c.revision, field: c.field, message: c.message });
      } else {
        this.vms.delete(c.key);
        this.bad.delete(c.key);
      }
    }
    this.rev = revision;
    return changed;
  }

  /** The readable copies, in key order. */
  entries(): CachedVm[] {
    return [...this.vms.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** The copy under `key`, if readable. */
  get(key: string): CachedVm | undefined {
    return this.vms.get(key);
  }

  /** The copy of incarnation `uid`, if any. */
  byUid(uid: string): CachedVm | undefined {
    for (const v of this.vms.values()) if (v.record.uid === uid) return v;
    return undefined;
  }

  /** Unreadable copies by key (`<ns>/<name>`). */
  unreadable(): ReadonlyMap<string, UnreadableVm> {
    return this.bad;
  }
}

/** What the agent does after its index watch failed. */
export type WatchRecovery =
  /** Watch again from `fromRevision` (the cache's revision + 1): nothing is missed, nothing listed. */
  | { readonly kind: 'resume'; readonly fromRevision: number }
  /** The revision after the cache's is compacted away: list the index again (the only re-list). */
  | { readonly kind: 'relist' };

/**
 * After a watch error (or a failed attempt to re-establish it) with error code `code`: resume from
 * the cache's revision + 1, except after COMPACTED (or with no cache yet), when only a new list can
 * tell the state. Invariant: a list is never repeated for any other error, so a flapping connection
 * costs a watch request per attempt, not a read of the index.
 */
export function watchRecovery(cacheRevision: number | undefined, code: string | undefined): WatchRecovery {
  if (cacheRevision === undefined || code === 'COMPACTED') return { kind: 'relist' };
  return { kind: 'resume', fromRevision: cacheRevision + 1 };
}

/** True when a plan asks for nothing: the round then touches neither etcd nor the local VMs. */
export function planIsEmpty(p: SyncPlan): boolean {
  return p.create.length === 0 && p.deleteLocal.length === 0 && p.removeRecord.length === 0 && p.release.length === 0 && p.status.length === 0;
}
