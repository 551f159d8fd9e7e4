/**
 * Detach, fence, takeover and the lost-marking of a fenced host's VMs — the fence path.
 *
 * 1. Detach ({@link detach}): lease gone while `attached`/`ready` -> one txn (record unchanged,
 *    `alive` still absent) writes `detached` with `fenceDeadline = loss + window` (`+ ttl` when a raft
 *    term change was seen within one TTL of the loss). Up to {@link MAX_DETACHES_IN_FLIGHT} at once.
 * 2. Arm ({@link armFence}): the deadline on this replica's MONOTONIC clock. A detachment this replica
 *    did not write in this term (failover) gets the recorded deadline or a full window from now,
 *    whichever is later ({@link takeoverFenceDeadline}), and the raft-term rule with the recorded
 *    `detachedAt` as the loss; a later deadline is written back. Never shortened.
 * 3. Fence ({@link fenceDue}): at the deadline — never before, re-checked when the timer fires AND when
 *    the pre-fence read (one host's two keys: constant size) comes back — unless the mass-disruption
 *    freeze holds it, the eviction rate limit has no token left ({@link takeEvictToken}: the host waits
 *    its turn), or the host is blocked (acknowledged hold `holdSeen`, held at detach, unsafe timings).
 *    The read's raft term is noted first: a term change within one TTL of the loss lengthens the window
 *    instead. One constant-size txn (record still `detached` at the same revision, `alive` absent) ->
 *    `fenced`. At most `maxFencesInFlight` fences run at once; the others queue (`fenceQueue`).
 * 4. Lost-marking ({@link completeFence}): the host's VMs at (or below) its epoch, from the VM cache
 *    (vm-view.ts) -> `lost`, in txns within the store's limits, one after the other per host, at most
 *    `maxMarkingsInFlight` hosts at once, each guarded by the fenced record's revision and each VM's.
 *    Interrupted or conflicting: retried with backoff, and finished by every sweep and by the next leader.
 */
import { detachChange, fenceChange, vmsLostChanges, vmsToMarkLost } from '../fence-changes.js';
import { decideHost, earlyRevokeSuspected, effectiveFenceWindow, lossToFenceMs, takeoverFenceDeadline } from '../fence-window.js';
import { describeFreeze, fencingAllowed } from '../mass-freeze.js';
import { revokeSlack } from '../peer-check.js';
import type { HostRecord } from '../host-record.js';
import type { HostEntry } from '../../ports/controller-store.js';
import { call, clearTimer, fenceTimerKey, incarnationOf, iso, log, retryTimerKey, rev, setTimer, timerSet } from './effects.js';
import { evaluateFreeze, markFreezeDirty } from './freeze.js';
import { reconcile } from './host-view.js';
import { stepDown } from './leadership.js';
import { maybeExtend, noteTerm } from './raft-term.js';
import { completingDone, requestSweep } from './sweep.js';
import { indexHost, vmsOnHost } from './vm-view.js';
import { giveUp, report, retryLater, stuck, write } from './writes.js';
import type { CallError, Ctx, HostTrack, Reply } from './types.js';

/** Concurrent detach txns (a mass expiry must not detach one host per etcd round trip). */
export const MAX_DETACHES_IN_FLIGHT = 32;

/** Starts the detach txn of a host whose lease is gone (its outcome comes back as a reply). */
export function detach(c: Ctx, t: HostTrack): void {
  const s = c.s;
  if (t.detaching) return;
  if (s.detachesInFlight >= MAX_DETACHES_IN_FLIGHT) {
    s.detachQueue.add(t.hostId);
    return;
  }
  const rec = t.record!;
  const obsWall = t.goneWall ?? c.now.wall;
  const obsMono = t.goneMono ?? c.now.mono;
  noteTerm(c, s.raftTermHint, c.now.mono);
  const suspected = earlyRevokeSuspected(obsMono, s.termChange, rec.timings?.ttl ?? 0);
  const { next, change } = detachChange({
    hostId: t.hostId,
    record: rec,
    revision: t.revision!,
    observedWall: obsWall,
    nowWall: c.now.wall,
    fenceWindowOverride: s.cfg.fenceWindowOverride,
    ...(suspected ? { termChange: { term: s.termChange!.term } } : {}),
  });
  t.detaching = true;
  s.detachesInFlight++;
  call(c, { op: 'commit', change }, { for: 'detach', hostId: t.hostId, next, obsWall, obsMono, termExtended: suspected });
}

