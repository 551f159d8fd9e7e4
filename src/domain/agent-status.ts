/**
 * What the agent says about its host lifecycle, pure: `tether gc status` and the admission of new
 * VMs.
 *
 * Invariants: ages and remaining times are computed from the monotonic `now` and the state's
 * `lastAck` (the send time of the last acknowledged heartbeat), rounded to whole ms; new VMs are
 * admitted only while the host takes work (attached or suspect) and, when the agent has a guardian,
 * while that guardian is known to run (without it nothing fences the VMs if the agent dies).
 */
import type { GcTimings } from './gc-timing.js';
import { admitsWork, watchdogRemaining, type HostPhase, type HostState } from './host-lifecycle.js';

/** What `tether gc status` shows. */
export interface GcStatus {
  readonly hostId: string;
  readonly phase: HostPhase;
  readonly epoch: number;
  /** The hold this host applies (acknowledged in the cluster, or forced locally while detached). */
  readonly held: boolean;
  readonly heldAtDetach: boolean;
  /** A local hold forced while detached (split-brain risk accepted by the operator). */
  readonly localHold: boolean;
  /** Whether the guardian process is known to run (undefined without a guardian). */
  readonly guardianRunning?: boolean;
  /** Why this agent does not act on the cluster now (another agent holds this host id), if so. */
  readonly duplicateOf?: string;
  /** ms since the last acknowledged heartbeat (monotonic). */
  readonly lastAckAgeMs?: number;
  /** ms until the watchdog fires, while detached and not held. */
  readonly watchdogRemainingMs?: number;
  /** The peer check's last verdict while detached (docs/peer-check.md): held back or why not. */
  readonly peerCheck?: PeerCheckStatus;
  readonly timings: GcTimings;
}

/** The peer check as `tether gc status` shows it. */
export interface PeerCheckStatus {
  /** The fence is held back now (a positive verdict in force). */
  readonly holdingBack: boolean;
  /** "fence held back: 7 of 10 hosts report etcd unreachable (freeze share 55 %, 6 needed)", or why not. */
  readonly detail: string;
  readonly witnesses: readonly string[];
  readonly needed: number;
  readonly pool: number;
  /** Peers whose answers did not count, and why. */
  readonly rejected: readonly { readonly hostId: string; readonly why: string }[];
}

/** The guardian as status and admission see it: none configured, or whether it is known to run. */
export type GuardianView = { readonly configured: false } | { readonly configured: true; readonly running: boolean };

/** What the status is made of. */
export interface GcStatusInput {
  readonly hostId: string;
  readonly state: HostState;
  readonly timings: GcTimings;
  /** Monotonic now. */
  readonly now: number;
  readonly localHold: boolean;
  readonly guardian: GuardianView;
  readonly duplicateOf: string | undefined;
  /** The peer check's last verdict, while detached. */
  readonly peerCheck?: Omit<PeerCheckStatus, 'holdingBack'>;
}

/** The status snapshot. */
export function gcStatus(i: GcStatusInput): GcStatus {
  const s = i.state;
  const remaining = watchdogRemaining(i.timings, s, i.now);
  return {
    hostId: i.hostId,
    phase: s.phase,
    epoch: s.epoch,
    held: s.held,
    heldAtDetach: s.heldAtDetach,
    localHold: i.localHold,
    ...(s.lastAck === undefined ? {} : { lastAckAgeMs: Math.round(i.now - s.lastAck) }),
    ...(remaining === undefined ? {} : { watchdogRemainingMs: Math.round(remaining) }),
    ...(i.guardian.configured ? { guardianRunning: i.guardian.running } : {}),
    ...(i.duplicateOf === undefined ? {} : { duplicateOf: i.duplicateOf }),
    ...(s.phase === 'detached' && i.peerCheck !== undefined ? { peerCheck: { ...i.peerCheck, holdingBack: s.heldBack !== undefined && s.heldBack.until > i.now } } : {}),
    timings: i.timings,
  };
}

/** Why new VMs are refused now, or undefined when the host takes them. */
export function admissionRefusal(phase: HostPhase, guardian: GuardianView): string | undefined {
  if (!admitsWork(phase)) return `host is ${phase}`;
  if (guardian.configured && !guardian.running) return 'the guardian (the fence that outlives the agent) is not running';
  return undefined;
}
