/**
 * The pure txn builders the stores send over `Kv` (src/domain/registration-txn.ts,
 * src/domain/change-txn.ts) and the keyspace (src/domain/keyspace.ts): which keys a txn compares
 * and at which revision, what it writes, and what it refuses before anything is sent.
 */
import { describe, expect, it } from 'vitest';
import { changeTxn } from '../../src/domain/change-txn.js';
import { DEFAULT_TXN_LIMITS } from '../../src/domain/cluster-change.js';
import { decodeAliveValue, decodeHostRecord } from '../../src/domain/codec.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { Keyspace } from '../../src/domain/keyspace.js';
import { holdAckTxn, registrationTxn, setHoldTxn, type RegistrationInput } from '../../src/domain/registration-txn.js';

const counter = () => {
  let n = 0;
  return () => (n++).toString(16).padStart(8, '0');
};
const keys = new Keyspace('/t/', counter());
const NOW = 1_700_000_000_000;

function record(over: Partial<HostRecord> = {}): HostRecord {
  return {
    hostId: 'h1',
    state: 'attached',
    epoch: 3,
    hold: false,
    updatedAt: 1,
    agentVersion: '0.1.0',
    capacity: { vcpu: 4, memoryMb: 4096 },
    labels: {},
    timings: DEFAULT_TIMINGS,
    ...over,
  } as HostRecord;
}

function reg(over: Partial<RegistrationInput> = {}): RegistrationInput {
  const { state: _s, epoch: _e, hold: _h, updatedAt: _u, ...rest } = record();
  return { hostId: 'h1', mode: 'reattach', epoch: 3, agentId: 'agent-1', holder: 'pid 1 on m1', holdApplied: false, record: rest, lease: '77', ...over };
}

describe('keyspace', () => {
  it('builds and parses keys under the prefix; event keys sort in time order and take their suffix from the id source', () => {
    expect(keys.hostRecord('h1')).toBe('/t/hosts/h1/record');
    expect(keys.hostAlive('h1')).toBe('/t/hosts/h1/alive');
    expect(keys.parseHostKey('/t/hosts/h1/alive')).toEqual({ hostId: 'h1', part: 'alive' });
    expect(keys.parseHostKey('/x/hosts/h1/alive')).toBeUndefined();
    expect(keys.parseHostKey('/t/hosts/h1/other')).toBeUndefined();
    expect(keys.parseVmKey(keys.vm('ns/web'))).toBe('ns/web');
    const k = new Keyspace('/t/', counter());
    const [a, b] = [k.event(5), k.event(40)];
    expect(a).toBe('/t/events/000000000000005-00000000');
    expect(b).toBe('/t/events/000000000000040-00000001');
    expect([b, a].sort()).toEqual([a, b]);
    expect(keys.rel(a)).toBe('events/000000000000005-00000000');
  });

  it('refuses to build an event key without an id source or with a bad suffix', () => {
    expect(() => new Keyspace('/t/').event(1)).toThrow(TetherError);
    expect(() => new Keyspace('/t/', () => 'xyz').event(1)).toThrow(/8 hex digits/);
  });
});

describe('registration txn', () => {
  it('a first registration compares both keys absent, writes the record at epoch 1 and alive on the lease', () => {
    const plan = registrationTxn(keys, reg({ epoch: 0 }), undefined, undefined, NOW);
    expect(plan.ok).toBe(true);
    if (!plan.ok) return;
    expect(plan.record).toMatchObject({ state: 'attached', epoch: 1, hold: false, holdSeen: false, updatedAt: NOW });
    expect(plan.txn.compare).toEqual([
      { key: '/t/hosts/h1/record', target: 'mod', op: '=', value: 0 },
      { key: '/t/hosts/h1/alive', target: 'mod', op: '=', value: 0 },
    ]);
    const [rec, alive] = plan.txn.success;
    expect(rec).toMatchObject({ op: 'put', key: '/t/hosts/h1/record' });
    expect(alive).toMatchObject({ op: 'put', key: '/t/hosts/h1/alive', lease: '77' });
    expect(decodeHostRecord('hosts/h1/record', (rec as { value: string }).value).ok).toBe(true);
    expect(decodeAliveValue('hosts/h1/alive', (alive as { value: string }).value)).toMatchObject({ ok: true, value: { epoch: 1, agentId: 'agent-1' } });
  });

  it('a reattach keeps the epoch, the hold and draining marks, compares the revisions read, writes holdSeen as applied', () => {
    const plan = registrationTxn(
      keys,
      reg({ holdApplied: true }),
      { record: record({ hold: true, draining: true }), modRevision: 40 },
      { holder: { agentId: 'agent-1', lease: '12' }, modRevision: 41 },
      NOW,
    );
    expect(plan).toMatchObject({ ok: true, record: { epoch: 3, hold: true, holdSeen: true, draining: true } });
    if (plan.ok) expect(plan.txn.compare.map((c) => c.value)).toEqual([40, 41]);
  });

  it('refuses a duplicate agent and a fenced record before building any txn', () => {
    expect(registrationTxn(keys, reg(), { record: record(), modRevision: 1 }, { holder: { agentId: 'other', lease: '9' }, modRevision: 2 }, NOW)).toMatchObject({
      ok: false,
      reason: 'duplicate',
    });
    expect(registrationTxn(keys, reg(), { record: record({ state: 'fenced' }), modRevision: 1 }, undefined, NOW)).toMatchObject({ ok: false, reason: 'fenced' });
  });
});

