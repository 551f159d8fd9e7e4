/**
 * The Controller on a fake clock and the in-memory store, with simulated hosts
 * (test/support/controller-sim.ts): fence window, holds, failover, freeze, record GC.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import { operatorFence, setHostHold } from '../../src/controller/operator.js';
import { Sim, spec, T } from '../support/controller-sim.js';

let sim: Sim;
afterEach(async () => {
  await sim?.stop();
});

describe('controller: fence window on a fake clock', () => {
  it('detaches at lease expiry, fences exactly at the deadline (never before), marks VMs lost and reschedules them', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.putVm('v1', { hostId: 'a', hostEpoch: 1 });
    sim.putVm('v2', { hostId: 'a', hostEpoch: 1, restartPolicy: 'none' });
    sim.putVm('big', { hostId: 'a', hostEpoch: 1, spec: spec('big', 16, 1024) });
    sim.putVm('elsewhere', { hostId: 'b', hostEpoch: 1 });
    const c = sim.controller();
    await sim.run(1000);
    expect(c.isLeader).toBe(true);

    const lastKeepalive = sim.clock.now();
    sim.cut('a');
    const detachedAt = await sim.until(() => sim.record('a')?.state === 'detached', T.ttl + 1000);
    const expiry = lastKeepalive + T.ttl;
    expect(detachedAt - expiry).toBeLessThanOrEqual(200);
    const r = sim.record('a')!;
    expect(r.fenceDeadline! - r.detachedAt!).toBe(T.fenceWindow);
    expect(r.heldAtDetach).toBe(false);

    let firstFenced: number | undefined;
    await sim.run(T.fenceWindow + 1000, () => {
      if (firstFenced === undefined && sim.record('a')?.state === 'fenced') firstFenced = sim.clock.now();
    });
    expect(firstFenced).toBeDefined();
    expect(firstFenced!).toBeGreaterThanOrEqual(r.fenceDeadline!);
    expect(firstFenced! - r.fenceDeadline!).toBeLessThanOrEqual(200);
    expect(sim.events('host-fenced', 'a')).toHaveLength(1);
    expect(sim.events('host-fenced', 'a')[0]).toMatchObject({ by: 'controller', lostVms: ['ns/big', 'ns/v1', 'ns/v2'] });

    // reschedule: v1 re-placed with a new uid and the target's epoch; v2 (none) stays lost; big has no room
    expect(sim.vm('v1')).toMatchObject({ phase: 'pending', uid: expect.stringMatching(/^uid-/), hostEpoch: 1 });
    expect(['b', 'c']).toContain(sim.vm('v1')!.hostId);
    expect(sim.vm('v2')).toMatchObject({ phase: 'lost', hostId: 'a', reason: expect.stringMatching(/restartPolicy none/) });
    expect(sim.vm('big')).toMatchObject({ phase: 'pending', reason: expect.stringMatching(/no host has 16 vCPU/) });
    expect(sim.vm('big')!.hostId).toBeUndefined();
    expect(sim.vm('elsewhere')).toMatchObject({ phase: 'running', hostId: 'b', uid: 'orig-elsewhere' });

    // never twice: many more windows, still one fence event, and nothing else moves
    await sim.run(5 * T.fenceWindow, undefined, 1000);
    expect(sim.events('host-fenced')).toHaveLength(1);
    expect(sim.events('vm-rescheduled')).toHaveLength(1);
    expect(sim.events('vm-pending')).toHaveLength(1);
  });

  it('never: hosts that keep heartbeating, or blip for less than the TTL, are never detached', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller();
    await sim.run(20 * T.ttl, undefined, 500);
    const lease = sim.live.get('a')!;
    sim.cut('a');
    await sim.run(T.ttl - 1000, undefined, 100); // the last renewal was up to 500 ms before the cut
    sim.store.keepaliveLease(lease);
    sim.live.set('a', lease);
    await sim.run(10 * T.ttl, undefined, 500);
    expect(sim.events('host-detached')).toEqual([]);
    expect(sim.record('a')!.state).toBe('attached');
  });

  it('a host that re-registers before the deadline wins: back to attached, never fenced', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller();
    await sim.run(500);
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    const deadline = sim.record('a')!.fenceDeadline!;
    await sim.run(deadline - sim.clock.now() - 300);
    sim.register('a'); // reattach at the same epoch
    await sim.run(5 * T.fenceWindow, undefined, 500);
    expect(sim.record('a')).toMatchObject({ state: 'attached', epoch: 1 });
    expect(sim.events('host-fenced')).toEqual([]);
    expect(sim.events('host-returned', 'a')).toHaveLength(1);
  });

  it('a host that self-fenced and rejoined ready (new epoch) before the deadline: no fence, its old-epoch VMs are lost and rescheduled', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.putVm('v1', { hostId: 'a', hostEpoch: 1 });
    sim.controller();
    await sim.run(500);
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    await sim.run(3000);
    sim.register('a', { mode: 'ready', epoch: 1 }); // after its own watchdog, stop and verified cleanup
    await sim.until(() => sim.vm('v1')?.phase === 'pending' && sim.vm('v1')?.uid !== 'orig-v1', 2000);
    expect(sim.record('a')).toMatchObject({ state: 'ready', epoch: 2 });
    expect(sim.events('vm-lost')).toEqual([expect.objectContaining({ vm: 'ns/v1', hostId: 'a', hostEpoch: 1, hostRejoinedEpoch: 2 })]);
    const placed = sim.vm('v1')!;
    expect(placed.hostEpoch).toBe(placed.hostId === 'a' ? 2 : 1);
    await sim.run(3 * T.fenceWindow, undefined, 1000);
    expect(sim.events('host-fenced')).toEqual([]);
    expect(sim.events('vm-rescheduled')).toHaveLength(1);
  });

  it('the fence txn loses against a registration that got in first (cannot both win)', async () => {
    sim = new Sim();
    sim.register('a');
    const before = await sim.store.getHost('a', 1000);
    sim.register('a');
    const fencedRec = { ...before.record!, state: 'fenced' as const };
    const res = await sim.store.commit({ hosts: [{ hostId: 'a', expectRevision: before.recordRevision!, requireAliveAbsent: true, next: fencedRec }] }, 1000);
    expect(res).toEqual({ ok: false, reason: 'conflict' });
    expect(sim.record('a')!.state).toBe('attached');
  });

  it('never: a host that acknowledged a hold is not fenced, even after release (held at detach); only the operator fences it', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.putVm('v1', { hostId: 'a', hostEpoch: 1 });
    sim.controller();
    await sim.run(500);
    const held = await setHostHold(sim.store, sim.clock, 'a', true, 1000);
    expect(held).toMatchObject({ acknowledged: false, shown: 'hold not acked' });
    await sim.run(300); // the host acknowledges
    expect(sim.record('a')).toMatchObject({ hold: true, holdSeen: true });
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    expect(sim.record('a')).toMatchObject({ heldAtDetach: true });
    await sim.run(3 * T.fenceWindow, undefined, 500);
    const released = await setHostHold(sim.store, sim.clock, 'a', false, 1000);
    expect(released.notes.join(' ')).toMatch(/stays held/);
    await sim.run(5 * T.fenceWindow, undefined, 500);
    expect(sim.record('a')!.state).toBe('detached');
    expect(sim.events('host-fenced')).toEqual([]);
    expect(sim.events('host-fence-blocked', 'a').length).toBeGreaterThanOrEqual(1);
    expect(sim.vm('v1')!.phase).toBe('running');

    const res = await operatorFence(sim.store, sim.clock, 'a', 1000);
    expect(res).toMatchObject({ alreadyFenced: false });
    await sim.run(1000);
    // marked lost by the operator's command or by the controller (from its VM cache, as soon as it sees the fence): whoever wins the guarded txn
    expect(sim.events('host-vms-lost', 'a').flatMap((e) => ('vms' in e ? e.vms : []))).toEqual(['ns/v1']);
    expect(sim.record('a')!.state).toBe('fenced');
    expect(sim.events('host-fenced', 'a')).toEqual([expect.objectContaining({ by: 'operator' })]);
    expect(sim.vm('v1')).toMatchObject({ phase: 'pending', hostId: expect.stringMatching(/^[bc]$/) });
  });

  it('operator fence is refused while the host holds a live lease', async () => {
    sim = new Sim();
    sim.register('a');
    await expect(operatorFence(sim.store, sim.clock, 'a', 1000)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await expect(operatorFence(sim.store, sim.clock, 'nope', 1000)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(sim.record('a')!.state).toBe('attached');
  });

  it('hold protocol: a hold the host has not acknowledged does not stop the fence', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.putVm('v1', { hostId: 'a', hostEpoch: 1 });
    sim.controller();
    await sim.settleTerm();
    sim.noAck.add('a'); // its agent has not read the record since
    await setHostHold(sim.store, sim.clock, 'a', true, 1000);
    await sim.run(1000);
    expect(sim.record('a')).toMatchObject({ hold: true });
    expect(sim.record('a')!.holdSeen ?? false).toBe(false);
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    expect(sim.record('a')!.heldAtDetach).toBe(false);
    const deadline = sim.record('a')!.fenceDeadline!;
    await sim.until(() => sim.record('a')?.state === 'fenced', T.fenceWindow + 1000);
    expect(sim.clock.now()).toBeGreaterThanOrEqual(deadline);
    expect(sim.vm('v1')!.phase === 'lost' || sim.vm('v1')!.hostId !== 'a').toBe(true);
  });

  it('hold protocol: a release counts only once the host acknowledged it (no grace period)', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c', 'd']) sim.register(h);
    sim.controller();
    await sim.settleTerm();
    for (const h of ['a', 'd']) await setHostHold(sim.store, sim.clock, h, true, 1000);
    await sim.run(500);
    expect(sim.record('a')!.holdSeen).toBe(true);
    // a: released, but its agent has not acknowledged the release when it detaches -> still held
    sim.noAck.add('a');
    await setHostHold(sim.store, sim.clock, 'a', false, 1000);
    // d: released and acknowledged right away -> fenced on schedule, however recent the release
    await setHostHold(sim.store, sim.clock, 'd', false, 1000);
    await sim.run(200);
    expect(sim.record('d')).toMatchObject({ hold: false, holdSeen: false });
    for (const h of ['a', 'd']) {
      sim.store.revokeLease(sim.live.get(h)!);
      sim.cut(h);
    }
    await sim.until(() => sim.record('a')?.state === 'detached' && sim.record('d')?.state === 'detached', 1000);
    expect(sim.record('a')!.heldAtDetach).toBe(true);
    expect(sim.record('d')!.heldAtDetach).toBe(false);
    await sim.run(3 * T.fenceWindow, undefined, 500);
    expect(sim.record('a')!.state).toBe('detached');
    expect(sim.record('d')!.state).toBe('fenced');
    expect(sim.events('host-fence-blocked', 'a')[0]).toMatchObject({ blockers: ['held', 'held-at-detach'] });
  });

  it('hold protocol: setHostHold waits (bounded) for the acknowledgement and says whether it came', async () => {
    sim = new Sim();
    for (const h of ['a', 'b']) sim.register(h);
    const wait = (hostId: string, hold: boolean) => {
      const p = setHostHold(sim.store, sim.clock, hostId, hold, 1000, { wait: true, timeoutMs: 5000, pollMs: 100 });
      return Promise.all([p, sim.run(6000)]).then(([r]) => r);
    };
    const ok = await wait('a', true);
    expect(ok).toMatchObject({ acknowledged: true, shown: 'held', notes: [] });
    sim.noAck.add('b');
    const not = await wait('b', true);
    expect(not).toMatchObject({ acknowledged: false, shown: 'hold not acked' });
    expect(not.notes.join(' ')).toMatch(/NOT honoured yet/);
    const released = await wait('a', false);
    expect(released).toMatchObject({ acknowledged: true, shown: 'no' });
    sim.store.revokeLease(sim.live.get('b')!);
    sim.cut('b');
    await sim.run(T.ttl);
    sim.store.putRaw('hosts/b/record', { ...sim.record('b')!, state: 'detached' });
    // a detached host cannot acknowledge: no wait at all (the fake clock is not advanced here), and it says so
    const detached = await setHostHold(sim.store, sim.clock, 'b', true, 1000, { wait: true });
    expect(detached.acknowledged).toBe(false);
    expect(detached.notes.join(' ')).toMatch(/cannot acknowledge this hold, so the hold is NOT honoured/);
  });

  it('never: a host publishing unsafe timings is flagged and never fenced automatically', async () => {
    sim = new Sim();
    for (const h of ['b', 'c']) sim.register(h);
    sim.register('bad', { timings: { ...T, fenceWindow: 0 } });
    const c = sim.controller();
    await sim.run(500);
    expect(sim.events('host-unsafe-timings', 'bad')).toHaveLength(1);
    expect(sim.events('host-unsafe-timings', 'bad')[0]).toMatchObject({ violations: expect.stringMatching(/ttl \+ fenceWindow/) });
    sim.cut('bad');
    await sim.until(() => sim.record('bad')?.state === 'detached', T.ttl + 1000);
    await sim.run(10 * T.fenceWindow, undefined, 1000);
    expect(sim.record('bad')!.state).toBe('detached');
    expect(sim.events('host-fenced')).toEqual([]);
    expect(sim.events('host-fence-blocked', 'bad')[0]).toMatchObject({ blockers: ['unsafe-timings'] });
    expect(c.view().status!.hosts.find((h) => h.hostId === 'bad')).toMatchObject({ blocked: 'unsafe-timings', unsafeTimings: expect.any(String) });
    const published = await sim.store.getStatus(1000);
    expect(published!.hosts.find((h) => h.hostId === 'bad')?.blocked).toBe('unsafe-timings');
  });
});

describe('controller: many hosts at once', () => {
  it('detaches 40 of 80 hosts expiring together (concurrent txns, bounded), fences each exactly once at its deadline', async () => {
    sim = new Sim();
    const ids = Array.from({ length: 80 }, (_, i) => `h${String(i).padStart(2, '0')}`);
    for (const h of ids) sim.register(h);
    sim.controller();
    await sim.settleTerm();
    const cut = ids.slice(0, 40);
    for (const h of cut) {
      sim.store.revokeLease(sim.live.get(h)!);
      sim.cut(h);
    }
    await sim.until(() => cut.every((h) => sim.record(h)?.state === 'detached'), 1000);
    for (const h of cut) expect(sim.record(h)!.fenceDeadline! - sim.record(h)!.detachedAt!).toBe(T.fenceWindow);
    expect(sim.events('fence-deadline-extended')).toEqual([]);
    await sim.until(() => cut.every((h) => sim.record(h)?.state === 'fenced'), T.fenceWindow + 1000);
    await sim.run(2 * T.fenceWindow, undefined, 1000);
    expect(sim.events('host-detached')).toHaveLength(40);
    expect(sim.events('host-fenced')).toHaveLength(40);
    expect(ids.slice(40).every((h) => sim.record(h)!.state === 'attached')).toBe(true);
  });
});

describe('controller: watch errors', () => {
  it('re-lists after a watch error and misses nothing that changed meanwhile', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller();
    await sim.settleTerm();
    expect(sim.store.openWatches).toBe(2); // hosts/ and vms/
    sim.store.failWatches();
    // the lease goes while no watch is open: only the re-list can reveal it
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 3000);
    expect(sim.store.openWatches).toBe(2);
    await sim.until(() => sim.record('a')?.state === 'fenced', T.fenceWindow + 1000);
    expect(sim.events('host-fenced')).toHaveLength(1);
  });
});

describe('controller: mass-disruption freeze', () => {
  it('fences nothing while more than 55 % are detached, and resumes only a full window after the share falls back', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.putVm('v1', { hostId: 'a', hostEpoch: 1 });
    const c = sim.controller();
    await sim.run(500);
    for (const h of ['a', 'b']) {
      sim.store.revokeLease(sim.live.get(h)!);
      sim.cut(h);
    }
    await sim.until(() => sim.record('a')?.state === 'detached' && sim.record('b')?.state === 'detached', 1000);
    expect(sim.events('freeze-entered')).toHaveLength(1);
    expect(c.view().status!.freeze).toMatchObject({ mode: 'frozen', detached: 2, total: 3, reason: expect.stringMatching(/2 of 3 hosts detached/) });
    await sim.run(6 * T.fenceWindow, undefined, 500);
    expect(sim.events('host-fenced')).toEqual([]);
    expect(sim.vm('v1')!.phase).toBe('running');

    sim.register('b'); // b comes back: 1 of 3 detached
    const fellBack = await sim.until(() => sim.events('freeze-lifted').length === 1, 1000);
    const lifted = sim.events('freeze-lifted')[0] as Extract<ClusterEvent, { kind: 'freeze-lifted' }>;
    expect(lifted.resumeAt - fellBack).toBeGreaterThanOrEqual(T.fenceWindow - 100);
    let firstFenced: number | undefined;
    await sim.run(T.fenceWindow + 1000, () => {
      if (firstFenced === undefined && sim.record('a')?.state === 'fenced') firstFenced = sim.clock.now();
    });
    expect(firstFenced).toBeDefined();
    expect(firstFenced!).toBeGreaterThanOrEqual(lifted.resumeAt);
    expect(sim.events('freeze-resumed')).toHaveLength(1);
    expect(sim.events('host-fenced')).toHaveLength(1);
    expect(sim.vm('v1')!.phase).toBe('pending');
  });
});

describe('controller: election and failover', () => {
  it('one leader among replicas; a takeover inside the window fences at takeover + full window, not earlier, once', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    const c1 = sim.controller();
    await sim.run(300);
    const c2 = sim.controller();
    await sim.settleTerm();
    expect([c1.isLeader, c2.isLeader]).toEqual([true, false]);

    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    const recorded = sim.record('a')!.fenceDeadline!;
    await sim.run(4000);
    await c1.stop(); // crash: no resign, the leader lease expires after its TTL
    const takeover = await sim.until(() => c2.isLeader, 5000, 50);
    let firstFenced: number | undefined;
    await sim.until(() => {
      if (firstFenced === undefined && sim.record('a')?.state === 'fenced') firstFenced = sim.clock.now();
      return firstFenced !== undefined;
    }, 2 * T.fenceWindow, 50);
    const expected = Math.max(recorded, takeover + T.fenceWindow);
    expect(expected).toBeGreaterThan(recorded); // the takeover rule lengthened the window here
    expect(firstFenced!).toBeGreaterThanOrEqual(expected - 50); // takeover observed up to one step late
    expect(firstFenced! - expected).toBeLessThanOrEqual(150);
    await sim.run(3 * T.fenceWindow, undefined, 1000);
    expect(sim.events('host-fenced')).toHaveLength(1);
    expect(sim.events('fence-deadline-extended', 'a')).toHaveLength(1);
    expect(sim.events('controller-elected').map((e) => ('controllerId' in e ? e.controllerId : ''))).toEqual(['c1', 'c2']);
  });

  it('a takeover keeps a recorded deadline that is later than its own full window', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    const c1 = sim.controller({ fenceWindowOverride: 40_000 });
    await sim.run(300);
    const c2 = sim.controller();
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'detached', 1000);
    const recorded = sim.record('a')!.fenceDeadline!;
    expect(recorded - sim.record('a')!.detachedAt!).toBe(40_000);
    await c1.stop();
    await sim.until(() => c2.isLeader, 5000);
    let firstFenced: number | undefined;
    await sim.run(45_000, () => {
      if (firstFenced === undefined && sim.record('a')?.state === 'fenced') firstFenced = sim.clock.now();
    }, 200);
    expect(firstFenced!).toBeGreaterThanOrEqual(recorded);
    expect(firstFenced! - recorded).toBeLessThanOrEqual(300);
    expect(sim.events('fence-deadline-extended')).toEqual([]);
    expect(sim.events('host-fenced')).toHaveLength(1);
  });

  it.each([['refuses at once', 'refuse'], ['hangs until each call deadline', 'hang']] as const)('a leader whose store %s steps down before its lease could expire', async (_what, noQuorum) => {
    sim = new Sim({ noQuorum });
    sim.register('a');
    const c = sim.controller({ leaderTtl: 3000 });
    await sim.run(500);
    expect(c.isLeader).toBe(true);
    sim.store.unavailable = true;
    let steppedDownAfter: number | undefined;
    const t0 = sim.clock.nowMono();
    await sim.run(4000, () => {
      if (steppedDownAfter === undefined && !c.isLeader) steppedDownAfter = sim.clock.nowMono() - t0;
    });
    expect(steppedDownAfter).toBeDefined();
    expect(steppedDownAfter!).toBeLessThan(3000);
  });

  it('a resigning leader hands over within the campaign interval', async () => {
    sim = new Sim();
    sim.register('a');
    const c1 = sim.controller();
    await sim.run(300);
    const c2 = sim.controller();
    await sim.run(500);
    await c1.stop({ resign: true });
    await sim.until(() => c2.isLeader, 1500);
  });
});

describe('controller: host-record GC and event retention', () => {
  it('retires a host fenced and absent longer than hostRecordTtl, then removes it; keeps events bounded', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller({ hostRecordTtl: 60_000, retiredRemoveAfter: 10_000, gcInterval: 5_000, eventRetention: 5 });
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim.record('a')?.state === 'fenced', T.fenceWindow + 1000);
    const fencedAt = sim.clock.now();
    await sim.until(() => sim.record('a')?.state === 'retired', 70_000, 500);
    expect(sim.clock.now() - fencedAt).toBeGreaterThanOrEqual(60_000);
    await sim.until(() => sim.record('a') === undefined, 20_000, 500);
    expect(sim.record('b')!.state).toBe('attached');
    await sim.run(6000, undefined, 500);
    expect(sim.store.allEvents().length).toBeLessThanOrEqual(6);
  });
});
