/**
 * Fencing any host size (issue 7, item 4), non-retryable errors, and etcd 3.4's early lease revoke
 * (item 6), on the fake clock and the in-memory store — which refuses txns over etcd's limits exactly
 * as etcd counts them (compares, success ops and failure ops each <= --max-txn-ops).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_TXN_LIMITS, estimateTxnBytes, txnLimitProblem, txnOpCounts, type ClusterChange, type TxnLimits, type VmEntry } from '../../src/domain/cluster-change.js';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { fenceChange, LOST_VMS_LISTED, vmsLostChanges } from '../../src/domain/fence-changes.js';
import { TetherError } from '../../src/domain/errors.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { operatorFence } from '../../src/controller/operator.js';
import type { Change, CommitResult } from '../../src/ports/controller-store.js';
import { rec } from '../support/controller-step.js';
import { expectCode } from '../support/expect-code.js';
import { Sim, spec, T } from '../support/controller-sim.js';
import { ModelControllerStore } from '../support/model-cluster.js';

let sim: Sim | undefined;
afterEach(async () => {
  await sim?.stop();
  sim = undefined;
});

const hostRec = (over: Partial<HostRecord> = {}): HostRecord => rec('a', { state: 'fenced', epoch: 2, ...over });
const vmRec = (name: string, over: Partial<ClusterVmRecord> = {}): ClusterVmRecord => ({ uid: `u-${name}`, spec: spec(name), hostId: 'a', hostEpoch: 2, phase: 'running', generation: 1, ...over });
const entries = (n: number, over: Partial<ClusterVmRecord> = {}): VmEntry[] =>
  Array.from({ length: n }, (_, i) => {
    const name = `vm${String(i).padStart(4, '0')}`;
    return { key: `ns/${name}`, record: vmRec(name, over), revision: String(10 + i) };
  });
const fits = (c: ClusterChange, leader: boolean, limits: TxnLimits = DEFAULT_TXN_LIMITS) => txnLimitProblem(txnOpCounts(c, leader), estimateTxnBytes(c, leader), limits) === undefined;

/** The store over the etcd model, counting commits per host and optionally failing lost-marking txns (a controller that dies mid-fence). */
class CountingStore extends ModelControllerStore {
  readonly commitsByHost = new Map<string, number>();
  failMarkLost = false;
  override async commit(change: Change, deadlineMs: number): Promise<CommitResult> {
    for (const id of new Set([...(change.hosts ?? []).map((h) => h.hostId), ...(change.guards ?? []).map((g) => g.hostId)])) this.commitsByHost.set(id, (this.commitsByHost.get(id) ?? 0) + 1);
    if (this.failMarkLost && (change.events ?? []).some((e) => e.kind === 'host-vms-lost')) throw new TetherError('UNAVAILABLE', 'simulated etcd outage', { retryable: true });
    return super.commit(change, deadlineMs);
  }
}

describe('txn size as etcd counts it', () => {
  it('compares, success ops and failure ops are each bounded, not their sum', () => {
    const vms = (n: number) => Array.from({ length: n }, (_, i) => ({ key: `ns/v${i}`, expectRevision: '1', prevHostId: null, next: null }));
    // 127 VM writes + leadership compare = 128 compares, 127 deletes: fits (the old sum rule said 255 > 128)
    expect(txnOpCounts({ vms: vms(127) }, true)).toEqual({ compares: 128, success: 127, failure: 0 });
    expect(txnLimitProblem(txnOpCounts({ vms: vms(127) }, true), 0, DEFAULT_TXN_LIMITS)).toBeUndefined();
    expect(txnLimitProblem(txnOpCounts({ vms: vms(128) }, true), 0, DEFAULT_TXN_LIMITS)).toMatch(/129 compares.*128 of each/);
    expect(txnOpCounts({ hosts: [{ hostId: 'a', expectRevision: '1', requireAliveAbsent: true, next: null }] }, false)).toEqual({ compares: 2, success: 1, failure: 0 });
    expect(txnLimitProblem({ compares: 1, success: 1, failure: 0 }, 2_000_000, DEFAULT_TXN_LIMITS)).toMatch(/bytes/);
  });

  it('the store refuses a txn over the limits with a NON-retryable error, like etcd', async () => {
    const store = new ModelControllerStore(new Sim().clock);
    // each placed create is 2 success ops (the record and its per-host index copy): 65 -> 130 > 128
    const change: ClusterChange = { vms: Array.from({ length: 65 }, (_, i) => ({ key: `ns/v${i}`, expectRevision: null, prevHostId: null, next: vmRec(`v${i}`) })) };
    const err = await expectCode(store.commit(change, 1000), 'FAILED_PRECONDITION');
    expect(err.retryable).toBe(false);
    expect((await store.commit({ vms: change.vms!.slice(0, 64) }, 1000)).ok).toBe(true);
  });
});