/** Outcome of a detach txn: the deadline is armed from the observed loss, on the monotonic clock. */
export function detachOutcome(
  c: Ctx,
  p: { readonly hostId: string; readonly next: HostRecord; readonly obsWall: number; readonly obsMono: number; readonly termExtended: boolean },
  r: Extract<Reply, { op: 'commit' }> | { readonly error: CallError },
): void {
  const s = c.s;
  s.detachesInFlight = Math.max(0, s.detachesInFlight - 1);
  const t = s.hosts.get(p.hostId);
  if (t) t.detaching = false;
  for (const id of [...s.detachQueue]) {
    if (s.detachesInFlight >= MAX_DETACHES_IN_FLIGHT) break;
    s.detachQueue.delete(id);
    const q = s.hosts.get(id);
    if (q && q !== t) reconcile(c, q);
  }
  if (!t) return;
  if ('error' in r) {
    if (!r.error.retryable) return giveUp(c, t, 'detach', r.error);
    log(c, 'warn', { hostId: t.hostId, err: r.error.message }, 'detach txn failed; retrying');
    retryLater(c, t);
    return;
  }
  const res = r.result;
  if (!res.ok) {
    if (res.reason === 'not-leader') return stepDown(c, 'a txn found another controller holding controller/leader');
    log(c, 'debug', { hostId: t.hostId }, 'detach txn lost a race (the host re-registered or its record changed); re-evaluating');
    return reconcile(c, t);
  }
  t.attempts = 0;
  const at = rev(res.revision);
  if (at >= t.recordSeen) {
    t.record = p.next;
    t.revision = res.revision;
    t.recordSeen = at;
  }
  indexHost(c.s, t);
  if (t.revision === res.revision) {
    disarm(c, t);
    const deadline = p.next.fenceDeadline!;
    t.incarnation = incarnationOf(p.next);
    t.fenceAtMono = p.obsMono + (deadline - p.obsWall);
    t.fenceAtWall = deadline;
    t.lossWall = p.obsWall;
    t.lossMono = p.obsMono;
    t.termExtended = p.termExtended;
    log(
      c,
      'info',
      { hostId: t.hostId, epoch: p.next.epoch, fenceInMs: Math.round(t.fenceAtMono - c.now.mono), heldAtDetach: p.next.heldAtDetach, termExtended: p.termExtended },
      'host detached',
    );
  }
  reconcile(c, t);
  maybeExtend(c, t); // a term change seen while the detach txn was in flight
  markFreezeDirty(c);
}

/**
 * Arms the fence timer of a detached host. A deadline this replica did not compute itself in this
 * term follows the takeover rule and the raft-term rule; the later deadline is written back.
 */
