import { describe, expect, it } from 'vitest';
import { incarnationOf } from '../../src/dev/chaos/double-run.js';
import { CHAOS_FAULT_KINDS, faultGroup, planFaults, Rng, type PlanOptions } from '../../src/dev/chaos/nemesis.js';

const opts = (seed: number, runMs = 10 * 60_000): PlanOptions => ({ seed, runMs, hostIds: ['h-a', 'h-b', 'h-c'], controllers: 2, etcdMembers: 3 });

describe('chaos nemesis plan', () => {
  it('same seed, same plan; another seed, another plan', () => {
    expect(planFaults(opts(42))).toEqual(planFaults(opts(42)));
    expect(planFaults(opts(42))).not.toEqual(planFaults(opts(43)));
  });

  it('keeps its invariants over many seeds: sorted, ends by runMs, at most 2 at once, one per host / etcd / controller group', () => {
    for (let seed = 0; seed < 300; seed++) {
      const o = opts(seed, 90_000 + seed * 1000);
      const plan = planFaults(o);
      expect(plan.length).toBeGreaterThan(0);
      for (const [i, f] of plan.entries()) {
        if (i > 0) expect(f.atMs).toBeGreaterThanOrEqual(plan[i - 1]!.atMs);
        expect(f.atMs).toBeGreaterThanOrEqual(5_000);
        expect(f.atMs + f.durationMs).toBeLessThanOrEqual(o.runMs);
        const active = plan.filter((g) => g !== f && g.atMs <= f.atMs && g.atMs + g.durationMs > f.atMs);
        expect(active.length).toBeLessThan(2);
        for (const g of active) expect(faultGroup(g.kind, g.target)).not.toBe(faultGroup(f.kind, f.target));
      }
    }
  });

  it('draws every fault kind, on every host, over a long run', () => {
    const plans = [1, 2, 3, 4, 5].flatMap((s) => planFaults(opts(s, 30 * 60_000)));
    expect(new Set(plans.map((f) => f.kind))).toEqual(new Set(CHAOS_FAULT_KINDS));
    expect(new Set(plans.filter((f) => f.kind === 'partition').map((f) => f.target))).toEqual(new Set(['h-a', 'h-b', 'h-c']));
    // Both blips (the cluster must not fence) and long cuts (it must, safely).
    const parts = plans.filter((f) => f.kind === 'partition');
    expect(parts.some((f) => f.durationMs <= 4_000)).toBe(true);
    expect(parts.some((f) => f.durationMs >= 14_000)).toBe(true);
  });

  it('Rng stays in range', () => {
    const r = new Rng(7);
    for (let i = 0; i < 1000; i++) {
      const x = r.int(3, 5);
      expect(x).toBeGreaterThanOrEqual(3);
      expect(x).toBeLessThanOrEqual(5);
      expect(r.next()).toBeLessThan(1);
    }
  });
});

describe('double-run sampler: reading a QEMU command line', () => {
  const uid = 'a'.repeat(32);
  const argv = (name: string, pidfile: string) => ['/usr/bin/qemu-system-x86_64', '-name', name, '-pidfile', pidfile, '-daemonize'];

  it('names the VM key, the incarnation and the host', () => {
    expect(incarnationOf(argv(`tether:h-a:${uid},debug-threads=on`, `/s/hosts/h-a/vm/chaos/v1/${uid}/qemu.pid`))).toEqual({ key: 'chaos/v1', uid, hostId: 'h-a' });
  });

  it('ignores what is not a marked Tether QEMU, or whose pid file names another uid', () => {
    expect(incarnationOf(['/usr/bin/node', '-name', `tether:h-a:${uid}`])).toBeUndefined();
    expect(incarnationOf(argv(`tether:h-a:${uid}`, `/s/vm/chaos/v1/${'b'.repeat(32)}/qemu.pid`))).toBeUndefined();
    expect(incarnationOf(argv('other', `/s/vm/chaos/v1/${uid}/qemu.pid`))).toBeUndefined();
  });
});
