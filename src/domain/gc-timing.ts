/**
 * Timing of detachment, watchdog and fence, and the safety rules that relate the host's
 * self-fence to the cluster's fence window. All values in milliseconds.
 *
 * Host deadlines are measured from `lastAck`, the send time of the last keepalive the cluster
 * acknowledged, on the host's monotonic clock. The lease cannot expire before `lastAck + ttl`.
 */
export interface GcTimings {
  /** etcd lease TTL; a whole number of seconds (etcd's unit). */
  readonly ttl: number;
  /** Time between keepalives; also each keepalive's deadline. */
  readonly heartbeatInterval: number;
  /** No acknowledged heartbeat for this long: the host is detached and the watchdog armed. */
  readonly detachAfter: number;
  /** From lastAck to the start of the self-fence. */
  readonly watchdogTimeout: number;
  /** Time each guest gets to power off after the ACPI button. */
  readonly stopGrace: number;
  /** Time the forced stop (QMP quit, SIGKILL) may take. */
  readonly killTimeout: number;
  /** Cluster side: from observed lease expiry to treating the host's VMs as gone. */
  readonly fenceWindow: number;
  /** Allowance for clock-rate differences between host and controller over the window. */
  readonly clockDriftMargin: number;
  /** Longest etcd leader election to ride out without fencing (measured here: ~1.8 s). */
  readonly electionTolerance: number;
}

/**
 * Defaults: an etcd leader election (~1-2 s) never fences (watchdog 8 s, tolerance 4 s), and a
 * partition stops every VM within 8 + 4 + 2 = 14 s of the last acknowledged heartbeat (<= 15 s).
 * Cluster: 8 + 4 + 2 + 1 = 15 <= 6 + 10 = 16.
 */
export const DEFAULT_TIMINGS: GcTimings = {
  ttl: 6000,
  heartbeatInterval: 1000,
  detachAfter: 3000,
  watchdogTimeout: 8000,
  stopGrace: 4000,
  killTimeout: 2000,
  fenceWindow: 10_000,
  clockDriftMargin: 1000,
  electionTolerance: 4000,
};

/** A violated rule: its inequality, with the numbers. */
export interface TimingViolation {
  readonly rule: string;
  readonly inequality: string;
  readonly detail: string;
}

/** Time from lastAck by which every VM of a detached host is gone: watchdog + stopGrace + killTimeout. */
export function selfFenceBound(t: GcTimings): number {
  return t.watchdogTimeout + t.stopGrace + t.killTimeout;
}

/** The cluster's earliest "VMs gone" time, from lastAck: ttl + fenceWindow. */
export function clusterFenceBound(t: GcTimings): number {
  return t.ttl + t.fenceWindow;
}

/**
 * Every rule the timings break, empty when safe. The safety inequality
 * `watchdogTimeout + stopGrace + killTimeout + clockDriftMargin <= ttl + fenceWindow` is the one
 * that prevents a VM from running twice; the others keep blips and elections from fencing.
 */
export function checkTimings(t: GcTimings): TimingViolation[] {
  const v: TimingViolation[] = [];
  const rule = (ok: boolean, name: string, inequality: string, detail: string) => {
    if (!ok) v.push({ rule: name, inequality, detail });
  };
  for (const [k, val] of Object.entries(t)) {
    rule(Number.isFinite(val) && val >= 0, 'non-negative', `${k} >= 0`, `${k} = ${val}`);
  }
  rule(t.ttl >= 1000 && t.ttl % 1000 === 0, 'ttl-seconds', 'ttl is a whole number of seconds >= 1s', `ttl = ${t.ttl}ms`);
  rule(t.heartbeatInterval > 0 && t.heartbeatInterval * 3 <= t.ttl, 'heartbeat', 'heartbeatInterval * 3 <= ttl', `${t.heartbeatInterval} * 3 = ${t.heartbeatInterval * 3} > ${t.ttl}`);
  rule(t.heartbeatInterval < t.detachAfter, 'detach-after-heartbeat', 'heartbeatInterval < detachAfter', `${t.heartbeatInterval} >= ${t.detachAfter}`);
  rule(t.detachAfter <= t.ttl, 'detach-within-ttl', 'detachAfter <= ttl', `${t.detachAfter} > ${t.ttl}`);
  rule(t.detachAfter <= t.watchdogTimeout, 'watchdog-after-detach', 'detachAfter <= watchdogTimeout', `${t.detachAfter} > ${t.watchdogTimeout}`);
  rule(
    t.watchdogTimeout >= t.electionTolerance + t.heartbeatInterval,
    'election-safe',
    'watchdogTimeout >= electionTolerance + heartbeatInterval',
    `${t.watchdogTimeout} < ${t.electionTolerance} + ${t.heartbeatInterval} = ${t.electionTolerance + t.heartbeatInterval}`,
  );
  rule(t.electionTolerance >= 2000, 'election-tolerance', 'electionTolerance >= 2000 (an etcd election takes ~1-2 s)', `electionTolerance = ${t.electionTolerance}`);
  const lhs = selfFenceBound(t) + t.clockDriftMargin;
  const rhs = clusterFenceBound(t);
  rule(
    lhs <= rhs,
    'safety',
    'watchdogTimeout + stopGrace + killTimeout + clockDriftMargin <= ttl + fenceWindow',
    `${t.watchdogTimeout} + ${t.stopGrace} + ${t.killTimeout} + ${t.clockDriftMargin} = ${lhs} > ${t.ttl} + ${t.fenceWindow} = ${rhs}`,
  );
  return v;
}

/** One message listing every violation with its inequality and numbers. */
export function describeViolations(v: readonly TimingViolation[]): string {
  return v.map((x) => `${x.inequality} is violated (${x.detail})`).join('; ');
}
