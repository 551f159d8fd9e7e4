/**
 * Emitting effects from a step: store calls with their request ids, timers by key, log lines,
 * events. Every helper appends to `ctx.fx` in order and records what it waits for in the state.
 */
import type { Call, Ctx, EventBody, HostTrack, LogLevel, Pending } from './types.js';
import type { ClusterEvent } from '../cluster-event.js';

/** Issues a store call; its outcome comes back as a `reply`/`failed` input with the returned id. */
export function call(c: Ctx, what: Call, pending: Pending): number {
  const req = ++c.s.seq;
  c.s.pending.set(req, pending);
  c.fx.push({ kind: 'call', req, deadlineMs: c.s.cfg.callDeadline, call: what });
  return req;
}

/** Sets (or re-sets) the timer `key`; an earlier firing under the key is then ignored. */
export function setTimer(c: Ctx, key: string, delayMs: number): void {
  const id = ++c.s.seq;
  c.s.timers.set(key, id);
  c.fx.push({ kind: 'set-timer', key, id, delayMs: Math.max(0, delayMs) });
}

/** Clears the timer `key` if set. */
export function clearTimer(c: Ctx, key: string): void {
  if (!c.s.timers.delete(key)) return;
  c.fx.push({ kind: 'clear-timer', key });
}

/** True while the timer `key` is set and has not fired. */
export function timerSet(c: Ctx, key: string): boolean {
  return c.s.timers.has(key);
}

/** A log line. */
export function log(c: Ctx, level: LogLevel, fields: Record<string, unknown>, msg: string): void {
  c.fx.push({ kind: 'log', level, fields, msg });
}

/** Appends an event (best effort, as the leader; a failure is logged). */
export function emitEvent(c: Ctx, body: EventBody): void {
  if (!c.s.leader) return;
  const ev = { ...body, at: c.now.wall } as ClusterEvent;
  call(c, { op: 'commit', change: { events: [ev] } }, { for: 'event', event: ev.kind });
}

/** The tracked host, created when unknown. */
export function track(c: Ctx, hostId: string): HostTrack {
  let t = c.s.hosts.get(hostId);
  if (!t) {
    t = { hostId, recordSeen: 0n, aliveSeen: 0n };
    c.s.hosts.set(hostId, t);
  }
  return t;
}

/** Key of a host's fence timer. */
export const fenceTimerKey = (hostId: string): string => `fence:${hostId}`;
/** Key of a host's retry timer. */
export const retryTimerKey = (hostId: string): string => `retry:${hostId}`;

/** A revision as a number (0 when malformed). */
export function rev(r: string): bigint {
  try {
    return BigInt(r);
  } catch {
    return 0n;
  }
}

/** `<epoch>:<detachedAt>`: which detachment a fence deadline belongs to. */
export function incarnationOf(r: { readonly epoch: number; readonly detachedAt?: number }): string {
  return `${r.epoch}:${r.detachedAt ?? '-'}`;
}

/** ISO form of a wall time, for event details. */
export const iso = (ms: number): string => new Date(ms).toISOString();
