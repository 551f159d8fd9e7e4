/**
 * How requests and watch notifications travel between a model client and the etcd model. The
 * simulator supplies its own transport (seeded delays, partitions, lost answers); unit tests use
 * {@link immediateTransport} (the default) or {@link ControlledTransport}.
 */
import { TetherError } from '../../domain/errors.js';
import type { Clock } from '../../ports/clock.js';

/**
 * The delivery of a client's requests and watch notifications.
 *
 * Invariants an implementation keeps: `apply` runs at most once, synchronously when the request
 * reaches the cluster; an error thrown by `apply` is the request's answer (pass it on unchanged);
 * notifications of one watch are delivered in the order given (delayed, never reordered).
 */
export interface ModelTransport {
  /**
   * A request from client `from`: `apply` runs when the request reaches the cluster; its result travels back.
   * May reject with UNAVAILABLE before applying (partition), or apply and then reject with TIMEOUT
   * (answer lost: ambiguous commit).
   */
  request<T>(from: string, what: string, apply: () => T, deadlineMs: number): Promise<T>;
  /** A watch notification to client `to`, delivered in order per watch (delayed, never reordered); a partition ends the watch with an error. */
  notify(to: string, watchId: number, deliver: () => void): void;
}

/** Delivers at once: `apply` and each notification run in the next microtask. Deterministic. */
export const immediateTransport: ModelTransport = {
  request<T>(_from: string, _what: string, apply: () => T): Promise<T> {
    return Promise.resolve().then(apply);
  },
  notify(_to: string, _watchId: number, deliver: () => void): void {
    queueMicrotask(deliver);
  },
};

/** What {@link ControlledTransport} does with a request. */
export type DeliveryMode =
  /** Applied and answered at once. */
  | 'ok'
  /** Refused before applying: UNAVAILABLE, retryable (a partition the client notices). */
  | 'drop'
  /** Not applied; TIMEOUT at the deadline on the clock (a cut cable). */
  | 'hang'
  /** Applied, but the answer is lost: TIMEOUT at the deadline (an ambiguous commit). */
  | 'ambiguous';

/**
 * A transport a test steers: one {@link DeliveryMode} for every request (`mode`), optionally
 * overridden per request kind (`modeFor`, keyed by the `what` a client names: `range`, `txn`,
 * `leaseGrant`, `leaseKeepAlive`, `leaseRevoke`, `leaseTimeToLive`, `watch`, `status`).
 * Notifications are delivered in the next microtask, or held while `holdNotifications` and flushed,
 * in order, when it is switched off with {@link releaseNotifications}.
 * Timeouts fire on the given clock, so tests stay deterministic.
 */
export class ControlledTransport implements ModelTransport {
  mode: DeliveryMode = 'ok';
  readonly modeFor = new Map<string, DeliveryMode>();
  /** Every request seen, in order (`from what mode`). */
  readonly log: string[] = [];
  private held: (() => void)[] | undefined;

  constructor(private readonly clock: Clock) {}

  request<T>(from: string, what: string, apply: () => T, deadlineMs: number): Promise<T> {
    const mode = this.modeFor.get(what) ?? this.mode;
    this.log.push(`${from} ${what} ${mode}`);
    const timeout = (applied: boolean): Promise<never> =>
      new Promise((_, reject) =>
        this.clock.setTimer(deadlineMs, () =>
          reject(new TetherError('TIMEOUT', `${what}: no answer within ${deadlineMs}ms (model transport: ${applied ? 'answer lost' : 'request lost'})`, { retryable: true })),
        ),
      );
    switch (mode) {
      case 'ok':
        return Promise.resolve().then(apply);
      case 'drop':
        return Promise.reject(new TetherError('UNAVAILABLE', `${what}: unreachable (model transport: dropped)`, { retryable: true }));
      case 'hang':
        return timeout(false);
      case 'ambiguous':
        return Promise.resolve()
          .then(apply)
          .then(
            () => timeout(true),
            () => timeout(true),
          );
    }
  }

  notify(_to: string, _watchId: number, deliver: () => void): void {
    if (this.held) this.held.push(deliver);
    else queueMicrotask(deliver);
  }

  /** Holds watch notifications until {@link releaseNotifications}. */
  holdNotifications(): void {
    this.held ??= [];
  }

  /** Delivers held notifications in order (next microtask) and stops holding. */
  releaseNotifications(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const d of held) queueMicrotask(d);
  }
}
