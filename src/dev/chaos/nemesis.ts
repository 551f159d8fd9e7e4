/**
 * The chaos nemesis's plan: which fault, on what, when and for how long, drawn from a seed. Pure
 * (no clock, no Node): the same seed and options give the same plan, so a run can be repeated with
 * the same schedule (the real processes' timing still varies from run to run).
 *
 * Invariants of a plan: faults are sorted by `atMs`; every fault ends (`atMs + durationMs`) by
 * `runMs`; at most `maxConcurrent` faults are active at any instant; at most one fault per target
 * at a time (a host's agent, guardian and proxies count as one target, so a host is never both
 * partitioned and SIGKILLed by two faults at once); at most one etcd fault at a time (the cluster keeps
 * a quorum: 2 of 3 members, so chaos tests Tether, not an etcd outage); at most one controller fault
 * at a time (one replica stays).
 */

/** Every kind of fault the chaos nemesis applies. */
export const CHAOS_FAULT_KINDS = [
  'partition',
  'partition-oneway',
  'agent-pause',
  'agent-kill',
  'guardian-pause',
  'guardian-kill',
  'controller-pause',
  'controller-kill',
  'etcd-leader-kill',
  'etcd-member-pause',
] as const;

/** One of {@link CHAOS_FAULT_KINDS}. */
export type ChaosFaultKind = (typeof CHAOS_FAULT_KINDS)[number];

/** A planned fault. `target`: a host id, `controller-<n>` (or `leader`), `etcd-<i>` (or `leader`). */
export interface PlannedFault {
  readonly atMs: number;
  readonly kind: ChaosFaultKind;
  readonly target: string;
  /** How long until it is healed (resumed, reconnected, restarted). */
  readonly durationMs: number;
}

/** Options of {@link planFaults}. */
export interface PlanOptions {
  readonly seed: number;
  /** Length of the fault phase in ms; no fault is active after it. */
  readonly runMs: number;
  readonly hostIds: readonly string[];
  readonly controllers: number;
  readonly etcdMembers: number;
  /** First fault not before this (lets the cluster settle). Default 5 000. */
  readonly warmupMs?: number;
  /** Default 2. */
  readonly maxConcurrent?: number;
}

/** A small seeded PRNG (mulberry32): deterministic, uniform enough for drawing faults. */
export class Rng {
  private s: number;

  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** One element of a non-empty array. */
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
}

/** Relative weights of the kinds (partitions and agent faults matter most for Tether's promise). */
const WEIGHTS: Readonly<Record<ChaosFaultKind, number>> = {
  partition: 5,
  'partition-oneway': 2,
  'agent-pause': 3,
  'agent-kill': 3,
  'guardian-pause': 1,
  'guardian-kill': 2,
  'controller-pause': 1,
  'controller-kill': 2,
  'etcd-leader-kill': 2,
  'etcd-member-pause': 2,
};

/** Duration ranges in ms: short blips (the cluster must NOT fence) and long cuts (it must, safely). */
function duration(rng: Rng, kind: ChaosFaultKind): number {
  switch (kind) {
    case 'partition':
      return rng.next() < 0.4 ? rng.int(1_000, 4_000) : rng.int(14_000, 32_000);
    case 'partition-oneway':
      return rng.next() < 0.3 ? rng.int(1_000, 4_000) : rng.int(12_000, 28_000);
    case 'agent-pause':
      return rng.next() < 0.5 ? rng.int(2_000, 6_000) : rng.int(12_000, 24_000);
    case 'agent-kill':
      return rng.int(1_000, 10_000);
    case 'guardian-pause':
      return rng.int(3_000, 15_000);
    case 'guardian-kill':
      return 0; // the agent restarts its guardian; nothing to heal
    case 'controller-pause':
      return rng.int(2_000, 10_000);
    case 'controller-kill':
      return rng.int(1_000, 8_000);
    case 'etcd-leader-kill':
      return rng.int(2_000, 8_000);
    case 'etcd-member-pause':
      return rng.int(2_000, 8_000);
  }
}

/** The group a fault's target belongs to (see the invariants). */
export function faultGroup(kind: ChaosFaultKind, target: string): string {
  if (kind.startsWith('etcd-')) return 'etcd';
  if (kind.startsWith('controller-')) return 'controller';
  return `host:${target}`;
}

/** Draws the plan; see the module comment for its invariants. */
export function planFaults(o: PlanOptions): PlannedFault[] {
  const rng = new Rng(o.seed);
  const maxConcurrent = o.maxConcurrent ?? 2;
  const out: PlannedFault[] = [];
  const kinds = CHAOS_FAULT_KINDS.filter((k) => (k.startsWith('controller-') ? o.controllers > 0 : k.startsWith('etcd-') ? o.etcdMembers >= 3 : o.hostIds.length > 0));
  const total = kinds.reduce((n, k) => n + WEIGHTS[k], 0);
  let t = o.warmupMs ?? 5_000;
  for (let guard = 0; guard < 10_000; guard++) {
    t += rng.int(2_000, 10_000);
    if (t >= o.runMs - 1_000) break;
    const active = out.filter((f) => f.atMs <= t && f.atMs + f.durationMs > t);
    if (active.length >= maxConcurrent) {
      t = Math.min(...active.map((f) => f.atMs + f.durationMs));
      continue;
    }
    let r = rng.next() * total;
    let kind: ChaosFaultKind = kinds[0]!;
    for (const k of kinds) {
      r -= WEIGHTS[k];
      if (r < 0) {
        kind = k;
        break;
      }
    }
    const candidates = kind.startsWith('etcd-')
      ? kind === 'etcd-leader-kill' ? ['leader'] : Array.from({ length: o.etcdMembers }, (_, i) => `etcd-${i}`)
      : kind.startsWith('controller-')
        ? ['leader', ...Array.from({ length: o.controllers }, (_, i) => `controller-${i + 1}`)]
        : [...o.hostIds];
    const free = candidates.filter((c) => !active.some((f) => faultGroup(f.kind, f.target) === faultGroup(kind, c)));
    if (free.length === 0) continue;
    const target = rng.pick(free);
    const durationMs = Math.min(duration(rng, kind), Math.max(0, o.runMs - t));
    out.push({ atMs: t, kind, target, durationMs });
  }
  return out;
}