describe('the fence builders', () => {
  it('the fence txn has a constant size whatever the number of VMs', () => {
    for (const n of [0, 1, 61, 62, 500, 10_000]) {
      const { change, next } = fenceChange({ hostId: 'a', record: hostRec({ state: 'detached' }), revision: '7', nowWall: 1, by: 'controller', pendingVms: entries(n).map((v) => v.key) });
      expect(next.state).toBe('fenced');
      expect(txnOpCounts(change, true)).toEqual({ compares: 3, success: 2, failure: 0 });
      const ev = change.events![0] as Extract<ClusterEvent, { kind: 'host-fenced' }>;
      expect(ev.lostVmCount).toBe(n);
      expect(ev.lostVms.length).toBe(Math.min(n, LOST_VMS_LISTED));
    }
  });

  it('500 VMs: batches within the limits, each VM exactly once, each guarded by the fenced record', () => {
    const vms = [
      ...entries(500),
      { key: 'ns/other', record: vmRec('other', { hostId: 'b' }), revision: '1' },
      { key: 'ns/newer', record: vmRec('newer', { hostEpoch: 3 }), revision: '1' },
      { key: 'ns/gone', record: vmRec('gone', { phase: 'lost' }), revision: '1' },
      { key: 'ns/older', record: vmRec('older', { hostEpoch: 1 }), revision: '1' },
    ];
    for (const leader of [true, false]) {
      const plan = vmsLostChanges({ hostId: 'a', record: hostRec(), revision: '99', vms, nowWall: 5, by: 'controller', limits: DEFAULT_TXN_LIMITS, leader });
      expect(plan.oversized).toEqual([]);
      // success ops bound it: the event + 2 per VM (the record and its per-host index copy) <= 128
      expect(plan.changes.length).toBe(Math.ceil(501 / 63));
      const seen: string[] = [];
      for (const c of plan.changes) {
        expect(fits(c, leader)).toBe(true);
        expect(c.guards).toEqual([{ hostId: 'a', expectRevision: '99' }]);
        for (const w of c.vms!) expect(w.next).toMatchObject({ phase: 'lost', generation: 2, reason: 'host a fenced at epoch 2' });
        const ev = c.events![0] as Extract<ClusterEvent, { kind: 'host-vms-lost' }>;
        expect(ev.vms).toEqual(c.vms!.map((w) => w.key));
        seen.push(...c.vms!.map((w) => w.key));
      }
      expect(seen.sort()).toEqual([...entries(500).map((v) => v.key), 'ns/older'].sort());
      expect(new Set(seen).size).toBe(seen.length);
    }
  });

  it('small limits (ops and bytes) give more, smaller batches; a VM too large for any txn is reported, not batched', () => {
    const big = { key: 'ns/huge', record: vmRec('huge', { spec: { ...spec('huge'), labels: { blob: 'x'.repeat(20_000) } } }), revision: '1' };
    const limits: TxnLimits = { maxOps: 10, maxBytes: 16_384 };
    const plan = vmsLostChanges({ hostId: 'a', record: hostRec(), revision: '9', vms: [...entries(40), big], nowWall: 5, by: 'operator', limits, leader: true });
    expect(plan.oversized).toEqual(['ns/huge']);
    expect(plan.pending).toHaveLength(41);
    for (const c of plan.changes) {
      expect(fits(c, true, limits)).toBe(true);
      expect(c.vms!.length).toBeLessThanOrEqual(8); // leadership + host guard + 8 VMs = 10 compares
    }
    expect(plan.changes.flatMap((c) => c.vms!.map((w) => w.key))).toHaveLength(40);
  });

  it('nothing for a record that is not fenced (the guard is "fenced at that epoch")', () => {
    for (const state of ['attached', 'detached', 'ready', 'retired'] as const) {
      expect(vmsLostChanges({ hostId: 'a', record: hostRec({ state }), revision: '9', vms: entries(3), nowWall: 5, by: 'controller', limits: DEFAULT_TXN_LIMITS, leader: true }).changes).toEqual([]);
    }
  });
});

