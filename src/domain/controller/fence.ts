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
 *    the VM listing comes back — unless the mass-disruption freeze holds it or the host is blocked
 *    (acknowledged hold `holdSeen`, held at detach, unsafe timings). The listing's raft term is noted
 *    first: a term change within one TTL of the loss lengthens the window instead. One constant-size
 *    txn (record still `detached` at the same revision, `alive` absent) -> `fenced`.
 * 4. Lost-marking ({@link completeFence}): the host's VMs at (or below) its epoch -> `lost`, in txns
 *    within the store's limits, one after the other, each guarded by the fenced record's revision.
 *    Interrupted or conflicting: retried with backoff, and finished by every sweep and by the next leader.
 */
import { detachChange, fenceChange, vmsLostChanges, vmsToMarkLost } from '../fence-changes.js';
import { decideHost, earlyRevokeSuspected, effectiveFenceWindow, lossToFenceMs, takeoverFenceDeadline } from '../fence-window.js';
import { describeFreeze, fencingAllowed } from '../mass-freeze.js';
import type { VmEntry } from '../cluster-change.js';
import type { HostRecord } from '../host-record.js';
import { call, clearTimer, fenceTimerKey, incarnationOf, iso, log, retryTimerKey, rev, setTimer, timerSet } from './effects.js';
import { evaluateFreeze, markFreezeDirty } from './freeze.js';
import { reconcile } from './host-view.js';
import { stepDown } from './leadership.js';
import { maybeExtend, noteTerm } from './raft-term.js';
import { completingDone, requestSweep } from './sweep.js';
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
  c.s.hosts.delete(t.hostId);
}

/** The host's fence timer fired. Never early: the monotonic deadline is checked again. */
export function fenceDue(c: Ctx, t: HostTrack): void {
  if (stuck(t) || t.fencing !== undefined || t.incarnation === undefined) return;
  const d = decideHost(t.record, t.alive !== undefined);
  if (d.kind !== 'await-fence') return reconcile(c, t);
  if (c.now.mono < t.fenceAtMono!) return armTimer(c, t); // never early
  if (c.s.freezeDirty) evaluateFreeze(c); // decide on the current detached share
  if (!fencingAllowed(c.s.freeze)) {
    log(c, 'warn', { hostId: t.hostId, freeze: describeFreeze(c.s.freeze, c.s.cfg.freezeShare, c.now.mono) }, 'fence deadline passed but the mass-disruption freeze holds it');
    return;
  }
  t.fencing = t.incarnation;
  call(c, { op: 'list-vms' }, { for: 'fence-list', hostId: t.hostId, incarnation: t.incarnation });
}

/** The VM listing of a fence came back: re-check everything, then the constant-size fence txn. */
export function fenceListed(c: Ctx, p: { readonly hostId: string; readonly incarnation: string }, raftTerm: number | undefined, r: { readonly vms: readonly VmEntry[] } | { readonly error: CallError }): void {
  const t = c.s.hosts.get(p.hostId);
  if (!t) return;
  t.fencing = undefined;
  if ('error' in r) {
    if (!r.error.retryable) return giveUp(c, t, 'fence', r.error);
    log(c, 'warn', { hostId: t.hostId, err: r.error.message }, 'listing VMs for the fence failed; retrying');
    retryLater(c, t);
    return;
  }
  noteTerm(c, raftTerm, c.now.mono);
  if (maybeExtend(c, t)) return;
  const rec = t.record;
  if (!rec || rec.state !== 'detached' || t.revision === undefined) return reconcile(c, t);
  // Other inputs were applied while the listing was in flight: decide again on the current view.
  if (t.incarnation !== p.incarnation || stuck(t) || decideHost(rec, t.alive !== undefined).kind !== 'await-fence' || t.fenceAtMono === undefined || c.now.mono < t.fenceAtMono) {
    return reconcile(c, t);
  }
  if (c.s.freezeDirty) evaluateFreeze(c);
  if (!fencingAllowed(c.s.freeze)) return;
  const pending = vmsToMarkLost(r.vms, t.hostId, rec.epoch).map((v) => v.key);
  const { change } = fenceChange({ hostId: t.hostId, record: rec, revision: t.revision, nowWall: c.now.wall, by: 'controller', pendingVms: pending });
  const lateMs = Math.round(c.now.wall - (t.fenceAtWall ?? c.now.wall));
  t.fencing = p.incarnation;
  write(c, t.hostId, change, { action: 'fence' }, { k: 'fence', hostId: t.hostId, vms: r.vms, pending: pending.length, lateMs, epoch: rec.epoch });
}

/** The fence txn's outcome (after the generic write handling). */
export function fenceCommitted(c: Ctx, then: { readonly hostId: string; readonly vms: readonly VmEntry[]; readonly pending: number; readonly lateMs: number; readonly epoch: number }, ok: boolean): void {
  const t = c.s.hosts.get(then.hostId);
  if (!t) return;
  t.fencing = undefined;
  if (!ok) return; // retried with backoff (or reported) by the write handling
  disarm(c, t);
  log(c, 'warn', { hostId: t.hostId, epoch: then.epoch, lostVms: then.pending, lateMs: then.lateMs }, 'host fenced');
  t.lostPending = then.pending > 0;
  if (!t.lostPending || !completeFence(c, t, then.vms, true)) requestSweep(c);
}

/**
 * Marks lost every VM of a fenced host at (or below) its epoch ({@link vmsLostChanges}), from `known`
 * or a fresh listing. True when a lost-marking run is under way (started now or before).
 */
export function completeFence(c: Ctx, t: HostTrack, known?: readonly VmEntry[], fromFence = false): boolean {
  const rec = t.record;
  if (!c.s.leader || rec?.state !== 'fenced' || t.revision === undefined) {
    t.lostPending = false;
    return false;
  }
  if (stuck(t)) return false;
  if (t.marking) return true;
  t.marking = { listing: known === undefined, changes: [], next: 0, marked: 0, conflicts: 0, startedMono: c.now.mono, fromFence };
  if (known === undefined) {
    call(c, { op: 'list-vms' }, { for: 'mark-lost-list', hostId: t.hostId, fromFence });
    return true;
  }
  planMarking(c, t, known);
  return true;
}

/** The listing of a lost-marking run came back. */
export function markLostListed(c: Ctx, hostId: string, r: { readonly vms: readonly VmEntry[] } | { readonly error: CallError }): void {
  const t = c.s.hosts.get(hostId);
  if (!t?.marking) return;
  if ('error' in r) {
    if (!r.error.retryable) giveUp(c, t, 'mark-lost', r.error);
    else {
      log(c, 'warn', { hostId: t.hostId, err: r.error.message }, 'listing VMs to mark lost failed; retrying');
      t.lostPending = true;
      retryLater(c, t);
    }
    return endMarking(c, t);
  }
  planMarking(c, t, r.vms);
}

function planMarking(c: Ctx, t: HostTrack, vms: readonly VmEntry[]): void {
  const m = t.marking!;
  const rec = t.record;
  if (!c.s.leader || rec?.state !== 'fenced' || t.revision === undefined) {
    t.lostPending = false;
    return endMarking(c, t);
  }
  const limits = c.s.cfg.txnLimits;
  const plan = vmsLostChanges({ hostId: t.hostId, record: rec, revision: t.revision, vms, nowWall: c.now.wall, by: 'controller', limits, leader: true });
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
  m.listing = false;
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
  const fromFence = t.marking?.fromFence === true;
  t.marking = undefined;
  completingDone(c, t.hostId);
  if (fromFence) requestSweep(c);
}
