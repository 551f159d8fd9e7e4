import { describe, expect, it } from 'vitest';
import { admissionRefusal, gcStatus, type GuardianView } from '../../src/domain/agent-status.js';
import { afterTransition } from '../../src/domain/agent-transition.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import { guardianFeedDue, guardianFireStartsFence, judgeGuardianCheck } from '../../src/domain/guardian-supervision.js';
import { heartbeatPhase, judgeKeepalive, type KeepaliveOutcome } from '../../src/domain/heartbeat.js';
import { nextHoldStep } from '../../src/domain/hold.js';
import { holdActions, holdReadCounts, holdSyncApplies, reapplyLocalHold, routeHoldRequest } from '../../src/domain/hold-sync.js';
import { initialHostState, type HostPhase, type HostState } from '../../src/domain/host-lifecycle.js';
import { decodeHostState, encodeHostState } from '../../src/domain/persisted-host-state.js';
import { FIRST_REGISTRATION_BACKOFF_MS, judgeRegistration, leaseGrantedEvent, registrationRetry, registrationWanted } from '../../src/domain/registration-loop.js';

const PHASES: HostPhase[] = ['starting', 'attached', 'suspect', 'detached', 'fencing', 'cleaning', 'clean', 'rejoining'];
const base = (phase: HostPhase, extra: Partial<HostState> = {}): HostState => ({ phase, epoch: 3, lastAck: 1000, held: false, heldAtDetach: false, ...extra });

describe('heartbeat decisions', () => {
  it.each(PHASES.map((p) => [p, p === 'attached' || p === 'suspect' || p === 'detached'] as const))('keepalives in %s: %s', (p, want) => {
    expect(heartbeatPhase(p)).toBe(want);
  });

  // [outcome, stale, acks before, expected event kind, drop lease, duplicateOf, acks after, poll hold]
  const rows: [KeepaliveOutcome, boolean, number, string | undefined, boolean, string | undefined, number, boolean][] = [
    [{ kind: 'alive' }, false, 0, 'heartbeat-acked', false, undefined, 1, false],
    [{ kind: 'alive' }, false, 4, 'heartbeat-acked', false, undefined, 5, true],
    [{ kind: 'alive' }, false, 9, 'heartbeat-acked', false, undefined, 10, true],
    [{ kind: 'alive' }, false, 5, 'heartbeat-acked', false, undefined, 6, false],
    // An answer for a lease the agent no longer holds says nothing: no ack, no count, no drop.
    [{ kind: 'alive' }, true, 4, undefined, false, undefined, 4, false],
    [{ kind: 'lease-lost', detail: 'gone' }, true, 2, undefined, false, undefined, 2, false],
    [{ kind: 'taken-over', detail: 'agent x' }, true, 2, undefined, false, undefined, 2, false],
    [{ kind: 'lease-lost', detail: 'gone' }, false, 2, 'lease-lost', true, undefined, 2, false],
    [{ kind: 'taken-over', detail: 'agent x' }, false, 2, 'taken-over', true, 'agent x', 2, false],
    // A miss is a miss whatever the lease (the safe side: suspect, never attached).
    [{ kind: 'no-answer' }, false, 4, 'heartbeat-missed', false, undefined, 4, false],
    [{ kind: 'no-answer' }, true, 4, 'heartbeat-missed', false, undefined, 4, false],
  ];
  it.each(rows)('%j stale=%s acks=%i -> %s', (outcome, stale, acks, event, drop, dup, acksAfter, poll) => {
    const v = judgeKeepalive(outcome, 777, stale, acks, 5);
    expect(v.event?.kind).toBe(event);
    if (v.event && 'sentAt' in v.event) expect(v.event.sentAt).toBe(777);
    expect(v.dropLease).toBe(drop);
    expect(v.duplicateOf).toBe(dup);
    expect(v.acks).toBe(acksAfter);
    expect(v.pollHold).toBe(poll);
  });

  it('never turns anything but a current alive answer into an acknowledgement', () => {
    const outcomes: KeepaliveOutcome[] = [{ kind: 'alive' }, { kind: 'lease-lost', detail: '' }, { kind: 'taken-over', detail: '' }, { kind: 'no-answer' }];
    for (const o of outcomes) for (const stale of [false, true]) {
      const acked = judgeKeepalive(o, 1, stale, 0, 5).event?.kind === 'heartbeat-acked';
      expect(acked).toBe(o.kind === 'alive' && !stale);
    }
  });
});

