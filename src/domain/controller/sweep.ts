/**
 * The reschedule sweep (after a fence, when a host becomes schedulable, at election and every GC tick):
 *
 * 1. whatever the freeze: a fenced host whose VMs at its epoch are not all lost (a fence interrupted
 *    by a crash or a lost race) gets them marked lost ({@link completeFence}); the sweep waits for it;
 * 2. nothing more during a freeze; VMs of an older epoch on a host that rejoined are marked lost;
 * 3. a lost VM with policy `none` is noted once; lost VMs (policy `reschedule`) and VMs pending without
 *    a host are placed on schedulable hosts ({@link placeVms}) with fresh uids, or noted pending with the
 *    reason. Writes go one after the other, each guarded (see `reschedule-changes.ts`).
 *
 * One sweep at a time; a sweep requested meanwhile runs after it.
 */
import type { ClusterChange, VmEntry } from '../cluster-change.js';
import { restartPolicyOf, staleOnRejoinedHost } from '../cluster-vm.js';
import { vmsToMarkLost } from '../fence-changes.js';
import { fencingAllowed } from '../mass-freeze.js';
import { isSchedulable, placeVms, type SchedulableHost } from '../placement.js';
import { KEEP_LOST_REASON, keepLostChange, pendingChange, placementChange, vmLostOnRejoinChange } from '../reschedule-changes.js';
import { call, log } from './effects.js';
import { completeFence } from './fence.js';
import { evaluateFreeze } from './freeze.js';
import { stuck, write } from './writes.js';
import type { CallError, Ctx, SweepRun, SweepWrite } from './types.js';

/** Asks for a sweep: now, or after the one under way. */
export function requestSweep(c: Ctx): void {
  const s = c.s;
  if (!s.leader) return;
  if (s.sweep) {
    s.sweepQueued = true;
    return;
  }
  if (s.freezeDirty) evaluateFreeze(c);
  if (!s.leader || !s.synced) return;
  s.sweep = { phase: 'list-fenced', vms: [], waiting: new Set(), writes: [], next: 0, marked: 0, uids: [] };
  call(c, { op: 'list-vms' }, { for: 'sweep-list' });
}

function finish(c: Ctx): void {
  c.s.sweep = undefined;
  if (c.s.sweepQueued) {
    c.s.sweepQueued = false;
    requestSweep(c);
  }
}

/** A VM listing of the sweep came back. */
export function sweepListed(c: Ctx, r: { readonly vms: readonly VmEntry[] } | { readonly error: CallError }): void {
  const w = c.s.sweep;
  if (!w) return;
  if ('error' in r) {
    log(c, 'warn', { err: r.error.message }, 'listing VMs for the reschedule failed; retrying at the next GC tick');
    return finish(c);
  }
  w.vms = r.vms;
  if (w.phase === 'list-fenced') return completeFenced(c, w);
  if (w.phase === 'list-stale') return markStale(c, w);
  if (w.phase === 'list-place') return place(c, w);
}

function completeFenced(c: Ctx, w: SweepRun): void {
  for (const t of [...c.s.hosts.values()]) {
    const rec = t.record;
    if (rec?.state !== 'fenced' || t.revision === undefined || stuck(t) || t.marking) continue;
    const left = vmsToMarkLost(w.vms, t.hostId, rec.epoch);
    if (left.length === 0 || left.every((v) => t.oversizedReported?.has(v.key))) continue;
    log(c, 'warn', { hostId: t.hostId, epoch: rec.epoch, vms: left.length }, 'fenced host still has VMs not marked lost (an interrupted fence): marking them now');
    w.waiting.add(t.hostId);
    if (!completeFence(c, t, w.vms)) w.waiting.delete(t.hostId);
  }
  if (w.waiting.size > 0) {
    w.phase = 'completing';
    return;
  }
  afterCompleting(c, w, false);
}

/** A lost-marking run ended: the sweep waiting for it goes on when none is left. */
export function completingDone(c: Ctx, hostId: string): void {
  const w = c.s.sweep;
  if (!w || w.phase !== 'completing' || !w.waiting.delete(hostId) || w.waiting.size > 0) return;
  afterCompleting(c, w, true);
}

function afterCompleting(c: Ctx, w: SweepRun, relist: boolean): void {
  if (!c.s.leader || !fencingAllowed(c.s.freeze)) return finish(c);
  if (relist) {
    w.phase = 'list-stale';
    call(c, { op: 'list-vms' }, { for: 'sweep-list' });
    return;
  }
  markStale(c, w);
}