/** A three-host cluster where host `a` holds `n` VM records (lightweight: they exist only in the store). */
async function bigHost(n: number, s: Sim): Promise<void> {
  for (const h of ['a', 'b', 'c']) s.register(h);
  for (let i = 0; i < n; i++) s.putVm(`vm${String(i).padStart(4, '0')}`, { hostId: 'a', hostEpoch: 1 });
}

const lostOf = (s: Sim, host = 'a') =>
  s.store.allEvents().filter((e): e is Extract<ClusterEvent, { kind: 'host-vms-lost' }> => e.kind === 'host-vms-lost' && e.hostId === host).flatMap((e) => e.vms);

describe('controller: a host with 500 VMs', () => {
  it('is fenced at its deadline and every VM is marked lost, each txn within etcd limits', async () => {
    sim = new Sim();
    await bigHost(500, sim);
    sim.controller();
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'detached', 1000);
    const deadline = sim.record('a')!.fenceDeadline!;
    let fencedAt: number | undefined;
    let allLostAt: number | undefined;
    await sim.run(T.fenceWindow + 2000, () => {
      if (fencedAt === undefined && sim!.record('a')?.state === 'fenced') fencedAt = sim!.clock.now();
      if (allLostAt === undefined && lostOf(sim!).length === 500) allLostAt = sim!.clock.now();
    });
    expect(fencedAt).toBeGreaterThanOrEqual(deadline);
    expect(fencedAt! - deadline).toBeLessThanOrEqual(200);
    expect(allLostAt! - fencedAt!).toBeLessThanOrEqual(100); // same step on the fake clock
    const fenced = sim.events('host-fenced', 'a') as Extract<ClusterEvent, { kind: 'host-fenced' }>[];
    expect(fenced).toHaveLength(1);
    expect(fenced[0]).toMatchObject({ by: 'controller', lostVmCount: 500 });
    expect(fenced[0]!.lostVms).toHaveLength(LOST_VMS_LISTED);
    const lost = lostOf(sim);
    expect(new Set(lost).size).toBe(500);
    expect(sim.events('host-vms-lost', 'a')).toHaveLength(8); // ceil(500 / 63): each VM is 2 success ops (record + per-host index copy)
    for (const v of await sim.store.listVms(1000)) expect(v.record.phase === 'lost' || v.record.hostId !== 'a').toBe(true);
    expect(sim.events('controller-error')).toEqual([]);
    // never twice: nothing is marked again later
    await sim.run(3 * T.fenceWindow, undefined, 1000);
    expect(lostOf(sim)).toHaveLength(500);
  });

  it('a controller that dies between the fence and the lost-marking: the next leader finishes (and marks nothing twice)', async () => {
    let store: CountingStore | undefined;
    sim = new Sim({}, (clock, opts) => (store = new CountingStore(clock, '/tether/', opts)));
    await bigHost(300, sim);
    const c1 = sim.controller();
    await sim.settleTerm();
    store!.failMarkLost = true; // every lost-marking txn of c1 fails: as if it crashed right after the fence
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'fenced', T.fenceWindow + 1000);
    expect(lostOf(sim)).toEqual([]);
    await c1.stop(); // crash: no resign
    store!.failMarkLost = false;
    const c2 = sim.controller();
    await sim.until(() => c2.isLeader, 5000);
    await sim.until(() => lostOf(sim!).length === 300, 2000);
    expect(new Set(lostOf(sim)).size).toBe(300);
    for (const v of await sim.store.listVms(1000)) if (v.record.hostId === 'a') expect(v.record.phase).toBe('lost');
    expect(sim.events('host-fenced', 'a')).toHaveLength(1);
  });

  it('operator fence of a 500-VM host goes through the same builders; running it again is a no-op', async () => {
    sim = new Sim();
    await bigHost(500, sim);
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    const res = await operatorFence(sim.store, sim.clock, 'a', 1000);
    expect(res).toMatchObject({ alreadyFenced: false, pendingVms: [] });
    expect(res.lostVms).toHaveLength(500);
    expect(sim.record('a')!.state).toBe('fenced');
    expect(sim.events('host-fenced', 'a')).toEqual([expect.objectContaining({ by: 'operator', lostVmCount: 500 })]);
    expect(sim.events('host-vms-lost', 'a').every((e) => 'by' in e && e.by === 'operator')).toBe(true);
    expect(new Set(lostOf(sim)).size).toBe(500);
    const again = await operatorFence(sim.store, sim.clock, 'a', 1000);
    expect(again).toMatchObject({ alreadyFenced: true, lostVms: [], pendingVms: [] });
  });
});