describe('transition follow-ups', () => {
  // [from, to, heartbeat, rejoined, fenceStarted]
  it.each([
    ['starting', 'attached', 'start', false, false],
    ['suspect', 'attached', 'start', false, false],
    ['detached', 'attached', 'start', false, false],
    ['rejoining', 'attached', 'start', true, false],
    ['clean', 'attached', 'start', true, false],
    ['attached', 'suspect', 'keep', false, false],
    ['suspect', 'detached', 'keep', false, false],
    ['detached', 'fencing', 'stop', false, true],
    ['attached', 'fencing', 'stop', false, true],
    ['fencing', 'cleaning', 'stop', false, false],
    ['cleaning', 'clean', 'stop', false, false],
    ['clean', 'rejoining', 'keep', false, false],
  ] as const)('%s -> %s: heartbeat %s, rejoined %s, fence started %s', (from, to, hb, rejoined, fence) => {
    expect(afterTransition(from, to)).toEqual({ heartbeat: hb, rejoined, fenceStarted: fence });
  });
});

describe('registration loop decisions', () => {
  // [mode, phase, has lease, wanted]
  it.each([
    ['reattach', 'starting', false, true],
    ['reattach', 'starting', true, true],
    ['reattach', 'attached', false, true],
    ['reattach', 'attached', true, false],
    ['reattach', 'suspect', true, false],
    ['reattach', 'detached', false, true],
    ['reattach', 'detached', true, false],
    ['reattach', 'fencing', false, false],
    ['reattach', 'cleaning', false, false],
    ['reattach', 'clean', false, false],
    ['reattach', 'rejoining', false, false],
    ['ready', 'clean', false, true],
    ['ready', 'rejoining', true, true],
    ['ready', 'attached', false, false],
    ['ready', 'fencing', false, false],
    ['ready', 'cleaning', false, false],
    ['ready', 'detached', false, false],
  ] as const)('%s in %s (lease %s): wanted %s', (mode, phase, lease, want) => {
    expect(registrationWanted(mode, phase, lease)).toBe(want);
  });

  it('a granted lease means the cluster is reachable only for a ready registration', () => {
    expect(leaseGrantedEvent('ready')).toEqual({ kind: 'cluster-reachable' });
    expect(leaseGrantedEvent('reattach')).toBeUndefined();
  });

  it.each([
    [{ ok: true, epoch: 4 } as const, undefined, 'registered', { kind: 'registered', epoch: 4, sentAt: 50 }],
    [{ ok: false, reason: 'fenced', detail: 'f' } as const, undefined, 'refused', { kind: 'register-refused', reason: 'fenced' }],
    [{ ok: false, reason: 'epoch-mismatch', detail: 'e' } as const, undefined, 'refused', { kind: 'register-refused', reason: 'epoch-mismatch' }],
    [{ ok: false, reason: 'duplicate', detail: 'agent b' } as const, undefined, 'duplicate', { kind: 'register-refused', reason: 'duplicate' }],
    [{ ok: false, reason: 'duplicate', detail: 'agent b' } as const, 'agent b', 'duplicate', { kind: 'register-refused', reason: 'duplicate' }],
  ])('%j (duplicate before: %s) -> %s', (answer, dupBefore, kind, event) => {
    const v = judgeRegistration(T, answer, 50, dupBefore, 'reattach');
    expect(v.kind).toBe(kind);
    expect('event' in v ? v.event : undefined).toEqual(event);
    if (v.kind === 'duplicate') {
      expect(v.retryAfterMs).toBe(T.ttl);
      expect(v.duplicateOf).toBe('agent b');
      expect(v.report).toBe(dupBefore === undefined);
    }
    if (v.kind === 'refused') expect(v.detail).toBe(answer.ok ? '' : answer.detail);
  });

  it('backs off from 250 ms, doubling, capped at 2 intervals (retryable) or the TTL (not), reporting a lasting failure once per message', () => {
    const waits = (retryable: boolean) => {
      const out: number[] = [];
      let b = FIRST_REGISTRATION_BACKOFF_MS;
      for (let i = 0; i < 8; i++) {
        const r = registrationRetry(T, b, retryable ? new Error('x') : new TetherError('INVALID_RECORD', 'x'), undefined);
        out.push(r.delayMs);
        b = r.nextBackoffMs;
      }
      return out;
    };
    expect(waits(true)).toEqual([250, 500, 1000, 2000, 2000, 2000, 2000, 2000]);
    expect(waits(false)).toEqual([250, 500, 1000, 2000, 4000, 6000, 6000, 6000]);
    const bad = new TetherError('INVALID_RECORD', 'bad record');
    expect(registrationRetry(T, 250, bad, undefined)).toMatchObject({ retryable: false, message: 'bad record', report: true });
    expect(registrationRetry(T, 250, bad, 'bad record').report).toBe(false);
    expect(registrationRetry(T, 250, new TetherError('INVALID_RECORD', 'other'), 'bad record').report).toBe(true);
    expect(registrationRetry(T, 250, new TetherError('TIMEOUT', 'timeout', { retryable: true }), undefined)).toMatchObject({ retryable: true, report: false });
    expect(registrationRetry(T, 250, 'a thrown string', undefined)).toMatchObject({ retryable: true, message: 'a thrown string', report: false });
  });
});

