import { describeEtcdAssumptions } from '../../src/domain/etcd-assumptions.js';
import { describe, expect, it } from 'vitest';
import {
  decideHost,
  describeFence,
  detachRecord,
  earlyRevokeSuspected,
  effectiveFenceWindow,
  fenceBlockers,
  fencedRecord,
  lossToFenceMs,
  takeoverFenceDeadline,
  timingProblems,
} from '../../src/domain/fence-window.js';
import { checkTimings, DEFAULT_TIMINGS, type GcTimings } from '../../src/domain/gc-timing.js';
import { hostGcAction } from '../../src/domain/host-record-gc.js';
import type { HostRecord, HostRecordState } from '../../src/domain/host-record.js';

const rec = (over: Partial<HostRecord> = {}): HostRecord => ({
  hostId: 'a',
  state: 'attached',
  epoch: 3,
  timings: DEFAULT_TIMINGS,
  hold: false,
  capacity: { vcpu: 4, memoryMb: 4096 },
  labels: {},
  agentVersion: 't',
  updatedAt: 0,
  ...over,
});
const UNSAFE: GcTimings = { ...DEFAULT_TIMINGS, fenceWindow: 0 };

describe('fence window: decideHost table', () => {
  // [state, alive, holdSeen (the hold the host acknowledged), heldAtDetach, timings, expected kind, blockers]
  const rows: [HostRecordState, boolean, boolean, boolean, GcTimings, string, string[]?][] = [
    ['attached', true, false, false, DEFAULT_TIMINGS, 'none'],
    ['attached', false, false, false, DEFAULT_TIMINGS, 'detach'],
    ['ready', true, false, false, DEFAULT_TIMINGS, 'none'],
    ['ready', false, false, false, DEFAULT_TIMINGS, 'detach'],
    ['attached', false, true, false, DEFAULT_TIMINGS, 'detach'], // held hosts are detached too (and flagged held at detach)
    ['attached', false, false, false, UNSAFE, 'detach'],
    ['detached', false, false, false, DEFAULT_TIMINGS, 'await-fence'],
    ['detached', true, false, false, DEFAULT_TIMINGS, 'await-return'],
    ['detached', false, true, false, DEFAULT_TIMINGS, 'never-fence', ['held']],
    ['detached', false, false, true, DEFAULT_TIMINGS, 'never-fence', ['held-at-detach']],
    ['detached', false, true, true, DEFAULT_TIMINGS, 'never-fence', ['held', 'held-at-detach']],
    ['detached', false, false, false, UNSAFE, 'never-fence', ['unsafe-timings']],
    ['detached', true, false, false, UNSAFE, 'await-return'],
    ['fenced', false, false, false, DEFAULT_TIMINGS, 'none'],
    ['fenced', true, false, false, DEFAULT_TIMINGS, 'none'],
    ['retired', false, false, false, DEFAULT_TIMINGS, 'none'],
  ];
  it.each(rows)('%s alive=%s holdSeen=%s heldAtDetach=%s -> %s', (state, alive, holdSeen, heldAtDetach, timings, kind, blockers) => {
    const d = decideHost(rec({ state, hold: holdSeen, holdSeen, heldAtDetach, timings }), alive);
    expect(d.kind).toBe(kind);
    if (blockers) expect(d).toEqual({ kind, blockers });
  });

  it('hold protocol: only the acknowledged hold (holdSeen) blocks the fence, never the requested one alone', () => {
    expect(decideHost(rec({ state: 'detached', hold: true, holdSeen: false }), false).kind).toBe('await-fence');
    expect(decideHost(rec({ state: 'detached', hold: false, holdSeen: true }), false)).toEqual({ kind: 'never-fence', blockers: ['held'] });
    expect(fenceBlockers(rec({ hold: true }))).toEqual([]);
  });

  it('an unknown host is left alone', () => {
    expect(decideHost(undefined, true).kind).toBe('none');
    expect(decideHost(undefined, false).kind).toBe('none');
  });

  it('never: no record with an alive key is ever detached or fenced, whatever else it says', () => {
    for (const state of ['attached', 'ready', 'detached', 'fenced', 'retired'] as const) {
      for (const hold of [false, true]) {
        for (const timings of [DEFAULT_TIMINGS, UNSAFE]) {
          const k = decideHost(rec({ state, hold, timings }), true).kind;
          expect(['detach', 'await-fence']).not.toContain(k);
        }
      }
    }
  });

  it('never: a blocked host is never await-fence', () => {
    for (const r of [rec({ state: 'detached', holdSeen: true }), rec({ state: 'detached', heldAtDetach: true }), rec({ state: 'detached', timings: UNSAFE })]) {
      expect(decideHost(r, false).kind).toBe('never-fence');
    }
  });
});

