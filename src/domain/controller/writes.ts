/**
 * The controller's writes and their outcomes: every write is one txn as the leader; on success the
 * tracked records it wrote are updated; `not-leader` steps down; a conflict or a retryable error
 * retries the host later with backoff (when asked); a non-retryable error is reported once
 * ({@link report}) and the host is left alone until its record changes (`stuckAt`).
 */
import type { ClusterChange } from '../cluster-change.js';
import { call, emitEvent, log, retryTimerKey, rev, setTimer, timerSet } from './effects.js';
import { applyVm, indexHost } from './vm-view.js';
import type { CallError, Ctx, HostTrack, Reply, Then } from './types.js';

/** Non-retryable failures kept for the status document. */
export const MAX_FAILURES_KEPT = 20;

/** Commits `change` as the leader; `then` continues with its outcome. False when not leading (nothing issued). */
export function write(c: Ctx, hostId: string | undefined, change: ClusterChange, opts: { readonly action: string; readonly retry?: boolean }, then: Then = { k: 'none' }): boolean {
  if (!c.s.leader) return false;
  call(c, { op: 'commit', change }, { for: 'write', ...(hostId !== undefined ? { hostId } : {}), action: opts.action, retry: opts.retry ?? true, change, then });
  return true;
}

/**
 * The outcome of a write: `ok` true when committed. Returns 'stepped-down' when the store said another
 * controller leads (the caller's continuation must not run: everything was reset).
 */
export function writeOutcome(
  c: Ctx,
  p: { readonly hostId?: string; readonly action: string; readonly retry: boolean; readonly change: ClusterChange },
  outcome: { readonly reply: Extract<Reply, { op: 'commit' }> } | { readonly error: CallError },
  stepDown: (c: Ctx, why: string) => void,
): boolean | 'stepped-down' {
  const t = p.hostId !== undefined ? c.s.hosts.get(p.hostId) : undefined;
  if ('error' in outcome) {
    if (!outcome.error.retryable) {
      giveUp(c, t, p.action, outcome.error, p.hostId);
      return false;
    }
    log(c, 'warn', { hostId: p.hostId, action: p.action, err: outcome.error.message }, 'controller txn failed; retrying with backoff');
    if (t && p.retry) retryLater(c, t);
    return false;
  }
  const res = outcome.reply.result;
  if (res.ok) {
    const at = rev(res.revision);
    for (const h of p.change.hosts ?? []) {
      const w = c.s.hosts.get(h.hostId);
      if (!w) continue;
      w.record = h.next ?? undefined;
      w.revision = h.next ? res.revision : undefined;
      w.recordSeen = at;
      indexHost(c.s, w);
    }
    // the VM cache holds this replica's own writes at once (the watch's copies of them are then ignored)
    if (c.s.vmsSynced) for (const v of p.change.vms ?? []) applyVm(c.s, v.key, v.next ? { key: v.key, record: v.next, revision: res.revision } : undefined, at);
    for (const g of p.change.capacityGuards ?? []) if (at > (c.s.capSeen.get(g.hostId) ?? 0n)) c.s.capSeen.set(g.hostId, at);
    if (t) t.attempts = 0;
    return true;
  }
  if (res.reason === 'not-leader') {
    stepDown(c, 'a txn found another controller holding controller/leader');
    return 'stepped-down';
  }
  log(c, 'debug', { hostId: p.hostId, action: p.action }, 'controller txn lost a race (record or VM changed); re-evaluating');
  if (t && p.retry) retryLater(c, t);
  return false;
}

/** Retries the host later: `retryDelay`, doubled per consecutive failure, at most `maxRetryDelay`. */
export function retryLater(c: Ctx, t: HostTrack): void {
  const key = retryTimerKey(t.hostId);
  if (timerSet(c, key)) return;
  const attempts = t.attempts ?? 0;
  t.attempts = attempts + 1;
  setTimer(c, key, Math.min(c.s.cfg.maxRetryDelay, c.s.cfg.retryDelay * 2 ** Math.min(attempts, 20)));
}

/** A write that retrying cannot fix: reported, and the host is left alone until its record changes. */
export function giveUp(c: Ctx, t: HostTrack | undefined, action: string, err: CallError, hostId = t?.hostId): void {
  if (t) t.stuckAt = t.revision;
  report(c, hostId, action, err);
}

/** True while a write failed for good at the host's current record. */
export function stuck(t: HostTrack): boolean {
  return t.stuckAt !== undefined && t.stuckAt === t.revision;
}

/**
 * Error log, `controller-error` event, and a line in the published status (`failures`) — once per
 * distinct failure (meeting the same one again only logs it at debug level).
 */
export function report(c: Ctx, hostId: string | undefined, action: string, err: CallError): void {
  const { code, message } = err;
  const key = `${hostId ?? ''}\u0000${action}\u0000${message}`;
  if (c.s.reported.has(key)) {
    log(c, 'debug', { hostId, action, code, err: message }, 'controller write still cannot succeed (reported before)');
    return;
  }
  if (c.s.reported.size >= 1000) c.s.reported.clear();
  c.s.reported.add(key);
  c.s.failures.push({ hostId: hostId ?? null, action, code, message, at: c.now.wall });
  if (c.s.failures.length > MAX_FAILURES_KEPT) c.s.failures.splice(0, c.s.failures.length - MAX_FAILURES_KEPT);
  log(c, 'error', { hostId, action, code, err: message }, 'controller write cannot succeed by retrying: not retried; an operator must look');
  emitEvent(c, {
    kind: 'controller-error',
    hostId: hostId ?? null,
    action,
    code,
    detail: `${action}${hostId ? ` of ${hostId}` : ''} failed and is not retried (${code}): ${message}`,
  });
}
