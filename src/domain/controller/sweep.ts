/**
 * The reschedule sweep (after a fence, when a host becomes schedulable, at election, when the VM cache
 * is synced and every GC tick), on the VM cache (vm-view.ts) — no listing:
 *
 * 1. whatever the freeze: a fenced host whose VMs at its epoch are not all lost (a fence interrupted
 *    by a crash or a lost race) gets them marked lost ({@link completeFence}); the sweep waits for it;
 * 2. nothing more during a freeze; VMs of an older epoch on a host that rejoined are marked lost;
 * 3. a lost VM with policy `none` is noted once; lost VMs (policy `reschedule`) and VMs pending without
 *    a host are placed from the capacity index ({@link CapacityIndex.pick}, O(log hosts) each) with
 *    fresh uids, or noted pending with the reason. Writes are batched within the txn limits
 *    ({@link mergeChanges}) and go one after the other, each guarded (see `reschedule-changes.ts`);
 *    placements also carry a capacity guard per target host ({@link capacityGuard}).
 *
 * Long passes are chunked: at most `chunkSize` VMs are considered per step, then the sweep yields
 * through a zero-delay timer so the leader keepalive and the watches are served in between.
 *
 * Capacity: a placement decided reserves its VM's size on the target in the index until the write's
 * outcome is applied (its record then counts instead) or the sweep ends (released).
 *
 * One sweep at a time; a sweep requested meanwhile runs after it; one whose writes lost races runs
 * again after `retryDelay`.
 */
import type { ClusterChange, VmEntry } from '../cluster-change.js';
import { restartPolicyOf, staleOnRejoinedHost } from '../cluster-vm.js';
import { vmsToMarkLost } from '../fence-changes.js';
import { fencingAllowed } from '../mass-freeze.js';
import { KEEP_LOST_REASON, keepLostChange, pendingChange, placementChange, vmLostOnRejoinChange } from '../reschedule-changes.js';
import { groupBySize, merge, mergeChanges } from './batch.js';
import { call, log, retryTimerKey, setTimer, timerSet } from './effects.js';
import { completeFence } from './fence.js';
import { evaluateFreeze } from './freeze.js';
import { vmsOnHost } from './vm-view.js';
import { stuck, write } from './writes.js';
import type { ControllerState, Ctx, SweepRun, SweepWrite } from './types.js';

/** A placeholder uid of a fresh uid's length, to size placement batches before the uids exist. */
const UID_PLACEHOLDER = '0'.repeat(32);

/** Asks for a sweep: now, or after the one under way. */
export function requestSweep(c: Ctx): void {
  const s = c.s;
  if (!s.leader) return;
  if (s.sweep) {
    s.sweepQueued = true;
    return;
  }
  if (s.freezeDirty) evaluateFreeze(c);
  if (!s.leader || !s.synced || !s.vmsSynced) return;
  const w: SweepRun = { phase: 'completing', cursor: 0, todo: [], failed: false, waiting: new Set(), writes: [], next: 0, marked: 0, uids: [] };
  s.sweep = w;
  completeFenced(c, w);
}

function releaseReservations(s: ControllerState): void {
  for (const r of s.reserved.values()) s.capacity.addUsage(r.hostId, -r.vcpu, -r.memoryMb);
  s.reserved.clear();
}

function finish(c: Ctx): void {
  const s = c.s;
  const failed = s.sweep?.failed === true;
  s.sweep = undefined;
  releaseReservations(s);
  if (failed && !timerSet(c, 'sweep-retry')) setTimer(c, 'sweep-retry', s.cfg.retryDelay);
  if (s.sweepQueued) {
    s.sweepQueued = false;
    requestSweep(c);
  }
}

function completeFenced(c: Ctx, w: SweepRun): void {
  const s = c.s;
  for (const t of [...s.hosts.values()]) {
    const rec = t.record;
    // a host in backoff (its retry timer set) is retried by that timer, not by every sweep
    if (rec?.state !== 'fenced' || t.revision === undefined || stuck(t) || t.marking || !s.vmsByHost.has(t.hostId) || timerSet(c, retryTimerKey(t.hostId))) continue;
    const left = vmsToMarkLost(vmsOnHost(s, t.hostId), t.hostId, rec.epoch);
    if (left.length === 0 || left.every((v) => t.oversizedReported?.has(v.key))) continue;
    log(c, 'warn', { hostId: t.hostId, epoch: rec.epoch, vms: left.length }, 'fenced host still has VMs not marked lost (an interrupted fence): marking them now');
    w.waiting.add(t.hostId);
    if (!completeFence(c, t)) w.waiting.delete(t.hostId);
  }
  if (w.waiting.size > 0) return;
  afterCompleting(c, w);
}

