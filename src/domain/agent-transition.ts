/**
 * What the agent's runner does around a lifecycle transition (the `transition` effect of
 * src/domain/host-lifecycle.ts), pure.
 *
 * Invariants:
 * - heartbeats start (at once) on every entry to `attached`, and stop on entry to `fencing`,
 *   `cleaning` or `clean`: a host that fences has no lease to renew, and only a `ready`
 *   registration (epoch + 1) brings it back;
 * - a rejoin is an entry to `attached` from `rejoining` or `clean`: only then is a guardian fire
 *   acknowledged (the GC that followed it finished and the host registered at a new epoch);
 * - the fence start is recorded on entry to `fencing` (kept past the rejoin for the GC report).
 */
import type { HostPhase } from './host-lifecycle.js';

/** What follows a transition `from` → `to`. */
export interface TransitionFollowUp {
  /** `start`: send a keepalive now and then every interval; `stop`: cancel the next keepalive. */
  readonly heartbeat: 'start' | 'stop' | 'keep';
  /** The host rejoined after a GC: acknowledge a guardian fire, report the rejoin. */
  readonly rejoined: boolean;
  /** The host started fencing: remember when (monotonic) for the rejoin report. */
  readonly fenceStarted: boolean;
}

/** The follow-up of one transition. */
export function afterTransition(from: HostPhase, to: HostPhase): TransitionFollowUp {
  const heartbeat = to === 'attached' ? 'start' : to === 'fencing' || to === 'cleaning' || to === 'clean' ? 'stop' : 'keep';
  return { heartbeat, rejoined: to === 'attached' && (from === 'rejoining' || from === 'clean'), fenceStarted: to === 'fencing' };
}
