/**
 * Issue 9, controller at fleet size: the VM cache (list at one revision, then watch) stays equal to
 * the store across watch errors, compaction, takeover and ambiguous commits; placements never
 * overcommit a host under concurrent creates (the capacity guard); fences run concurrently but
 * bounded; the eviction rate limit; the capacity index picks exactly what `placeVms` picks.
 * On the etcd model (src/dev/etcd-model) through the production stores, and on the pure core.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { clusterCreate } from '../../src/cli/cluster-vms.js';
import type { ClusterChange } from '../../src/domain/cluster-change.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { createVmChange } from '../../src/domain/reschedule-changes.js';
import type { ControllerState } from '../../src/domain/controller/types.js';
import { TetherError } from '../../src/domain/errors.js';
import { CapacityIndex } from '../../src/domain/placement-index.js';
import { placeVms, type SchedulableHost } from '../../src/domain/placement.js';
import type { Controller } from '../../src/controller/controller.js';
import type { Change, CommitResult } from '../../src/ports/controller-store.js';
import { Sim, spec, T } from '../support/controller-sim.js';
import { calls, Driver, entry, ok, ops, timersSet, vm } from '../support/controller-step.js';
import { ModelControllerStore } from '../support/model-cluster.js';

let sim: Sim | undefined;
afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

const stateOf = (c: Controller): ControllerState => (c as unknown as { state: ControllerState }).state;

/** The controller's VM cache and the store, as `key@revision phase host` lines. */
async function cacheVsStore(s: Sim, c: Controller): Promise<{ cache: string[]; store: string[] }> {
  const line = (v: { key: string; revision: string; record: ClusterVmRecord }) => `${v.key}@${v.revision} ${v.record.phase} ${v.record.hostId ?? '-'}`;
  const cache = [...stateOf(c).vms.values()].map(line).sort();
  const store = (await s.store.listVms(1000)).map(line).sort();
  return { cache, store };
}

/** Fails (TIMEOUT, after applying) every commit whose events include `kind` while `on`: an ambiguous commit. */
class AmbiguousStore extends ModelControllerStore {
  on = false;
  kind = 'vm-rescheduled';
  hits = 0;
  /** Listings of `vms/` by the controller (`scanVms`: the cache's list; the test reads through `listVms`). */
  scans = 0;
  private testRead = false;
  override scanVms(deadlineMs: number): ReturnType<ModelControllerStore['scanVms']> {
    if (!this.testRead) this.scans++;
    return super.scanVms(deadlineMs);
  }
  override async listVms(deadlineMs: number): ReturnType<ModelControllerStore['listVms']> {
    this.testRead = true;
    try {
      return await super.listVms(deadlineMs);
    } finally {
      this.testRead = false;
    }
  }
  override async commit(change: Change, deadlineMs: number): Promise<CommitResult> {
    const res = await super.commit(change, deadlineMs);
    if (this.on && (change.events ?? []).some((e) => e.kind === this.kind)) {
      this.hits++;
      throw new TetherError('TIMEOUT', 'simulated lost answer (the txn was applied)', { retryable: true });
    }
    return res;
  }
}