/** A lost-marking run ended: the sweep waiting for it goes on when none is left. */
export function completingDone(c: Ctx, hostId: string): void {
  const w = c.s.sweep;
  if (!w || w.phase !== 'completing' || !w.waiting.delete(hostId) || w.waiting.size > 0) return;
  afterCompleting(c, w);
}

function afterCompleting(c: Ctx, w: SweepRun): void {
  if (c.s.freezeDirty) evaluateFreeze(c);
  if (!c.s.leader || !fencingAllowed(c.s.freeze)) return finish(c);
  markStale(c, w);
}

/**
 * VMs of older epochs on hosts that rejoined. Only hosts in `staleDirty` are looked at (their VMs or
 * record changed since a sweep last found none there): a steady cluster costs nothing per sweep.
 */
function markStale(c: Ctx, w: SweepRun): void {
  const s = c.s;
  const parts: { host: string; change: ClusterChange }[] = [];
  for (const id of [...s.staleDirty]) {
    const t = s.hosts.get(id);
    const rec = t?.record;
    if (!t || !rec || t.revision === undefined || (rec.state !== 'ready' && rec.state !== 'attached') || !s.vmsByHost.has(id)) {
      s.staleDirty.delete(id); // a record or VM change puts it back
      continue;
    }
    const host = { hostId: id, epoch: rec.epoch, state: rec.state };
    let found = false;
    for (const key of s.vmsByHost.get(id)!) {
      const v = s.vms.get(key)!;
      if (!staleOnRejoinedHost(v.record, host)) continue;
      found = true;
      parts.push({ host: id, change: vmLostOnRejoinChange(v, { hostId: id, epoch: rec.epoch, revision: t.revision }, c.now.wall) });
    }
    if (!found) s.staleDirty.delete(id);
  }
  w.writes = [];
  const byHost = new Map<string, ClusterChange[]>();
  for (const p of parts) byHost.set(p.host, [...(byHost.get(p.host) ?? []), p.change]);
  for (const [host, changes] of byHost) for (const change of mergeChanges(changes, s.cfg.txnLimits)) w.writes.push({ action: 'mark-lost', change, guardHost: host });
  w.next = 0;
  w.marked = 0;
  if (w.writes.length === 0) return startPlacing(c, w);
  w.phase = 'stale';
  nextWrite(c, w);
}

function startPlacing(c: Ctx, w: SweepRun): void {
  w.todo = [...c.s.unplaced].sort();
  w.cursor = 0;
  w.writes = [];
  w.uids = [];
  w.acc = undefined;
  place(c, w);
}

function place(c: Ctx, w: SweepRun): void {
  const s = c.s;
  const nowWall = c.now.wall;
  const acc = (w.acc ??= { keep: [], pending: [], placed: [] });
  const end = Math.min(w.todo.length, w.cursor + s.cfg.chunkSize);
  for (; w.cursor < end; w.cursor++) {
    const v = s.vms.get(w.todo[w.cursor]!);
    if (!v) continue;
    const r = v.record;
    if (r.phase === 'lost' && restartPolicyOf(r) === 'none') {
      if (r.reason !== KEEP_LOST_REASON) acc.keep.push(keepLostChange(v, nowWall));
      continue;
    }
    if (!((r.phase === 'lost' && restartPolicyOf(r) === 'reschedule') || (r.phase === 'pending' && r.hostId === undefined))) continue;
    if (s.reserved.has(v.key)) continue;
    const p = s.capacity.pick(r.spec);
    if ('hostId' in p) {
      const target = s.hosts.get(p.hostId);
      if (!target?.revision) continue;
      s.capacity.addUsage(p.hostId, r.spec.vcpu, r.spec.memoryMb);
      s.reserved.set(v.key, { hostId: p.hostId, vcpu: r.spec.vcpu, memoryMb: r.spec.memoryMb });
      const placement = { key: v.key, hostId: p.hostId, hostEpoch: p.hostEpoch };
      const item = { vm: v, placement, uidIndex: acc.placed.length };
      const size = placementChange({ vm: v, placement, targetRevision: target.revision, uid: UID_PLACEHOLDER, nowWall }).change;
      acc.placed.push({ item, size: { ...size, capacityGuards: [capacityGuard(s, p.hostId)] } });
    } else {
      if (r.phase === 'pending' && r.hostId === undefined && r.reason === p.reason) continue;
      acc.pending.push(pendingChange(v, p.reason, nowWall));
    }
  }
  if (w.cursor < w.todo.length) return yieldSweep(c, w);
  w.acc = undefined;
  const limits = s.cfg.txnLimits;
  for (const change of mergeChanges(acc.keep, limits)) w.writes.push({ action: 'keep-lost', change });
  for (const change of mergeChanges(acc.pending, limits)) w.writes.push({ action: 'pending', change });
  // placements: grouped in order by the size of their changes (built again when issued)
  for (const group of groupBySize(acc.placed, (p) => p.size, limits)) w.writes.push({ action: 'reschedule', place: group.map((p) => p.item) });
  w.next = 0;
  if (w.writes.length === 0) return finish(c);
  if (acc.placed.length > 0) {
    w.phase = 'uids';
    call(c, { op: 'new-uids', count: acc.placed.length }, { for: 'sweep-uids' });
    return;
  }
  w.phase = 'writes';
  nextWrite(c, w);
}

