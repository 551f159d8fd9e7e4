import { describe, expect, it } from 'vitest';
import { HostGc } from '../../src/agent/gc/host-gc.js';
import { TetherError } from '../../src/domain/errors.js';
import { checkTimings, DEFAULT_TIMINGS as T, type GcTimings } from '../../src/domain/gc-timing.js';
import { scaleTimings } from '../../src/domain/fleet-timings.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import type { Guardian } from '../../src/ports/guardian.js';
import type { GuardianFiredRecord } from '../../src/domain/guardian.js';
import { fakeHost, sampleSpec, uidOf } from '../support/host-harness.js';
import { ModelClusterStore } from '../support/model-cluster.js';
import { runPlan } from '../../src/domain/plan.js';
import { createPlanner } from '../../src/agent/plans/create-plan.js';

/**
 * The cluster is the production `KvClusterStore` over the etcd model (test/support/model-cluster.ts),
 * steered by the test: `mode` `ok`, `hang` (nothing answers until the call's deadline), `lost` (the
 * lease is revoked) or `taken` (another agent's lease holds the alive key); `hold`/`state`/`epoch`
 * write the host record as an operator or controller would; `ackAmbiguous` loses the answers of hold
 * acknowledgements that etcd applied.
 */

/** The guardian as the agent sees it: records what it is fed; `fire()` plays its deadline passing. */
class FakeGuardian implements Guardian {
  fed: (number | null)[] = [];
  firedRecord: GuardianFiredRecord | undefined;
  shutdowns = 0;
  starts = 0;
  feed(deadline: number | null): void {
    this.fed.push(deadline);
  }
  shutdown(): void {
    this.shutdowns++;
  }
  fired(): GuardianFiredRecord | undefined {
    return this.firedRecord;
  }
  acknowledgeFired(): void {
    this.firedRecord = undefined;
  }
  ensureRunning(): Promise<{ started: boolean; pid: number }> {
    return Promise.resolve({ started: this.starts++ === 0, pid: 42 });
  }
}

