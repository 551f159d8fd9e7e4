import { describe, expect, it } from 'vitest';
import { STAY_AWAY_MAX_MS } from '../../src/domain/codec/peer-answer.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import { peerWindowOpensAt } from '../../src/domain/peer-check.js';
import { answerAsWitness, type WitnessInput } from '../../src/domain/peer-witness.js';

const settings = { interval: 1000, timeout: 1000 };
const lastAck = 10_000;
const opens = peerWindowOpensAt(T, settings, lastAck);
const base: WitnessInput = {
  now: opens,
  hostId: 'h1',
  ask: { nonce: 'n1', stayAwayMs: 20_000 },
  timings: T,
  settings,
  phase: 'detached',
  epoch: 3,
  lastAck,
  lastAckReceivedAt: lastAck,
  unanswered: 2,
  membershipUnresolved: false,
  duplicate: false,
  lease: 'L1',
  promise: { lease: undefined, until: undefined, promisedMs: 0 },
};

describe('answerAsWitness (pure)', () => {
  it('a detached host inside its own window answers silent and promises the lease and the stay-away, first time', () => {
    const d = answerAsWitness(base);
    expect(d.answer).toEqual({ hostId: 'h1', nonce: 'n1', epoch: 3, phase: 'detached', reachesEtcd: false, silent: true, ackAgeMs: opens - lastAck, unanswered: 2, ttl: T.ttl, promisedMs: 20_000 });
    expect(d.promise).toEqual({ lease: 'L1', until: opens + 20_000, promisedMs: 20_000, first: true });
  });

  it('is no witness, and promises nothing: attached, fenced, before its window, without an ack, membership unresolved, duplicate', () => {
    for (const over of [
      { phase: 'attached' as const },
      { phase: 'fencing' as const },
      { now: opens - 1 },
      { lastAck: undefined },
      { lastAckReceivedAt: undefined },
      { membershipUnresolved: true },
      { duplicate: true },
    ]) {
      const d = answerAsWitness({ ...base, ...over });
      expect(d.answer.silent, JSON.stringify(over)).toBe(false);
      expect(d.answer.promisedMs).toBe(0);
      expect(d.answer).not.toHaveProperty('ackAgeMs');
      expect(d.promise).toBeUndefined();
    }
    expect(answerAsWitness({ ...base, phase: 'attached' }).answer.reachesEtcd).toBe(true);
  });

  it('clamps the asked stay-away to [0, STAY_AWAY_MAX_MS]', () => {
    expect(answerAsWitness({ ...base, ask: { nonce: 'n', stayAwayMs: -5 } }).answer.promisedMs).toBe(0);
    expect(answerAsWitness({ ...base, ask: { nonce: 'n', stayAwayMs: 1e12 } }).promise?.promisedMs).toBe(STAY_AWAY_MAX_MS);
  });

  it('the promise never shrinks, and an ask it already covers promises nothing new', () => {
    const first = answerAsWitness(base).promise!;
    const promise = { lease: first.lease, until: first.until, promisedMs: first.promisedMs };
    // a shorter stay asked at the same time: covered
    expect(answerAsWitness({ ...base, promise, ask: { nonce: 'n2', stayAwayMs: 5000 } }).promise).toBeUndefined();
    // a shorter stay asked later, still inside the promise: covered
    expect(answerAsWitness({ ...base, now: opens + 1000, promise, ask: { nonce: 'n3', stayAwayMs: 5000 } }).promise).toBeUndefined();
    // a shorter stay asked past the old promise's end: extends `until`, keeps the longest `promisedMs`
    const later = answerAsWitness({ ...base, now: opens + 30_000, promise, ask: { nonce: 'n4', stayAwayMs: 5000 } }).promise!;
    expect(later).toEqual({ lease: 'L1', until: opens + 35_000, promisedMs: 20_000, first: false });
    // the lease forgotten since (undefined): the promised lease stays
    expect(answerAsWitness({ ...base, lease: undefined, promise, ask: { nonce: 'n5', stayAwayMs: 5000 } }).promise).toBeUndefined();
  });
});
