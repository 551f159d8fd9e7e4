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
