import { describe, expect, it } from 'vitest';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import { evaluate, guardianDeadline, nextDeadline, type HostState } from '../../src/domain/host-lifecycle.js';
import { checkPeers, heldBackUntil, peerCheckBudgetProblem, stayAwayFor, type PeerAnswer, type PeerCheckInput, type ReceivedAnswer } from '../../src/domain/peer-check.js';
import { parseFreezeContract, tightest, type FreezeContract } from '../../src/domain/freeze-contract.js';

// Host h0 lost contact: last ack sent at 1000; the controller may fence it from 1000 + 6000 + 10000.
const LAST_ACK = 1000;
const CONTRACT: FreezeContract = { version: 1, share: 0.55, resumeDelay: 10_000, poolSize: 3 };
const SETTINGS = { interval: 1000, timeout: 1000 };
const NOW = LAST_ACK + T.watchdogTimeout;
const SENT = NOW - 500;

function answer(id: string, over: Partial<PeerAnswer> = {}): PeerAnswer {
  return { hostId: id, nonce: 'n1', epoch: 1, phase: 'detached', reachesEtcd: false, silent: true, ackAgeMs: NOW - 300 - (LAST_ACK + 200), unanswered: 1, ttl: T.ttl, promisedMs: 20_000, ...over };
}
function got(a: PeerAnswer, receivedAt = NOW - 300): [string, ReceivedAnswer] {
  return [a.hostId, { answer: a, receivedAt }];
}
function input(answers: [string, ReceivedAnswer][], over: Partial<PeerCheckInput> = {}): PeerCheckInput {
  return {
    now: NOW,
    hostId: 'h0',
    lastAck: LAST_ACK,
    timings: T,
    contract: CONTRACT,
    peers: ['h1', 'h2'],
    settings: SETTINGS,
    round: { nonce: 'n1', stayAwayMs: 20_000, sentAt: SENT, answers: new Map(answers) },
    ...over,
  };
}