describe('hold acknowledgement and operator hold txns', () => {
  const cur = { record: record({ hold: true }), modRevision: 50 };
  const alive = { holder: { agentId: 'agent-1', lease: '77' }, modRevision: 51 };
  const ack = { hostId: 'h1', epoch: 3, lease: '77', holdSeen: true };

  it('writes holdSeen guarded by the record and alive revisions', () => {
    const plan = holdAckTxn(keys, ack, cur, alive, NOW);
    expect('txn' in plan).toBe(true);
    if (!('txn' in plan)) return;
    expect(plan.txn.compare.map((c) => [c.key, c.value])).toEqual([
      ['/t/hosts/h1/record', 50],
      ['/t/hosts/h1/alive', 51],
    ]);
    const written = decodeHostRecord('hosts/h1/record', (plan.txn.success[0] as { value: string }).value);
    expect(written).toMatchObject({ ok: true, value: { holdSeen: true, updatedAt: NOW } });
  });

  it.each([
    ['no record', undefined, alive, /has no record/],
    ['another epoch', { record: record({ epoch: 4 }), modRevision: 1 }, alive, /epoch 4/],
    ['a fenced record', { record: record({ state: 'fenced' }), modRevision: 1 }, alive, /fenced/],
    ['alive on another lease', cur, { holder: { lease: '5' }, modRevision: 2 }, /not on this host's lease/],
    ['alive gone', cur, undefined, /not on this host's lease/],
  ])('refuses with %s', (_name, c, a, detail) => {
    expect(holdAckTxn(keys, ack, c, a, NOW)).toEqual({ done: { ok: false, detail: expect.stringMatching(detail) } });
  });

  it('writes nothing when holdSeen already matches', () => {
    expect(holdAckTxn(keys, { ...ack, holdSeen: false }, { record: record({ holdSeen: false }), modRevision: 1 }, alive, NOW)).toEqual({ done: { ok: true } });
  });

  it('the operator hold compares the record revision', () => {
    const plan = setHoldTxn(keys, 'h1', true, { record: record(), modRevision: 9 }, NOW);
    expect(plan.record).toMatchObject({ hold: true, updatedAt: NOW });
    expect(plan.txn.compare).toEqual([{ key: '/t/hosts/h1/record', target: 'mod', op: '=', value: 9 }]);
  });
});

describe('cluster change txn', () => {
  it('compares the leadership, host and VM revisions; an event-only change compares its event key absent', () => {
    const k = new Keyspace('/t/', counter());
    const built = changeTxn(k, { hosts: [{ hostId: 'h1', expectRevision: '7', requireAliveAbsent: true, next: null }], guards: [{ hostId: 'h2', expectRevision: '8' }] }, DEFAULT_TXN_LIMITS, '3');
    expect(built.txn.compare).toEqual([
      { key: '/t/controller/leader', target: 'create', op: '=', value: 3 },
      { key: '/t/hosts/h1/record', target: 'mod', op: '=', value: 7 },
      { key: '/t/hosts/h1/alive', target: 'create', op: '=', value: 0 },
      { key: '/t/hosts/h2/record', target: 'mod', op: '=', value: 8 },
    ]);
    expect(built.txn.success).toEqual([{ op: 'delete', key: '/t/hosts/h1/record' }]);
    const ev = changeTxn(k, { events: [{ kind: 'host-hold-changed', hostId: 'h1', hold: true, at: 12, detail: 'x' }] }, DEFAULT_TXN_LIMITS);
    expect(ev.txn.compare).toEqual([{ key: '/t/events/000000000000012-00000000', target: 'create', op: '=', value: 0 }]);
  });

  it('refuses an empty change and one over the limits (not retryable) before sending', () => {
    expect(() => changeTxn(keys, {}, DEFAULT_TXN_LIMITS)).toThrow(/nothing to write/);
    const guards = Array.from({ length: 129 }, (_, i) => ({ hostId: `h${i}`, expectRevision: '1' }));
    let err: unknown;
    try {
      changeTxn(keys, { guards, events: [{ kind: 'host-hold-changed', hostId: 'h1', hold: true, at: 1, detail: 'x' }] }, DEFAULT_TXN_LIMITS);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'FAILED_PRECONDITION', retryable: false });
  });
});