export function armFence(c: Ctx, t: HostTrack): void {
  const s = c.s;
  const rec = t.record!;
  const inc = incarnationOf(rec);
  if (t.incarnation !== inc || t.fenceAtMono === undefined) {
    disarm(c, t);
    const nowWall = c.now.wall;
    const nowMono = c.now.mono;
    const window = effectiveFenceWindow(rec.timings, s.cfg.fenceWindowOverride);
    const takeoverDue = takeoverFenceDeadline(rec.fenceDeadline, nowWall, window);
    const lossWall = Math.min(rec.detachedAt ?? nowWall, nowWall);
    const lossMono = nowMono - (nowWall - lossWall);
    const suspected = earlyRevokeSuspected(lossMono, s.termChange, rec.timings?.ttl ?? 0);
    const termDue = suspected ? lossWall + lossToFenceMs(rec.timings, { fenceWindowOverride: s.cfg.fenceWindowOverride, earlyRevoke: true }) : 0;
    const due = Math.max(takeoverDue, termDue);
    t.incarnation = inc;
    t.fenceAtMono = nowMono + (due - nowWall);
    t.fenceAtWall = due;
    t.lossWall = lossWall;
    t.lossMono = lossMono;
    t.termExtended = suspected;
    const why = termDue > takeoverDue ? 'raft-term-change' : 'takeover';
    log(c, 'info', { hostId: t.hostId, recorded: rec.fenceDeadline, due, fenceInMs: due - nowWall, why }, 'pending fence taken over: the recorded deadline or a full window from now, whichever is later');
    if (rec.fenceDeadline === undefined || due > rec.fenceDeadline) {
      const id = s.cfg.controllerId;
      write(
        c,
        t.hostId,
        {
          hosts: [{ hostId: t.hostId, expectRevision: t.revision!, requireAliveAbsent: true, next: { ...rec, fenceDeadline: due, updatedAt: nowWall } }],
          events: [
            {
              kind: 'fence-deadline-extended',
              hostId: t.hostId,
              epoch: rec.epoch,
              from: rec.fenceDeadline ?? null,
              to: due,
              why,
              at: nowWall,
              detail:
                why === 'takeover'
                  ? `controller ${id} took over the pending fence of ${t.hostId}: deadline ${iso(due)} (a full window from its takeover)`
                  : `controller ${id} took over the pending fence of ${t.hostId}, lost within one TTL of a raft term change: deadline ${iso(due)} (loss + ttl + window, etcd 3.4 early revoke)`,
            },
          ],
        },
        { action: 'extend', retry: false },
      );
    }
  }
  armTimer(c, t);
}

/** Sets the fence timer at the host's monotonic deadline (unless set, or its fence is in flight). */
export function armTimer(c: Ctx, t: HostTrack): void {
  const key = fenceTimerKey(t.hostId);
  if (timerSet(c, key) || t.incarnation === undefined || t.fenceAtMono === undefined || t.fencing !== undefined) return;
  setTimer(c, key, Math.max(0, t.fenceAtMono - c.now.mono));
}

/** Forgets the host's pending fence (its timer and deadline). */
export function disarm(c: Ctx, t: HostTrack): void {
  clearTimer(c, fenceTimerKey(t.hostId));
  t.incarnation = undefined;
  t.fenceAtMono = undefined;
  t.fenceAtWall = undefined;
  t.lossWall = undefined;
  t.lossMono = undefined;
  t.termExtended = undefined;
}

/** Forgets a host that has neither record nor `alive` key. */
export function forget(c: Ctx, t: HostTrack): void {
  disarm(c, t);
  clearTimer(c, retryTimerKey(t.hostId));
  if (t.marking) endMarking(c, t);
  c.s.fenceQueue.delete(t.hostId);
  c.s.capacity.setHost(t.hostId, undefined);
  c.s.hosts.delete(t.hostId);
}

/**
 * Takes one token of the eviction rate limit: `evictionRate` hosts per second, or the slower
 * `slowEvictionRate` while more than `slowEvictionShare` of a pool of at least `slowEvictionMinHosts`
 * hosts is detached (the Kubernetes node lifecycle controller's secondary rate, under the freeze).
 * Returns 0 when taken, else how long until a token is there (ms).
 */
export function takeEvictToken(c: Ctx): number {
  const s = c.s;
  const cfg = s.cfg;
  const n = s.detachedCount;
  const slow = n.total >= cfg.slowEvictionMinHosts && n.detached / n.total > cfg.slowEvictionShare;
  const rate = slow ? Math.min(cfg.slowEvictionRate, cfg.evictionRate) : cfg.evictionRate;
  if (rate === Infinity) return 0;
  const nowMono = c.now.mono;
  s.evictTokens = Math.min(cfg.evictionBurst, s.evictTokens + (Math.max(0, nowMono - s.evictAtMono) * rate) / 1000);
  s.evictAtMono = nowMono;
  if (s.evictTokens >= 1) {
    s.evictTokens -= 1;
    return 0;
  }
  return Math.max(1, Math.ceil(((1 - s.evictTokens) * 1000) / rate));
}

