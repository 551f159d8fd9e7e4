/**
 * Heartbeats that scale with the fleet, pure (Nomad's idea: a target for the total heartbeats per
 * second across the fleet, rather than a fixed period per host).
 *
 * Every agent sends one keepalive per `heartbeatInterval`, so etcd serves `fleetSize /
 * heartbeatInterval` keepalives per second. With a fleet-wide target rate, an agent lengthens its
 * `heartbeatInterval` to `fleetSize / rate` (never shorter than configured, never longer than
 * `maxHeartbeatInterval`), and moves the timings that depend on it by the same amount, so that each
 * rule of {@link checkTimings} keeps the slack it had:
 *
 * - `heartbeatInterval`, `detachAfter` and `watchdogTimeout` all grow by `stretch = interval -
 *   configured interval` (detection and the watchdog still allow the same time beyond one beat, and
 *   `watchdogTimeout >= electionTolerance + heartbeatInterval` keeps its margin);
 * - `ttl` becomes the larger of `ttl + stretch` and `3 * heartbeatInterval`, rounded up to whole
 *   seconds (etcd's unit);
 * - `stopGrace`, `killTimeout`, `fenceWindow`, `clockDriftMargin`, `electionTolerance` are unchanged.
 *
 * Invariant (proved here, held by a test over many inputs): when the configured timings pass
 * {@link checkTimings}, the scaled ones do too — the safety inequality's left side grows by
 * `stretch`, its right side by at least `stretch` (`ttl` does). The result is still checked, and an
 * agent refuses to start on any violation, printing the inequality with the scaled numbers.
 *
 * The cost: a host cut off is detected `stretch` later and its VMs run again elsewhere about
 * `ttl' - ttl` later (`ttl + fenceWindow` after the cut). See docs/gc.md, "Heartbeats that scale".
 */
import { checkTimings, describeViolations, type GcTimings, type TimingViolation } from './gc-timing.js';

/** The fleet-wide heartbeat target of an agent. */
export interface HeartbeatScaling {
  /** Keepalives per second the whole fleet should send at most; 0: off (timings as configured). */
  readonly fleetHeartbeatRate: number;
  /** Longest `heartbeatInterval` the rule may choose, ms (a bound on detection latency). */
  readonly maxHeartbeatInterval: number;
}

/** What {@link scaleTimings} decided. */
export interface ScaledTimings {
  readonly timings: GcTimings;
  /** The fleet size the timings are for. */
  readonly fleetSize: number;
  /** Added to heartbeatInterval, detachAfter and watchdogTimeout (ms); 0: as configured. */
  readonly stretch: number;
  /** Keepalives per second the fleet sends at these timings (fleetSize / heartbeatInterval). */
  readonly fleetRate: number;
  /** True when `maxHeartbeatInterval` stopped the interval short of the target rate. */
  readonly capped: boolean;
  /** Every rule the scaled timings break; empty when safe. */
  readonly violations: readonly TimingViolation[];
}

/** Rounding step of a scaled heartbeat interval, ms. */
export const HEARTBEAT_STEP_MS = 100;

const ceilTo = (v: number, step: number) => Math.ceil(v / step) * step;

/**
 * The timings for `fleetSize` hosts under `scaling`, from the configured `base`. Scaling off
 * (`fleetHeartbeatRate` 0), an unknown fleet (0), or a fleet already within the target: `base` as is.
 */
export function scaleTimings(base: GcTimings, fleetSize: number, scaling: HeartbeatScaling): ScaledTimings {
  const size = Number.isFinite(fleetSize) && fleetSize > 0 ? Math.floor(fleetSize) : 0;
  const rate = scaling.fleetHeartbeatRate;
  const wanted = rate > 0 && Number.isFinite(rate) && size > 0 ? ceilTo((size * 1000) / rate, HEARTBEAT_STEP_MS) : 0;
  const ceiling = Math.max(base.heartbeatInterval, Number.isFinite(scaling.maxHeartbeatInterval) ? scaling.maxHeartbeatInterval : 0);
  const interval = Math.max(base.heartbeatInterval, Math.min(wanted, ceiling));
  const stretch = interval - base.heartbeatInterval;
  const timings: GcTimings =
    stretch <= 0
      ? base
      : {
          ...base,
          heartbeatInterval: interval,
          detachAfter: base.detachAfter + stretch,
          watchdogTimeout: base.watchdogTimeout + stretch,
          ttl: Math.max(ceilTo(base.ttl + stretch, 1000), ceilTo(3 * interval, 1000)),
        };
  return {
    timings,
    fleetSize: size,
    stretch: Math.max(0, stretch),
    fleetRate: timings.heartbeatInterval > 0 ? (size * 1000) / timings.heartbeatInterval : 0,
    capped: wanted > interval,
    violations: checkTimings(timings),
  };
}

/** Where the fleet size an agent scales for came from. */
export type FleetSizeSource = 'config' | 'controller' | 'last-known' | 'kept' | 'none';

/** Inputs of {@link chooseFleetSize}. */
export interface FleetSizeInputs {
  /** The operator's `fleetSize` setting; 0: learn it. */
  readonly configured: number;
  /** Hosts the active controller counts (its published status), read at start; undefined: not known. */
  readonly learned?: number;
  /** The size this agent's previous run scaled for (persisted); undefined: none. */
  readonly persisted?: number;
  /**
   * A watchdog deadline of this boot survives from the previous run (persisted `lastAck`): the
   * cluster still holds that run's published timings for this host until it registers again.
   */
  readonly pendingDeadline: boolean;
}

/**
 * The fleet size to scale for, and why.
 *
 * - the candidate: the operator's setting, else the active controller's count, else the last size
 *   used, else none (timings as configured);
 * - while a watchdog deadline of this boot is pending, the size may only go DOWN from the one the
 *   previous run used (an unknown previous size counts as 0), whatever the candidate's source: the
 *   host record still publishes the previous run's timings, from which the controller computes its
 *   fence deadline, and {@link scaleTimings} is monotone in the fleet size, so a smaller (or equal)
 *   size gives a shorter (or equal) `watchdogTimeout` and this host's self-fence still ends before
 *   the cluster's window does. A larger size waits for a start without a pending deadline.
 */
export function chooseFleetSize(i: FleetSizeInputs): { readonly size: number; readonly source: FleetSizeSource } {
  const candidate =
    i.configured > 0
      ? { size: i.configured, source: 'config' as const }
      : i.learned !== undefined
        ? { size: i.learned, source: 'controller' as const }
        : i.persisted !== undefined
          ? { size: i.persisted, source: 'last-known' as const }
          : { size: 0, source: 'none' as const };
  if (!i.pendingDeadline) return candidate;
  const before = i.persisted ?? 0;
  return candidate.size <= before ? candidate : { size: before, source: 'kept' };
}

/** The refusal of unsafe scaled timings: the inequalities with the scaled numbers. */
export function describeScaledViolations(s: ScaledTimings): string {
  return `unsafe GC timings after scaling heartbeats for a fleet of ${s.fleetSize} hosts (heartbeatInterval + ${s.stretch} ms): ${describeViolations(s.violations)}`;
}