describe('controller VM cache (list at one revision, then watch)', () => {
  it('equals the store after changes, watch errors with compaction, takeover and ambiguous commits; no VM listing per fence or sweep', async () => {
    let store: AmbiguousStore | undefined;
    sim = new Sim({}, (clock, opts) => (store = new AmbiguousStore(clock, '/tether/', opts)));
    const s = sim;
    for (const h of ['a', 'b', 'c', 'd']) s.register(h, { capacity: { vcpu: 64, memoryMb: 64 * 1024 } });
    for (let i = 0; i < 12; i++) s.putVm(`v${i}`, { hostId: ['a', 'b', 'c'][i % 3], hostEpoch: 1 });
    const c1 = s.controller();
    await s.settleTerm();
    let r = await cacheVsStore(s, c1);
    expect(r.cache).toHaveLength(12);
    expect(r.cache).toEqual(r.store);

    // changes through the watch
    s.putVm('v0', { hostId: 'a', hostEpoch: 1, phase: 'failed' });
    s.store.deleteRaw('vms/ns/v1');
    s.putVm('new', { hostId: 'b', hostEpoch: 1 });
    await s.run(500);
    r = await cacheVsStore(s, c1);
    expect(r.cache).toEqual(r.store);

    // the watch breaks; meanwhile more changes and a compaction past them: the cache is listed again
    s.store.failWatches();
    s.putVm('v2', { hostId: 'c', hostEpoch: 1, phase: 'stopped' });
    s.store.deleteRaw('vms/ns/v3');
    s.store.model.compact(Number(s.store.putRaw('marker', 1)));
    await s.run(2000);
    r = await cacheVsStore(s, c1);
    expect(r.cache).toEqual(r.store);
    expect(s.logs.some((l) => l.includes('VM watch failed: listing VMs again'))).toBe(true);

    // host a dies: fenced, its VMs marked lost and placed again — with every placement's answer lost
    store!.on = true;
    const listsBefore = store!.scans;
    s.store.revokeLease(s.live.get('a')!);
    s.cut('a');
    await s.until(() => s.record('a')?.state === 'fenced', T.fenceWindow + 2000);
    await s.run(3000);
    expect(store!.hits).toBeGreaterThan(0);
    r = await cacheVsStore(s, c1);
    expect(r.cache).toEqual(r.store);
    // a's VMs (v0, v6, v9; v3 was deleted) left it: placed elsewhere, none left running on a
    const fromA = (await s.store.listVms(1000)).filter((v) => ['ns/v0', 'ns/v6', 'ns/v9'].includes(v.key));
    expect(fromA).toHaveLength(3);
    for (const v of fromA) expect(v.record.hostId).not.toBe('a');
    // the fence, its lost-marking and the sweeps read the cache: no listing of vms/ since the sync
    expect(store!.scans).toBe(listsBefore);

    // takeover: a crashed leader's successor lists once and agrees with the store
    store!.on = false;
    await c1.stop();
    const c2 = s.controller();
    await s.until(() => c2.isLeader && stateOf(c2).vmsSynced, 3 * T.ttl);
    await s.run(500);
    r = await cacheVsStore(s, c2);
    expect(r.cache).toEqual(r.store);
  });
});

/** A store that strips capacity guards: what the code did before issue 9 (the control of the overcommit test). */
class UnguardedStore extends ModelControllerStore {
  override commit(change: Change, deadlineMs: number): Promise<CommitResult> {
    const { capacityGuards: _g, ...rest } = change;
    return super.commit(rest, deadlineMs);
  }
}

describe('placement under concurrent creates', () => {
  async function concurrentCreates(unguarded: boolean): Promise<{ onB: number; failed: number; pending: number }> {
    sim = new Sim({}, (clock, opts) => (unguarded ? new UnguardedStore(clock, '/tether/', opts) : new ModelControllerStore(clock, '/tether/', opts)));
    // b is the only schedulable host; room for 2 VMs of 1 vCPU / 128 MiB
    sim.register('b', { capacity: { vcpu: 2, memoryMb: 256 } });
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => clusterCreate(sim!.store, spec(`c${i}`, 1, 128))));
    const vms = await sim.store.listVms(1000);
    return {
      onB: vms.filter((v) => v.record.hostId === 'b').length,
      failed: results.filter((x) => x.status === 'rejected' && (x.reason as TetherError).code === 'UNAVAILABLE').length,
      pending: vms.filter((v) => v.record.hostId === undefined).length,
    };
  }

  it('six creates racing for room for two: at most two land on the host, the others are refused (retryable) and see the truth when retried', async () => {
    const r = await concurrentCreates(false);
    expect(r.onB).toBeLessThanOrEqual(2);
    expect(r.onB).toBeGreaterThanOrEqual(1);
    expect(r.onB + r.failed + r.pending).toBe(6);
    // retried one by one, the refused ones now see the host full: pending, never on b
    for (let i = 0; i < 6; i++) await clusterCreate(sim!.store, spec(`c${i}`, 1, 128)).catch(() => undefined);
    const vms = await sim!.store.listVms(1000);
    expect(vms.filter((v) => v.record.hostId === 'b').length).toBe(2);
    expect(vms).toHaveLength(6);
  });

  it('control: without the capacity guard the same race overcommits the host (what the check alone allowed)', async () => {
    const r = await concurrentCreates(true);
    expect(r.onB).toBeGreaterThan(2);
  });

  it('a placement decided on a view older than the last placement onto the host conflicts', async () => {
    sim = new Sim();
    sim.register('b');
    const store = sim.store;
    const seen = (await store.scanVms(1000)).revision;
    const host = (await store.listHosts(1000)).hosts.find((h) => h.hostId === 'b')!;
    const place = (name: string): ClusterChange => {
      const { change } = createVmChange({ key: `ns/${name}`, spec: spec(name), uid: `u-${name}`, nowWall: 0, placement: { hostId: 'b', hostEpoch: 1, targetRevision: host.recordRevision! } });
      return { ...change, capacityGuards: [{ hostId: 'b', seenRevision: seen }] };
    };
    const first = await store.commit(place('one'), 1000);
    expect(first.ok).toBe(true);
    expect(await store.commit(place('two'), 1000)).toEqual({ ok: false, reason: 'conflict' });
    // a view that includes the first placement passes
    const now = (await store.scanVms(1000)).revision;
    expect((await store.commit({ ...place('two'), capacityGuards: [{ hostId: 'b', seenRevision: now }] }, 1000)).ok).toBe(true);
  });
});

