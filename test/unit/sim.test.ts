/**
 * The deterministic simulator (src/dev/sim) in CI: a bounded number of seeds of the whole protocol
 * (real agents, controllers and stores over the etcd model) under the nemesis, with every safety
 * invariant checked after every step and liveness after the heal; and same seed, same trace.
 * More seeds: `npm run sim -- --seeds N` (docs/sim.md). Set SIM_SEEDS to change the CI budget.
 */
import { describe, expect, it } from 'vitest';
import { FAULT_KINDS, type FaultKind, type FaultOp } from '../../src/dev/sim/nemesis.js';
import { runSeed } from '../../src/dev/sim/run.js';
import { kvStores } from '../../src/dev/sim/stores.js';

const SEEDS = Number(process.env.SIM_SEEDS ?? 200);
/**
 * Every fault kind but `watch-break`: with every watch stream broken once, seed 1009's VMs of a
 * host that rejoined `ready` are never rescheduled (reported to the lead; `npm run sim -- --seed
 * 1009` with all kinds replays it). Put it back once the controller re-lists correctly.
 */
const CI_KINDS = (Object.keys(FAULT_KINDS) as FaultKind[]).filter((k) => k !== 'watch-break');

describe('simulator', () => {
  it('same seed, same history: two runs of one seed give byte-identical traces', async () => {
    const a = await runSeed({ seed: 7, stores: kvStores, keepTrace: true, stopAtFirst: false });
    const b = await runSeed({ seed: 7, stores: kvStores, keepTrace: true, stopAtFirst: false });
    expect(a.schedule.length).toBeGreaterThan(0);
    expect(a.traceLines!.length).toBeGreaterThan(1000);
    expect(b.traceLines).toEqual(a.traceLines);
    expect(b.traceHash).toBe(a.traceHash);
    const c = await runSeed({ seed: 8, stores: kvStores });
    expect(c.traceHash).not.toBe(a.traceHash);
  }, 60_000);

  it('a replayed schedule gives the same trace as the seed that drew it', async () => {
    const a = await runSeed({ seed: 11, stores: kvStores });
    const b = await runSeed({ seed: 11, stores: kvStores, schedule: a.schedule });
    expect(b.traceHash).toBe(a.traceHash);
  }, 60_000);

  it(`${SEEDS} seeds under the nemesis: no double run, no write from a fenced epoch, no false fence; everything placed, attached and clean after the heal`, async () => {
    const failures: string[] = [];
    let steps = 0;
    for (let seed = 1000; seed < 1000 + SEEDS; seed++) {
      const r = await runSeed({ seed, stores: kvStores, kinds: CI_KINDS });
      steps += r.steps;
      if (r.violations.length > 0) failures.push(`seed ${seed}: ${r.violations.map((v) => `${v.invariant}: ${v.detail}`).join('; ')} (replay: npm run sim -- --seed ${seed})`);
    }
    expect(steps).toBeGreaterThan(SEEDS * 1000);
    expect(failures).toEqual([]);
  }, 600_000);

  // Finding (reported to the lead): with every watch stream broken once (an etcd member restart)
  // during these faults, host-3 rejoins `ready` at epoch 2 but its six VMs, still recorded `running`
  // on host-3 at epoch 1, are never rescheduled. Expected to fail until the controller handles it:
  // then vitest reports this `it.fails` as failing, and it becomes a plain `it`.
  it.fails('after a broken watch stream, the VMs of a host that rejoined ready are rescheduled (seed 1009, shrunk schedule)', async () => {
    const schedule: FaultOp[] = [
      { at: 21792, kind: 'agent-crash', target: 'host-2', durationMs: 32221 },
      { at: 22261, kind: 'partition-to-etcd', target: 'host-3', durationMs: 20843 },
      { at: 22262, kind: 'watch-break', target: 'etcd', durationMs: 0 },
      { at: 26067, kind: 'controller-crash', target: 'ctl-1', durationMs: 10269 },
      { at: 26207, kind: 'early-revoke', target: 'host-2', durationMs: 0 },
      { at: 27678, kind: 'partition', target: 'host-1', durationMs: 27362 },
    ];
    const r = await runSeed({ seed: 1009, stores: kvStores, schedule });
    expect(r.violations).toEqual([]);
  }, 60_000);
});
