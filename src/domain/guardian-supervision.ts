/**
 * How the agent supervises its guardian (the out-of-process fence, src/ports/guardian.ts), pure.
 *
 * Invariants:
 * - the guardian is fed {@link guardianDeadline} (src/domain/host-lifecycle.ts) each time it changes,
 *   and never `undefined` (then the last fed deadline stays in force);
 * - a guardian fire starts the fence unless the host already fences, cleans, is clean or rejoins
 *   (it then belongs to the GC under way);
 * - a guardian that cannot be started is reported once per outage, a restart of one that had run
 *   is an error; new VMs are refused unless the guardian is known to run.
 */
import type { HostPhase } from './host-lifecycle.js';

/** Whether `deadline` (from guardianDeadline) must be fed, `fed` being the last one fed (undefined: none yet). */
export function guardianFeedDue(deadline: number | null | undefined, fed: number | null | undefined): deadline is number | null {
  return deadline !== undefined && deadline !== fed;
}

/** Whether a fire record of the guardian starts the fence in `phase`. */
export function guardianFireStartsFence(phase: HostPhase): boolean {
  return !(phase === 'fencing' || phase === 'cleaning' || phase === 'clean' || phase === 'rejoining');
}

/** One supervision check: the guardian was running or had to be started, or it could not be. */
export type GuardianCheck = { readonly kind: 'running' } | { readonly kind: 'started' } | { readonly kind: 'failed' };

/** What a check means ({@link judgeGuardianCheck}). */
export interface GuardianCheckVerdict {
  readonly up: boolean;
  /** `started`: first start; `restarted`: it had died (an error); `down`: it cannot be started (new outage). */
  readonly notice?: 'started' | 'restarted' | 'down';
}

/** Judges a check; `wasUp`: the previous verdict (undefined before the first check). */
export function judgeGuardianCheck(wasUp: boolean | undefined, check: GuardianCheck): GuardianCheckVerdict {
  if (check.kind === 'failed') return wasUp === false ? { up: false } : { up: false, notice: 'down' };
  if (check.kind === 'running') return { up: true };
  return { up: true, notice: wasUp === undefined ? 'started' : 'restarted' };
}