const LOSS = 20_000;

/** A leader with `n` attached hosts h00.., of which the first `k` lose their lease at LOSS and are detached. */
function manyDetached(d: Driver, n: number, k: number): string[] {
  const ids = Array.from({ length: n }, (_, i) => `h${String(i).padStart(2, '0')}`);
  d.leading(ids.map((id) => entry(id)));
  d.at(LOSS);
  const lost = ids.slice(0, k);
  let rev = 200;
  for (const id of lost) {
    const fx = d.hostEvent({ kind: 'alive-deleted', hostId: id, revision: String(rev++) });
    d.reply(calls(fx, 'commit')[0]!.req, ok(String(rev++)));
  }
  d.at(LOSS + 200).fire('freeze-check');
  return lost;
}

describe('fences at fleet size (pure core)', () => {
  it('run concurrently but at most maxFencesInFlight at once; the queue drains as they finish', () => {
    const d = new Driver({ maxFencesInFlight: 2 });
    const lost = manyDetached(d, 20, 6);
    d.at(LOSS + T.fenceWindow);
    const reads = lost.flatMap((id) => calls(d.fire(`fence:${id}`), 'get-host'));
    expect(reads).toHaveLength(2);
    expect(d.s.fenceQueue.size).toBe(4);
    let inFlight = 2;
    let max = 2;
    let fenced = 0;
    const queue = [...reads];
    while (queue.length > 0) {
      const r = queue.shift()!;
      const hostId = r.call.op === 'get-host' ? r.call.hostId : '';
      const fx = d.reply(r.req, { op: 'get-host', host: { hostId }, revision: '100' });
      const fence = calls(fx, 'commit')[0]!;
      expect(ops(fx)).toEqual(['commit:host-fenced']);
      const after = d.reply(fence.req, ok(String(500 + fenced)));
      fenced++;
      inFlight--;
      const next = calls(after, 'get-host');
      inFlight += next.length;
      max = Math.max(max, inFlight);
      queue.push(...next);
    }
    expect(fenced).toBe(6);
    expect(max).toBe(2);
    expect(d.s.fencesInFlight).toBe(0);
  });

  it('the eviction rate limit spaces fences out: one token per 1/rate s (burst 1)', () => {
    const d = new Driver({ evictionRate: 1 });
    const lost = manyDetached(d, 20, 3);
    d.at(LOSS + T.fenceWindow);
    const fx = lost.flatMap((id) => d.fire(`fence:${id}`));
    expect(calls(fx, 'get-host')).toHaveLength(1);
    expect(timersSet(fx)).toContain('evict@1000');
    expect(calls(d.at(LOSS + T.fenceWindow + 1000).fire('evict'), 'get-host')).toHaveLength(1);
    expect(calls(d.at(LOSS + T.fenceWindow + 2000).fire('evict'), 'get-host')).toHaveLength(1);
    expect(d.s.fenceQueue.size).toBe(0);
  });

  it('the slower rate applies while a large share of a big enough pool is detached', () => {
    // 6 of 20 detached (30 %): above a 25 % share, pool >= 10
    const slow = new Driver({ slowEvictionRate: 0.5, slowEvictionShare: 0.25, slowEvictionMinHosts: 10 });
    const lost = manyDetached(slow, 20, 6);
    slow.at(LOSS + T.fenceWindow);
    const fx = lost.flatMap((id) => slow.fire(`fence:${id}`));
    expect(calls(fx, 'get-host')).toHaveLength(1);
    expect(timersSet(fx)).toContain('evict@2000');
    // the same share in a pool below slowEvictionMinHosts: no limit
    const small = new Driver({ slowEvictionRate: 0.5, slowEvictionShare: 0.25, slowEvictionMinHosts: 50 });
    const lost2 = manyDetached(small, 20, 6);
    small.at(LOSS + T.fenceWindow);
    expect(calls(lost2.flatMap((id) => small.fire(`fence:${id}`)), 'get-host')).toHaveLength(6);
  });

  it('refuses a bad setting, naming it', () => {
    expect(() => new Driver({ maxFencesInFlight: 0 })).toThrow(/maxFencesInFlight/);
    expect(() => new Driver({ evictionRate: -1 })).toThrow(/evictionRate/);
  });
});

