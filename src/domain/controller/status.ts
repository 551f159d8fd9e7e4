/**
 * The status document (`controller/status`, for people and `tether host list`): the freeze, each
 * host's fence deadline or why it is not fenced, non-retryable failures, the store's assumptions.
 * Published when it changed (ignoring its timestamp), at most every {@link STATUS_DEBOUNCE_MS}.
 */
import { decideHost, timingProblems } from '../fence-window.js';
import { describeFreeze, fencingAllowed } from '../mass-freeze.js';
import type { ControllerHostStatus, ControllerStatus } from '../../ports/controller-store.js';
import { call, log, setTimer, timerSet } from './effects.js';
import { evaluateFreeze } from './freeze.js';
import type { CallError, ControllerState, Ctx, Now } from './types.js';

/** Status is published at most this often. */
export const STATUS_DEBOUNCE_MS = 250;

/**
 * The status document of `s` at `now` (pure). Its freeze counts are the ones the freeze applied at
 * its last evaluation (C1 lease gone, C3 pool at freeze, C7 leave grace of docs/peer-check.md), so
 * the share shown is the share that decides.
 */
export function statusOf(s: ControllerState, now: Now): ControllerStatus {
  const count = s.detachedCount;
  const frozen = !fencingAllowed(s.freeze);
  const freezeReason = describeFreeze(s.freeze, s.freezeRule?.share ?? s.cfg.freezeShare, now.mono);
  const hosts: ControllerHostStatus[] = [];
  for (const t of [...s.hosts.values()].sort((a, b) => (a.hostId < b.hostId ? -1 : 1))) {
    if (!t.record) continue;
    const d = decideHost(t.record, t.alive !== undefined);
    const unsafe = timingProblems(t.record);
    const h: { hostId: string; fenceAt?: number; blocked?: string; unsafeTimings?: string } = { hostId: t.hostId };
    if (d.kind === 'await-fence' && t.fenceAtWall !== undefined) {
      h.fenceAt = t.fenceAtWall;
      if (frozen) h.blocked = 'mass-disruption freeze';
    }
    if (d.kind === 'never-fence') h.blocked = d.blockers.join(', ');
    if (unsafe !== undefined) h.unsafeTimings = unsafe;
    if (h.fenceAt !== undefined || h.blocked !== undefined || h.unsafeTimings !== undefined) hosts.push(h);
  }
  return {
    controllerId: s.cfg.controllerId,
    leaderSince: s.leaderSinceWall,
    at: now.wall,
    freeze: {
      mode: s.freeze.mode,
      detached: count.detached,
      total: count.total,
      limit: s.freezeRule?.share ?? s.cfg.freezeShare, // the share applied (issue 11: never looser than an acknowledged contract)
      ...(s.freezeResumeAtWall !== undefined ? { resumeAt: s.freezeResumeAtWall } : {}),
      ...(freezeReason !== undefined ? { reason: freezeReason } : {}),
    },
    hosts,
    ...(s.failures.length > 0 ? { failures: [...s.failures] } : {}),
    ...(s.storeInfo ? { store: s.storeInfo } : {}),
  };
}

/** After every input but the status timer: publish within {@link STATUS_DEBOUNCE_MS}. */
export function scheduleStatus(c: Ctx): void {
  if (c.s.leader && c.s.synced && !timerSet(c, 'status')) setTimer(c, 'status', STATUS_DEBOUNCE_MS);
}

/**
 * The status timer fired: publish when the document changed. Not while a fresh listing is still
 * being reconciled (its freeze count is not evaluated yet: the next input schedules the status
 * again); a pending freeze evaluation runs first, so the counts shown are the current view's.
 */
export function publishStatus(c: Ctx): void {
  const s = c.s;
  if (!s.synced || !s.leader || s.reconcileQueue !== undefined) return;
  if (s.freezeDirty) evaluateFreeze(c);
  const doc = statusOf(s, c.now);
  const sig = JSON.stringify({ ...doc, at: 0, freeze: { ...doc.freeze, reason: doc.freeze.mode } });
  if (sig === s.lastStatus) return;
  call(c, { op: 'put-status', status: doc }, { for: 'status', sig });
}

/** The publication's outcome. */
export function statusPublished(c: Ctx, sig: string, error?: CallError): void {
  if (error) return log(c, 'debug', { err: error.message }, 'publishing controller status failed');
  c.s.lastStatus = sig;
}
