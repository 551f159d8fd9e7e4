/**
 * The VM cache (issue 9, Contract 3): every cluster VM record, listed once at one revision, then kept
 * by a watch of `vms/` from just after it — resumed by listing again after any watch error (a
 * compaction, a disconnect). No VM listing per fence, per sweep or per event; the fence path, the
 * lost-marking and the sweep read this cache.
 *
 * Consistency: a watch batch holds every change of the revisions it covers (etcd never splits a
 * revision), so after applying it the cache is exact up to {@link ControllerState.vmsRev}. This
 * replica's own committed VM writes are applied at their commit revision at once (so the next sweep
 * sees them); a watch event for a key at or below the revision already applied for it is ignored
 * (deletes keep a tombstone until the watch has passed them). A stale cache only costs a conflict: every
 * VM write compares the VM's `mod_revision`.
 *
 * The capacity index ({@link CapacityIndex}) is kept with it: usage per host from the cached VMs,
 * schedulable hosts from the host view ({@link indexHost}).
 */
import type { VmEntry } from '../cluster-change.js';
import { CapacityIndex } from '../placement-index.js';
import { isSchedulable } from '../placement.js';
import type { VmWatchBatch } from '../../ports/controller-store.js';
import { call, clearTimer, log, rev, setTimer } from './effects.js';
import type { CallError, ControllerState, Ctx, HostTrack } from './types.js';

/** Lists every VM, then watches `vms/` from just after the listing (also after a watch error). */
export function resyncVms(c: Ctx): void {
  clearTimer(c, 'vms-resync');
  clearTimer(c, 'vms-load');
  const s = c.s;
  s.vmLoad = undefined;
  if (!s.leader) return;
  c.fx.push({ kind: 'close-watch', which: 'vms' });
  s.vmWatch = undefined;
  s.vmsSynced = false;
  call(c, { op: 'list-vms' }, { for: 'list-vms' });
}

/** True when the cached VM needs the sweep: lost (kept or placed again) or pending without a host. */
function needsSweep(v: VmEntry): boolean {
  const r = v.record;
  return r.phase === 'lost' || (r.phase === 'pending' && r.hostId === undefined);
}

function unindex(s: ControllerState, key: string): void {
  const prev = s.vms.get(key);
  const r = s.reserved.get(key);
  if (r) {
    s.capacity.addUsage(r.hostId, -r.vcpu, -r.memoryMb);
    s.reserved.delete(key);
  }
  if (!prev) return;
  s.capacity.removeVm(prev.record);
  const h = prev.record.hostId;
  if (h !== undefined) {
    const set = s.vmsByHost.get(h);
    set?.delete(key);
    if (set?.size === 0) s.vmsByHost.delete(h);
  }
  s.unplaced.delete(key);
  s.vms.delete(key);
}

function index(s: ControllerState, v: VmEntry): void {
  s.vms.set(v.key, v);
  s.capacity.addVm(v.record);
  const h = v.record.hostId;
  if (h !== undefined) {
    let set = s.vmsByHost.get(h);
    if (!set) s.vmsByHost.set(h, (set = new Set()));
    set.add(v.key);
    s.staleDirty.add(h);
  }
  if (needsSweep(v)) s.unplaced.add(v.key);
}

/**
 * Applies one VM change seen at revision `at` (a put of `entry`, or a delete of `key` when `entry`
 * is undefined), unless the cache already holds that key at `at` or later. True when applied.
 */
export function applyVm(s: ControllerState, key: string, entry: VmEntry | undefined, at: bigint): boolean {
  const cur = s.vms.get(key);
  if (cur && rev(cur.revision) >= at) return false;
  const tomb = s.vmTombs.get(key);
  if (tomb !== undefined && tomb >= at) return false;
  unindex(s, key);
  if (entry) {
    s.vmTombs.delete(key);
    index(s, entry);
  } else if (at > s.vmsRev) s.vmTombs.set(key, at);
  return true;
}

/** Records loaded into the cache per step (10 x `chunkSize`: each is a few map updates). */
const loadPerStep = (s: ControllerState): number => 10 * s.cfg.chunkSize;

/**
 * Outcome of the listing: the cache replaced — in steps of {@link loadPerStep} records with a
 * zero-delay timer between them (`vms-load`), so a listing of 200,000 VMs never holds the leader's
 * keepalive back — then the watch started from just after it.
 */
