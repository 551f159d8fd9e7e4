import { describe, expect, it } from 'vitest';
import { MachineClock } from '../../src/dev/sim/clock.js';
import { SimGuardianFeed, launchGuardian, type SimGuardianProcess } from '../../src/dev/sim/guardian.js';
import { Prng } from '../../src/dev/sim/prng.js';
import { Scheduler, SimProcess, Trace } from '../../src/dev/sim/scheduler.js';
import { Incarnations, SimMachine, type GuestBehaviour } from '../../src/dev/sim/substrate.js';
import { SimNetwork } from '../../src/dev/sim/transport.js';

const world = () => {
  const trace = new Trace(true);
  const sched = new Scheduler(trace);
  return { trace, sched };
};

describe('sim PRNG', () => {
  it('is a function of the seed; forks are independent of draws on the parent', () => {
    const a = new Prng(42);
    const b = new Prng(42);
    const xs = Array.from({ length: 100 }, () => a.u32());
    expect(Array.from({ length: 100 }, () => b.u32())).toEqual(xs);
    expect(new Prng(43).u32()).not.toBe(xs[0]);
    const f1 = new Prng(42).fork('net').u32();
    const p = new Prng(42);
    p.u32();
    expect(p.fork('net').u32()).toBe(f1);
    for (let i = 0; i < 1000; i++) {
      const r = a.range(3, 7);
      expect(r).toBeGreaterThanOrEqual(3);
      expect(r).toBeLessThanOrEqual(7);
    }
  });
});

describe('sim scheduler', () => {
  it('runs entries in (time, seq) order and settles every promise chain before the next entry', async () => {
    const { sched } = world();
    const log: string[] = [];
    sched.at(10, 'b', () => log.push('b'));
    sched.at(5, 'a', () => {
      log.push('a');
      void (async () => {
        for (let i = 0; i < 50; i++) await Promise.resolve();
        log.push('a-chain-done');
      })();
    });
    sched.at(10, 'c', () => log.push('c'));
    await sched.runUntil(100);
    expect(log).toEqual(['a', 'a-chain-done', 'b', 'c']);
    expect(sched.now).toBe(100);
  });

  it('never runs a dead process entry; parks a hung one and runs it, in order, on resume', async () => {
    const { sched } = world();
    const dead = new SimProcess('dead', sched);
    const hung = new SimProcess('hung', sched);
    const log: string[] = [];
    sched.at(1, 'x', () => log.push('dead-ran'), dead);
    sched.at(2, 'y', () => log.push('hung-1'), hung);
    sched.at(3, 'z', () => log.push('hung-2'), hung);
    dead.kill();
    hung.hang();
    await sched.runUntil(10);
    expect(log).toEqual([]);
    sched.at(20, 'resume', () => hung.resume());
    await sched.runUntil(30);
    expect(log).toEqual(['hung-1', 'hung-2']);
  });
});

describe('sim machine clocks', () => {
  it('keeps offset and rate: mono = sim * rate + origin; timers fire after ms of the machine clock', async () => {
    const { sched } = world();
    const m = new MachineClock(sched, 'h', 1.002, 5000, 1_700_000_000_000);
    const p = new SimProcess('p', sched);
    const c = m.forProcess(p);
    expect(c.nowMono()).toBe(5000);
    let firedMono = 0;
    c.setTimer(1002, () => (firedMono = c.nowMono()));
    await sched.runUntil(2000);
    expect(firedMono).toBeCloseTo(6002, 6);
    expect(sched.now).toBe(2000);
    expect(c.now() - c.nowMono()).toBe(1_700_000_000_000);
  });
});

describe('sim network (ModelTransport)', () => {
  const setup = () => {
    const { sched, trace } = world();
    const net = new SimNetwork(sched, new Prng(7));
    const proc = new SimProcess('agent', sched);
    net.register('h1-agent', proc, 'h1');
    let applied = 0;
    const apply = () => ++applied;
    return { sched, trace, net, proc, apply, applied: () => applied };
  };

  it('applies and answers a request within its deadline', async () => {
    const s = setup();
    const got: unknown[] = [];
    s.net.request('h1-agent', 'txn', s.apply, 1000).then((v) => got.push(v));
    await s.sched.runUntil(1000);
    expect(got).toEqual([1]);
  });

  it('a cut way to etcd never applies (TIMEOUT or UNAVAILABLE); a cut way back applies and times out (ambiguous)', async () => {
    const s = setup();
    s.net.cut('h1', 'to-etcd');
    const errs: string[] = [];
    for (let i = 0; i < 20; i++) s.net.request('h1-agent', 'txn', s.apply, 500).catch((e: { code: string }) => errs.push(e.code));
    await s.sched.runUntil(1000);
    expect(s.applied()).toBe(0);
    expect(errs).toHaveLength(20);
    expect(new Set(errs)).toEqual(new Set(['TIMEOUT', 'UNAVAILABLE']));
    s.net.heal('h1');
    s.net.cut('h1', 'from-etcd');
    const e2: string[] = [];
    s.net.request('h1-agent', 'txn', s.apply, 500).catch((e: { code: string }) => e2.push(e.code));
    await s.sched.runUntil(2000);
    expect(s.applied()).toBe(1);
    expect(e2).toEqual(['TIMEOUT']);
  });

  it('delivers watch notifications in order, holding them through a cut and delivering after the heal', async () => {
    const s = setup();
    const got: number[] = [];
    for (let i = 0; i < 5; i++) s.net.notify('h1-agent', 1, () => got.push(i));
    s.net.cut('h1', 'from-etcd');
    for (let i = 5; i < 10; i++) s.net.notify('h1-agent', 1, () => got.push(i));
    await s.sched.runUntil(1000);
    expect(got).toEqual([0, 1, 2, 3, 4]);
    s.net.heal('h1');
    for (let i = 10; i < 12; i++) s.net.notify('h1-agent', 1, () => got.push(i));
    await s.sched.runUntil(2000);
    expect(got).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  });

  it('never answers a crashed process', async () => {
    const s = setup();
    const got: unknown[] = [];
    s.net.request('h1-agent', 'txn', s.apply, 1000).then((v) => got.push(v), (e) => got.push(e));
    s.proc.kill();
    await s.sched.runUntil(2000);
    expect(s.applied()).toBe(1);
    expect(got).toEqual([]);
  });
});