function markStale(c: Ctx, w: SweepRun): void {
  w.writes = [];
  for (const v of w.vms) {
    const t = v.record.hostId !== undefined ? c.s.hosts.get(v.record.hostId) : undefined;
    if (!t?.record || t.revision === undefined || !staleOnRejoinedHost(v.record, { hostId: t.hostId, epoch: t.record.epoch, state: t.record.state })) continue;
    w.writes.push({ action: 'mark-lost', change: vmLostOnRejoinChange(v, { hostId: t.hostId, epoch: t.record.epoch, revision: t.revision }, c.now.wall), guardHost: t.hostId });
  }
  if (w.writes.length === 0) return place(c, w);
  w.phase = 'stale';
  w.next = 0;
  w.marked = 0;
  nextWrite(c, w);
}

function place(c: Ctx, w: SweepRun): void {
  const nowWall = c.now.wall;
  const vms = w.vms;
  w.writes = [];
  for (const v of vms) {
    if (v.record.phase !== 'lost' || restartPolicyOf(v.record) !== 'none' || v.record.reason === KEEP_LOST_REASON) continue;
    w.writes.push({ action: 'keep-lost', change: keepLostChange(v, nowWall) });
  }
  const toPlace = vms.filter((v) => (v.record.phase === 'lost' && restartPolicyOf(v.record) === 'reschedule') || (v.record.phase === 'pending' && v.record.hostId === undefined));
  let uids = 0;
  if (toPlace.length > 0) {
    const hosts: SchedulableHost[] = [];
    for (const t of c.s.hosts.values()) {
      if (t.record && isSchedulable(t.record, t.alive !== undefined)) hosts.push({ hostId: t.hostId, epoch: t.record.epoch, capacity: t.record.capacity });
    }
    const placements = placeVms(
      toPlace.map((v) => ({ key: v.key, spec: v.record.spec })),
      hosts,
      vms.map((v) => v.record),
    );
    for (const p of placements) {
      const v = toPlace.find((x) => x.key === p.key)!;
      if ('hostId' in p) {
        const target = c.s.hosts.get(p.hostId);
        if (!target?.revision) continue;
        w.writes.push({ action: 'reschedule', place: { vm: v, placement: p, uidIndex: uids++ } });
      } else {
        if (v.record.phase === 'pending' && v.record.hostId === undefined && v.record.reason === p.reason) continue;
        w.writes.push({ action: 'pending', change: pendingChange(v, p.reason, nowWall) });
      }
    }
  }
  if (w.writes.length === 0) return finish(c);
  w.phase = 'writes';
  w.next = 0;
  if (uids > 0) {
    w.phase = 'uids';
    call(c, { op: 'new-uids', count: uids }, { for: 'sweep-uids' });
    return;
  }
  nextWrite(c, w);
}

/** The fresh uids of the sweep's placements came back. */
export function sweepUids(c: Ctx, uids: readonly string[]): void {
  const w = c.s.sweep;
  if (!w || w.phase !== 'uids') return;
  w.uids = uids;
  w.phase = 'writes';
  nextWrite(c, w);
}

/** The change of a queued write as issued now: the guard's current revision, and a placement's uid. */
function issued(c: Ctx, w: SweepRun, item: SweepWrite): ClusterChange | undefined {
  if (item.place) {
    const { vm, placement, uidIndex } = item.place;
    const target = c.s.hosts.get(placement.hostId);
    const uid = w.uids[uidIndex];
    if (!target?.revision || uid === undefined) return undefined;
    return placementChange({ vm, placement, targetRevision: target.revision, uid, nowWall: c.now.wall }).change;
  }
  if (item.guardHost !== undefined) {
    const rev = c.s.hosts.get(item.guardHost)?.revision;
    if (rev === undefined) return undefined;
    return { ...item.change, guards: [{ hostId: item.guardHost, expectRevision: rev }] };
  }
  return item.change;
}

function nextWrite(c: Ctx, w: SweepRun): void {
  while (w.next < w.writes.length) {
    const item = w.writes[w.next++]!;
    const change = issued(c, w, item);
    if (!change) continue;
    if (!write(c, undefined, change, { action: item.action, retry: false }, { k: 'sweep' })) return finish(c);
    return;
  }
  if (w.phase === 'stale') {
    if (w.marked > 0) {
      w.phase = 'list-place';
      call(c, { op: 'list-vms' }, { for: 'sweep-list' });
      return;
    }
    return place(c, w);
  }
  finish(c);
}

/** A sweep write's outcome. */
export function sweepWritten(c: Ctx, ok: boolean): void {
  const w = c.s.sweep;
  if (!w) return;
  const item = w.writes[w.next - 1];
  if (ok && item?.action === 'mark-lost') w.marked++;
  if (ok && item?.place) {
    const { vm, placement, uidIndex } = item.place;
    log(c, 'info', { vm: vm.key, from: vm.record.hostId, to: placement.hostId, uid: w.uids[uidIndex] }, 'VM rescheduled');
  }
  nextWrite(c, w);
}