describe('checkPeers (docs/peer-check.md "The host\'s rule")', () => {
  it('holds back when this host and its witnesses are more than the share of the pool', () => {
    const v = checkPeers(input([got(answer('h1')), got(answer('h2'))]));
    expect(v.holdBack).toBe(true);
    expect(v.witnesses).toEqual(['h1', 'h2']);
    expect(v.needed).toBe(2); // floor(0.55 * 3) + 1
    expect(v.detail).toMatch(/fence held back: 3 of 3 hosts report etcd unreachable \(freeze share 55 %/);
    expect(v.guardianDeadline).toBe(SENT + Math.min(CONTRACT.resumeDelay, T.fenceWindow) - T.clockDriftMargin - T.killTimeout / 2);
  });

  it('one witness of two peers is enough for 55 % of 3, not for 55 % of 4 (a larger published pool)', () => {
    expect(checkPeers(input([got(answer('h1'))])).holdBack).toBe(true);
    const v = checkPeers(input([got(answer('h1'))], { contract: { ...CONTRACT, poolSize: 4 } }));
    expect(v.holdBack).toBe(false);
    expect(v.pool).toBe(4);
    expect(v.needed).toBe(3);
  });

  it('never holds back without a contract, a round, with a stale round or an impossible budget', () => {
    const a = [got(answer('h1')), got(answer('h2'))];
    expect(checkPeers(input(a, { contract: undefined })).holdBack).toBe(false);
    expect(checkPeers(input(a, { round: undefined })).holdBack).toBe(false);
    expect(checkPeers(input(a, { now: SENT + SETTINGS.interval + SETTINGS.timeout + 1 })).holdBack).toBe(false);
    const v = checkPeers(input(a, { contract: { ...CONTRACT, resumeDelay: 8000 } }));
    expect(v.holdBack).toBe(false);
    expect(v.detail).toMatch(/peerCheckInterval \+ peerTimeout \+ stopGrace \+ killTimeout \+ clockDriftMargin <= min\(resumeDelay, fenceWindow\) is violated \(1000 \+ 1000 \+ 4000 \+ 2000 \+ 1000 = 9000 > 8000\)/);
    // a long resume delay does not help when the fence window is short: min(resumeDelay, fenceWindow)
    expect(checkPeers(input(a, { contract: { ...CONTRACT, resumeDelay: 60_000 }, timings: { ...T, fenceWindow: 8000, ttl: 8000 } })).detail).toMatch(/= 9000 > 8000/);
  });

  it.each([
    ['reaches etcd', answer('h1', { reachesEtcd: true })],
    ['not silent', answer('h1', { silent: false })],
    ['a host that fenced itself', answer('h1', { phase: 'clean' })],
    ['a stale nonce', answer('h1', { nonce: 'n0' })],
    ['never acknowledged', answer('h1', { ackAgeMs: undefined })],
    ['another host id', answer('h9')],
    ['too many unanswered keepalives', answer('h1', { unanswered: 2 })],
    ['an acknowledgement too late', answer('h1', { ackAgeMs: 100 })],
  ])('an answer with %s is no witness', (_why, a) => {
    const v = checkPeers(input([[a.hostId === 'h9' ? 'h9' : 'h1', { answer: a, receivedAt: NOW - 300 }]]));
    expect(v.witnesses).toEqual([]);
    expect(v.holdBack).toBe(false);
    expect(v.rejected).toHaveLength(1);
  });

  it('a witness must promise to stay away until this host\'s earliest cluster fence (plus the drift margin)', () => {
    const need = stayAwayFor(T, LAST_ACK, SENT); // lastAck + ttl + fenceWindow + drift - sentAt
    expect(need).toBe(LAST_ACK + T.ttl + T.fenceWindow + T.clockDriftMargin - SENT);
    expect(checkPeers(input([got(answer('h1', { promisedMs: need }))])).witnesses).toEqual(['h1']);
    const v = checkPeers(input([got(answer('h1', { promisedMs: need - 1 }))]));
    expect(v.witnesses).toEqual([]);
    expect(v.rejected[0]!.why).toMatch(/promised to stay away/);
  });

  it('a positive verdict holds until sentAt + min(resumeDelay, fenceWindow) - drift - stopGrace - killTimeout', () => {
    const v = checkPeers(input([got(answer('h1')), got(answer('h2'))]));
    expect(v.until).toBe(SENT + Math.min(CONTRACT.resumeDelay, T.fenceWindow) - T.clockDriftMargin - T.stopGrace - T.killTimeout);
    expect(heldBackUntil(T, { resumeDelay: 30_000 }, SENT)).toBe(SENT + T.fenceWindow - T.clockDriftMargin - T.stopGrace - T.killTimeout);
  });

  it('an answer received after the timeout is no witness', () => {
    const v = checkPeers(input([got(answer('h1'), SENT + SETTINGS.timeout + 1)]));
    expect(v.witnesses).toEqual([]);
    expect(v.rejected[0]!.why).toBe('answered too late');
  });

  it("the witness bound: the peer's lease must be revoked before this host's earliest cluster fence", () => {
    // lease gone by receivedAt - ackAge + (k+1) ttl + revokeSlack(3) <= lastAck + ttl + fenceWindow - drift
    const limit = LAST_ACK + T.ttl + T.fenceWindow - T.clockDriftMargin;
    const received = NOW - 300;
    const ackAt = limit - 2 * T.ttl - 1003; // exactly on the limit
    const v = checkPeers(input([got(answer('h1', { ackAgeMs: received - ackAt }), received)]));
    expect(v.rejected).toEqual([]);
    expect(v.witnesses).toEqual(['h1']);
    expect(checkPeers(input([got(answer('h1', { ackAgeMs: received - ackAt + 1 }), received)])).witnesses).toEqual(['h1']); // an older ack
    expect(checkPeers(input([got(answer('h1', { ackAgeMs: received - ackAt - 1 }), received)])).witnesses).toEqual([]); // 1 ms younger
  });

  it('the budget rule', () => {
    expect(peerCheckBudgetProblem(T, SETTINGS, 10_000)).toBeUndefined();
    expect(peerCheckBudgetProblem(T, { interval: 2000, timeout: 1000 }, 10_000)).toBeUndefined();
    expect(peerCheckBudgetProblem(T, { interval: 2001, timeout: 1000 }, 10_000)).toMatch(/= 10001 > 10000\)$/);
  });
});

