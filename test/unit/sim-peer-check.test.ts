/**
 * The peer check in the simulator (issue 11): a full etcd outage longer than the watchdog is not a
 * host failure. In a world whose only fault is one etcd outage (every member down or without quorum,
 * 10 to 20 s, longer than the 8 s watchdog; 60 s of fault phase), no VM stops — the very same process (uid, host, pid)
 * runs before the outage and at the end of the run — and every host is attached again (agent and
 * record) 10 s after etcd is back, before the simulator's heal could help. Without the peer check
 * the same outage stops VMs (the test can fail). Liveness, not an invariant of the random seeds:
 * there the outage mixes with other faults that legitimately fence hosts.
 */
import { describe, expect, it } from 'vitest';
import type { FaultOp } from '../../src/dev/sim/nemesis.js';
import { runSeed } from '../../src/dev/sim/run.js';
import { kvStores } from '../../src/dev/sim/stores.js';
import type { SimWorld } from '../../src/dev/sim/world.js';

const SEEDS = Number(process.env.SIM_OUTAGE_SEEDS ?? 20);

interface OutageRun {
  readonly violations: readonly string[];
  /** VM keys whose process changed (or vanished) across the outage. */
  readonly restarted: readonly string[];
  /** Hosts not attached (agent phase / record state) 10 s after the outage ended. */
  readonly notAttached: readonly string[];
  readonly vmsBefore: number;
}

/** Fault phase of these runs: long enough for the check 10 s after the latest outage's end. */
const FAULT_MS = 60_000;

/**
 * One seed with a single etcd outage: at 15-24 s (every VM placed and running: a controller may wait
 * up to a fence window after it takes over before it places), for 10-20 s (derived from the seed).
 */
async function outage(seed: number, noPeerCheck = false): Promise<OutageRun> {
  const at = 15_000 + ((seed * 7919) % 9000);
  const durationMs = 10_000 + ((seed * 104_729) % 10_001);
  const schedule: FaultOp[] = [{ at, kind: 'etcd-outage', target: 'etcd', durationMs }];
  const procs = (w: SimWorld) => new Map([...w.ledger.running()].map(([k, ps]) => [k, ps.map((p) => `${p.uid}@${p.hostId}#${p.pid}`).sort().join(',')]));
  let before = new Map<string, string>();
  let after = new Map<string, string>();
  const notAttached: string[] = [];
  const r = await runSeed({
    seed,
    stores: kvStores,
    schedule,
    stopAtFirst: false,
    faultMs: FAULT_MS,
    ...(noPeerCheck ? { noPeerCheck: true } : {}),
    onWorld: (w) => {
      w.sched.at(at - 1, 'test: VM processes before the outage', () => (before = procs(w)));
      w.sched.at(at + durationMs + 10_000, 'test: hosts attached after the outage', () => {
        for (const s of w.hosts.values()) {
          const rec = w.recordOf(s.hostId);
          if (s.agent?.gc.phase !== 'attached' || rec?.state !== 'attached') notAttached.push(`${s.hostId} (agent ${s.agent?.gc.phase ?? 'none'}, record ${rec?.state ?? 'none'})`);
        }
      });
      w.sched.at(FAULT_MS + 59_999, 'test: VM processes at the end', () => (after = procs(w)));
    },
  });
  const restarted = [...before].filter(([k, p]) => after.get(k) !== p).map(([k, p]) => `${k}: ${p} -> ${after.get(k) ?? 'none'}`);
  return { violations: r.violations.map((v) => `${v.invariant}: ${v.detail}`), restarted, notAttached, vmsBefore: before.size };
}

describe('simulator: a full etcd outage longer than the watchdog (issue 11)', () => {
  // Found failing here (docs/sim.md, "Fixed finding: the re-registration race after an outage"): 17
  // to 20 of 30 seeds lost VMs until a positive verdict kept protecting while a negative one came in.
  it(`${SEEDS} seeds: no VM stops, every host attached again, no violation`, async () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = await outage(seed);
      expect(r.vmsBefore).toBe(6);
      if (r.violations.length + r.restarted.length + r.notAttached.length > 0) {
        failures.push(`seed ${seed}: ${[...r.violations, ...r.restarted.map((x) => `restarted ${x}`), ...r.notAttached.map((x) => `not attached ${x}`)].join('; ')}`);
      }
    }
    expect(failures).toEqual([]);
  }, 600_000);

  // SAFETY FINDING (docs/sim.md, "Finding: a witness the controller already fenced"): host-2 is cut
  // at 15.6 s, self-fences, and the controller fences it at 31.03 s (1 of 3 detached: no freeze), which
  // takes it out of the controller's pool. host-3, cut at 29 s (so even a real peer list still names
  // host-2), counts host-2 — detached, silent, its lease long gone — as its witness (2 of 3 > 55 %) and
  // holds its fence back; the controller sees 1 of 2 detached, fences host-3 at 44.0 s and runs vm-3
  // and vm-6 on host-1 while host-3 still runs them. Fixed by both halves: a peer that fenced itself is
  // no witness (peer-check.ts), and a host that left the pool counts as detached for the leave grace
  // (C7, controller/freeze.ts).
  it('a peer the controller fenced before the freeze is no witness: no double run (seed 1, two partitions)', async () => {
    const schedule: FaultOp[] = [
      { at: 15_602, kind: 'partition', target: 'host-2', durationMs: 35_052 },
      { at: 29_000, kind: 'partition', target: 'host-3', durationMs: 36_274 },
    ];
    const r = await runSeed({ seed: 1, stores: kvStores, schedule });
    expect(r.violations.map((v) => `${v.invariant}: ${v.detail}`)).toEqual([]);
  }, 60_000);

  it('without the peer check the same outage stops VMs (the check above can fail)', async () => {
    const r = await outage(1, true);
    expect(r.violations).toEqual([]);
    expect(r.restarted.length).toBeGreaterThan(0);
  }, 60_000);
});