/** The host's fence timer fired. Never early: the monotonic deadline is checked again. */
export function fenceDue(c: Ctx, t: HostTrack): void {
  const s = c.s;
  if (stuck(t) || t.fencing !== undefined || t.incarnation === undefined) return;
  const d = decideHost(t.record, t.alive !== undefined);
  if (d.kind !== 'await-fence') return reconcile(c, t);
  if (c.now.mono < t.fenceAtMono!) return armTimer(c, t); // never early
  if (s.freezeDirty) evaluateFreeze(c); // decide on the current detached share
  if (!fencingAllowed(s.freeze)) {
    log(c, 'warn', { hostId: t.hostId, freeze: describeFreeze(s.freeze, s.freezeRule?.share ?? s.cfg.freezeShare, c.now.mono) }, 'fence deadline passed but the mass-disruption freeze holds it');
    return;
  }
  if (leaderChangeWait(c, t) > 0) return;
  // the VM cache names the fence's VMs and feeds its lost-marking: taken up when it is synced (resumeFences)
  if (!s.vmsSynced) return;
  if (s.fencesInFlight >= s.cfg.maxFencesInFlight) {
    s.fenceQueue.add(t.hostId);
    return;
  }
  const wait = takeEvictToken(c);
  if (wait > 0) {
    if (!s.fenceQueue.has(t.hostId)) log(c, 'info', { hostId: t.hostId, waitMs: wait }, 'fence deadline passed: waiting for the eviction rate limit');
    s.fenceQueue.add(t.hostId);
    if (!timerSet(c, 'evict')) setTimer(c, 'evict', wait);
    return;
  }
  s.fenceQueue.delete(t.hostId);
  t.fencing = t.incarnation;
  s.fencesInFlight++;
  call(c, { op: 'get-host', hostId: t.hostId }, { for: 'fence-read', hostId: t.hostId, incarnation: t.incarnation });
}

/** A fence slot is free: the queued fences go on, in order, while slots and tokens last. */
export function drainFenceQueue(c: Ctx): void {
  const s = c.s;
  for (const id of [...s.fenceQueue]) {
    if (s.fencesInFlight >= s.cfg.maxFencesInFlight || timerSet(c, 'evict')) return;
    s.fenceQueue.delete(id);
    const t = s.hosts.get(id);
    if (t) fenceDue(c, t);
  }
}

/** The VM cache is synced: every fence whose deadline passed meanwhile is taken up. */
export function resumeFences(c: Ctx): void {
  for (const t of [...c.s.hosts.values()]) {
    if (t.incarnation !== undefined && t.fencing === undefined && t.fenceAtMono !== undefined && t.fenceAtMono <= c.now.mono && !timerSet(c, fenceTimerKey(t.hostId))) fenceDue(c, t);
  }
  for (const t of [...c.s.hosts.values()]) if (t.lostPending && t.record?.state === 'fenced' && !t.marking) completeFence(c, t);
  // the sweep in a step of its own (the load's last step already indexed every host)
  if (c.s.leader) setTimer(c, 'sweep-retry', 0);
}

function fenceSlotFreed(c: Ctx): void {
  c.s.fencesInFlight = Math.max(0, c.s.fencesInFlight - 1);
  drainFenceQueue(c);
}

/** The pre-fence read came back: note its raft term, re-check everything, then the constant-size fence txn. */
export function fenceRead(c: Ctx, p: { readonly hostId: string; readonly incarnation: string }, raftTerm: number | undefined, r: { readonly host: HostEntry; readonly revision: string } | { readonly error: CallError }): void {
  const t = c.s.hosts.get(p.hostId);
  if (!t) return fenceSlotFreed(c);
  t.fencing = undefined;
  const go = fenceGo(c, t, p, raftTerm, r);
  if (!go) fenceSlotFreed(c);
}

