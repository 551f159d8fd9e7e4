/**
 * The controller's pure core, fence path: detach, fence window, raft-term extension, takeover, the
 * fence txn and its re-checks — as tables of (state, input) -> effects, no store and no clock.
 */
import { describe, expect, it } from 'vitest';
import type { VmEntry } from '../../src/domain/cluster-change.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { calls, conflict, Driver, entry, eventKinds, events, ok, ops, T, timersSet, tooLarge, unavailable, vm, WALL0 } from '../support/controller-step.js';

const LOSS = 20_000; // mono of the loss in these tables (the first term was seen at 0: more than a TTL before)

/** Leader with a, b, c attached; `a` (with `over`) loses its lease at `LOSS`. Returns the detach step's effects. */
function lose(d: Driver, over: Partial<HostRecord> = {}, vms: VmEntry[] = []): ReturnType<Driver['input']> {
  d.leading([entry('a', over), entry('b'), entry('c')], undefined, vms);
  d.at(LOSS);
  return d.hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' });
}

/** {@link lose}, then the detach txn commits at revision 102. */
function detached(d: Driver, over: Partial<HostRecord> = {}, vms: VmEntry[] = []) {
  const fx = lose(d, over, vms);
  const det = calls(fx, 'commit')[0]!;
  const after = d.reply(det.req, ok('102'));
  return { fx, det, after, next: det.call.op === 'commit' ? det.call.change.hosts![0]!.next! : undefined };
}

describe('controller core: detach (lease gone -> detached with its deadline)', () => {
  // [what, record overrides, raft term seen at (mono) or none, expected deadline - loss, heldAtDetach]
  const rows: [string, Partial<HostRecord>, number | undefined, number, boolean][] = [
    ['attached, no term change', {}, undefined, T.fenceWindow, false],
    ['ready host', { state: 'ready' }, undefined, T.fenceWindow, false],
    ['term change 1 s before the loss: ttl on top (#15247)', {}, LOSS - 1000, T.ttl + T.fenceWindow, false],
    ['term change exactly one TTL before: still suspected', {}, LOSS - T.ttl, T.ttl + T.fenceWindow, false],
    ['term change more than one TTL before: plain window', {}, LOSS - T.ttl - 1, T.fenceWindow, false],
    ['acknowledged hold: held at detach', { hold: true, holdSeen: true }, undefined, T.fenceWindow, true],
    ['requested hold not acknowledged: not held', { hold: true }, undefined, T.fenceWindow, false],
  ];
  for (const [what, over, termAt, window, held] of rows) {
    it(what, () => {
      const d = new Driver();
      d.leading([entry('a', over), entry('b'), entry('c')]);
      if (termAt !== undefined) d.at(termAt).input({ kind: 'raft-term', term: 6, at: d.now });
      d.at(LOSS);
      const fx = d.hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' });
      expect(ops(fx)).toEqual(['commit:host-detached']);
      const c = calls(fx, 'commit')[0]!.call;
      if (c.op !== 'commit') throw new Error('not a commit');
      const w = c.change.hosts![0]!;
      expect(w).toMatchObject({ hostId: 'a', expectRevision: '10', requireAliveAbsent: true });
      expect(w.next).toMatchObject({ state: 'detached', detachedAt: WALL0 + LOSS, fenceDeadline: WALL0 + LOSS + window, heldAtDetach: held });
      expect(events(fx)[0]).toMatchObject({ kind: 'host-detached', fenceDeadline: WALL0 + LOSS + window });
    });
  }

  it('the fence timer is armed at the deadline on the monotonic clock, from the observed loss', () => {
    const d = new Driver();
    const { after } = detached(d);
    expect(timersSet(after)).toContain(`fence:a@${T.fenceWindow}`);
  });

  it('a held host is never armed: the blocked fence is reported once', () => {
    const d = new Driver();
    const { after } = detached(d, { hold: true, holdSeen: true });
    expect(timersSet(after).filter((t) => t.startsWith('fence:'))).toEqual([]);
    expect(eventKinds(after)).toEqual(['host-fence-blocked']);
    d.at(LOSS + 5 * T.fenceWindow);
    const again = d.hostEvent({ kind: 'record', hostId: 'a', record: { ...d.s.hosts.get('a')!.record!, hold: false }, revision: '103' });
    expect(eventKinds(again)).toEqual([]);
    expect(calls(again)).toEqual([]);
  });

  it('never: a blip (alive key back before the detach commits) makes the txn lose, and nothing is armed', () => {
    const d = new Driver();
    const fx = lose(d);
    d.hostEvent({ kind: 'alive', hostId: 'a', alive: { epoch: 1, agentVersion: 't', lease: 'l2' }, revision: '102' });
    const after = d.reply(calls(fx, 'commit')[0]!.req, conflict);
    expect(calls(after)).toEqual([]);
    expect(timersSet(after).filter((t) => t.startsWith('fence:'))).toEqual([]);
  });

  it('errors: non-retryable is reported once and not retried; retryable backs off', () => {
    const d = new Driver({ retryDelay: 1000 });
    const fx = lose(d);
    const after = d.fail(calls(fx, 'commit')[0]!.req, tooLarge);
    expect(eventKinds(after)).toEqual(['controller-error']);
    expect(after.filter((e) => e.kind === 'log' && e.level === 'error')).toHaveLength(1);
    expect(timersSet(after).filter((t) => t.startsWith('retry:'))).toEqual([]);
    expect(d.s.failures).toEqual([expect.objectContaining({ hostId: 'a', action: 'detach', code: 'FAILED_PRECONDITION' })]);

    const r = new Driver({ retryDelay: 1000 });
    const fx2 = lose(r);
    expect(timersSet(r.fail(calls(fx2, 'commit')[0]!.req, unavailable))).toContain('retry:a@1000');
    const again = r.at(LOSS + 1000).fire('retry:a');
    expect(timersSet(r.fail(calls(again, 'commit')[0]!.req, unavailable))).toContain('retry:a@2000');
  });
});

