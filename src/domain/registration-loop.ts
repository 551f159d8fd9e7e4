/**
 * The agent's registration loop, pure: whether a registration is still wanted, what its answer
 * means, and how long to wait before the next attempt. Who may register at which epoch is decided
 * by the cluster (src/domain/registration.ts); this is the host's side of it.
 *
 * Invariants:
 * - `reattach` is attempted only while the host may keep its epoch (starting, attached, suspect,
 *   detached) and has no lease (or is still starting); `ready` only while clean or rejoining: a
 *   fencing or cleaning host never registers;
 * - an accepted registration is an acknowledged heartbeat sent at the lease GRANT's send time (the
 *   lease cannot expire before that plus its TTL);
 * - a `duplicate` refusal never fences (the lifecycle ignores it) and is retried every TTL, reported
 *   once per holder; `fenced` and `epoch-mismatch` end a `reattach` loop (the lifecycle fences);
 * - a `ready` registration refused as `epoch-mismatch` (another agent instance registered this host
 *   id at a newer epoch after this host fenced, and the cluster has not fenced that epoch yet) is
 *   waited out, retried every TTL, reported once per detail: this host is clean and runs nothing,
 *   and the cluster decides when it may rejoin (once that epoch is fenced). Ending the loop there
 *   left the host `rejoining` forever (simulator, seed 1079);
 * - failures back off from {@link FIRST_REGISTRATION_BACKOFF_MS}, doubling, capped at two heartbeat
 *   intervals for retryable errors and at the TTL for the others (reported once per message: they
 *   keep failing until an operator fixes the cause).
 */
import { TetherError, messageOf } from './errors.js';
import type { GcTimings } from './gc-timing.js';
import type { HostEvent, HostPhase } from './host-lifecycle.js';
import type { RegistrationRefusal } from './registration.js';

/** `reattach` keeps the epoch; `ready` rejoins with epoch + 1 after a verified cleanup. */
export type RegistrationMode = 'reattach' | 'ready';

/** First wait after a failed registration attempt (ms). */
export const FIRST_REGISTRATION_BACKOFF_MS = 250;

/** Whether a registration in `mode` still has something to do. */
export function registrationWanted(mode: RegistrationMode, phase: HostPhase, hasLease: boolean): boolean {
  if (mode === 'ready') return phase === 'clean' || phase === 'rejoining';
  if (!(phase === 'starting' || phase === 'detached' || phase === 'attached' || phase === 'suspect')) return false;
  return phase === 'starting' || !hasLease;
}

/** The event once a lease was granted (before the registration txn): a clean host found the cluster again. */
export function leaseGrantedEvent(mode: RegistrationMode): HostEvent | undefined {
  return mode === 'ready' ? { kind: 'cluster-reachable' } : undefined;
}

/** The answer of a registration txn (the cluster store's `RegistrationResult`). */
export type RegistrationAnswer =
  | { readonly ok: true; readonly epoch: number }
  | { readonly ok: false; readonly reason: RegistrationRefusal; readonly detail: string };

/** What the agent does with a registration answer ({@link judgeRegistration}). */
export type RegistrationVerdict =
  /** Keep the lease, forget any duplicate, clear a local hold (the cluster knows the hold now), read the hold. */
  | { readonly kind: 'registered'; readonly event: HostEvent }
  /** Revoke the lease; another agent holds this host id: wait `retryAfterMs` and try again. `report`: a new holder. */
  | { readonly kind: 'duplicate'; readonly event: HostEvent; readonly duplicateOf: string; readonly report: boolean; readonly retryAfterMs: number }
  /** Revoke the lease and stop: the record was fenced or its epoch moved on (the lifecycle fences). */
  | { readonly kind: 'refused'; readonly event: HostEvent; readonly reason: RegistrationRefusal; readonly detail: string }
  /**
   * Revoke the lease, wait `retryAfterMs` and try again (no lifecycle event: the host stays clean or
   * rejoining): a `ready` registration found the record at another agent instance's epoch, not fenced
   * yet. `report`: a new detail.
   */
  | { readonly kind: 'wait'; readonly detail: string; readonly report: boolean; readonly retryAfterMs: number };

/**
 * Judges a registration answer to a registration in `mode`; `sentAt`: monotonic send time of the
 * lease grant; `duplicateOf` / `waitingOn`: the duplicate holder / the wait detail reported last.
 */
export function judgeRegistration(
  t: GcTimings,
  answer: RegistrationAnswer,
  sentAt: number,
  duplicateOf: string | undefined,
  mode: RegistrationMode,
  waitingOn?: string,
): RegistrationVerdict {
  if (answer.ok) return { kind: 'registered', event: { kind: 'registered', epoch: answer.epoch, sentAt } };
  const event: HostEvent = { kind: 'register-refused', reason: answer.reason };
  if (answer.reason === 'duplicate') return { kind: 'duplicate', event, duplicateOf: answer.detail, report: duplicateOf !== answer.detail, retryAfterMs: t.ttl };
  if (mode === 'ready' && answer.reason === 'epoch-mismatch') return { kind: 'wait', detail: answer.detail, report: waitingOn !== answer.detail, retryAfterMs: t.ttl };
  return { kind: 'refused', event, reason: answer.reason, detail: answer.detail };
}

/** The wait after a failed attempt ({@link registrationRetry}). */
export interface RegistrationRetry {
  readonly delayMs: number;
  readonly nextBackoffMs: number;
  /** Whether the failure may pass by itself: anything but a TetherError marked not retryable (e.g. a malformed record). */
  readonly retryable: boolean;
  readonly message: string;
  /** Tell the operator: a non-retryable failure with a new message. */
  readonly report: boolean;
}

/** After an attempt failed with `err`, `backoffMs` being the current wait and `lastError` the last non-retryable message reported. */
export function registrationRetry(t: GcTimings, backoffMs: number, err: unknown, lastError: string | undefined): RegistrationRetry {
  const retryable = !(err instanceof TetherError) || err.retryable;
  const message = messageOf(err);
  return {
    delayMs: backoffMs,
    nextBackoffMs: Math.min(backoffMs * 2, retryable ? t.heartbeatInterval * 2 : t.ttl),
    retryable,
    message,
    report: !retryable && lastError !== message,
  };
}