describe('capacity index', () => {
  it('picks exactly the host placeVms picks, on random clusters (and updates in place)', () => {
    let seed = 42;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 30; round++) {
      const hosts: SchedulableHost[] = Array.from({ length: 1 + rnd(40) }, (_, i) => ({ hostId: `h${rnd(1000)}-${i}`, epoch: 1, capacity: { vcpu: 1 + rnd(16), memoryMb: 128 * (1 + rnd(16)) } }));
      const existing = Array.from({ length: rnd(60) }, () => ({ hostId: hosts[rnd(hosts.length)]!.hostId, phase: 'running' as const, spec: { vcpu: 1 + rnd(2), memoryMb: 128 * (1 + rnd(2)) } }));
      const idx = new CapacityIndex();
      for (const v of existing) idx.addVm(v as Pick<ClusterVmRecord, 'hostId' | 'phase' | 'spec'>);
      for (const h of hosts) idx.setHost(h.hostId, h);
      const requests = Array.from({ length: 1 + rnd(40) }, (_, i) => ({ key: `ns/r${i}`, spec: { vcpu: 1 + rnd(4), memoryMb: 128 * (1 + rnd(4)) } }));
      const want = placeVms(requests, hosts, existing as Pick<ClusterVmRecord, 'hostId' | 'phase' | 'spec'>[]);
      const got = requests.map((r) => {
        const p = idx.pick(r.spec);
        if ('hostId' in p) idx.addUsage(p.hostId, r.spec.vcpu, r.spec.memoryMb);
        return { key: r.key, ...p };
      });
      expect(got).toEqual(want);
    }
  });
});

describe('long work is chunked (the core yields through zero-delay timers)', () => {
  const many = (n: number, over: Partial<ClusterVmRecord> = {}) => Array.from({ length: n }, (_, i) => vm(`v${String(i).padStart(3, '0')}`, { hostId: 'b', ...over }));

  it('a VM listing is loaded 10 x chunkSize records per step; the watch starts after the last chunk', () => {
    const d = new Driver({ chunkSize: 1 });
    d.input({ kind: 'raft-term', term: 5, at: d.now });
    const fx = d.reply(calls(d.input({ kind: 'start' }), 'campaign')[0]!.req, { op: 'campaign', won: true, ttlMs: 3000 });
    d.reply(calls(fx, 'list-hosts')[0]!.req, { op: 'list-hosts', snapshot: { revision: '100', hosts: [entry('b', { capacity: { vcpu: 64, memoryMb: 65536 } }), entry('c')] } });
    const first = d.reply(calls(fx, 'list-vms')[0]!.req, { op: 'list-vms', vms: many(25), revision: '100' });
    expect(timersSet(first)).toContain('vms-load@0');
    expect(calls(first, 'watch-vms')).toEqual([]);
    expect(d.s.vms.size).toBe(10);
    expect(calls(d.fire('vms-load'), 'watch-vms')).toEqual([]);
    const last = d.fire('vms-load');
    expect(calls(last, 'watch-vms')).toHaveLength(1);
    expect(d.s.vms.size).toBe(25);
    expect(d.s.capacity.used('b')).toEqual({ vcpu: 25, memoryMb: 25 * 128 });
  });

  it('the placement pass considers chunkSize VMs per step, then yields; the placements are batched when it ends', () => {
    const d = new Driver({ chunkSize: 4 });
    d.leading([entry('a', { state: 'fenced' }, { alive: false }), entry('b', { capacity: { vcpu: 64, memoryMb: 65536 } }), entry('c', { capacity: { vcpu: 64, memoryMb: 65536 } })], undefined, many(10, { hostId: 'a', phase: 'lost' }));
    expect(timersSet(d.lastSweep)).toContain('sweep-chunk@0');
    expect(calls(d.fire('sweep-chunk'), 'new-uids')).toEqual([]);
    const uids = calls(d.fire('sweep-chunk'), 'new-uids')[0]!;
    expect(uids.call).toEqual({ op: 'new-uids', count: 10 });
    const fx = d.reply(uids.req, { op: 'new-uids', uids: Array.from({ length: 10 }, (_, i) => `U${i}`) });
    const commits = calls(fx, 'commit');
    expect(commits).toHaveLength(1);
    expect(commits[0]!.call.op === 'commit' ? commits[0]!.call.change.vms : []).toHaveLength(10);
  });
});

