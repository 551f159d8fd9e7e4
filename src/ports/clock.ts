/** Opaque handle of a timer created by a {@link Clock}. */
export type TimerHandle = { readonly __timer: unique symbol } | object;

/**
 * Time as a port. Core code never reads the system clock directly.
 *
 * Invariants: `nowMono()` never goes backwards and is the only time base for deadlines;
 * `now()` is wall-clock ms since the epoch, for display and records only.
 */
export interface Clock {
  /** Wall-clock milliseconds since the Unix epoch. Never use for deadlines. */
  now(): number;
  /** Monotonic milliseconds from an arbitrary origin; never decreases. */
  nowMono(): number;
  /** Calls `fn` once after `ms` monotonic milliseconds. */
  setTimer(ms: number, fn: () => void): TimerHandle;
  /** Cancels a timer; a no-op for a fired or cancelled one. */
  clearTimer(handle: TimerHandle): void;
  /** Resolves after `ms` monotonic milliseconds. */
  sleep(ms: number): Promise<void>;
}