describe('controller core: the fence at the deadline', () => {
  // [what, mono at which the fence timer fires (relative to the deadline), expected ops, expected timers]
  const rows: [string, number, string[], string[]][] = [
    ['1 ms early: re-armed, nothing listed', -1, [], ['fence:a@1']],
    ['at the deadline: the host read first (constant size, for its raft term)', 0, ['get-host'], []],
    ['late: read at once', 5000, ['get-host'], []],
  ];
  for (const [what, offset, want, timers] of rows) {
    it(what, () => {
      const d = new Driver();
      detached(d);
      d.at(LOSS + T.fenceWindow + offset);
      const fx = d.fire('fence:a');
      expect(ops(fx)).toEqual(want);
      expect(timersSet(fx).filter((t) => t.startsWith('fence:'))).toEqual(timers);
    });
  }

  it('the read comes back: one constant-size fence txn guarded by the detached revision, then the lost-marking from the VM cache', () => {
    const d = new Driver();
    detached(d, {}, [vm('v1'), vm('v2'), vm('other', { hostId: 'b' })]);
    d.at(LOSS + T.fenceWindow);
    const list = calls(d.fire('fence:a'), 'get-host')[0]!;
    const fx = d.reply(list.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' });
    expect(ops(fx)).toEqual(['commit:host-fenced']);
    const c = calls(fx, 'commit')[0]!.call;
    if (c.op !== 'commit') throw new Error('not a commit');
    expect(c.change.hosts).toEqual([expect.objectContaining({ hostId: 'a', expectRevision: '102', requireAliveAbsent: true, next: expect.objectContaining({ state: 'fenced' }) })]);
    expect(events(fx)[0]).toMatchObject({ lostVms: ['ns/v1', 'ns/v2'], lostVmCount: 2, by: 'controller' });
    const after = d.reply(calls(fx, 'commit')[0]!.req, ok('103'));
    expect(ops(after)).toEqual(['commit:host-vms-lost']);
    const done = d.reply(calls(after, 'commit')[0]!.req, ok('104'));
    expect(ops(done)).toEqual(['new-uids']); // the sweep that follows the fence places v1 and v2 (no listing)
  });

  // Things that happen while the listing is in flight: the fence txn is not sent.
  const meanwhile: [string, (d: Driver) => void, string[]][] = [
    ['the host re-registered', (d) => d.hostEvent({ kind: 'alive', hostId: 'a', alive: { epoch: 1, agentVersion: 't', lease: 'l2' }, revision: '103' }), []],
    ['it acknowledged a hold (record changed)', (d) => d.hostEvent({ kind: 'record', hostId: 'a', record: { ...d.s.hosts.get('a')!.record!, holdSeen: true }, revision: '103' }), ['commit:host-fence-blocked']],
  ];
  for (const [what, act, want] of meanwhile) {
    it(`re-checked when the read comes back: ${what}`, () => {
      const d = new Driver();
      detached(d, {}, [vm('v1')]);
      d.at(LOSS + T.fenceWindow);
      const list = calls(d.fire('fence:a'), 'get-host')[0]!;
      act(d);
      const fx = d.reply(list.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' });
      expect(ops(fx)).toEqual(want);
    });
  }

  it('a raft term first seen in the pre-fence read, within one TTL of the loss: the window is lengthened instead of fencing', () => {
    const d = new Driver();
    detached(d);
    d.at(LOSS + T.fenceWindow);
    const list = calls(d.fire('fence:a'), 'get-host')[0]!;
    // the term change is seen now, a full window after the loss: too late to be near it, so no
    // extension; but C4 (issue 11): no fence until ttl + electionTolerance + revokeSlack after it
    const wait = T.ttl + T.electionTolerance + 1000 + 3;
    const fx = d.reply(list.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' }, 6);
    expect(ops(fx)).toEqual([]);
    expect(timersSet(fx)).toContain(`fence:a@${wait}`);
    expect(eventKinds(d.all)).not.toContain('fence-deadline-extended');
    d.at(LOSS + T.fenceWindow + wait);
    const again = calls(d.fire('fence:a'), 'get-host')[0]!;
    expect(ops(d.reply(again.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' }, 6))).toEqual(['commit:host-fenced']);

    const e = new Driver();
    detached(e);
    e.at(LOSS + T.ttl - 1000).input({ kind: 'raft-term', term: 6, at: e.now }); // seen within one TTL of the loss
    expect(e.s.hosts.get('a')!.fenceAtWall).toBe(WALL0 + LOSS + T.ttl + T.fenceWindow);
    expect(eventKinds(e.all)).toContain('fence-deadline-extended');
  });

  it('the mass-disruption freeze holds a due fence (2 of 3 hosts detached)', () => {
    const d = new Driver();
    detached(d);
    const fx = d.at(LOSS + 10).hostEvent({ kind: 'alive-deleted', hostId: 'b', revision: '110' });
    d.reply(calls(fx, 'commit')[0]!.req, ok('111'));
    d.at(LOSS + 200).fire('freeze-check');
    expect(d.s.freeze.mode).toBe('frozen');
    d.at(LOSS + T.fenceWindow);
    expect(ops(d.fire('fence:a'))).toEqual([]);
  });
});

describe('controller core: takeover of a pending fence', () => {
  // [what, recorded deadline relative to sync (wall), sync mono, expected timer, expected extension why]
  const rows: [string, number, number, string, string | undefined][] = [
    ['recorded deadline sooner than a full window: a full window from the takeover', 2000, 30_000, `fence:a@${T.fenceWindow}`, 'takeover'],
    ['recorded deadline later: kept', 20_000, 30_000, 'fence:a@20000', undefined],
    ['lost within one TTL of the first term seen: loss + ttl + window', 2000, 1000, `fence:a@${T.ttl + T.fenceWindow - 500}`, 'raft-term-change'],
  ];
  for (const [what, recordedIn, syncMono, timer, why] of rows) {
    it(what, () => {
      const d = new Driver();
      const wall = WALL0 + syncMono;
      const detachedAt = syncMono === 1000 ? WALL0 + 500 : wall - 8000;
      d.leading([entry('a', { state: 'detached', detachedAt, fenceDeadline: wall + recordedIn }, { alive: false }), entry('b'), entry('c')], syncMono);
      expect(timersSet(d.lastSync)).toContain(timer);
      const ext = events(d.lastSync).filter((e) => e.kind === 'fence-deadline-extended');
      expect(ext.map((e) => ('why' in e ? e.why : undefined))).toEqual(why ? [why] : []);
    });
  }

  it('never shortens: the extension write carries the later deadline and the timer follows it', () => {
    const d = new Driver();
    d.leading([entry('a', { state: 'detached', detachedAt: WALL0, fenceDeadline: WALL0 + 30_000 + 1000 }, { alive: false }), entry('b'), entry('c')], 30_000);
    const ext = calls(d.lastSync, 'commit').find((c) => c.call.op === 'commit' && c.call.change.hosts?.[0]?.hostId === 'a')!;
    if (ext.call.op !== 'commit') throw new Error('not a commit');
    expect(ext.call.change.hosts![0]!.next!.fenceDeadline).toBe(WALL0 + 30_000 + T.fenceWindow);
  });
});

describe('controller core: determinism', () => {
  it('the same inputs at the same times give the same effects', () => {
    const run = () => {
      const d = new Driver();
      detached(d, {}, [vm('v1'), vm('v2')]);
      d.at(LOSS + T.fenceWindow);
      const list = calls(d.fire('fence:a'), 'get-host')[0]!;
      const fx = d.reply(list.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' });
      d.reply(calls(fx, 'commit')[0]!.req, ok('103'));
      return JSON.stringify(d.all, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
    };
    expect(run()).toEqual(run());
  });
});