function yieldSweep(c: Ctx, w: SweepRun): void {
  w.phase = 'yield';
  w.resume = 'place';
  setTimer(c, 'sweep-chunk', 0);
}

/** The sweep's zero-delay timer fired: its next chunk. */
export function sweepChunk(c: Ctx): void {
  const w = c.s.sweep;
  if (!w || w.phase !== 'yield') return;
  if (!c.s.leader) return finish(c);
  if (w.resume === 'place') place(c, w);
}

/** The fresh uids of the sweep's placements came back. */
export function sweepUids(c: Ctx, uids: readonly string[]): void {
  const w = c.s.sweep;
  if (!w || w.phase !== 'uids') return;
  w.uids = uids;
  w.phase = 'writes';
  nextWrite(c, w);
}

/**
 * The capacity guard of a placement onto `hostId`: no other placement onto it committed after the
 * revision up to which this replica's view of the host's VMs is complete — the VM cache's revision,
 * or this replica's own last guarded placement onto it, whichever is later (that txn's success proved
 * nothing else was placed there up to its revision).
 */
export function capacityGuard(s: ControllerState, hostId: string): { readonly hostId: string; readonly seenRevision: string } {
  const own = s.capSeen.get(hostId) ?? 0n;
  return { hostId, seenRevision: String(own > s.vmsRev ? own : s.vmsRev) };
}

/** The change of a queued write as issued now: the guard's current revision, placements' uids and capacity guards. */
function issued(c: Ctx, w: SweepRun, item: SweepWrite): ClusterChange | undefined {
  const s = c.s;
  if (item.place) {
    const parts: ClusterChange[] = [];
    for (const { vm, placement, uidIndex } of item.place) {
      const target = s.hosts.get(placement.hostId);
      const uid = w.uids[uidIndex];
      if (!target?.revision || uid === undefined) continue;
      const { change } = placementChange({ vm, placement, targetRevision: target.revision, uid, nowWall: c.now.wall });
      parts.push({ ...change, capacityGuards: [capacityGuard(s, placement.hostId)] });
    }
    return parts.length > 0 ? merge(parts) : undefined;
  }
  if (item.guardHost !== undefined) {
    const rev = s.hosts.get(item.guardHost)?.revision;
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
  if (w.phase === 'stale') return startPlacing(c, w);
  finish(c);
}

/** A sweep write's outcome (its VMs are in the cache already when committed, see writes.ts). */
export function sweepWritten(c: Ctx, ok: boolean): void {
  const w = c.s.sweep;
  if (!w) return;
  const item = w.writes[w.next - 1];
  if (!ok) w.failed = true;
  if (ok && item?.action === 'mark-lost') w.marked += item.change?.vms?.length ?? 0;
  if (ok && item?.place) {
    for (const { vm, placement, uidIndex } of item.place) log(c, 'info', { vm: vm.key, from: vm.record.hostId, to: placement.hostId, uid: w.uids[uidIndex] }, 'VM rescheduled');
  }
  nextWrite(c, w);
}

/** Keys of the VMs the sweep would consider now (tests). */
export function sweepCandidates(s: ControllerState): VmEntry[] {
  return [...s.unplaced].sort().map((k) => s.vms.get(k)!);
}