async function setup(vms = 1, timings: GcTimings = T) {
  const h = fakeHost();
  const cluster = new ModelClusterStore(h.clock);
  for (let i = 0; i < vms; i++) {
    h.inventory.addVm(uidOf(i), sampleSpec(`vm${i}`), 0);
    await runPlan('create', createPlanner(h.ctx, uidOf(i)));
  }
  const transitions: string[] = [];
  const guardian = new FakeGuardian();
  const gc = new HostGc(h.ctx, cluster, {
    timings,
    bootId: 'boot-1',
    capacity: { vcpu: 2, memoryMb: 1024 },
    agentVersion: 'test',
    agentId: 'agent-1',
    holder: 'test agent',
    guardian,
    onTransition: (from, to) => transitions.push(`${from}->${to}`),
  });
  cluster.heldProbe = () => gc.status().held;
  gc.start();
  await h.clock.advance(10);
  return { ...h, cluster, gc, transitions, guardian };
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

  it('with heartbeats scaled to the fleet (10 s apart), an etcd election at any point of the interval (keepalives failing fast) never stops a VM: an early failure is retried after 1 s', async () => {
    const S = scaleTimings(T, 1000, { fleetHeartbeatRate: 100, maxHeartbeatInterval: 10_000 }).timings;
    expect(S.heartbeatInterval).toBe(10_000);
    expect(checkTimings(S)).toEqual([]);
    const s = await setup(1, S);
    for (let round = 0; round < 20; round++) {
      await s.clock.advance((round * 700) % S.heartbeatInterval);
      s.cluster.transport.mode = 'drop'; // refused at once: UNAVAILABLE, as during a leader election
      await s.clock.advance(S.electionTolerance);
      s.cluster.transport.mode = 'ok';
      await s.clock.advance(2 * S.heartbeatInterval);
      expect(s.gc.phase).toBe('attached');
    }
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

  it('a hold requested in the cluster is acknowledged (holdSeen) BEFORE it is applied; then a partition never self-fences and the guardian is suspended', async () => {
    const s = await setup();
    s.cluster.hold = true;
    await s.clock.advance(5 * T.heartbeatInterval + 10);
    expect(s.cluster.acks).toEqual([{ seen: true, heldAtCall: false }]);
    expect(s.cluster.holdSeen).toBe(true);
    expect(s.gc.status().held).toBe(true);
    expect(s.guardian.fed.at(-1)).toBeNull();
    s.cluster.mode = 'hang';
    await s.clock.advance(20 * T.watchdogTimeout);
    expect(s.gc.phase).toBe('detached');
    expect(s.gc.status().heldAtDetach).toBe(true);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
  });

  it('a release is applied BEFORE it is acknowledged; an ambiguous hold ack is never applied', async () => {
    const s = await setup();
    s.cluster.hold = true;
    await s.clock.advance(5 * T.heartbeatInterval + 10);
    expect(s.gc.status().held).toBe(true);
    s.cluster.hold = false;
    await s.clock.advance(5 * T.heartbeatInterval + 10);
    expect(s.cluster.acks.at(-1)).toEqual({ seen: false, heldAtCall: false });
    expect(s.cluster.holdSeen).toBe(false);
    expect(typeof s.guardian.fed.at(-1)).toBe('number');
    // The next hold's ack hangs past its deadline although etcd applied it: the host must not apply it.
    s.cluster.ackAmbiguous = true;
    s.cluster.hold = true;
    await s.clock.advance(5 * T.heartbeatInterval + 10);
    expect(s.cluster.holdSeen).toBe(true);
    expect(s.gc.status().held).toBe(false);
    // The next poll sees holdSeen already true and applies it (applied => seen still holds).
    s.cluster.ackAmbiguous = false;
    await s.clock.advance(5 * T.heartbeatInterval + 10);
    expect(s.gc.status().held).toBe(true);
  });

  it('tether gc hold on an attached host goes through the cluster and resolves once applied; a local hold while detached needs the risk flag; its local release resumes the watchdog', async () => {
    const s = await setup();
    await s.gc.setHold(true);
    expect(s.cluster.hold).toBe(true);
    expect(s.cluster.holdSeen).toBe(true);
    expect(s.gc.status().held).toBe(true);
    await s.gc.setHold(false);
    expect(s.cluster.hold).toBe(false);
    expect(s.gc.status().held).toBe(false);
    s.cluster.mode = 'hang';
    await s.clock.advance(T.detachAfter + 10);
    expect(s.gc.phase).toBe('detached');
    await expect(s.gc.setHold(true)).rejects.toThrow(/split-brain|VMs could run twice/);
    await s.gc.setHold(true, true);
    expect(s.inventory.listEvents(20).map((e) => e.kind)).toContain('gc-local-hold-split-brain-risk');
    await s.clock.advance(20 * T.watchdogTimeout);
    expect(s.gc.phase).toBe('detached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    await s.gc.setHold(false);
    await s.clock.advance(10);
    expect(s.gc.phase).not.toBe('detached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
  });

  it('a registration refused as duplicate never fences and retries every TTL; an alive key taken over stops the heartbeats and the own watchdog fences on time', async () => {
    const h = fakeHost();
    const cluster = new ModelClusterStore(h.clock);
    h.inventory.addVm(uidOf(0), sampleSpec('vm0'), 0);
    await runPlan('create', createPlanner(h.ctx, uidOf(0)));
    cluster.state = 'attached';
    cluster.epoch = 3;
    cluster.otherAgent = 'agent-2';
    const gc = new HostGc(h.ctx, cluster, { timings: T, bootId: 'b', capacity: { vcpu: 1, memoryMb: 1 }, agentVersion: 't', agentId: 'agent-1', holder: 't' });
    gc.start();
    await h.clock.advance(5 * T.ttl);
    expect(gc.phase).toBe('starting');
    expect(cluster.registrations.length).toBeGreaterThanOrEqual(4);
    expect(cluster.registrations.length).toBeLessThanOrEqual(7);
    expect(gc.status().duplicateOf).toMatch(/another agent/);
    expect(h.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    gc.stop();

    const s = await setup();
    const regs = s.cluster.registrations.length;
    s.cluster.mode = 'taken';
    await s.clock.advance(T.heartbeatInterval + 10);
    expect(s.gc.phase).toBe('detached');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toEqual([]);
    await s.clock.advance(T.watchdogTimeout);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    expect(s.cluster.registrations.slice(regs).map((r) => r.mode)).not.toContain('reattach');
  });

  it('feeds the guardian lastAck + watchdogTimeout + stopGrace + killTimeout / 2; a guardian fire makes the agent fence, clean and rejoin, then forget the fire', async () => {
    const s = await setup();
    await s.clock.advance(3 * T.heartbeatInterval);
    const fed = s.guardian.fed.filter((d): d is number => typeof d === 'number');
    expect(fed.length).toBeGreaterThanOrEqual(3);
    const st = s.gc.status();
    expect(fed.at(-1)).toBe(s.clock.nowMono() - st.lastAckAgeMs! + T.watchdogTimeout + T.stopGrace + T.killTimeout / 2);
    for (let i = 1; i < fed.length; i++) expect(fed[i]!).toBeGreaterThan(fed[i - 1]!);
    s.guardian.firedRecord = { v: 1, hostId: 'h', bootId: 'boot-1', seq: 1, epoch: 1, reason: 'attached', deadlineMono: 1, firedAtMono: 2, firedAt: 2, state: 'done', killed: [{ pid: 7, uid: uidOf(0) }], survivors: [], leaks: [] };
    await s.clock.advance(T.heartbeatInterval + 10);
    expect(s.transitions).toContain('attached->fencing');
    expect(s.gc.lastReport()?.reason).toBe('guardian');
    expect(s.gc.lastReport()?.stops.find((x) => x.uid === uidOf(0))?.method).toBe('forced-guardian');
    await s.clock.advance(5000);
    expect(s.gc.phase).toBe('attached');
    expect(s.gc.status().epoch).toBe(2);
    expect(s.guardian.firedRecord).toBeUndefined();
  });

  it('a host whose record was fenced while it was away fences itself at once on re-registration', async () => {
    const s = await setup();
    s.cluster.state = 'fenced';
    s.cluster.mode = 'lost';
    await s.clock.advance(2 * T.heartbeatInterval);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    expect(s.gc.lastReport()?.reason).toBe('cluster-fenced');
  });

  it('a host that fences while a reattach loop is still retrying registers ready once clean (the ready registration is not lost)', async () => {
    const s = await setup();
    // The lease is lost, then the cluster stops answering: the reattach loop keeps failing until the watchdog fences.
    s.cluster.mode = 'lost';
    const keepalive = s.cluster.keepalive.bind(s.cluster);
    s.cluster.keepalive = async (...a) => {
      const r = await keepalive(...a);
      if (r.kind === 'lease-lost') s.cluster.mode = 'hang';
      return r;
    };
    await s.clock.advance(T.watchdogTimeout + T.heartbeatInterval);
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    await s.clock.advance(100);
    expect(s.gc.phase).toBe('clean');
    s.cluster.mode = 'ok';
    await s.clock.advance(5 * T.heartbeatInterval);
    expect(s.gc.phase).toBe('attached');
    expect(s.gc.status().epoch).toBe(2);
    expect(s.cluster.registrations.at(-1)?.mode).toBe('ready');
  });

  it('refuses to start on a corrupt persisted lifecycle state with INVENTORY_ERROR (it does not guess a phase)', () => {
    const h = fakeHost();
    h.inventory.setMeta('gc.state', '{"phase":"attached","epoch":1,"held":false,"lastAck":12');
    const make = () => new HostGc(h.ctx, new ModelClusterStore(h.clock), { timings: T, bootId: 'b', capacity: { vcpu: 1, memoryMb: 1 }, agentVersion: 't', agentId: 'agent-1', holder: 't' });
    let err: unknown;
    try {
      make();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).code).toBe('INVENTORY_ERROR');
    h.inventory.setMeta('gc.state', JSON.stringify({ bootId: 'b', phase: 'attached', epoch: 1, held: false, lastAck: 12 }));
    expect(make().phase).toBe('detached');
  });

  it('resumes a fence after an agent restart (same boot): the persisted phase and lastAck keep the deadline', async () => {
    const s = await setup();
    s.cluster.mode = 'hang';
    await s.clock.advance(T.detachAfter + 10);
    s.gc.stop();
    const phases: HostPhase[] = [];
    const gc2 = new HostGc(s.ctx, s.cluster, { timings: T, bootId: 'boot-1', capacity: { vcpu: 1, memoryMb: 1 }, agentVersion: 't', agentId: 'agent-1', holder: 't', onTransition: (_f, to) => phases.push(to) });
    expect(gc2.phase).toBe('detached');
    gc2.start();
    await s.clock.advance(T.watchdogTimeout);
    expect(phases).toContain('fencing');
    expect(s.calls.filter((c) => c.startsWith('vmm.stop:'))).toHaveLength(1);
    gc2.stop();
  });
});
