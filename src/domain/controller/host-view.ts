/**
 * The host view: every host's record and `alive` key, from a listing then a watch from just after it
 * (listed again after a watch error), and the per-host decision ({@link reconcile}) each change
 * triggers. Watch events older than what was applied for a key are ignored; a host with neither
 * record nor `alive` key is forgotten.
 */
import { countsDetached, inPool } from '../mass-freeze.js';
import { decideHost, timingProblems } from '../fence-window.js';
import { isSchedulable } from '../placement.js';
import type { HostRecord } from '../host-record.js';
import type { HostsSnapshot, HostWatchEvent } from '../../ports/controller-store.js';
import { call, clearTimer, emitEvent, incarnationOf, log, rev, setTimer, track } from './effects.js';
import { armFence, completeFence, detach, disarm, forget } from './fence.js';
import { evaluateFreeze, markFreezeDirty } from './freeze.js';
import { requestSweep } from './sweep.js';
import { indexHost } from './vm-view.js';
import { stuck } from './writes.js';
import type { CallError, Ctx, HostTrack, Now } from './types.js';

/** Lists every host, then watches from just after that snapshot (also after a watch error). */
export function resync(c: Ctx): void {
  clearTimer(c, 'resync');
  clearTimer(c, 'hosts-reconcile');
  c.s.reconcileQueue = undefined;
  if (!c.s.leader) return;
  c.fx.push({ kind: 'close-watch' });
  c.s.watch = undefined;
  c.s.synced = false;
  call(c, { op: 'list-hosts' }, { for: 'list-hosts' });
}

/** Outcome of the listing: the view is replaced, the watch started, every host reconciled. */
export function hostsListed(c: Ctx, r: { readonly snapshot: HostsSnapshot } | { readonly error: CallError }): void {
  const s = c.s;
  if (!s.leader) return;
  if ('error' in r) {
    log(c, 'warn', { err: r.error.message }, 'listing hosts failed; retrying');
    setTimer(c, 'resync', s.cfg.retryDelay);
    return;
  }
  const at = rev(r.snapshot.revision);
  const present = new Set<string>();
  for (const h of r.snapshot.hosts) {
    present.add(h.hostId);
    s.staleDirty.add(h.hostId);
    const t = track(c, h.hostId);
    setRecord(t, h.record, h.recordRevision);
    t.recordSeen = at;
    t.aliveSeen = at;
    if (h.alive) {
      t.alive = h.alive;
      t.goneWall = t.goneMono = undefined;
    } else t.alive = undefined;
    indexHost(s, t);
  }
  for (const t of s.hosts.values()) {
    if (present.has(t.hostId)) continue;
    setRecord(t, undefined, undefined);
    t.alive = undefined;
    t.recordSeen = t.aliveSeen = at;
    indexHost(s, t);
  }
  s.watch = call(c, { op: 'watch-hosts', fromRevision: String(at + 1n) }, { for: 'watch' });
  s.synced = true;
  s.hostsRev = at; // C2: the view holds every change under hosts/ up to the listing
  log(c, 'info', { hosts: s.hosts.size }, 'host view synced');
  s.reconcileQueue = [...s.hosts.keys()];
  reconcileChunk(c);
}

/**
 * Reconciles the hosts of a fresh listing, 4 x `chunkSize` per step with a zero-delay timer
 * (`hosts-reconcile`) between steps (10,000 hosts never hold the leader's keepalive back); then the
 * freeze is evaluated and a sweep requested. Hosts changed meanwhile were reconciled by their events.
 */
export function reconcileChunk(c: Ctx): void {
  const s = c.s;
  const q = s.reconcileQueue;
  if (!q || !s.leader || !s.synced) return;
  const n = Math.min(q.length, 4 * s.cfg.chunkSize);
  for (const id of q.splice(0, n)) {
    const t = s.hosts.get(id);
    if (t) reconcile(c, t);
  }
  if (q.length > 0) {
    setTimer(c, 'hosts-reconcile', 0);
    return;
  }
  s.reconcileQueue = undefined;
  evaluateFreeze(c);
  requestSweep(c);
}

/** The watch could not be started: list again later. */
export function watchFailed(c: Ctx, err: CallError): void {
  if (!c.s.leader) return;
  log(c, 'warn', { err: err.message }, 'listing hosts failed; retrying');
  c.s.synced = false;
  c.s.watch = undefined;
  setTimer(c, 'resync', c.s.cfg.retryDelay);
}

/** The watch failed after it started: list again now. */
export function watchBroke(c: Ctx, watch: number, message: string): void {
  if (watch !== c.s.watch) return;
  log(c, 'warn', { err: message }, 'host watch failed: listing again');
  resync(c);
}

/** Sets the record; true when the host came back (`attached`/`ready`) from `detached`. */
function setRecord(t: HostTrack, record: HostRecord | undefined, revision: string | undefined): boolean {
  const prev = t.record;
  t.record = record;
  t.revision = revision;
  return prev?.state === 'detached' && (record?.state === 'attached' || record?.state === 'ready');
}

