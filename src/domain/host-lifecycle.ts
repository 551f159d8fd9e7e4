/**
 * The host side of detached-host GC as a pure state machine:
 * `evaluate(timings, state, event, now) -> { state, effects }`.
 *
 * `now` and every time here are the host's MONOTONIC milliseconds. The only inputs are events;
 * the agent executes the effects and feeds their outcomes back as events. One loop owns the state.
 *
 * Safety invariants (enforced by tests):
 * - `stop-vms` is emitted only when `now >= lastAck + watchdogTimeout` and the host was not held when
 *   it detached, or when the cluster says the host was fenced;
 * - an acknowledged heartbeat before the watchdog deadline returns the host to `attached`;
 * - once fencing started it completes: later acknowledgements do not resurrect old VMs;
 * - the out-of-process guardian is fed {@link guardianDeadline}: it kills every VM by that deadline
 *   plus `killTimeout` even when the agent is dead or frozen, and a `guardian-fired` event makes the
 *   agent finish the GC from there (it never treats VMs the guardian killed as still running);
 * - a registration refused as `duplicate`, or a `taken-over` alive key, never makes this host fence
 *   VMs for the other agent's sake and never makes it register again in a loop: it just stops
 *   renewing, and its own watchdog (measured from its own last acknowledged heartbeat) decides;
 * - the peer check (docs/peer-check.md) only ever postpones the watchdog's fence while a positive
 *   verdict of src/domain/peer-check.ts holds (`heldBack.until` not passed): without a new positive
 *   verdict by `until` the host fences, and the guardian is fed the held-back deadline that the
 *   verdict proved safe.
 */
import type { GcTimings } from './gc-timing.js';

/** Host lifecycle phases (ARCHITECTURE.md section 4). */
export type HostPhase = 'starting' | 'attached' | 'suspect' | 'detached' | 'fencing' | 'cleaning' | 'clean' | 'rejoining';

/** Everything the lifecycle decides from. */
export interface HostState {
  readonly phase: HostPhase;
  /** Host epoch as last registered (0 before the first registration). */
  readonly epoch: number;
  /** Send time (monotonic ms) of the last acknowledged keepalive; undefined before any. */
  readonly lastAck?: number;
  /** Operator hold as last read (from the cluster record while attached, or set locally). */
  readonly held: boolean;
  /** Whether the host was held when it detached: then it never self-fences in this detachment. */
  readonly heldAtDetach: boolean;
  /** Monotonic ms of detection, while detached. */
  readonly detachedAt?: number;
  /** Monotonic ms when fencing started. */
  readonly fenceStartedAt?: number;
  /** Why the host fenced, once it did. */
  readonly fenceReason?: FenceReason;
  /** While detached: the peer check holds the watchdog's fence back (see {@link HeldBack}). */
  readonly heldBack?: HeldBack;
}

/** A positive peer-check verdict in force (docs/peer-check.md "The host's rule"). */
export interface HeldBack {
  /** Monotonic ms of the first positive verdict of this detachment. */
  readonly since: number;
  /** Without a newer positive verdict by then, the host fences. */
  readonly until: number;
  /** The guardian's deadline this verdict proved safe (`heldBackGuardianDeadline`). */
  readonly guardianDeadline: number;
  /** One line for status: who vouched, out of how many. */
  readonly detail: string;
}

/** Why a host fences: its own watchdog, the cluster said so, or the guardian already killed the VMs. */
export type FenceReason = 'watchdog' | 'cluster-fenced' | 'guardian';