describe('hold sync decisions', () => {
  it.each(PHASES.flatMap((p) => [true, false].map((l) => [p, l, l && (p === 'attached' || p === 'suspect')] as const)))('syncs in %s with lease %s: %s', (p, lease, want) => {
    expect(holdSyncApplies(p, lease)).toBe(want);
  });

  it.each([
    [3, 3, true, true],
    [undefined, 3, true, false],
    [2, 3, true, false],
    [4, 3, true, false],
    [3, 3, false, false],
  ] as const)('record epoch %s, host epoch %i, same lease %s: counts %s', (rec, epoch, same, want) => {
    expect(holdReadCounts(rec, epoch, same)).toBe(want);
  });

  it('every step keeps applied => seen: a hold is applied only after a gated seen=true ack, a release before its seen=false ack', () => {
    for (const requested of [false, true]) for (const applied of [false, true]) for (const seen of [false, true]) {
      const acts = holdActions(nextHoldStep(requested, applied, seen));
      let a = applied;
      let sn = seen;
      let gatePassed = false;
      for (const x of acts) {
        if (x.kind === 'apply') {
          if (x.held && !sn) expect(gatePassed).toBe(true);
          a = x.held;
        } else {
          if (x.seen) gatePassed = x.gate;
          sn = x.seen;
        }
        // Between writes, applied ⇒ seen, assuming a gated ack went through (the gate stops otherwise).
        if (!(applied && !seen)) expect(!a || sn).toBe(true);
      }
    }
    expect(holdActions({ kind: 'ack-then-apply' })).toEqual([{ kind: 'ack', seen: true, gate: true }, { kind: 'apply', held: true }]);
    expect(holdActions({ kind: 'drop-then-ack' })).toEqual([{ kind: 'apply', held: false }, { kind: 'ack', seen: false, gate: false }]);
    expect(holdActions({ kind: 'apply' })).toEqual([{ kind: 'apply', held: true }]);
    expect(holdActions({ kind: 'ack-release' })).toEqual([{ kind: 'ack', seen: false, gate: false }]);
    expect(holdActions({ kind: 'none' })).toEqual([]);
  });

  // [phase, lease, held, risk accepted, local hold set, route]
  it.each([
    ['attached', true, true, false, false, 'cluster'],
    ['suspect', true, false, false, true, 'cluster+clear'],
    ['attached', true, false, false, false, 'cluster'],
    ['attached', false, true, false, false, 'refuse-local'],
    ['detached', true, true, false, false, 'refuse-local'],
    ['detached', false, true, true, false, 'hold-local'],
    ['detached', false, false, false, true, 'release-local'],
    ['detached', false, false, false, false, 'nothing'],
    ['fencing', false, true, true, false, 'hold-local'],
    ['starting', false, false, true, false, 'nothing'],
  ] as const)('%s lease=%s held=%s risk=%s local=%s -> %s', (phase, lease, held, risk, local, want) => {
    const r = routeHoldRequest(phase, lease, held, risk, local);
    expect(r.kind === 'cluster' ? (r.clearLocal ? 'cluster+clear' : 'cluster') : r.kind).toBe(want);
  });

  it('a local hold is applied again at start only while detached and not yet held', () => {
    expect(reapplyLocalHold(base('detached'), true)).toBe(true);
    expect(reapplyLocalHold(base('detached', { heldAtDetach: true }), true)).toBe(false);
    expect(reapplyLocalHold(base('detached'), false)).toBe(false);
    expect(reapplyLocalHold(base('attached'), true)).toBe(false);
    expect(reapplyLocalHold(base('fencing'), true)).toBe(false);
  });
});

