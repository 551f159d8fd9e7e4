import { describe, expect, it } from 'vitest';
import {
  PEER_WIRE_LIMITS,
  PeerMessageError,
  decodePeerAnswer,
  decodePeerQuestion,
  encodePeerAnswer,
  encodePeerQuestion,
  isPeerNonce,
} from '../../src/domain/codec/peer-answer.js';
import type { PeerAnswer } from '../../src/domain/peer-check.js';

/** The peer channel's wire codec: valid messages round-trip, every malformed one is refused naming its field. */

const NONCE = '0123456789abcdef0123456789abcdef';
const ANSWER: PeerAnswer = { hostId: 'h2', nonce: NONCE, epoch: 3, phase: 'detached', reachesEtcd: false, silent: true, ackAgeMs: 4200, unanswered: 1, ttl: 6000, promisedMs: 17_000 };

describe('peer answer codec', () => {
  it('round-trips a valid answer (fresh object, optional ackAgeMs absent too)', () => {
    const d = decodePeerAnswer(encodePeerAnswer(ANSWER));
    expect(d).toEqual({ ok: true, value: ANSWER });
    if (d.ok) expect(d.value).not.toBe(ANSWER);
    const { ackAgeMs: _a, ...never } = ANSWER;
    expect(decodePeerAnswer(JSON.stringify(never))).toEqual({ ok: true, value: never });
    expect(decodePeerAnswer(new TextEncoder().encode(JSON.stringify(ANSWER)))).toEqual({ ok: true, value: ANSWER });
  });

  const bad: [string, unknown, string][] = [
    ['nonce too short', { ...ANSWER, nonce: 'abc' }, 'nonce'],
    ['nonce uppercase', { ...ANSWER, nonce: NONCE.toUpperCase() }, 'nonce'],
    ['hostId with a slash', { ...ANSWER, hostId: 'a/b' }, 'hostId'],
    ['hostId ..', { ...ANSWER, hostId: '..' }, 'hostId'],
    ['epoch negative', { ...ANSWER, epoch: -1 }, 'epoch'],
    ['epoch fractional', { ...ANSWER, epoch: 1.5 }, 'epoch'],
    ['unknown phase', { ...ANSWER, phase: 'zombie' }, 'phase'],
    ['reachesEtcd a string', { ...ANSWER, reachesEtcd: 'no' }, 'reachesEtcd'],
    ['silent missing', (({ silent: _s, ...r }) => r)(ANSWER), 'silent'],
    ['ackAgeMs negative', { ...ANSWER, ackAgeMs: -5 }, 'ackAgeMs'],
    ['ackAgeMs infinite (as JSON: null)', { ...ANSWER, ackAgeMs: null }, 'ackAgeMs'],
    ['ackAgeMs huge', { ...ANSWER, ackAgeMs: 1e15 }, 'ackAgeMs'],
    ['unanswered negative', { ...ANSWER, unanswered: -1 }, 'unanswered'],
    ['ttl zero', { ...ANSWER, ttl: 0 }, 'ttl'],
    ['unknown field', { ...ANSWER, trustMe: true }, 'trustMe'],
  ];
  for (const [name, value, field] of bad) {
    it(`refuses ${name}, naming ${field}`, () => {
      const d = decodePeerAnswer(JSON.stringify(value));
      expect(d.ok).toBe(false);
      if (d.ok) return;
      expect(d.error).toBeInstanceOf(PeerMessageError);
      expect(d.error.code).toBe('INVALID_RECORD');
      expect(d.error.retryable).toBe(false);
      expect(d.error.field).toBe(field);
      expect(d.error.message).toContain(`peer-answer: ${field}:`);
    });
  }

  it('refuses non-JSON, non-objects, bad UTF-8 and oversized bodies as (value)', () => {
    for (const raw of ['nope', '[]', 'null', '42', new Uint8Array([0x7b, 0xff, 0x7d]), 'x'.repeat(PEER_WIRE_LIMITS.maxAnswerBytes + 1), new Uint8Array(PEER_WIRE_LIMITS.maxAnswerBytes + 1)]) {
      const d = decodePeerAnswer(raw);
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.error.field).toBe('(value)');
    }
    // multi-byte characters count as bytes, not characters
    const d = decodePeerAnswer(JSON.stringify({ ...ANSWER, hostId: 'é'.repeat(PEER_WIRE_LIMITS.maxAnswerBytes / 2) }));
    expect(d.ok).toBe(false);
  });

  it('encode throws what decode would refuse', () => {
    expect(() => encodePeerAnswer({ ...ANSWER, ttl: -1 })).toThrow(PeerMessageError);
    expect(() => encodePeerAnswer({ ...ANSWER, ackAgeMs: Number.NaN })).toThrow(/ackAgeMs/);
  });
});

describe('peer question codec', () => {
  it('round-trips and checks from and nonce', () => {
    expect(decodePeerQuestion(encodePeerQuestion({ from: 'h1', nonce: NONCE, stayAwayMs: 16_500 }))).toEqual({ ok: true, value: { from: 'h1', nonce: NONCE, stayAwayMs: 16_500 } });
    const f = (v: unknown) => {
      const d = decodePeerQuestion(JSON.stringify(v));
      return d.ok ? 'ok' : d.error.field;
    };
    expect(f({ from: 'h1', nonce: 'zz', stayAwayMs: 0 })).toBe('nonce');
    expect(f({ from: '', nonce: NONCE, stayAwayMs: 0 })).toBe('from');
    expect(f({ from: 'a b', nonce: NONCE, stayAwayMs: 0 })).toBe('from');
    expect(f({ nonce: NONCE })).toBe('from');
    expect(f({ from: 'h1', nonce: NONCE, stayAwayMs: 0, extra: 1 })).toBe('extra');
    expect(f({ from: 'h1', nonce: NONCE })).toBe('stayAwayMs');
    expect(f({ from: 'h1', nonce: NONCE, stayAwayMs: 3_600_001 })).toBe('stayAwayMs');
    expect(decodePeerQuestion('x'.repeat(PEER_WIRE_LIMITS.maxQuestionBytes + 1)).ok).toBe(false);
  });

  it('isPeerNonce', () => {
    expect(isPeerNonce(NONCE)).toBe(true);
    expect(isPeerNonce(NONCE + '0')).toBe(false);
    expect(isPeerNonce(42)).toBe(false);
  });
});