/** What happens to the host. */
export type HostEvent =
  /** Lease granted and record written (first registration, re-registration, or rejoin as ready). `sentAt`: send time of the grant. */
  | { readonly kind: 'registered'; readonly epoch: number; readonly sentAt: number }
  /**
   * The cluster refused registration: it fenced this host or the epoch moved on (the host fences),
   * or another agent holds this host id's `alive` key (`duplicate`: nothing changes here).
   */
  | { readonly kind: 'register-refused'; readonly reason: 'fenced' | 'epoch-mismatch' | 'duplicate' }
  /** A verified keepalive found this host's `alive` key on another agent's lease. */
  | { readonly kind: 'taken-over' }
  /** The guardian's deadline passed and it killed this host's VMs (read from its fired marker). */
  | { readonly kind: 'guardian-fired' }
  /** A keepalive sent at `sentAt` was acknowledged. */
  | { readonly kind: 'heartbeat-acked'; readonly sentAt: number }
  /** A keepalive sent at `sentAt` got no answer by its deadline. */
  | { readonly kind: 'heartbeat-missed'; readonly sentAt: number }
  /** The cluster answered that the lease no longer exists. */
  | { readonly kind: 'lease-lost' }
  /** Time passed (the agent ticks at {@link nextDeadline}). */
  | { readonly kind: 'tick' }
  /**
   * The hold this host applies changed. `forceWhileDetached`: an operator's local hold on a detached
   * host with the split-brain risk accepted: it also suspends the pending watchdog.
   */
  | { readonly kind: 'hold-changed'; readonly held: boolean; readonly forceWhileDetached?: boolean }
  /** Every VM stopped (the fencer finished). */
  | { readonly kind: 'vms-stopped' }
  /** Cleanup ran; `clean` is the audit's verdict. */
  | { readonly kind: 'cleanup-finished'; readonly clean: boolean }
  /** A clean host reached the cluster again and starts registering as ready. */
  | { readonly kind: 'cluster-reachable' }
  /**
   * The peer check's verdict on a round (src/domain/peer-check.ts `checkPeers`): hold the fence back
   * until `until` with the guardian at `guardianDeadline`, or not (`holdBack: false`).
   */
  | { readonly kind: 'peer-verdict'; readonly holdBack: boolean; readonly until: number; readonly guardianDeadline: number; readonly detail: string };

/** What the agent must do. */
export type HostEffect =
  | { readonly kind: 'stop-vms'; readonly reason: FenceReason }
  | { readonly kind: 'run-cleanup' }
  /** Try to (re-)register: `reattach` keeps the epoch (only if the record is not fenced); `ready` rejoins with epoch + 1. */
  | { readonly kind: 'register'; readonly mode: 'reattach' | 'ready' }
  | { readonly kind: 'transition'; readonly from: HostPhase; readonly to: HostPhase; readonly reason: string };

/** Result of {@link evaluate}. */
export interface Evaluation {
  readonly state: HostState;
  readonly effects: readonly HostEffect[];
}

/** Phases in which the host takes new VMs. */
export function admitsWork(phase: HostPhase): boolean {
  return phase === 'attached' || phase === 'suspect';
}

/** A fresh state. A `lastAck` persisted by a previous agent on this boot keeps its deadlines. */
export function initialHostState(persisted?: {
  lastAck?: number;
  phase?: HostPhase;
  epoch?: number;
  held?: boolean;
  fenceStartedAt?: number;
  fenceReason?: FenceReason;
}): HostState {
  const resume = persisted?.phase;
  const phase: HostPhase = resume === 'fencing' || resume === 'cleaning' || resume === 'clean' || resume === 'rejoining' ? resume : persisted?.lastAck !== undefined ? 'detached' : 'starting';
  return {
    phase,
    epoch: persisted?.epoch ?? 0,
    ...(persisted?.lastAck === undefined ? {} : { lastAck: persisted.lastAck }),
    held: persisted?.held ?? false,
    heldAtDetach: phase === 'detached' ? (persisted?.held ?? false) : false,
    ...(phase !== 'starting' && phase !== 'detached' && persisted?.fenceStartedAt !== undefined ? { fenceStartedAt: persisted.fenceStartedAt } : {}),
    ...(phase !== 'starting' && phase !== 'detached' && persisted?.fenceReason !== undefined ? { fenceReason: persisted.fenceReason } : {}),
  };
}

/** Effects to re-issue after a restart in `state` (resume an interrupted fence or cleanup). */
export function resumeEffects(state: HostState): HostEffect[] {
  if (state.phase === 'fencing') return [{ kind: 'stop-vms', reason: state.fenceReason ?? 'watchdog' }];
  if (state.phase === 'cleaning') return [{ kind: 'run-cleanup' }];
  if (state.phase === 'clean' || state.phase === 'rejoining') return [{ kind: 'register', mode: 'ready' }];
  return [{ kind: 'register', mode: 'reattach' }];
}

/** The next monotonic time at which a `tick` can change the state, or undefined. */
export function nextDeadline(t: GcTimings, s: HostState): number | undefined {
  if (s.lastAck === undefined) return undefined;
  if (s.phase === 'attached' || s.phase === 'suspect') return s.lastAck + t.detachAfter;
  if (s.phase === 'detached' && !s.heldAtDetach) return Math.max(s.lastAck + t.watchdogTimeout, s.heldBack?.until ?? -Infinity);
  return undefined;
}

