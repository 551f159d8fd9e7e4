/**
 * Leadership: campaigning, the leader lease's keepalives, election and step-down.
 *
 * The leader lease is known good until `send time of the last acknowledged keepalive + ttl`; the
 * replica steps down a little before that (a margin of min(500 ms, interval / 2)), or at once when the
 * store says the lease is gone or a txn found another leader. Stepping down forgets everything: the
 * host view, pending requests (their outcomes are then ignored), timers, the freeze.
 */
import { describeEtcdAssumptions } from '../etcd-assumptions.js';
import { NOT_FROZEN } from '../mass-freeze.js';
import { call, clearTimer, emitEvent, log, setTimer } from './effects.js';
import { resetFreezeExtras } from './freeze.js';
import { observeTerm } from './raft-term.js';
import { resync } from './host-view.js';
import { dropVmCache, resyncVms } from './vm-view.js';
import type { CallError, Ctx, Reply } from './types.js';

/** Keepalive period of a leader lease of `ttlMs`: a third of it (at least 100 ms). */
export function keepaliveInterval(ttlMs: number): number {
  return Math.max(100, Math.floor(ttlMs / 3));
}

/** One campaign attempt (standby only). */
export function campaign(c: Ctx): void {
  clearTimer(c, 'campaign');
  if (c.s.leader) return;
  call(c, { op: 'campaign', candidateId: c.s.cfg.controllerId, ttlMs: c.s.cfg.leaderTtl }, { for: 'campaign', startedMono: c.now.mono });
}

/** Outcome of a campaign: elected, or another try after `campaignInterval`. */
export function campaignOutcome(c: Ctx, startedMono: number, r: Extract<Reply, { op: 'campaign' }> | { readonly error: CallError }): void {
  if ('error' in r) log(c, 'debug', { err: r.error.message }, 'campaign failed');
  if ('error' in r || !r.won || c.s.leader) {
    if (!c.s.leader) setTimer(c, 'campaign', c.s.cfg.campaignInterval);
    return;
  }
  const s = c.s;
  s.term++;
  s.leader = true;
  s.leaderTtlMs = r.ttlMs ?? s.cfg.leaderTtl;
  s.leaderSinceWall = c.now.wall;
  s.lastAckMono = startedMono;
  setTimer(c, 'keepalive', keepaliveInterval(s.leaderTtlMs));
  armLeaderExpiry(c);
  log(c, 'info', { term: s.term, leaderTtl: s.leaderTtlMs }, 'elected: this replica is the active controller');
  emitEvent(c, { kind: 'controller-elected', controllerId: s.cfg.controllerId, detail: `${s.cfg.controllerId} is the active controller` });
  call(c, { op: 'server-status' }, { for: 'server-status' });
  resync(c);
  resyncVms(c);
  setTimer(c, 'gc', s.cfg.gcInterval);
}

/** The keepalive timer fired: one keepalive of the leader lease. */
export function keepaliveDue(c: Ctx): void {
  if (!c.s.leader) return;
  call(c, { op: 'keep-leadership' }, { for: 'keepalive', sentMono: c.now.mono });
}

/** Outcome of a keepalive sent at `sentMono`. */
export function keepaliveOutcome(c: Ctx, sentMono: number, r: Extract<Reply, { op: 'keep-leadership' }> | { readonly error: CallError }): void {
  const s = c.s;
  if (!s.leader) return;
  if ('error' in r) log(c, 'warn', { err: r.error.message }, 'leader keepalive missed');
  else if (r.answer === 'lost') return stepDown(c, 'the leader lease is gone');
  else s.lastAckMono = Math.max(s.lastAckMono, sentMono);
  if (leaderExpiryCheck(c)) return;
  armLeaderExpiry(c);
  setTimer(c, 'keepalive', keepaliveInterval(s.leaderTtlMs));
}

/** Margin before the leader lease's possible expiry at which a replica steps down. */
function stepDownMargin(ttlMs: number): number {
  return Math.min(500, keepaliveInterval(ttlMs) / 2);
}

/**
 * The replica's own deadline as leader: `lastAck + ttl - margin`, armed on election and on every
 * acknowledged keepalive. It fires even while a keepalive hangs (a keepalive's answer may come only
 * at its deadline), so a replica never acts as leader past the moment its lease could have expired.
 */
function armLeaderExpiry(c: Ctx): void {
  const s = c.s;
  setTimer(c, 'leader-expiry', s.lastAckMono + s.leaderTtlMs - stepDownMargin(s.leaderTtlMs) - c.now.mono);
}

/** The leader-expiry timer fired: steps down, or (fired early against the monotonic clock) waits for the rest. */
export function leaderExpiryTimer(c: Ctx): void {
  if (c.s.leader && !leaderExpiryCheck(c)) armLeaderExpiry(c);
}

/** Steps down when no keepalive was acknowledged for `ttl - margin`; true when it did. */
function leaderExpiryCheck(c: Ctx): boolean {
  const s = c.s;
  if (!s.leader || c.now.mono < s.lastAckMono + s.leaderTtlMs - stepDownMargin(s.leaderTtlMs)) return false;
  stepDown(c, `no leader keepalive acknowledged for ${Math.round(c.now.mono - s.lastAckMono)} ms (ttl ${s.leaderTtlMs} ms)`);
  return true;
}

/**
 * The store's version, read at election: logged with what is assumed about its leases (etcd 3.4.23:
 * early revoke after a leader change possible). The window extension is active whatever the version.
 */
export function serverStatusOutcome(c: Ctx, r: Extract<Reply, { op: 'server-status' }> | { readonly error: CallError }): void {
  if ('error' in r) {
    const assumption = describeEtcdAssumptions(undefined);
    c.s.storeInfo = { version: 'unknown', assumption };
    log(c, 'warn', { err: r.error.message }, `could not read the etcd version: ${assumption}`);
    return;
  }
  const assumption = describeEtcdAssumptions(r.version);
  c.s.storeInfo = { version: r.version, assumption };
  log(c, 'info', { etcdVersion: r.version, raftTerm: r.raftTerm }, assumption);
  observeTerm(c, r.raftTerm, c.now.mono);
}

/** No longer the active controller: forget everything and campaign again after `campaignInterval`. */
export function stepDown(c: Ctx, why: string): void {
  const s = c.s;
  if (!s.leader) return;
  log(c, 'warn', { why, term: s.term }, 'stepping down: no longer the active controller');
  s.term++;
  s.leader = false;
  c.fx.push({ kind: 'leadership-dropped' });
  for (const key of [...s.timers.keys()]) clearTimer(c, key);
  c.fx.push({ kind: 'close-watch' });
  c.fx.push({ kind: 'close-watch', which: 'vms' });
  s.watch = undefined;
  s.synced = false;
  s.hosts.clear();
  s.reconcileQueue = undefined;
  dropVmCache(s);
  s.fencesInFlight = 0;
  s.fenceQueue.clear();
  s.markingsInFlight = 0;
  s.markQueue.clear();
  s.pending.clear();
  s.freeze = NOT_FROZEN;
  s.freezeResumeAtWall = undefined;
  s.freezeDirty = false;
  s.freezeRose = false;
  resetFreezeExtras(s);
  s.sweep = undefined;
  s.sweepQueued = false;
  s.detachesInFlight = 0;
  s.detachQueue.clear();
  s.lastStatus = '';
  setTimer(c, 'campaign', s.cfg.campaignInterval);
}