/** A change under `hosts/` from the current watch, observed at `at`. */
export function hostEvent(c: Ctx, watch: number, e: HostWatchEvent, at: Now): void {
  const s = c.s;
  if (!s.synced || watch !== s.watch) return;
  const t = track(c, e.hostId);
  // C6: a return right after a rise (a witness's revoke and its re-registration in one batch) is
  // preceded by an evaluation, so the freeze sees the peak and leaves it only through `resuming`.
  if (s.freezeRose && mayLowerShare(t, e)) evaluateFreeze(c);
  const before = shareContribution(t);
  const r = rev(e.revision);
  if (r - 1n > s.hostsRev) s.hostsRev = r - 1n; // C2: every change before this one was delivered (one txn's changes may span events)
  const wasSchedulable = isSchedulable(t.record, t.alive !== undefined);
  if (e.kind === 'record' || e.kind === 'record-deleted') {
    if (r <= t.recordSeen) return;
    t.recordSeen = r;
    const prevState = t.record?.state;
    const prevEpoch = t.record?.epoch;
    s.staleDirty.add(t.hostId);
    const returned = setRecord(t, e.kind === 'record' ? e.record : undefined, e.kind === 'record' ? e.revision : undefined);
    // C7: the moment it left the pool (fenced or retired); a return to the pool clears it
    if (inPool(prevState) && !inPool(t.record?.state)) t.leftPoolMono = at.mono;
    else if (inPool(t.record?.state)) t.leftPoolMono = undefined;
    if (returned && t.record) {
      log(c, 'info', { hostId: t.hostId, epoch: t.record.epoch, state: t.record.state }, 'host came back before the fence: its fence is cancelled');
      emitEvent(c, { kind: 'host-returned', hostId: t.hostId, epoch: t.record.epoch, detail: `host ${t.hostId} re-registered (${t.record.state}, epoch ${t.record.epoch}) before its fence deadline` });
    }
    if (t.record?.state === 'fenced' && prevState !== 'fenced') requestSweep(c);
    // A host registered at a newer epoch (rejoined `ready` after its own fence and cleanup): its VMs
    // of older epochs are gone; mark them lost now (staleOnRejoinedHost), not at the next GC tick.
    else if (t.record && prevEpoch !== undefined && t.record.epoch > prevEpoch) requestSweep(c);
  } else {
    if (r <= t.aliveSeen) return;
    t.aliveSeen = r;
    if (e.kind === 'alive') {
      t.alive = e.alive;
      t.goneWall = t.goneMono = undefined;
    } else {
      t.alive = undefined;
      t.goneWall = at.wall;
      t.goneMono = at.mono;
      log(c, 'info', { hostId: t.hostId }, 'host lease gone (alive key deleted)');
    }
  }
  indexHost(s, t);
  if (!t.record && !t.alive) forget(c, t);
  else reconcile(c, t);
  if (!wasSchedulable && isSchedulable(t.record, t.alive !== undefined)) requestSweep(c);
  const after = shareContribution(t);
  if ((after.detached && !before.detached) || (before.pool && !after.pool)) s.freezeRose = true;
  markFreezeDirty(c);
}

/** What one host adds to the freeze count (C1: a pool host without its `alive` key is detached). */
function shareContribution(t: HostTrack): { pool: boolean; detached: boolean } {
  const m = { state: t.record?.state, alive: t.alive !== undefined };
  return { pool: inPool(m.state), detached: countsDetached(m) };
}

/** True when `e` may lower the detached share: a host's `alive` key reappears, or its record joins or returns to the pool as attached/ready. */
function mayLowerShare(t: HostTrack, e: HostWatchEvent): boolean {
  if (e.kind === 'alive') return t.alive === undefined;
  if (e.kind !== 'record') return false;
  const next = e.record.state;
  if (next !== 'attached' && next !== 'ready') return false;
  return !inPool(t.record?.state) || t.record?.state === 'detached';
}

/**
 * The per-host decision ({@link decideHost}): detach a host whose lease is gone, arm the fence of a
 * detached one, report one that will never be fenced automatically, finish marking a fenced host's
 * VMs lost. Nothing while the host's own detach or fence is in flight, or while a write failed for
 * good at its current record.
 */
export function reconcile(c: Ctx, t: HostTrack): void {
  const s = c.s;
  if (!s.leader || !s.synced || t.detaching || t.fencing !== undefined) return;
  const rec = t.record;
  if (rec) {
    const problems = timingProblems(rec);
    if (problems !== undefined && t.unsafeReported !== rec.epoch) {
      t.unsafeReported = rec.epoch;
      log(c, 'warn', { hostId: t.hostId, epoch: rec.epoch, violations: problems }, 'host publishes unsafe GC timings: it will never be fenced automatically');
      emitEvent(c, {
        kind: 'host-unsafe-timings',
        hostId: t.hostId,
        epoch: rec.epoch,
        violations: problems,
        detail: `host ${t.hostId} publishes unsafe timings (${problems}); it will never be fenced automatically`,
      });
    }
  }
  if (stuck(t)) return;
  if (rec?.state === 'fenced') {
    if (t.lostPending) completeFence(c, t);
    return disarm(c, t);
  }
  const d = decideHost(rec, t.alive !== undefined);
  switch (d.kind) {
    case 'detach':
      return detach(c, t);
    case 'await-fence':
      return armFence(c, t);
    case 'never-fence': {
      disarm(c, t);
      const key = `${incarnationOf(rec!)}:${d.blockers.join(',')}`;
      if (t.blockedReported !== key) {
        t.blockedReported = key;
        log(c, 'warn', { hostId: t.hostId, blockers: d.blockers }, 'detached host will not be fenced automatically');
        emitEvent(c, {
          kind: 'host-fence-blocked',
          hostId: t.hostId,
          epoch: rec!.epoch,
          blockers: d.blockers,
          detail: `host ${t.hostId} is detached but will not be fenced automatically (${d.blockers.join(', ')}); only 'tether host fence ${t.hostId} --confirm' can fence it`,
        });
      }
      return;
    }
    default:
      disarm(c, t);
  }
}
