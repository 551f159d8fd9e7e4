/**
 * The hold protocol, host side, pure.
 *
 * Three values: `requested` (the record's `hold`, set by an operator), `applied` (what this host
 * applies: it suspends its own watchdog and its guardian) and `seen` (the record's `holdSeen`, written
 * only by the host; the controller honours exactly this). The one invariant that makes holds safe:
 *
 *   **applied ⇒ seen**, at every instant, including across ambiguous commits.
 *
 * If it held, a host that applies a hold is never fenced by the controller (which honours `seen`),
 * so a hold can never make a VM run twice. Hence the order of the two writes:
 * - to apply a hold, first commit `seen = true` (a txn guarded by the host's epoch and lease), then
 *   apply it — an ambiguous commit leaves the hold unapplied (safe: the host still self-fences);
 * - to drop a hold, first stop applying it, then commit `seen = false` — an ambiguous commit leaves
 *   `seen` true, which only stops the controller from fencing a host that fences itself anyway.
 */

/** What the host must do next to converge `applied` and `seen` on `requested`. */
export type HoldStep =
  /** Nothing to do. */
  | { readonly kind: 'none' }
  /** Commit `seen = true`, and only once that commit succeeded, apply the hold. */
  | { readonly kind: 'ack-then-apply' }
  /** The cluster already shows `seen = true`: apply the hold. */
  | { readonly kind: 'apply' }
  /** Stop applying the hold now, then commit `seen = false`. */
  | { readonly kind: 'drop-then-ack' }
  /** Commit `seen = false` (a previous release's commit was ambiguous, or a hold ack was never applied). */
  | { readonly kind: 'ack-release' };

/**
 * The next step of the hold protocol for one reading of the record.
 * `applied && !seen` breaks the invariant (possible only if something else wrote `holdSeen`): the
 * host then drops the hold at once, the safe side, and the protocol re-applies it if still wanted.
 */
export function nextHoldStep(requested: boolean, applied: boolean, seen: boolean): HoldStep {
  if (applied && !seen) return { kind: 'drop-then-ack' };
  if (requested && !applied) return seen ? { kind: 'apply' } : { kind: 'ack-then-apply' };
  if (!requested && applied) return { kind: 'drop-then-ack' };
  if (!requested && !applied && seen) return { kind: 'ack-release' };
  return { kind: 'none' };
}

/** How `tether host list` shows a host's hold: requested and acknowledged. */
export function describeHold(requested: boolean, seen: boolean): string {
  if (requested && seen) return 'held';
  if (requested) return 'hold not acked';
  if (seen) return 'release not acked';
  return 'no';
}