describe('guardian supervision decisions', () => {
  it.each([
    [undefined, undefined, false],
    [undefined, 5, false],
    [5, undefined, true],
    [5, 5, false],
    [6, 5, true],
    [null, 5, true],
    [null, null, false],
    [5, null, true],
  ] as const)('deadline %s, last fed %s: feed %s', (d, fed, want) => {
    expect(guardianFeedDue(d, fed)).toBe(want);
  });

  it.each(PHASES.map((p) => [p, !['fencing', 'cleaning', 'clean', 'rejoining'].includes(p)] as const))('a fire in %s starts the fence: %s', (p, want) => {
    expect(guardianFireStartsFence(p)).toBe(want);
  });

  it.each([
    [undefined, 'started', true, 'started'],
    [undefined, 'running', true, undefined],
    [true, 'running', true, undefined],
    [true, 'started', true, 'restarted'],
    [false, 'started', true, 'restarted'],
    [undefined, 'failed', false, 'down'],
    [true, 'failed', false, 'down'],
    [false, 'failed', false, undefined],
  ] as const)('was up %s, check %s -> up %s, notice %s', (was, check, up, notice) => {
    expect(judgeGuardianCheck(was, { kind: check })).toEqual({ up, ...(notice ? { notice } : {}) });
  });
});

describe('status and admission', () => {
  const none: GuardianView = { configured: false };
  const up: GuardianView = { configured: true, running: true };
  const down: GuardianView = { configured: true, running: false };
  it.each(PHASES.flatMap((p) => [none, up, down].map((g) => [p, g] as const)))('admission in %s with guardian %j', (p, g) => {
    const want = p !== 'attached' && p !== 'suspect' ? `host is ${p}` : g.configured && !g.running ? /guardian/ : undefined;
    const got = admissionRefusal(p, g);
    if (want instanceof RegExp) expect(got).toMatch(want);
    else expect(got).toBe(want);
  });

  it('reports ages from lastAck on the monotonic clock, the watchdog only while detached and not held', () => {
    const s = gcStatus({ hostId: 'h', state: base('detached', { lastAck: 1000.4 }), timings: T, now: 3000, localHold: false, guardian: up, duplicateOf: undefined });
    expect(s).toMatchObject({ phase: 'detached', lastAckAgeMs: 2000, watchdogRemainingMs: T.watchdogTimeout - 2000, guardianRunning: true });
    expect(s).not.toHaveProperty('duplicateOf');
    const held = gcStatus({ hostId: 'h', state: base('detached', { heldAtDetach: true }), timings: T, now: 3000, localHold: true, guardian: none, duplicateOf: 'agent b' });
    expect(held).not.toHaveProperty('watchdogRemainingMs');
    expect(held).not.toHaveProperty('guardianRunning');
    expect(held).toMatchObject({ localHold: true, duplicateOf: 'agent b' });
    const fresh = gcStatus({ hostId: 'h', state: initialHostState(), timings: T, now: 5, localHold: false, guardian: down, duplicateOf: undefined });
    expect(fresh).not.toHaveProperty('lastAckAgeMs');
    expect(fresh.guardianRunning).toBe(false);
  });
});

describe('persisted lifecycle state', () => {
  it('round-trips; monotonic times only on the same boot', () => {
    const s = base('fencing', { lastAck: 10, fenceStartedAt: 20, fenceReason: 'watchdog', held: true, detachedAt: 15 });
    const raw = encodeHostState(s, 'boot-1');
    expect(JSON.parse(raw)).toEqual({ bootId: 'boot-1', phase: 'fencing', epoch: 3, held: true, lastAck: 10, fenceStartedAt: 20, fenceReason: 'watchdog' });
    expect(decodeHostState(raw, 'boot-1')).toEqual({ phase: 'fencing', epoch: 3, held: true, lastAck: 10, fenceStartedAt: 20, fenceReason: 'watchdog' });
    expect(decodeHostState(raw, 'boot-2')).toEqual({ phase: 'fencing', epoch: 3, held: true, fenceReason: 'watchdog' });
    expect(decodeHostState(undefined, 'boot-1')).toBeUndefined();
    expect(initialHostState(decodeHostState(encodeHostState(base('attached'), 'b'), 'b')).phase).toBe('detached');
    expect(initialHostState(decodeHostState(encodeHostState(base('attached'), 'b'), 'other')).phase).toBe('starting');
  });

  it.each([
    ['{not json', /not JSON/],
    ['[]', /not an object/],
    ['null', /not an object/],
    ['{"phase":"gone","epoch":1,"held":false}', /unknown phase/],
    ['{"phase":"attached","epoch":-1,"held":false}', /bad epoch/],
    ['{"phase":"attached","epoch":1,"held":"no"}', /bad hold/],
    ['{"phase":"attached","epoch":1,"held":false,"lastAck":"x"}', /monotonic time/],
    ['{"phase":"fencing","epoch":1,"held":false,"fenceReason":"boom"}', /fence reason/],
  ])('refuses %s with INVENTORY_ERROR', (raw, msg) => {
    let err: unknown;
    try {
      decodeHostState(raw, 'b');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).code).toBe('INVENTORY_ERROR');
    expect((err as TetherError).message).toMatch(msg);
  });
});
