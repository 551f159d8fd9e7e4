/**
 * The agent's heartbeat decisions, pure: in which phases keepalives are sent, and what one
 * keepalive's outcome means for the lifecycle (src/domain/host-lifecycle.ts) and for the lease.
 *
 * Invariants:
 * - only an `alive` answer (renewal verified against the host's `alive` key) for the lease the agent
 *   still heartbeats on is an acknowledged heartbeat; its `sentAt` (the monotonic SEND time) is what
 *   every host deadline is measured from;
 * - an answer for a lease the agent no longer holds (it re-registered meanwhile) is ignored: it says
 *   nothing about the current lease;
 * - `lease-lost` and `taken-over` drop the lease (no keepalive is sent on it again); only
 *   `lease-lost` leads to a re-registration (through the lifecycle's `register` effect), never
 *   `taken-over`: another agent holds this host id, and this host's own watchdog decides;
 * - a keepalive without an answer by its deadline (`no-answer`) is a miss, whatever the lease.
 */
import type { GcTimings } from './gc-timing.js';
import type { HostEvent, HostPhase } from './host-lifecycle.js';

/** The default (unscaled) heartbeat interval: how soon a keepalive that failed early is retried. */
export const KEEPALIVE_RETRY_MS = 1000;

/**
 * When the keepalive after one that got no answer is sent (monotonic ms): normally one interval
 * after the failed one was sent, but when it failed early (an error before its deadline: a leader
 * change, a refused connection) {@link KEEPALIVE_RETRY_MS} after it was sent, or at once if that
 * has passed. With the default timings (1 s) nothing changes; with a long interval (heartbeats
 * scaled to the fleet, src/domain/fleet-timings.ts) a keepalive that fails fast during an etcd
 * election is no longer the last one before the watchdog: at 10 s heartbeats and a 17 s watchdog,
 * one fast failure at `lastAck + 10 s` used to stop every VM. Each keepalive keeps a deadline of one
 * interval, so a loaded etcd that answers slowly is not met with more requests (a 1 s deadline made
 * the fleet bench's registration collapse into a retry storm at 1,000 hosts).
 *
 * Safety is untouched: more keepalives only renew the lease; every deadline is still measured from
 * the send time of the last acknowledged one.
 */
export function nextBeatAfterMiss(t: Pick<GcTimings, 'heartbeatInterval'>, sentAt: number, now: number): number {
  return Math.min(sentAt + t.heartbeatInterval, Math.max(sentAt + KEEPALIVE_RETRY_MS, now));
}

/** Phases in which the agent sends keepalives (it has, or may regain, a lease to renew). */
export function heartbeatPhase(phase: HostPhase): boolean {
  return phase === 'attached' || phase === 'suspect' || phase === 'detached';
}

/** What happened to one keepalive: its answer (the cluster store's `KeepaliveAnswer`), or none by its deadline. */
export type KeepaliveOutcome =
  | { readonly kind: 'alive' }
  | { readonly kind: 'lease-lost'; readonly detail: string }
  | { readonly kind: 'taken-over'; readonly detail: string }
  | { readonly kind: 'no-answer' };

/** What the agent does with one keepalive outcome ({@link judgeKeepalive}). */
export interface KeepaliveVerdict {
  /** The lifecycle event to apply; undefined: nothing (a stale answer). */
  readonly event?: HostEvent;
  /** Forget the lease: it is gone, or the `alive` key is on another agent's lease. */
  readonly dropLease: boolean;
  /** The other agent's description, when it took this host id over. */
  readonly duplicateOf?: string;
  /** Acknowledged heartbeats counted so far (input `acks`, plus one for this one if acknowledged). */
  readonly acks: number;
  /** Read the cluster's hold now (every `holdPollEvery`-th acknowledged heartbeat). */
  readonly pollHold: boolean;
}

/**
 * Judges one keepalive. `stale`: the lease it was sent on is no longer the agent's lease.
 * `acks`: acknowledged heartbeats before this one; the hold is polled on every
 * `holdPollEvery`-th acknowledgement (1, 2, ... times `holdPollEvery`).
 */
export function judgeKeepalive(outcome: KeepaliveOutcome, sentAt: number, stale: boolean, acks: number, holdPollEvery: number): KeepaliveVerdict {
  const same = { dropLease: false, acks, pollHold: false };
  if (outcome.kind === 'no-answer') return { ...same, event: { kind: 'heartbeat-missed', sentAt } };
  if (stale) return same;
  switch (outcome.kind) {
    case 'alive': {
      const n = acks + 1;
      return { event: { kind: 'heartbeat-acked', sentAt }, dropLease: false, acks: n, pollHold: n % holdPollEvery === 0 };
    }
    case 'lease-lost':
      return { ...same, event: { kind: 'lease-lost' }, dropLease: true };
    case 'taken-over':
      return { ...same, event: { kind: 'taken-over' }, dropLease: true, duplicateOf: outcome.detail };
  }
}

/**
 * What a beat sends first (docs/peer-check.md "The witness"): `silenced` — only a read of whether
 * etcd still knows the lease, never a keepalive on it (this host promised its peers); `probe` — after
 * a keepalive that got no answer, a read first, and a keepalive only once etcd answered it; `none` —
 * the keepalive. Bounds the keepalives sent since the last acknowledgement received (each may renew
 * the lease once more if delivered late) to about one per outage, which is what lets this host vouch
 * for its lease's end.
 */
export function probeFirst(silenced: boolean, unanswered: number): 'none' | 'probe' | 'silenced' {
  if (silenced) return 'silenced';
  return unanswered > 0 ? 'probe' : 'none';
}
