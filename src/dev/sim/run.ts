/**
 * One seed, start to end: build the world, create the VMs, start agents and controllers, play the
 * nemesis schedule during the fault phase while checking the safety invariants after every step,
 * heal everything, run on for the heal phase, check liveness. Plus the shrinker (delta debugging
 * over the schedule) and the timeline of a run.
 *
 * Invariant: the result (violations, trace hash) is a function of the options alone — the same
 * seed and schedule replay the same trace, byte for byte.
 */
import { clusterEventsFrom, type TimelineInput } from '../../domain/timeline.js';
import { applyFault, describeFault, drawSchedule, healEverything, type FaultKind, type FaultOp } from './nemesis.js';
import { SIM_ORIGIN_WALL, SimWorld, type SimStores, type Violation } from './world.js';

/** Options of {@link runSeed}. */
export interface RunOptions {
  readonly seed: number;
  readonly hosts?: number;
  readonly vms?: number;
  /** The fault schedule; drawn from the seed when absent. */
  readonly schedule?: readonly FaultOp[];
  /** Fault kinds the drawn schedule uses (default: all). */
  readonly kinds?: readonly FaultKind[];
  /** Length of the fault phase (default 45 s of sim time). */
  readonly faultMs?: number;
  /** Length of the heal phase (default 60 s). */
  readonly healMs?: number;
  readonly keepTrace?: boolean;
  /** Stop at the first safety violation (faster; shrinking uses it). Default true. */
  readonly stopAtFirst?: boolean;
  /** The real stores over the model (stores.ts: `kvStores`). */
  readonly stores: SimStores;
  /** See `SimConfig.noGuardian` in world.ts (holes harness only). */
  readonly noGuardian?: boolean;
  /** See `SimConfig.noMachineId` in world.ts (shows the cloned-agent finding). */
  readonly noMachineId?: boolean;
  /** See `SimConfig.maxTxnOps` in world.ts. */
  readonly maxTxnOps?: number;
  /** See `SimConfig.noPeerCheck` in world.ts (agents without the peer check of issue 11). */
  readonly noPeerCheck?: boolean;
  /**
   * Called once with the world before anything runs (tests): it may queue its own entries on
   * `w.sched` to sample the world (e.g. which VM processes run before and after a fault). What it
   * queues must only read the world, or the run is no longer the seed's.
   */
  readonly onWorld?: (w: SimWorld) => void;
}

/** What one seed did. */
export interface SeedResult {
  readonly seed: number;
  readonly hosts: number;
  readonly vms: number;
  readonly schedule: readonly FaultOp[];
  readonly violations: readonly Violation[];
  readonly notes: readonly string[];
  readonly traceHash: string;
  readonly traceLines?: readonly string[];
  readonly steps: number;
  readonly simMs: number;
  readonly timeline: TimelineInput;
}

/** Faults that disturb the controllers (the fence-progress check does not count their time). */
const CONTROL_FAULTS: ReadonlySet<FaultKind> = new Set(['controller-partition', 'controller-crash', 'quorum-loss', 'leader-change', 'watch-break', 'etcd-outage']);

/** Runs one seed. */
export async function runSeed(o: RunOptions): Promise<SeedResult> {
  const hosts = o.hosts ?? 3;
  const vms = o.vms ?? 6;
  const faultMs = o.faultMs ?? 45_000;
  const healMs = o.healMs ?? 60_000;
  const w = new SimWorld({ seed: o.seed, hosts, vms, keepTrace: o.keepTrace ?? false, ...(o.noGuardian ? { noGuardian: true } : {}), ...(o.noMachineId ? { noMachineId: true } : {}), ...(o.maxTxnOps !== undefined ? { maxTxnOps: o.maxTxnOps } : {}), ...(o.noPeerCheck ? { noPeerCheck: true } : {}) }, o.stores);
  const schedule = o.schedule ?? drawSchedule(w.rng.fork('nemesis'), hosts, faultMs, o.kinds);
  try {
    o.onWorld?.(w);
    w.createVms(vms);
    for (const h of w.hosts.keys()) w.startAgent(h);
    w.startController(0);
    w.startController(1);
    schedule.forEach((op, i) => applyFault(w, op, i));
    w.controlFaults = schedule.filter((op) => CONTROL_FAULTS.has(op.kind)).map((op) => ({ from: op.at, to: op.at + op.durationMs }));
    const stopAtFirst = o.stopAtFirst ?? true;
    const check = () => {
      w.checkLedger();
      w.checkFenceProgress();
      return stopAtFirst && w.violations.length > 0;
    };
    await w.sched.runUntil(faultMs, check);
    if (!(stopAtFirst && w.violations.length > 0)) {
      healEverything(w);
      await w.sched.runUntil(faultMs + healMs, check);
      if (w.violations.length === 0 || !stopAtFirst) w.checkLiveness();
    }
    return {
      seed: o.seed, hosts, vms, schedule, violations: [...w.violations], notes: [...w.notes], traceHash: w.trace.hash,
      ...(w.trace.lines ? { traceLines: w.trace.lines } : {}),
      steps: w.sched.steps, simMs: w.sched.now, timeline: timelineOf(w, schedule),
    };
  } finally {
    w.close();
  }
}