describe('fence window: timings and blockers', () => {
  it('missing or malformed published timings are unsafe', () => {
    expect(timingProblems(rec())).toBeUndefined();
    expect(timingProblems(rec({ timings: UNSAFE }))).toMatch(/ttl \+ fenceWindow/);
    expect(timingProblems({ timings: undefined as unknown as GcTimings })).toMatch(/no timings/);
    const { fenceWindow: _omitted, ...partial } = DEFAULT_TIMINGS;
    expect(timingProblems({ timings: partial as GcTimings })).toBeDefined();
    expect(fenceBlockers(rec({ timings: partial as GcTimings }))).toEqual(['unsafe-timings']);
  });

  it('the override only lengthens the window', () => {
    expect(effectiveFenceWindow({ fenceWindow: 10_000 })).toBe(10_000);
    expect(effectiveFenceWindow({ fenceWindow: 10_000 }, 30_000)).toBe(30_000);
    expect(effectiveFenceWindow({ fenceWindow: 10_000 }, 1_000)).toBe(10_000);
    expect(effectiveFenceWindow({ fenceWindow: Number.NaN }, 5_000)).toBe(5_000);
  });
});

describe('fence window: detachRecord', () => {
  it('sets detached, detachedAt = observed expiry, fenceDeadline = observed + published window, heldAtDetach = the ACKNOWLEDGED hold', () => {
    const r = detachRecord(rec({ updatedAt: 5 }), 1_000_000);
    expect(r).toMatchObject({ state: 'detached', detachedAt: 1_000_000, fenceDeadline: 1_000_000 + DEFAULT_TIMINGS.fenceWindow, heldAtDetach: false, epoch: 3 });
    // [hold requested, holdSeen, heldAtDetach]
    const holds: [boolean, boolean | undefined, boolean][] = [
      [false, undefined, false],
      [true, undefined, false], // requested, not acknowledged: the host does not apply it
      [true, false, false],
      [true, true, true],
      [false, true, true], // released, release not acknowledged: the host still applies the hold
    ];
    for (const [hold, holdSeen, held] of holds) {
      expect(detachRecord(rec({ hold, ...(holdSeen === undefined ? {} : { holdSeen }) }), 0).heldAtDetach).toBe(held);
    }
    expect(detachRecord(rec(), 0, { fenceWindowOverride: 60_000 }).fenceDeadline).toBe(60_000);
  });

  it('early revoke suspected: the deadline is observed + ttl + window (+ the override lengthening only the window)', () => {
    const T = DEFAULT_TIMINGS;
    expect(detachRecord(rec(), 1000, { earlyRevoke: true }).fenceDeadline).toBe(1000 + T.ttl + T.fenceWindow);
    expect(detachRecord(rec(), 1000, { earlyRevoke: true, fenceWindowOverride: 60_000 }).fenceDeadline).toBe(1000 + T.ttl + 60_000);
    expect(lossToFenceMs(T)).toBe(T.fenceWindow);
    expect(lossToFenceMs(T, { earlyRevoke: true })).toBe(T.ttl + T.fenceWindow);
    expect(lossToFenceMs({ ...T, ttl: Number.NaN }, { earlyRevoke: true })).toBe(T.fenceWindow);
  });

  it('early revoke: with the lease gone as early as lastAck (no ttl), observed + ttl + window still covers the self-fence', () => {
    for (const t of [DEFAULT_TIMINGS, { ...DEFAULT_TIMINGS, ttl: 2000, heartbeatInterval: 500, detachAfter: 1000, watchdogTimeout: 2500, stopGrace: 500, killTimeout: 500, clockDriftMargin: 500, electionTolerance: 2000, fenceWindow: 2000 }]) {
      expect(checkTimings(t)).toEqual([]);
      const lastAck = 100_000;
      const r = detachRecord(rec({ timings: t }), lastAck, { earlyRevoke: true }); // observed right at lastAck
      expect(r.fenceDeadline!).toBeGreaterThanOrEqual(lastAck + t.watchdogTimeout + t.stopGrace + t.killTimeout + t.clockDriftMargin);
      // without the extension the same early loss would be fenced too soon
      expect(detachRecord(rec({ timings: t }), lastAck).fenceDeadline!).toBeLessThan(lastAck + t.watchdogTimeout + t.stopGrace + t.killTimeout + t.clockDriftMargin);
    }
  });

  it('the deadline makes the cluster wait past the host self-fence: lastAck + ttl + window >= lastAck + selfFence + drift', () => {
    // For every safe timing set, with the earliest possible observed expiry (lastAck + ttl).
    const sets: GcTimings[] = [
      DEFAULT_TIMINGS,
      { ...DEFAULT_TIMINGS, ttl: 2000, heartbeatInterval: 500, detachAfter: 1000, watchdogTimeout: 2500, stopGrace: 500, killTimeout: 500, clockDriftMargin: 500, electionTolerance: 2000, fenceWindow: 2000 },
    ];
    for (const t of sets) {
      expect(checkTimings(t)).toEqual([]);
      const lastAck = 100_000;
      const r = detachRecord(rec({ timings: t }), lastAck + t.ttl);
      expect(r.fenceDeadline!).toBeGreaterThanOrEqual(lastAck + t.watchdogTimeout + t.stopGrace + t.killTimeout + t.clockDriftMargin);
    }
  });

  it('fencedRecord keeps the deadline for the record', () => {
    const d = detachRecord(rec(), 50);
    expect(fencedRecord(d, 99)).toMatchObject({ state: 'fenced', detachedAt: 50, fenceDeadline: d.fenceDeadline, updatedAt: 99 });
  });
});