function fenceGo(c: Ctx, t: HostTrack, p: { readonly incarnation: string }, raftTerm: number | undefined, r: { readonly host: HostEntry; readonly revision: string } | { readonly error: CallError }): boolean {
  if ('error' in r) {
    if (!r.error.retryable) {
      giveUp(c, t, 'fence', r.error);
      return false;
    }
    log(c, 'warn', { hostId: t.hostId, err: r.error.message }, 'the read before the fence failed; retrying');
    retryLater(c, t);
    return false;
  }
  noteTerm(c, raftTerm, c.now.mono);
  if (maybeExtend(c, t)) return false;
  return fenceDecide(c, t, p, rev(r.revision));
}

/**
 * The pre-fence read's checks on the current view, then the fence txn. C2: the host view must hold
 * every change under `hosts/` up to the read's revision `readRev`, and the freeze must have been
 * evaluated on it; until then the fence waits (parked, its slot kept) for a barrier through the host
 * watch ({@link hostsProgress}). True when the slot stays taken (txn in flight or parked).
 */
function fenceDecide(c: Ctx, t: HostTrack, p: { readonly incarnation: string }, readRev: bigint): boolean {
  const rec = t.record;
  if (!rec || rec.state !== 'detached' || t.revision === undefined) {
    reconcile(c, t);
    return false;
  }
  // Other inputs were applied while the read was in flight: decide again on the current view.
  if (t.incarnation !== p.incarnation || stuck(t) || decideHost(rec, t.alive !== undefined).kind !== 'await-fence' || t.fenceAtMono === undefined || c.now.mono < t.fenceAtMono) {
    reconcile(c, t);
    return false;
  }
  if (readRev > c.s.hostsRev) {
    t.fencing = p.incarnation;
    c.s.fenceParked.set(t.hostId, { incarnation: p.incarnation, readRev });
    log(c, 'debug', { hostId: t.hostId, readRev: String(readRev), viewRev: String(c.s.hostsRev) }, 'fence waits for the host view to catch up with its pre-fence read (C2)');
    requestBarrier(c);
    return true;
  }
  if (c.s.freezeDirty || c.s.freezeRev < readRev) evaluateFreeze(c);
  if (!fencingAllowed(c.s.freeze)) return false;
  if (leaderChangeWait(c, t) > 0) return false;
  const pending = vmsToMarkLost(vmsOnHost(c.s, t.hostId), t.hostId, rec.epoch).map((v) => v.key);
  const { change } = fenceChange({ hostId: t.hostId, record: rec, revision: t.revision, nowWall: c.now.wall, by: 'controller', pendingVms: pending });
  const lateMs = Math.round(c.now.wall - (t.fenceAtWall ?? c.now.wall));
  t.fencing = p.incarnation;
  if (!write(c, t.hostId, change, { action: 'fence' }, { k: 'fence', hostId: t.hostId, pending: pending.length, lateMs, epoch: rec.epoch })) {
    t.fencing = undefined;
    return false;
  }
  return true;
}

/**
 * C4 (docs/peer-check.md): no fence until `ttl + electionTolerance + revokeSlack(pool)` after the last
 * raft term change this replica saw (largest ttl and electionTolerance of the pool's published
 * timings and this host's; the pre-fence read's header term counts, noted before this is asked):
 * every lease a leader change extended is gone by then, or still live and counted. Returns the wait
 * left (ms); when > 0 the host's fence timer is set to it.
 */
export function leaderChangeWait(c: Ctx, t: HostTrack): number {
  const s = c.s;
  const tc = s.termChange;
  if (tc === undefined) return 0;
  const own = t.record?.timings;
  const pt = s.poolTimings;
  const ttl = Math.max(pt?.ttl ?? 0, pos(own?.ttl));
  const tolerance = Math.max(pt?.electionTolerance ?? 0, pos(own?.electionTolerance));
  const until = tc.seenMono + ttl + tolerance + revokeSlack(pt?.pool ?? s.hosts.size);
  const wait = until - c.now.mono;
  if (wait <= 0) return 0;
  const key = fenceTimerKey(t.hostId);
  if (!timerSet(c, key)) {
    log(c, 'info', { hostId: t.hostId, raftTerm: tc.term, waitMs: Math.ceil(wait) }, 'fence deadline passed: waiting ttl + electionTolerance + revoke slack after the last raft term change (C4)');
    setTimer(c, key, Math.ceil(wait));
  }
  return wait;
}

