/**
 * The controller's pure core beyond the fence: leadership, the reschedule sweep and placement, record
 * GC, events pruning and status — tables of (state, input) -> effects, no store and no clock.
 */
import { describe, expect, it } from 'vitest';
import { statusOf } from '../../src/domain/controller/status.js';
import { calls, conflict, Driver, entry, eventKinds, ok, ops, timersSet, vm, WALL0 } from '../support/controller-step.js';

describe('controller core: leadership', () => {
  it('campaigns at start; lost campaign -> again after the campaign interval', () => {
    const d = new Driver();
    const fx = d.input({ kind: 'start' });
    expect(ops(fx)).toEqual(['campaign']);
    expect(timersSet(d.reply(calls(fx)[0]!.req, { op: 'campaign', won: false }))).toEqual(['campaign@1000']);
  });

  it('elected: elected event, store version, host listing, keepalive and GC timers', () => {
    const d = new Driver();
    const fx = d.input({ kind: 'start' });
    const won = d.reply(calls(fx)[0]!.req, { op: 'campaign', won: true, ttlMs: 3000 });
    expect(ops(won)).toEqual(['commit:controller-elected', 'server-status', 'list-hosts', 'list-vms']);
    expect(timersSet(won)).toEqual(['keepalive@1000', 'leader-expiry@2500', 'gc@60000']);
  });

  // [what, keepalive answers at 1 s intervals, expected: step down at answer #]
  const rows: [string, ('alive' | 'lost' | 'miss')[], number | undefined][] = [
    ['acknowledged keepalives: stays leader', ['alive', 'alive', 'alive', 'alive'], undefined],
    ['the store says the lease is gone: steps down at once', ['alive', 'lost'], 1],
    ['misses: steps down before ttl - margin since the last acknowledged send', ['alive', 'miss', 'miss', 'miss'], 3],
  ];
  for (const [what, answers, downAt] of rows) {
    it(what, () => {
      const d = new Driver();
      d.leading([entry('a'), entry('b')], 0);
      let down: number | undefined;
      answers.forEach((a, i) => {
        if (down !== undefined) return;
        d.at((i + 1) * 1000);
        const ka = calls(d.fire('keepalive'), 'keep-leadership')[0]!;
        const fx = a === 'miss' ? d.fail(ka.req, { code: 'TIMEOUT', message: 'deadline', retryable: true }) : d.reply(ka.req, { op: 'keep-leadership', answer: a });
        if (fx.some((e) => e.kind === 'leadership-dropped')) down = i;
      });
      expect(down).toBe(downAt);
      expect(d.s.leader).toBe(downAt === undefined);
    });
  }

  it('after stepping down, outcomes of requests sent as leader are ignored, and its timers are cleared', () => {
    const d = new Driver();
    d.leading([entry('a', {}), entry('b'), entry('c')]);
    const det = calls(d.hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' }), 'commit')[0]!;
    const ka = calls(d.at(20_000).fire('keepalive'), 'keep-leadership')[0]!;
    const down = d.reply(ka.req, { op: 'keep-leadership', answer: 'lost' });
    expect(down.map((e) => e.kind)).toEqual(expect.arrayContaining(['leadership-dropped', 'close-watch', 'clear-timer']));
    expect(timersSet(down)).toEqual(['campaign@1000']);
    expect(d.reply(det.req, ok('102'))).toEqual([]);
  });
});

describe('controller core: reschedule sweep and placement', () => {
  const hosts = () => [entry('a', { state: 'fenced' }, { alive: false }), entry('b', {}, { rev: '11' }), entry('c', {}, { rev: '12' })];
  // [what, VMs in the cache, expected store ops of the sweep that follows the VM cache's sync]
  const rows: [string, ReturnType<typeof vm>[], string[]][] = [
    ['a lost VM (reschedule) asks for one fresh uid', [vm('v1', { phase: 'lost' })], ['new-uids']],
    ['a lost VM with restartPolicy none is noted once', [vm('v1', { phase: 'lost', restartPolicy: 'none' })], ['commit:vm-lost-kept']],
    ['... and not again', [vm('v1', { phase: 'lost', restartPolicy: 'none', reason: 'lost; restartPolicy none: left for the operator' })], []],
    ['no capacity: pending with the reason', [vm('big', { phase: 'lost', spec: { ...vm('x').record.spec, vcpu: 64 } })], ['commit:vm-pending']],
    ['a fenced host VM not marked lost (interrupted fence): marked first', [vm('v1')], ['commit:host-vms-lost']],
    ['running VMs elsewhere: nothing', [vm('v1', { hostId: 'b' })], []],
  ];
  for (const [what, vms, want] of rows) {
    it(what, () => {
      const d = new Driver();
      d.leading(hosts(), undefined, vms);
      expect(ops(d.lastSweep)).toEqual(want);
    });
  }

  it('placement: fresh uids, batched in one txn, each target host guarded by its record revision and its capacity guard', () => {
    const d = new Driver();
    d.leading(hosts(), undefined, [vm('v1', { phase: 'lost' }), vm('v2', { phase: 'lost' })]);
    const uids = calls(d.lastSweep, 'new-uids')[0]!;
    expect(uids.call).toEqual({ op: 'new-uids', count: 2 });
    const fx = d.reply(uids.req, { op: 'new-uids', uids: ['U1', 'U2'] });
    expect(ops(fx)).toEqual(['commit:vm-rescheduled']); // both in one txn
    const c = calls(fx, 'commit')[0]!.call;
    if (c.op !== 'commit') throw new Error('not a commit');
    expect(c.change.vms!.map((v) => v.next)).toEqual([expect.objectContaining({ uid: 'U1', phase: 'pending', hostEpoch: 1 }), expect.objectContaining({ uid: 'U2', phase: 'pending', hostEpoch: 1 })]);
    // spread: one on b, one on c (the capacity index counts the first before placing the second)
    expect(c.change.vms!.map((v) => v.next!.hostId).sort()).toEqual(['b', 'c']);
    expect(c.change.guards).toEqual(expect.arrayContaining([{ hostId: 'b', expectRevision: '11' }, { hostId: 'c', expectRevision: '12' }]));
    // the VM cache is complete up to its listing (revision 100): nothing placed on b or c after it
    expect(c.change.capacityGuards).toEqual(expect.arrayContaining([{ hostId: 'b', seenRevision: '100' }, { hostId: 'c', seenRevision: '100' }]));
    // a lost race is not retried at once: another sweep after the retry delay
    const lost = d.reply(calls(fx)[0]!.req, conflict);
    expect(timersSet(lost)).toContain('sweep-retry@1000');
    expect(d.s.reserved.size).toBe(0);
  });

  it('a committed placement is in the cache at once; the next placement onto that host is bounded by its own commit', () => {
    const d = new Driver();
    d.leading(hosts(), undefined, [vm('v1', { phase: 'lost' })]);
    const fx = d.reply(calls(d.lastSweep, 'new-uids')[0]!.req, { op: 'new-uids', uids: ['U1'] });
    const c = calls(fx, 'commit')[0]!;
    d.reply(c.req, ok('160'));
    const placed = d.s.vms.get('ns/v1')!;
    expect(placed).toMatchObject({ revision: '160', record: { uid: 'U1', phase: 'pending' } });
    const host = placed.record.hostId!;
    expect(d.s.capSeen.get(host)).toBe(160n);
    // the watch's copy of that write changes nothing
    d.vmBatch([{ kind: 'put', entry: placed }]);
    expect(d.s.capacity.used(host)).toEqual({ vcpu: 1, memoryMb: 128 });
  });

  it('the freeze holds placement (2 of 3 detached)', () => {
    const d = new Driver();
    d.leading([entry('a', { state: 'detached', detachedAt: WALL0, fenceDeadline: WALL0 + 1e9 }, { alive: false }), entry('b', { state: 'detached', detachedAt: WALL0, fenceDeadline: WALL0 + 1e9 }, { alive: false }), entry('c')], undefined, [vm('v1', { phase: 'lost' })]);
    expect(d.s.freeze.mode).toBe('frozen');
    expect(ops(d.lastSweep)).toEqual([]);
  });

  it('a VM of an older epoch on a host that rejoined ready is marked lost, then placed from the cache (no listing)', () => {
    const d = new Driver();
    d.leading([entry('a', { state: 'ready', epoch: 2 }), entry('b')], undefined, [vm('v1', { hostEpoch: 1 })]);
    expect(eventKinds(d.lastSweep)).toEqual(['vm-lost']);
    const fx = d.reply(calls(d.lastSweep)[0]!.req, ok('150'));
    expect(ops(fx)).toEqual(['new-uids']);
  });
});

describe('controller core: host-record GC and events pruning', () => {
  const DAY = 24 * 3_600_000;
  // [what, record state, age of updatedAt at the GC tick, alive, expected commits]
  const rows: [string, 'fenced' | 'retired' | 'attached', number, boolean, string[]][] = [
    ['fenced and absent past the TTL: retired', 'fenced', DAY + 1, false, ['commit:host-retired']],
    ['fenced, not yet: nothing', 'fenced', DAY - 1000, false, []],
    ['retired and absent 60 s: removed', 'retired', 61_000, false, ['commit:host-removed']],
    ['alive key present: never', 'fenced', 10 * DAY, true, []],
    ['attached: never', 'attached', 10 * DAY, true, []],
  ];
  for (const [what, state, age, alive, want] of rows) {
    it(what, () => {
      const d = new Driver();
      d.leading([entry('a', { state, updatedAt: WALL0 + 60_000 - age }, { alive }), entry('b')], 0);
      const fx = d.at(60_000).fire('gc');
      expect(ops(fx).filter((o) => o.startsWith('commit'))).toEqual(want);
      expect(ops(fx)).toContain('prune-events');
      expect(timersSet(fx)).toContain('gc@60000');
    });
  }
});

describe('controller core: status', () => {
  it('shows the fence deadline of a detached host, why a held one is blocked, and the freeze', () => {
    const d = new Driver();
    d.leading([
      entry('a', { state: 'detached', detachedAt: WALL0, fenceDeadline: WALL0 + 40_000 }, { alive: false }),
      entry('h', { state: 'detached', detachedAt: WALL0, fenceDeadline: WALL0 + 40_000, heldAtDetach: true }, { alive: false }),
      entry('b'),
      entry('c'),
      entry('e'),
    ], 30_000);
    const st = statusOf(d.s, d.now);
    expect(st.hosts).toEqual([
      { hostId: 'a', fenceAt: WALL0 + 40_000 },
      { hostId: 'h', blocked: 'held-at-detach' },
    ]);
    expect(st.freeze).toMatchObject({ mode: 'normal', detached: 2, total: 5 });
    expect(timersSet(d.lastSync)).toContain('status@250');
  });

  it('publishes only when the document changed', () => {
    const d = new Driver();
    d.leading([entry('a'), entry('b')]);
    const put = calls(d.at(20_000).fire('status'), 'put-status')[0]!;
    d.reply(put.req, { op: 'put-status' });
    d.at(21_000).hostEvent({ kind: 'record', hostId: 'a', record: { ...d.s.hosts.get('a')!.record!, agentVersion: 'u' }, revision: '120' });
    expect(calls(d.at(21_000).fire('status'), 'put-status')).toEqual([]);
  });
});