export function vmsListed(c: Ctx, r: { readonly vms: readonly VmEntry[]; readonly revision: string } | { readonly error: CallError }, resumeFences: (c: Ctx) => void): void {
  const s = c.s;
  if (!s.leader) return;
  if ('error' in r) {
    log(c, 'warn', { err: r.error.message }, 'listing VMs failed; retrying');
    setTimer(c, 'vms-resync', s.cfg.retryDelay);
    return;
  }
  s.vms.clear();
  s.vmsByHost.clear();
  s.unplaced.clear();
  s.vmTombs.clear();
  s.reserved.clear();
  // Bulk load: usage first (no tree work), then the schedulable hosts (one insert each).
  s.capacity = new CapacityIndex();
  s.vmLoad = { vms: r.vms, revision: r.revision, next: 0 };
  vmsLoad(c, resumeFences);
}

/** The next step of a listing's load (see {@link vmsListed}). */
export function vmsLoad(c: Ctx, resumeFences: (c: Ctx) => void): void {
  const s = c.s;
  const l = s.vmLoad;
  if (!l || !s.leader) return;
  const end = Math.min(l.vms.length, l.next + loadPerStep(s));
  for (; l.next < end; l.next++) index(s, l.vms[l.next]!);
  if (l.next < l.vms.length) {
    setTimer(c, 'vms-load', 0);
    return;
  }
  s.vmLoad = undefined;
  for (const t of s.hosts.values()) indexHost(s, t);
  s.vmsRev = rev(l.revision);
  s.vmsSynced = true;
  s.vmWatch = call(c, { op: 'watch-vms', fromRevision: String(s.vmsRev + 1n) }, { for: 'watch-vms' });
  log(c, 'info', { vms: s.vms.size, revision: l.revision }, 'VM cache synced');
  resumeFences(c);
}

/** A watch batch: applied in order; the cache is then exact up to the batch's revision. */
export function vmBatch(c: Ctx, watch: number, b: VmWatchBatch): void {
  const s = c.s;
  if (!s.vmsSynced || watch !== s.vmWatch) return;
  for (const e of b.events) {
    if (e.kind === 'put') applyVm(s, e.entry.key, e.entry, rev(e.entry.revision));
    else applyVm(s, e.key, undefined, rev(e.revision));
  }
  const top = rev(b.revision);
  if (top > s.vmsRev) s.vmsRev = top;
  for (const [key, at] of s.vmTombs) if (at <= s.vmsRev) s.vmTombs.delete(key);
}

/** The VM watch could not be started: list again later. */
export function vmWatchFailed(c: Ctx, err: CallError): void {
  if (!c.s.leader) return;
  log(c, 'warn', { err: err.message }, 'watching VMs failed; listing again');
  c.s.vmsSynced = false;
  c.s.vmWatch = undefined;
  setTimer(c, 'vms-resync', c.s.cfg.retryDelay);
}

/** The VM watch failed after it started (compaction, disconnect): list again now. True when it was the VM watch. */
export function vmWatchBroke(c: Ctx, watch: number, message: string): boolean {
  if (watch !== c.s.vmWatch) return false;
  log(c, 'warn', { err: message }, 'VM watch failed: listing VMs again');
  resyncVms(c);
  return true;
}

/** Keeps the capacity index's view of one host (schedulable or not, its epoch and capacity). */
export function indexHost(s: ControllerState, t: HostTrack): void {
  const r = t.record;
  s.capacity.setHost(t.hostId, r && isSchedulable(r, t.alive !== undefined) ? { epoch: r.epoch, capacity: r.capacity } : undefined);
}

/** The cached VMs placed on `hostId`, in key order. */
export function vmsOnHost(s: ControllerState, hostId: string): VmEntry[] {
  const keys = [...(s.vmsByHost.get(hostId) ?? [])].sort();
  return keys.map((k) => s.vms.get(k)!);
}

/** Forgets the cache (step-down). */
export function dropVmCache(s: ControllerState): void {
  s.vmsSynced = false;
  s.vmLoad = undefined;
  s.vmWatch = undefined;
  s.vms.clear();
  s.vmsByHost.clear();
  s.unplaced.clear();
  s.staleDirty.clear();
  s.vmTombs.clear();
  s.reserved.clear();
  s.capSeen.clear();
  s.capacity = new CapacityIndex();
  s.vmsRev = 0n;
}