function pos(x: number | undefined): number {
  return x !== undefined && Number.isFinite(x) && x > 0 ? x : 0;
}

/** C2: asks for a barrier through the host watch, unless one is in flight. */
function requestBarrier(c: Ctx): void {
  const s = c.s;
  if (!s.leader || s.barrierInFlight || timerSet(c, 'hosts-barrier')) return;
  s.barrierInFlight = true;
  call(c, { op: 'sync-hosts' }, { for: 'sync-hosts' });
}

/** The barrier's write came back: its event follows on the host watch; a failure is retried shortly. */
export function barrierWritten(c: Ctx, r: { readonly revision: string } | { readonly error: CallError }): void {
  const s = c.s;
  s.barrierInFlight = false;
  if (!s.leader) return;
  if ('error' in r) log(c, 'warn', { err: r.error.message }, 'the host-view barrier write failed; retrying');
  // check again shortly whatever happened: a watch that never delivers it is re-listed by then, or another barrier goes
  if (s.fenceParked.size > 0 && !timerSet(c, 'hosts-barrier')) setTimer(c, 'hosts-barrier', s.cfg.retryDelay);
}

/** The barrier retry timer: parked fences the view caught up with go on; the others ask again. */
export function barrierDue(c: Ctx): void {
  resumeParked(c);
  if (c.s.fenceParked.size > 0) requestBarrier(c);
}

/** The host watch delivered the barrier at `revision`: the view holds every change under `hosts/` up to it. */
export function hostsProgress(c: Ctx, watch: number, revision: string): void {
  const s = c.s;
  if (!s.synced || watch !== s.watch) return;
  const r = rev(revision);
  if (r > s.hostsRev) s.hostsRev = r;
  resumeParked(c);
  if (s.fenceParked.size > 0) requestBarrier(c);
}

/** Parked fences whose read the host view caught up with: decided again on the view (C2). */
function resumeParked(c: Ctx): void {
  const s = c.s;
  for (const [id, p] of [...s.fenceParked]) {
    if (p.readRev > s.hostsRev) continue;
    s.fenceParked.delete(id);
    const t = s.hosts.get(id);
    if (!t || t.fencing !== p.incarnation) {
      fenceSlotFreed(c);
      continue;
    }
    t.fencing = undefined;
    if (!fenceDecide(c, t, p, p.readRev)) fenceSlotFreed(c);
  }
}

/** The fence txn's outcome (after the generic write handling). */
export function fenceCommitted(c: Ctx, then: { readonly hostId: string; readonly pending: number; readonly lateMs: number; readonly epoch: number }, ok: boolean): void {
  const t = c.s.hosts.get(then.hostId);
  if (t) fenceOutcome(c, t, then, ok);
  fenceSlotFreed(c);
}

function fenceOutcome(c: Ctx, t: HostTrack, then: { readonly pending: number; readonly lateMs: number; readonly epoch: number }, ok: boolean): void {
  t.fencing = undefined;
  if (!ok) return; // retried with backoff (or reported) by the write handling
  disarm(c, t);
  log(c, 'warn', { hostId: t.hostId, epoch: then.epoch, lostVms: then.pending, lateMs: then.lateMs }, 'host fenced');
  t.lostPending = then.pending > 0;
  if (!t.lostPending || !completeFence(c, t, true)) requestSweep(c);
}

/**
 * Marks lost every VM of a fenced host at (or below) its epoch ({@link vmsLostChanges}), from the VM
 * cache, once a marking slot is free. True when a lost-marking run is under way or queued.
 */