/** The run as a `tether timeline` input: cluster events from the model, host lanes, faults, violations. */
function timelineOf(w: SimWorld, schedule: readonly FaultOp[]): TimelineInput {
  const events = w.model.list(`${w.stores.prefix}events/`).map((e) => {
    try {
      return JSON.parse(e.value) as unknown;
    } catch {
      return undefined;
    }
  });
  const hosts = [...w.hosts.values()].map((s) => {
    const acks = s.acks.filter((a, i) => i === s.acks.length - 1 || Math.floor(a / 5000) !== Math.floor(s.acks[i + 1]! / 5000));
    const ev = [...s.events, ...acks.map((a) => ({ at: SIM_ORIGIN_WALL + a, kind: 'heartbeat-acked' as const }))].sort((a, b) => a.at - b.at);
    return { hostId: s.hostId, events: ev };
  });
  return {
    source: 'sim',
    title: `sim seed ${w.cfg.seed}`,
    origin: SIM_ORIGIN_WALL,
    cluster: clusterEventsFrom(events.filter((e) => e !== undefined)),
    hosts,
    faults: schedule.map((op) => ({ at: SIM_ORIGIN_WALL + op.at, ...(op.durationMs > 0 ? { until: SIM_ORIGIN_WALL + op.at + op.durationMs } : {}), kind: op.kind, target: op.target })),
    violations: w.violations.map((v) => ({ at: SIM_ORIGIN_WALL + v.at, invariant: v.invariant, detail: v.detail })),
  };
}

/**
 * Delta debugging (ddmin) over a failing schedule: the smallest subset (1-minimal within
 * `maxRuns` runs) that still produces a violation of the same invariant.
 */
export async function shrink(o: RunOptions, failing: SeedResult, maxRuns = 40): Promise<{ schedule: FaultOp[]; runs: number; result: SeedResult }> {
  const want = failing.violations[0]!.invariant;
  let best = [...failing.schedule];
  let bestResult = failing;
  let runs = 0;
  const fails = async (s: FaultOp[]) => {
    runs++;
    const r = await runSeed({ ...o, schedule: s, keepTrace: false });
    if (r.violations.some((v) => v.invariant === want)) {
      bestResult = r;
      return true;
    }
    return false;
  };
  let n = 2;
  while (best.length >= 1 && runs < maxRuns) {
    const size = Math.ceil(best.length / n);
    let reduced = false;
    for (let i = 0; i < best.length && runs < maxRuns; i += size) {
      const complement = [...best.slice(0, i), ...best.slice(i + size)];
      if (await fails(complement)) {
        best = complement;
        n = Math.max(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (n >= best.length) break;
      n = Math.min(n * 2, best.length);
    }
  }
  return { schedule: best, runs, result: bestResult };
}

/** The report lines of a failing seed: violations, shrunk schedule, the last trace lines. */
export function describeFailure(r: SeedResult, shrunk?: readonly FaultOp[]): string[] {
  const out = [`seed ${r.seed} (hosts ${r.hosts}, vms ${r.vms}) FAILED at ${(r.violations[0]!.at / 1000).toFixed(3)}s:`];
  for (const v of r.violations.slice(0, 10)) out.push(`  ${v.invariant}: ${v.detail}`);
  out.push(`  schedule (${r.schedule.length} faults):`);
  for (const op of r.schedule) out.push(`    ${describeFault(op)}`);
  if (shrunk) {
    out.push(`  shrunk schedule (${shrunk.length} faults, still fails):`);
    for (const op of shrunk) out.push(`    ${describeFault(op)}`);
  }
  return out;
}

/** Result of {@link hunt}. */
export interface HuntResult {
  /** The first seed with a violation, if any within the budget. */
  readonly firstFailingSeed?: number;
  /** Seeds run (including the failing one). */
  readonly seedsTried: number;
  readonly violation?: Violation;
  readonly schedule?: readonly FaultOp[];
}

/** Runs seeds from `from` until the first violation or `maxSeeds` seeds (the holes harness). */
export async function hunt(o: Omit<RunOptions, 'seed'> & { readonly from: number; readonly maxSeeds: number }): Promise<HuntResult> {
  for (let i = 0; i < o.maxSeeds; i++) {
    const r = await runSeed({ ...o, seed: o.from + i });
    if (r.violations.length > 0) return { firstFailingSeed: o.from + i, seedsTried: i + 1, violation: r.violations[0]!, schedule: r.schedule };
  }
  return { seedsTried: o.maxSeeds };
}