describe('controller failover: the recorded deadline or a full window from takeover, whichever is later', () => {
  const W = 10_000;
  // [recorded, takeover, expected]
  const rows: [number | undefined, number, number][] = [
    [50_000, 30_000, 50_000], // recorded later than takeover + W (40 000)
    [50_000, 40_000, 50_000], // equal
    [50_000, 45_000, 55_000], // takeover + W later
    [50_000, 60_000, 70_000], // deadline already passed at takeover: still a full window
    [undefined, 60_000, 70_000], // no recorded deadline
    [Number.NaN, 60_000, 70_000],
  ];
  it.each(rows)('recorded %s, takeover %s -> %s', (recorded, takeover, expected) => {
    expect(takeoverFenceDeadline(recorded, takeover, W)).toBe(expected);
  });
  it('never shortens: the result is >= both bounds for any inputs', () => {
    for (let i = 0; i < 500; i++) {
      const recorded = Math.round(Math.random() * 1e6);
      const takeover = Math.round(Math.random() * 1e6);
      const w = Math.round(Math.random() * 1e5);
      const d = takeoverFenceDeadline(recorded, takeover, w);
      expect(d).toBeGreaterThanOrEqual(recorded);
      expect(d).toBeGreaterThanOrEqual(takeover + w);
    }
  });
});

describe('fence column of host list', () => {
  it('counts down, then says due; says never and why for blocked hosts', () => {
    const d = detachRecord(rec(), 0);
    expect(describeFence(d, false, 1000)).toBe('in 9s');
    expect(describeFence(d, false, 10_001)).toBe('due');
    expect(describeFence({ ...d, hold: true }, false, 0)).toBe('in 10s'); // requested, not acknowledged: blocks nothing
    expect(describeFence({ ...d, hold: true, holdSeen: true }, false, 0)).toBe('never (held)');
    expect(describeFence(rec(), false, 0)).toBe('lease gone');
    expect(describeFence(rec(), true, 0)).toBe('-');
  });
});

describe('host-record GC', () => {
  const opts = { ttl: 24 * 3_600_000, removeAfter: 60_000 };
  // [state, alive, age, expected]
  const rows: [HostRecordState, boolean, number, string | undefined][] = [
    ['fenced', false, opts.ttl - 1, undefined],
    ['fenced', false, opts.ttl, 'retire'],
    ['fenced', true, opts.ttl * 10, undefined],
    ['detached', false, opts.ttl * 10, undefined],
    ['attached', false, opts.ttl * 10, undefined],
    ['retired', false, 59_999, undefined],
    ['retired', false, 60_000, 'remove'],
    ['retired', true, opts.ttl * 10, undefined],
  ];
  it.each(rows)('%s alive=%s age=%s -> %s', (state, alive, age, expected) => {
    expect(hostGcAction({ state, updatedAt: 1000 }, alive, 1000 + age, opts)).toBe(expected);
  });
});

describe('etcd 3.4 early revoke: a lease lost within one TTL of a raft term change', () => {
  const TTL = 6000;
  // [loss, term change seen at (undefined: none), expected]
  const rows: [number, number | undefined, boolean][] = [
    [100_000, undefined, false],
    [100_000, 100_000, true], // same moment
    [100_000, 94_000, true], // change exactly one TTL before
    [100_000, 93_999, false], // more than one TTL before
    [100_000, 106_000, true], // change noticed one TTL after the loss (another response's header)
    [100_000, 106_001, false],
    [100_000, 99_500, true],
    [Number.NaN, 100_000, false],
  ];
  it.each(rows)('loss %s, term change seen %s -> %s', (loss, seen, expected) => {
    expect(earlyRevokeSuspected(loss, seen === undefined ? undefined : { term: 7, seenMono: seen }, TTL)).toBe(expected);
  });

  const versions: (string | undefined)[] = ['3.4.23', '3.4.31', '3.5.13', '3.6.0', 'v3.5.21', '4.0.0', '', undefined, 'garbage'];
  it.each(versions)('etcd %s: the assumption names the version and the guard is on whatever it is', (version) => {
    const line = describeEtcdAssumptions(version);
    expect(line).toMatch(/gets the TTL on top of its fence window/);
    expect(line).toMatch(/linearizable read/);
    if (version?.startsWith('3.4')) expect(line).toMatch(/known to revoke leases early/);
    if (version === undefined) expect(line).toMatch(/version unknown/);
  });
});