/**
 * The deadline fed to the out-of-process guardian (monotonic ms): every VM of this host must be gone
 * by `lastAck + watchdogTimeout + stopGrace + killTimeout`, the bound the controller relies on. The
 * agent's own fence starts at `lastAck + watchdogTimeout` and forces what is left at `+ stopGrace`;
 * the guardian fires half a `killTimeout` later (after the agent's own forced stop had its chance, so
 * a stop it made is reported as what it was), and its SIGKILL still has the other half to land.
 * When the agent is dead or frozen, the guardian is what holds the bound.
 * `null`: suspended, because the host applies a hold (attached and held, or held when it detached:
 * the cluster then never fences it automatically either). `undefined`: nothing to say (no heartbeat
 * acknowledged yet, or the host is already fencing or later: the last fed deadline stays).
 */
export function guardianDeadline(t: GcTimings, s: HostState): number | null | undefined {
  if (s.lastAck === undefined) return undefined;
  const deadline = s.lastAck + t.watchdogTimeout + t.stopGrace + t.killTimeout / 2;
  if (s.phase === 'attached' || s.phase === 'suspect') return s.held ? null : deadline;
  if (s.phase === 'detached') return s.heldAtDetach ? null : Math.max(deadline, s.heldBack?.guardianDeadline ?? -Infinity);
  return undefined;
}

/** Watchdog time left (ms) while detached and not held; undefined otherwise. */
export function watchdogRemaining(t: GcTimings, s: HostState, now: number): number | undefined {
  if (s.phase !== 'detached' || s.heldAtDetach || s.lastAck === undefined) return undefined;
  return Math.max(0, s.lastAck + t.watchdogTimeout - now);
}

function to(s: HostState, phase: HostPhase, reason: string, extra: Partial<HostState> = {}, effects: HostEffect[] = []): Evaluation {
  if (s.phase === phase) return { state: { ...s, ...extra }, effects };
  return { state: { ...s, ...extra, phase }, effects: [{ kind: 'transition', from: s.phase, to: phase, reason }, ...effects] };
}

const FENCE_REASON_TEXT: Record<FenceReason, string> = {
  watchdog: 'watchdog expired',
  'cluster-fenced': 'the cluster fenced this host',
  guardian: 'the guardian killed the VMs (the agent could not act in time)',
};

function startFence(s: HostState, now: number, reason: FenceReason, why = FENCE_REASON_TEXT[reason]): Evaluation {
  const { heldBack: _h, ...rest } = s;
  return to(rest, 'fencing', why, { fenceStartedAt: now, fenceReason: reason }, [
    { kind: 'stop-vms', reason },
  ]);
}