export function completeFence(c: Ctx, t: HostTrack, fromFence = false): boolean {
  const s = c.s;
  const rec = t.record;
  if (!s.leader || rec?.state !== 'fenced' || t.revision === undefined) {
    t.lostPending = false;
    return false;
  }
  if (stuck(t)) return false;
  if (t.marking) return true;
  if (!s.vmsSynced) {
    t.lostPending = true; // taken up by resumeFences when the cache is synced
    return false;
  }
  t.marking = { queued: true, changes: [], next: 0, marked: 0, conflicts: 0, startedMono: c.now.mono, fromFence };
  if (s.markingsInFlight >= s.cfg.maxMarkingsInFlight) {
    s.markQueue.add(t.hostId);
    return true;
  }
  startMarking(c, t);
  return true;
}

function startMarking(c: Ctx, t: HostTrack): void {
  c.s.markQueue.delete(t.hostId);
  t.marking!.queued = false;
  c.s.markingsInFlight++;
  planMarking(c, t);
}

function planMarking(c: Ctx, t: HostTrack): void {
  const m = t.marking!;
  const rec = t.record;
  if (!c.s.leader || rec?.state !== 'fenced' || t.revision === undefined) {
    t.lostPending = false;
    return endMarking(c, t);
  }
  const limits = c.s.cfg.txnLimits;
  const plan = vmsLostChanges({ hostId: t.hostId, record: rec, revision: t.revision, vms: vmsOnHost(c.s, t.hostId), nowWall: c.now.wall, by: 'controller', limits, leader: true });
  const reported = (t.oversizedReported ??= new Set());
  for (const key of plan.oversized) {
    if (reported.has(key)) continue;
    reported.add(key);
    report(c, t.hostId, 'mark-lost', {
      code: 'FAILED_PRECONDITION',
      message: `VM ${key} of fenced host ${t.hostId}: its record alone exceeds the txn limits (${limits.maxOps} ops, ${limits.maxBytes} bytes); it cannot be marked lost, mark or delete it by hand`,
      retryable: false,
    });
  }
  m.changes = plan.changes;
  markNext(c, t);
}

function markNext(c: Ctx, t: HostTrack): void {
  const m = t.marking!;
  if (m.next < m.changes.length) {
    const change = m.changes[m.next++]!;
    if (!write(c, t.hostId, change, { action: 'mark-lost', retry: false }, { k: 'mark-lost', hostId: t.hostId })) endMarking(c, t);
    return;
  }
  if (m.changes.length > 0) {
    log(c, 'info', { hostId: t.hostId, epoch: t.record?.epoch, marked: m.marked, txns: m.changes.length, conflicts: m.conflicts, ms: Math.round(c.now.mono - m.startedMono) }, 'VMs of the fenced host marked lost');
  }
  if (m.conflicts > 0) {
    t.lostPending = true;
    retryLater(c, t);
  } else t.lostPending = false;
  endMarking(c, t);
}

/** A lost-marking batch's outcome. */
export function markLostBatchDone(c: Ctx, hostId: string, ok: boolean): void {
  const t = c.s.hosts.get(hostId);
  const m = t?.marking;
  if (!t || !m) return;
  if (!c.s.leader || stuck(t)) return endMarking(c, t);
  if (ok) m.marked += m.changes[m.next - 1]?.vms?.length ?? 0;
  else m.conflicts++;
  markNext(c, t);
}

function endMarking(c: Ctx, t: HostTrack): void {
  const s = c.s;
  const m = t.marking;
  const fromFence = m?.fromFence === true;
  t.marking = undefined;
  s.markQueue.delete(t.hostId);
  if (m && !m.queued) s.markingsInFlight = Math.max(0, s.markingsInFlight - 1);
  completingDone(c, t.hostId);
  if (fromFence) requestSweep(c);
  for (const id of [...s.markQueue]) {
    if (s.markingsInFlight >= s.cfg.maxMarkingsInFlight) break;
    const q = s.hosts.get(id);
    if (q?.marking?.queued) startMarking(c, q);
    else s.markQueue.delete(id);
  }
}