describe('controller: non-retryable errors are reported, not retried forever', () => {
  it('a detach txn too large for the store: error event, status line, error log, and no retry loop', async () => {
    let store: CountingStore | undefined;
    sim = new Sim({ txnLimits: { maxOps: 128, maxBytes: 8192 } }, (clock, opts) => (store = new CountingStore(clock, '/tether/', opts)));
    for (const h of ['a', 'b', 'c']) sim.register(h);
    const rec = sim.record('a')!;
    sim.store.putRaw('hosts/a/record', { ...rec, labels: { blob: 'x'.repeat(9000) } });
    const c = sim.controller({ retryDelay: 100 });
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.run(10 * T.fenceWindow, undefined, 500);
    expect(sim.record('a')!.state).toBe('attached');
    expect(store!.commitsByHost.get('a')).toBe(1);
    expect(sim.events('controller-error')).toEqual([expect.objectContaining({ hostId: 'a', action: 'detach', code: 'FAILED_PRECONDITION' })]);
    expect(c.view().status!.failures).toEqual([expect.objectContaining({ hostId: 'a', action: 'detach', message: expect.stringMatching(/txn too large/) })]);
    expect(sim.logs.filter((l) => l.startsWith('error ') && l.includes('cannot succeed by retrying'))).toHaveLength(1);
    // the record changes (an operator trims it): the controller tries again, and this time it works;
    // the window still counts from the loss it observed long ago, so the fence follows at once
    sim.store.putRaw('hosts/a/record', { ...rec });
    await sim.until(() => sim!.record('a')?.state === 'fenced', 2000);
    const det = sim.events('host-detached', 'a')[0] as Extract<ClusterEvent, { kind: 'host-detached' }>;
    expect(det.fenceDeadline).toBeLessThanOrEqual(sim.clock.now() - 5 * T.fenceWindow);
  });

  it('a VM record too large to mark lost is reported once; every other VM is marked', async () => {
    sim = new Sim({ txnLimits: { maxOps: 128, maxBytes: 16_384 } });
    await bigHost(20, sim);
    sim.putVm('huge', { hostId: 'a', hostEpoch: 1, spec: { ...spec('huge'), labels: { blob: 'x'.repeat(20_000) } } });
    sim.controller();
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => lostOf(sim!).length === 20, T.fenceWindow + 2000);
    await sim.run(3 * 60_000, undefined, 1000); // several sweeps
    expect(sim.vm('huge')!.phase).toBe('running');
    expect(sim.events('controller-error')).toEqual([expect.objectContaining({ hostId: 'a', action: 'mark-lost', code: 'FAILED_PRECONDITION', detail: expect.stringMatching(/ns\/huge/) })]);
  });

  it('a retryable failure is retried with backoff (not every second forever)', async () => {
    let store: CountingStore | undefined;
    sim = new Sim({}, (clock, opts) => (store = new CountingStore(clock, '/tether/', opts)));
    await bigHost(3, sim);
    sim.controller({ retryDelay: 1000, maxRetryDelay: 16_000 });
    await sim.settleTerm();
    store!.failMarkLost = true;
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'fenced', T.fenceWindow + 1000);
    const before = store!.commitsByHost.get('a')!;
    await sim.run(60_000, undefined, 500);
    const retries = store!.commitsByHost.get('a')! - before;
    // 1, 2, 4, 8, 16, 16, 16 s ... : at most 7 in a minute (a 1 s loop would be 60)
    expect(retries).toBeGreaterThanOrEqual(3);
    expect(retries).toBeLessThanOrEqual(7);
    store!.failMarkLost = false;
    await sim.until(() => lostOf(sim!).length === 3, 20_000, 500);
  });
});