describe('tether controller: fleet settings', () => {
  it('defaults are safe (no rate limit, 32 fences in flight); bad values are refused naming the setting', async () => {
    const { CONTROLLER_SCHEMA, toControllerConfig } = await import('../../src/cli/commands/controller.js');
    const { resolveConfig } = await import('../../src/cli/config-schema.js');
    const cfg = (o: Record<string, string>) => toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'http://127.0.0.1:2379', ...o }, {}));
    expect(cfg({})).toMatchObject({ maxFencesInFlight: 32, evictionRate: Infinity, slowEvictionRate: Infinity, slowEvictionShare: 0.3, slowEvictionMinHosts: 50 });
    expect(cfg({ evictionRate: '10', slowEvictionRate: '0.1', slowEvictionShare: '25%' })).toMatchObject({ evictionRate: 10, slowEvictionRate: 0.1, slowEvictionShare: 0.25 });
    expect(() => cfg({ evictionRate: '0' })).toThrow(/evictionRate/);
    expect(() => cfg({ slowEvictionRate: 'fast' })).toThrow(/slowEvictionRate/);
    expect(() => cfg({ slowEvictionShare: '150%' })).toThrow(/slowEvictionShare/);
    expect(() => cfg({ maxFencesInFlight: '0' })).toThrow(/maxFencesInFlight/);
  });
});

describe('a fresh host listing is reconciled in chunks', () => {
  it('4 x chunkSize hosts per step, then the freeze and the sweep', () => {
    const d = new Driver({ chunkSize: 1 });
    // 10 hosts, of which h00..h02 lost their lease while no controller watched: detached in 3 steps
    const hosts = Array.from({ length: 10 }, (_, i) => entry(`h${String(i).padStart(2, '0')}`, {}, { alive: i >= 3 }));
    d.leading(hosts);
    expect(ops(d.lastSync).filter((o) => o.startsWith('commit:host-detached'))).toHaveLength(3);
    expect(timersSet(d.lastSync)).toContain('hosts-reconcile@0');
    expect(d.s.reconcileQueue).toHaveLength(6);
    d.fire('hosts-reconcile');
    const last = d.fire('hosts-reconcile');
    expect(timersSet(last)).not.toContain('hosts-reconcile@0');
    expect(d.s.reconcileQueue).toBeUndefined();
  });
});

describe('lost-marking at fleet size (pure core)', () => {
  it('at most maxMarkingsInFlight hosts mark their VMs at once; the others wait their turn', () => {
    const d = new Driver({ maxMarkingsInFlight: 2 });
    const ids = Array.from({ length: 20 }, (_, i) => `h${String(i).padStart(2, '0')}`);
    // four fenced hosts whose VMs are not lost yet (an interrupted fence), found by the sweep after the sync
    const vms = ids.slice(0, 4).flatMap((id) => [vm(`${id}-a`, { hostId: id }), vm(`${id}-b`, { hostId: id })]);
    d.leading(ids.map((id, i) => entry(id, i < 4 ? { state: 'fenced' } : {}, { alive: i >= 4 })), undefined, vms);
    const marking = calls(d.lastSweep, 'commit');
    expect(marking).toHaveLength(2);
    expect(d.s.markQueue.size).toBe(2);
    let done = 0;
    let rev = 300;
    while (marking.length > 0) {
      const c = marking.shift()!;
      const fx = d.reply(c.req, ok(String(rev++)));
      done++;
      marking.push(...calls(fx, 'commit').filter((x) => x.call.op === 'commit' && x.call.change.events?.[0]?.kind === 'host-vms-lost'));
      expect(d.s.markingsInFlight).toBeLessThanOrEqual(2);
    }
    expect(done).toBe(4);
    expect(d.s.markingsInFlight).toBe(0);
    for (const v of vms) expect(d.s.vms.get(v.key)!.record.phase).toBe('lost');
  });
});
