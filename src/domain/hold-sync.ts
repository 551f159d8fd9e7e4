/**
 * When and how the agent runs the hold protocol (src/domain/hold.ts), pure: when the record is
 * read, which reading counts, the order of the writes for each step, and where an operator's
 * `tether gc hold` / `release` goes.
 *
 * Invariants:
 * - the hold is synced only while the host takes work (attached or suspect) on a lease, and a
 *   record read counts only for the epoch the host is registered at and the lease it read on;
 * - every step keeps **applied ⇒ seen**: a hold is applied only after its `seen = true` commit
 *   succeeded and while the host is still registered on the same lease and takes work; a release
 *   is applied before `seen = false` is committed;
 * - a hold asked for while the host does not take work (detached: the cluster cannot learn of it
 *   and fences on schedule) is refused unless the operator accepts the split-brain risk; a local
 *   release while detached resumes the watchdog at once; a local hold is re-applied after an
 *   agent restart while the host is still detached.
 */
import { admitsWork, type HostPhase, type HostState } from './host-lifecycle.js';
import type { HoldStep } from './hold.js';

/** Read the hold every this many acknowledged heartbeats, unless configured. */
export const DEFAULT_HOLD_POLL_EVERY = 5;

/** Whether the hold protocol runs now. */
export function holdSyncApplies(phase: HostPhase, hasLease: boolean): boolean {
  return hasLease && admitsWork(phase);
}

/** Whether a record read (its epoch, undefined: no record) counts: same epoch, same lease as when read. */
export function holdReadCounts(recordEpoch: number | undefined, epoch: number, sameLease: boolean): boolean {
  return recordEpoch !== undefined && recordEpoch === epoch && sameLease;
}

/** One write of a hold step, in order. */
export type HoldAction =
  /** Commit `seen`. `gate`: go on only if it committed and the host is still registered on the same lease and takes work. */
  | { readonly kind: 'ack'; readonly seen: boolean; readonly gate: boolean }
  /** Apply (or stop applying) the hold. */
  | { readonly kind: 'apply'; readonly held: boolean };

/** The writes of a step, in the order that keeps applied ⇒ seen. */
export function holdActions(step: HoldStep): readonly HoldAction[] {
  switch (step.kind) {
    case 'none':
      return [];
    case 'ack-then-apply':
      return [{ kind: 'ack', seen: true, gate: true }, { kind: 'apply', held: true }];
    case 'apply':
      return [{ kind: 'apply', held: true }];
    case 'drop-then-ack':
      return [{ kind: 'apply', held: false }, { kind: 'ack', seen: false, gate: false }];
    case 'ack-release':
      return [{ kind: 'ack', seen: false, gate: false }];
  }
}

/** Where an operator's hold request goes ({@link routeHoldRequest}). */
export type HoldRoute =
  /** Through the cluster: write the request, run the protocol, check it applied. `clearLocal`: drop a local hold flag. */
  | { readonly kind: 'cluster'; readonly clearLocal: boolean }
  /** A release with no local hold set: nothing to do. */
  | { readonly kind: 'nothing' }
  /** Drop the local hold: the watchdog resumes. */
  | { readonly kind: 'release-local' }
  /** A local hold without the risk accepted: refuse. */
  | { readonly kind: 'refuse-local' }
  /** A local hold with the split-brain risk accepted. */
  | { readonly kind: 'hold-local' };

/** Routes `tether gc hold` (`held`) / `release` (`!held`). `localHold`: a local hold flag is set. */
export function routeHoldRequest(phase: HostPhase, hasLease: boolean, held: boolean, acceptSplitBrainRisk: boolean, localHold: boolean): HoldRoute {
  if (admitsWork(phase) && hasLease) return { kind: 'cluster', clearLocal: !held && localHold };
  if (!held) return localHold ? { kind: 'release-local' } : { kind: 'nothing' };
  return acceptSplitBrainRisk ? { kind: 'hold-local' } : { kind: 'refuse-local' };
}

/** Whether a persisted local hold must be applied again at agent start (the host is still detached, not yet held). */
export function reapplyLocalHold(s: HostState, localHold: boolean): boolean {
  return localHold && s.phase === 'detached' && !s.heldAtDetach;
}