describe('sim substrate', () => {
  const guests = (delay: number): GuestBehaviour => ({ powerOffDelay: () => delay, bootDelay: () => 10 });
  const spec = (uid: string, root: string) => ({ uid, hostId: 'h1', vcpu: 1, memoryMb: 96, kernelPath: '/k', kernelCmdline: '', stateDir: `${root}/vm/ns/a/${uid}`, disks: [], nics: [] });

  it('a graceful stop takes the guest its power-off delay; a slow guest is forced after the grace', async () => {
    const { sched } = world();
    const ledger = new Incarnations(sched);
    const clock = new MachineClock(sched, 'h1', 1, 0, 0);
    const m = new SimMachine('h1', sched, clock, ledger, guests(300), 'boot');
    const agent = new SimProcess('h1/agent#1', sched);
    const c = clock.forProcess(agent);
    m.agentClock = () => c;
    await m.vmm.start(spec('u1', m.root));
    const res: unknown[] = [];
    sched.at(0, 'stop', () => void m.vmm.stop('u1', '', { graceMs: 1000, killTimeoutMs: 100 }).then((r) => res.push(r)));
    await sched.runUntil(5000);
    expect(res).toEqual([{ method: 'graceful', tookMs: 300 }]);
    const slow = new SimMachine('h1', sched, clock, ledger, guests(Number.POSITIVE_INFINITY), 'boot');
    slow.agentClock = () => c;
    await slow.vmm.start(spec('u2', slow.root));
    sched.at(5000, 'stop', () => void slow.vmm.stop('u2', '', { graceMs: 1000, killTimeoutMs: 100 }).then((r) => res.push(r)));
    await sched.runUntil(10_000);
    expect(res[1]).toEqual({ method: 'forced-kill', tookMs: 1005 });
    expect(ledger.doubleRuns).toEqual([]);
  });

  it('the ledger reports a second incarnation of one VM key the moment it starts, on any host', async () => {
    const { sched } = world();
    const ledger = new Incarnations(sched);
    const clock = new MachineClock(sched, 'x', 1, 0, 0);
    const a = new SimMachine('h1', sched, clock, ledger, guests(10), 'b');
    const b = new SimMachine('h2', sched, clock, ledger, guests(10), 'b');
    await a.vmm.start(spec('u1', a.root));
    await b.vmm.start({ ...spec('u2', b.root), hostId: 'h2' });
    expect(ledger.doubleRuns).toHaveLength(1);
    expect(ledger.doubleRuns[0]!.key).toBe('ns/a');
  });

  it('the guardian kills every VM at the fed deadline while the agent is dead, and records the fire', async () => {
    const { sched } = world();
    const ledger = new Incarnations(sched);
    const clock = new MachineClock(sched, 'h1', 1, 100_000, 0);
    const m = new SimMachine('h1', sched, clock, ledger, guests(10), 'boot');
    const agent = new SimProcess('h1/agent#1', sched);
    const c = clock.forProcess(agent);
    let g: SimGuardianProcess | undefined;
    const feed = new SimGuardianFeed(m, c, () => (g = launchGuardian(sched, m, 1, 2000)), () => g);
    await feed.ensureRunning();
    await m.vmm.start(spec('u1', m.root));
    feed.feed(c.nowMono() + 3000, { epoch: 1, reason: 'attached' });
    agent.kill();
    await sched.runUntil(2900);
    expect(m.vmm.procs.size).toBe(1);
    await sched.runUntil(3300);
    expect(m.vmm.procs.size).toBe(0);
    expect(feed.fired()?.killed.map((k) => k.uid)).toEqual(['u1']);
    expect((await feed.ensureRunning()).started).toBe(false);
    g!.proc.kill();
    expect((await feed.ensureRunning()).started).toBe(true);
  });
});

describe('sim trace', () => {
  it('hashes every entry: the same schedule gives the same hash, a different one another', async () => {
    const run = async (extra: boolean) => {
      const { sched, trace } = world();
      for (let i = 0; i < 10; i++) sched.at(i, `e${i}`, () => undefined);
      if (extra) sched.at(5, 'x', () => undefined);
      await sched.runUntil(20);
      return trace.hash;
    };
    expect(await run(false)).toBe(await run(false));
    expect(await run(true)).not.toBe(await run(false));
  });
});


