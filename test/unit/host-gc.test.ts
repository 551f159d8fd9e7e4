import { describe, expect, it } from 'vitest';
import { HostGc } from '../../src/agent/gc/host-gc.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { ClusterStore, KeepaliveAnswer, Registration, RegistrationResult } from '../../src/ports/cluster-store.js';
import type { FakeClock } from '../support/fake-clock.js';
import { fakeHost, sampleSpec, uidOf } from '../support/host-harness.js';
import { runPlan } from '../../src/domain/plan.js';
import { createPlanner } from '../../src/agent/plans/create-plan.js';

/** A cluster whose answers the test controls: `ok`, `hang` (until the call's deadline), or `lost`. */
class FakeCluster implements ClusterStore {
  mode: 'ok' | 'hang' | 'lost' = 'ok';
  epoch = 0;
  state: HostRecord['state'] | undefined;
  hold = false;
  registrations: Registration[] = [];
  private leases = 0;
  constructor(private readonly clock: FakeClock) {}
  private answer<R>(deadlineMs: number, value: () => R): Promise<R> {
    if (this.mode === 'hang') {
      return new Promise((_, reject) => this.clock.setTimer(deadlineMs, () => reject(new TetherError('TIMEOUT', 'no answer', { retryable: true }))));
    }
    return Promise.resolve().then(value);
  }
  grantLease(_ttl: number, d: number): Promise<string> {
    return this.answer(d, () => String(++this.leases));
  }
  keepalive(_lease: string, d: number): Promise<KeepaliveAnswer> {
    return this.answer(d, () => (this.mode === 'lost' ? 'lease-lost' : 'alive'));
  }
  revokeLease(): Promise<void> {
    return Promise.resolve();
  }
  register(reg: Registration, d: number): Promise<RegistrationResult> {
    return this.answer(d, () => {
      this.registrations.push(reg);
      if (this.mode === 'lost') this.mode = 'ok';
      if (reg.mode === 'ready') {
        this.epoch += 1;
        this.state = 'ready';
        return { ok: true, epoch: this.epoch, hold: this.hold };
      }
      if (this.state === 'fenced') return { ok: false, reason: 'fenced', detail: 'fenced' };
      if (this.state === undefined) this.epoch = 1;
      this.state = 'attached';
      return { ok: true, epoch: this.epoch, hold: this.hold };
    });
  }
  getHost(): Promise<HostRecord | undefined> {
    return Promise.resolve(undefined);
  }
  setHold(): Promise<HostRecord> {
    throw new Error('unused');
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

async function setup(vms = 1) {
  const h = fakeHost();
  const cluster = new FakeCluster(h.clock);
  for (let i = 0; i < vms; i++) {
    h.inventory.addVm(uidOf(i), sampleSpec(`vm${i}`), 0);
    await runPlan('create', createPlanner(h.ctx, uidOf(i)));
  }
  const transitions: string[] = [];
  const gc = new HostGc(h.ctx, cluster, {
    timings: T,
    bootId: 'boot-1',
    capacity: { vcpu: 2, memoryMb: 1024 },
    agentVersion: 'test',
    onTransition: (from, to) => transitions.push(`${from}->${to}`),
  });
  gc.start();
  await h.clock.advance(10);
  return { ...h, cluster, gc, transitions };
}

describe('HostGc loop on a fake clock', () => {
  it('registers, then keeps heartbeating for 500 TTLs without ever stopping a VM', async () => {
    const s = await setup();
    expect(s.gc.phase).toBe('attached');
    for (let i = 0; i < 500; i++) await s.clock.advance(T.ttl);
    expect(s.gc.phase).toBe('attached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    expect(s.transitions).toEqual(['starting->attached']);
  });

  it('rides out a hang shorter than the watchdog (detached, then attached), never stopping a VM', async () => {
    const s = await setup();
    for (let round = 0; round < 20; round++) {
      s.cluster.mode = 'hang';
      // lastAck may precede the hang by up to one interval, and the first ack after it may come one interval late.
      await s.clock.advance(T.watchdogTimeout - 2 * T.heartbeatInterval - 100);
      s.cluster.mode = 'ok';
      await s.clock.advance(5 * T.heartbeatInterval);
      expect(s.gc.phase).toBe('attached');
    }
    expect(s.transitions).toContain('suspect->detached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    expect(s.gc.lastReport()).toBeUndefined();
  });

  it('fences at lastAck + watchdogTimeout, cleans, and rejoins ready with epoch + 1 once the cluster answers', async () => {
    const s = await setup(2);
    const status0 = s.gc.status();
    expect(status0.lastAckAgeMs).toBeLessThan(T.heartbeatInterval);
    s.cluster.mode = 'hang';
    await s.clock.advance(T.detachAfter + 10);
    expect(s.gc.phase).toBe('detached');
    expect(s.gc.status().watchdogRemainingMs).toBeGreaterThan(0);
    expect(s.gc.admission()).toBe('host is detached');
    await s.clock.advance(T.watchdogTimeout - T.detachAfter - 2 * T.heartbeatInterval);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    await s.clock.advance(2 * T.heartbeatInterval + 50);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(2);
    expect(['cleaning', 'clean', 'rejoining']).toContain(s.gc.phase);
    await s.clock.advance(100);
    expect(s.gc.phase).toBe('clean');
    expect(s.inventory.listVms()).toEqual([]);
    expect(s.network.taps.size).toBe(0);
    const rep = s.gc.lastReport()!;
    expect(rep.stops.map((x) => x.method)).toEqual(['graceful', 'graceful']);
    expect(rep.fenceStartAfterAckMs).toBeGreaterThanOrEqual(T.watchdogTimeout);
    expect(rep.fenceStartAfterAckMs).toBeLessThan(T.watchdogTimeout + 10);
    expect(rep.audit?.clean).toBe(true);
    s.cluster.mode = 'ok';
    await s.clock.advance(5 * T.heartbeatInterval);
    expect(s.gc.phase).toBe('attached');
    expect(s.gc.status().epoch).toBe(2);
    expect(s.cluster.registrations.at(-1)?.mode).toBe('ready');
    expect(s.gc.lastReport()?.rejoinedEpoch).toBe(2);
  });

  it('re-registers at the same epoch when the cluster says the lease is gone, keeping its VMs', async () => {
    const s = await setup();
    s.cluster.mode = 'lost';
    await s.clock.advance(3 * T.heartbeatInterval);
    expect(s.gc.phase).toBe('attached');
    expect(s.gc.status().epoch).toBe(1);
    expect(s.cluster.registrations.map((r) => r.mode)).toEqual(['reattach', 'reattach']);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
  });

  it('a host held when it detached never self-fences, even after a release; a local hold while detached needs the explicit risk flag', async () => {
    const s = await setup();
    s.gc.setLocalHold(true);
    s.cluster.mode = 'hang';
    await s.clock.advance(T.detachAfter + 10);
    expect(s.gc.phase).toBe('detached');
    expect(() => s.gc.setLocalHold(true)).toThrow(/split-brain|VMs could run twice/);
    s.gc.setLocalHold(false);
    await s.clock.advance(20 * T.watchdogTimeout);
    expect(s.gc.phase).toBe('detached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    expect(s.gc.status().heldAtDetach).toBe(true);
    s.gc.setLocalHold(true, true);
    expect(s.inventory.listEvents(20).map((e) => e.kind)).toContain('gc-local-hold-split-brain-risk');
  });

  it('a host whose record was fenced while it was away fences itself at once on re-registration', async () => {
    const s = await setup();
    s.cluster.state = 'fenced';
    s.cluster.mode = 'lost';
    await s.clock.advance(2 * T.heartbeatInterval);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    expect(s.gc.lastReport()?.reason).toBe('cluster-fenced');
  });

  it('resumes a fence after an agent restart (same boot): the persisted phase and lastAck keep the deadline', async () => {
    const s = await setup();
    s.cluster.mode = 'hang';
    await s.clock.advance(T.detachAfter + 10);
    s.gc.stop();
    const phases: HostPhase[] = [];
    const gc2 = new HostGc(s.ctx, s.cluster, { timings: T, bootId: 'boot-1', capacity: { vcpu: 1, memoryMb: 1 }, agentVersion: 't', onTransition: (_f, to) => phases.push(to) });
    expect(gc2.phase).toBe('detached');
    gc2.start();
    await s.clock.advance(T.watchdogTimeout);
    expect(phases).toContain('fencing');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    gc2.stop();
  });
});