describe('controller: etcd 3.4 early revoke after a leader change (#15247)', () => {
  it('a lease lost within one TTL after a raft term change: deadline = loss + ttl + window, and the event says why', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    const c = sim.controller();
    await sim.settleTerm();
    expect(c.view().status!.store).toMatchObject({ version: '3.4.23', assumption: expect.stringMatching(/known to revoke leases early/) });
    expect(sim.logs.some((l) => l.startsWith('info etcd 3.4.23: known to revoke leases early after a leader change'))).toBe(true);
    const term = sim.store.changeRaftTerm();
    await sim.run(2000); // the new term shows in the next headers
    sim.store.revokeLease(sim.live.get('a')!); // the deposed leader revokes a live host's lease
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'detached', 1000);
    const r = sim.record('a')!;
    expect(r.fenceDeadline! - r.detachedAt!).toBe(T.ttl + T.fenceWindow);
    const det = sim.events('host-detached', 'a')[0] as Extract<ClusterEvent, { kind: 'host-detached' }>;
    expect(det.termChange).toEqual({ term, extendedByMs: T.ttl });
    expect(det.detail).toMatch(/raft term change.*#15247/);
    let fencedAt: number | undefined;
    await sim.run(T.ttl + T.fenceWindow + 1000, () => {
      if (fencedAt === undefined && sim!.record('a')?.state === 'fenced') fencedAt = sim!.clock.now();
    });
    expect(fencedAt).toBeGreaterThanOrEqual(r.fenceDeadline!);
    expect(fencedAt! - r.fenceDeadline!).toBeLessThanOrEqual(200);
  });

  it('a term change seen shortly AFTER the loss lengthens the pending window too', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller();
    await sim.settleTerm();
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'detached', 1000);
    const r = sim.record('a')!;
    expect(r.fenceDeadline! - r.detachedAt!).toBe(T.fenceWindow);
    await sim.run(3000);
    sim.store.changeRaftTerm();
    await sim.run(500);
    const ext = sim.events('fence-deadline-extended', 'a');
    expect(ext).toEqual([expect.objectContaining({ why: 'raft-term-change', from: r.fenceDeadline, to: r.detachedAt! + T.ttl + T.fenceWindow })]);
    expect(sim.record('a')!.fenceDeadline).toBe(r.detachedAt! + T.ttl + T.fenceWindow);
    let fencedAt: number | undefined;
    await sim.run(T.ttl + T.fenceWindow, () => {
      if (fencedAt === undefined && sim!.record('a')?.state === 'fenced') fencedAt = sim!.clock.now();
    });
    expect(fencedAt).toBeGreaterThanOrEqual(r.detachedAt! + T.ttl + T.fenceWindow);
  });

  it('never: a term change more than one TTL away from the loss changes nothing', async () => {
    sim = new Sim();
    for (const h of ['a', 'b', 'c']) sim.register(h);
    sim.controller();
    await sim.settleTerm();
    sim.store.changeRaftTerm();
    await sim.run(T.ttl + 1000);
    sim.store.revokeLease(sim.live.get('a')!);
    sim.cut('a');
    await sim.until(() => sim!.record('a')?.state === 'detached', 1000);
    const r = sim.record('a')!;
    expect(r.fenceDeadline! - r.detachedAt!).toBe(T.fenceWindow);
    await sim.run(T.ttl + 1000); // a later term change, more than one TTL after the loss
    sim.store.changeRaftTerm();
    // no extension, but C4 (issue 11): no fence until ttl + electionTolerance + revokeSlack after that term change
    await sim.until(() => sim!.record('a')?.state === 'fenced', T.ttl + T.electionTolerance + 2000);
    expect(sim.events('fence-deadline-extended')).toEqual([]);
    expect((sim.events('host-detached', 'a')[0] as Extract<ClusterEvent, { kind: 'host-detached' }>).termChange).toBeUndefined();
  });
});
