/**
 * Raft terms and etcd 3.4's early lease revoke (#15247): the controller notes the highest raft term
 * seen in response headers and when it first saw it (its first observation counts as a change: the
 * history before it is unknown). A lease lost within one TTL of a term change gets `ttl + window`
 * instead of `window` ({@link earlyRevokeSuspected}); a pending fence whose loss turns out to lie
 * within one TTL of a change seen later is lengthened ({@link maybeExtend}) — never shortened.
 */
import { extendDeadlineChange } from '../fence-changes.js';
import { earlyRevokeSuspected, lossToFenceMs } from '../fence-window.js';
import { clearTimer, fenceTimerKey, iso, log } from './effects.js';
import { armTimer } from './fence.js';
import { write } from './writes.js';
import type { Ctx, HostTrack } from './types.js';

/** Records a raft term higher than any seen (the first one too). True when it was new. */
export function noteTerm(c: Ctx, raftTerm: number | undefined, mono: number): boolean {
  const s = c.s;
  if (raftTerm === undefined || (s.termChange !== undefined && raftTerm <= s.termChange.term)) return false;
  const first = s.termChange === undefined;
  s.termChange = { term: raftTerm, seenMono: mono };
  if (first) log(c, 'info', { raftTerm }, 'first raft term seen: a lease lost within one TTL from now gets the TTL on top of its fence window (the term history before now is unknown)');
  else log(c, 'warn', { raftTerm }, 'etcd raft term changed (leader election): a lease lost within one TTL of now gets the TTL on top of its fence window (etcd 3.4 early revoke, #15247)');
  return true;
}

/** A term seen in a response header: noted, then every pending fence whose loss is within one TTL of it is lengthened. */
export function observeTerm(c: Ctx, raftTerm: number, mono: number): void {
  noteTerm(c, raftTerm, mono);
  if (!c.s.leader || !c.s.synced) return;
  for (const t of [...c.s.hosts.values()]) maybeExtend(c, t);
}

/**
 * When the current detachment's loss lies within one TTL of the last term change and its window does
 * not include the TTL yet, lengthens it to `loss + ttl + window` (timer, record and a
 * `fence-deadline-extended` event). True when the deadline moved.
 */
export function maybeExtend(c: Ctx, t: HostTrack): boolean {
  const s = c.s;
  const rec = t.record;
  if (!s.leader || !rec || rec.state !== 'detached' || t.termExtended || t.detaching) return false;
  if (t.lossMono === undefined || t.lossWall === undefined || t.fenceAtMono === undefined || t.revision === undefined || t.incarnation === undefined) return false;
  if (!earlyRevokeSuspected(t.lossMono, s.termChange, rec.timings?.ttl ?? 0)) return false;
  t.termExtended = true;
  const due = t.lossWall + lossToFenceMs(rec.timings, { fenceWindowOverride: s.cfg.fenceWindowOverride, earlyRevoke: true });
  const dueMono = t.lossMono + (due - t.lossWall);
  if (dueMono <= t.fenceAtMono) return false;
  const from = t.fenceAtWall ?? rec.fenceDeadline ?? null;
  t.fenceAtMono = dueMono;
  t.fenceAtWall = due;
  clearTimer(c, fenceTimerKey(t.hostId));
  const term = s.termChange!.term;
  log(c, 'warn', { hostId: t.hostId, raftTerm: term, from, to: due }, 'lease lost within one TTL of a raft term change: fence window lengthened by the TTL (etcd 3.4 early revoke)');
  write(
    c,
    t.hostId,
    extendDeadlineChange({
      hostId: t.hostId,
      record: rec,
      revision: t.revision,
      to: due,
      from,
      why: 'raft-term-change',
      nowWall: c.now.wall,
      detail: `lease of ${t.hostId} vanished within one TTL of a raft term change (term ${term}): etcd 3.4 may have revoked it early (#15247), so its VMs are treated as gone only at ${iso(due)} (loss + ttl + window)`,
    }),
    { action: 'extend', retry: false },
  );
  armTimer(c, t);
  return true;
}