describe('freeze contract', () => {
  it('parses, naming the field it refuses', () => {
    expect(parseFreezeContract({ version: 2, share: 0.5, resumeDelay: 10_000, poolSize: 7 })).toEqual({ version: 2, share: 0.5, resumeDelay: 10_000, poolSize: 7 });
    expect(() => parseFreezeContract({ version: 2, share: 1, resumeDelay: 0, poolSize: 1 })).toThrow(/share must be/);
    expect(() => parseFreezeContract({ version: 0, share: 0.5, resumeDelay: 0, poolSize: 1 })).toThrow(/version must be/);
    expect(() => parseFreezeContract([])).toThrow(/an object/);
  });
  it('the controller applies the tightest of what it publishes and what hosts acknowledged', () => {
    expect(tightest({ share: 0.6, resumeDelay: 5000 }, [{ share: 0.55, resumeDelay: 10_000 }, { share: 0.7, resumeDelay: 1 }])).toEqual({ share: 0.55, resumeDelay: 10_000 });
  });
});

describe('lifecycle: the held-back state', () => {
  const detached: HostState = { phase: 'detached', epoch: 1, lastAck: LAST_ACK, held: false, heldAtDetach: false, detachedAt: LAST_ACK + T.detachAfter };
  const verdict = (holdBack: boolean, until: number) => ({ kind: 'peer-verdict' as const, holdBack, until, guardianDeadline: until + 5000, detail: holdBack ? 'fence held back: 3 of 3' : 'only 1 of 3' });

  it('a positive verdict postpones the watchdog until its `until`, then the host fences without a new one', () => {
    const a = evaluate(T, detached, verdict(true, NOW + 1500), NOW - 1000);
    expect(a.state.heldBack?.until).toBe(NOW + 1500);
    expect(nextDeadline(T, a.state)).toBe(NOW + 1500);
    expect(guardianDeadline(T, a.state)).toBe(NOW + 6500);
    expect(evaluate(T, a.state, { kind: 'tick' }, NOW).effects).toEqual([]);
    const late = evaluate(T, a.state, { kind: 'tick' }, NOW + 1500);
    expect(late.state.phase).toBe('fencing');
    expect(late.state.heldBack).toBeUndefined();
    expect(late.effects).toContainEqual({ kind: 'stop-vms', reason: 'watchdog' });
  });

  it('a negative verdict does not shorten a positive one: the host fences at the positive one\'s `until`', () => {
    const held = evaluate(T, detached, verdict(true, NOW + 1500), NOW - 1000).state;
    expect(evaluate(T, held, verdict(false, NOW + 2000), NOW - 500).state.phase).toBe('detached');
    const after = evaluate(T, held, verdict(false, NOW + 2000), NOW + 200).state;
    expect(after.phase).toBe('detached');
    expect(after.heldBack?.until).toBe(NOW + 1500);
    const r = evaluate(T, after, { kind: 'tick' }, NOW + 1500);
    expect(r.state.phase).toBe('fencing');
    expect(r.effects[0]).toMatchObject({ kind: 'transition', to: 'fencing', reason: expect.stringMatching(/no longer holds the fence back/) });
  });

  it('without a verdict the watchdog fences on time (today\'s behaviour)', () => {
    expect(evaluate(T, detached, { kind: 'tick' }, NOW).state.phase).toBe('fencing');
    expect(guardianDeadline(T, detached)).toBe(LAST_ACK + T.watchdogTimeout + T.stopGrace + T.killTimeout / 2);
  });

  it('a verdict is ignored when held at detach, attached or fencing; registration ends the hold-back', () => {
    expect(evaluate(T, { ...detached, heldAtDetach: true }, verdict(true, NOW + 1500), NOW).state.heldBack).toBeUndefined();
    expect(evaluate(T, { ...detached, phase: 'attached' }, verdict(true, NOW + 1500), NOW).state.heldBack).toBeUndefined();
    const held = evaluate(T, detached, verdict(true, NOW + 1500), NOW - 1000).state;
    const back = evaluate(T, held, { kind: 'registered', epoch: 1, sentAt: NOW + 100 }, NOW + 200).state;
    expect(back.phase).toBe('attached');
    expect(back.heldBack).toBeUndefined();
  });

  it('a verdict whose `until` already passed holds nothing', () => {
    expect(evaluate(T, detached, verdict(true, NOW), NOW).state.phase).toBe('fencing');
  });
});