/** Applies one event. Pure: same inputs, same output. */
export function evaluate(t: GcTimings, s: HostState, e: HostEvent, now: number): Evaluation {
  const fencingOrLater = s.phase === 'fencing' || s.phase === 'cleaning' || s.phase === 'clean' || s.phase === 'rejoining';
  switch (e.kind) {
    case 'registered': {
      if (s.phase === 'fencing' || s.phase === 'cleaning') return { state: s, effects: [] };
      const lastAck = Math.max(s.lastAck ?? -Infinity, e.sentAt);
      const { detachedAt: _d, fenceStartedAt: _f, fenceReason: _r, heldBack: _h, ...rest } = s;
      return to({ ...rest, phase: s.phase }, 'attached', s.phase === 'rejoining' || s.phase === 'clean' ? 'rejoined ready for reprovisioning' : 'registered', {
        epoch: e.epoch,
        lastAck,
        heldAtDetach: false,
      });
    }
    case 'register-refused':
      // Another agent holds this host id: it is not ours to fence for. Our own watchdog decides.
      if (e.reason === 'duplicate') return { state: s, effects: [] };
      // Fenced, or the epoch moved on: the cluster may already have placed our VMs elsewhere.
      if (!fencingOrLater) return startFence(s, now, 'cluster-fenced');
      return { state: s, effects: [] };
    case 'taken-over':
      if (fencingOrLater || s.phase === 'starting' || s.phase === 'detached') return { state: s, effects: [] };
      return to(s, 'detached', 'another agent took over this host id', { detachedAt: now, heldAtDetach: s.held });
    case 'guardian-fired':
      if (fencingOrLater) return { state: s, effects: [] };
      return startFence(s, now, 'guardian');
    case 'heartbeat-acked': {
      if (fencingOrLater || s.phase === 'starting') return { state: s, effects: [] };
      const lastAck = Math.max(s.lastAck ?? -Infinity, e.sentAt);
      // An ack can arrive after the watchdog deadline passed but before a tick saw it:
      // the deadline is measured from the previous ack, so decide on that first.
      const pending = evaluate(t, s, { kind: 'tick' }, now);
      if (pending.state.phase === 'fencing') return pending;
      const base = pending.state;
      const { detachedAt: _d, heldBack: _h, ...rest } = base;
      return to({ ...rest }, 'attached', s.phase === 'attached' ? 'heartbeat' : 'heartbeat acknowledged again', { lastAck, heldAtDetach: false }, [
        ...pending.effects.filter((x) => x.kind !== 'transition'),
      ]);
    }
    case 'heartbeat-missed':
      if (s.phase === 'attached') return to(s, 'suspect', 'keepalive not acknowledged');
      return evaluate(t, s, { kind: 'tick' }, now);
    case 'lease-lost':
      if (fencingOrLater) return { state: s, effects: [] };
      return to(s, s.phase === 'starting' ? 'starting' : 'detached', 'lease no longer exists in the cluster', s.phase === 'detached' ? {} : { detachedAt: now, heldAtDetach: s.held }, [
        { kind: 'register', mode: 'reattach' },
      ]);
    case 'tick': {
      if (s.lastAck === undefined) return { state: s, effects: [] };
      if ((s.phase === 'attached' || s.phase === 'suspect') && now >= s.lastAck + t.detachAfter) {
        const detached = to(s, 'detached', `no acknowledged heartbeat for ${Math.round(now - s.lastAck)}ms`, { detachedAt: now, heldAtDetach: s.held });
        const more = evaluate(t, detached.state, e, now);
        return { state: more.state, effects: [...detached.effects, ...more.effects] };
      }
      if (s.phase === 'detached' && !s.heldAtDetach && now >= s.lastAck + t.watchdogTimeout) {
        if (s.heldBack !== undefined && now < s.heldBack.until) return { state: s, effects: [] };
        return startFence(s, now, 'watchdog', s.heldBack === undefined ? FENCE_REASON_TEXT.watchdog : 'watchdog expired and the peer check no longer holds the fence back (no new evidence in time)');
      }
      return { state: s, effects: [] };
    }
    case 'peer-verdict': {
      if (s.phase !== 'detached' || s.heldAtDetach) return { state: s, effects: [] };
      // A negative verdict does not shorten a positive one: what a positive round proved holds until
      // its `until` (the controller cannot fence before); the tick fences then.
      if (!e.holdBack) return evaluate(t, s, { kind: 'tick' }, now);
      const heldBack: HeldBack = { since: s.heldBack?.since ?? now, until: e.until, guardianDeadline: e.guardianDeadline, detail: e.detail };
      // A verdict that came too late (its `until` passed) holds nothing: the tick decides.
      if (e.until <= now) return evaluate(t, s, { kind: 'tick' }, now);
      return { state: { ...s, heldBack }, effects: [] };
    }
    case 'hold-changed':
      // A release never reaches back into the current detachment (heldAtDetach stays); only an
      // operator's forced local hold (split-brain risk accepted) suspends a pending watchdog.
      if (e.forceWhileDetached && s.phase === 'detached') {
        const forced = { ...s, held: e.held, heldAtDetach: e.held };
        // A release resumes the watchdog at once: the deadline may have passed already.
        return e.held ? { state: forced, effects: [] } : evaluate(t, forced, { kind: 'tick' }, now);
      }
      return { state: { ...s, held: e.held }, effects: [] };
    case 'vms-stopped':
      if (s.phase !== 'fencing') return { state: s, effects: [] };
      return to(s, 'cleaning', 'every VM stopped', {}, [{ kind: 'run-cleanup' }]);
    case 'cleanup-finished':
      if (s.phase !== 'cleaning') return { state: s, effects: [] };
      if (!e.clean) return { state: s, effects: [{ kind: 'run-cleanup' }] };
      return to(s, 'clean', 'audit found nothing left', {}, [{ kind: 'register', mode: 'ready' }]);
    case 'cluster-reachable':
      return s.phase === 'clean' ? to(s, 'rejoining', 'cluster reachable again') : { state: s, effects: [] };
  }
}
