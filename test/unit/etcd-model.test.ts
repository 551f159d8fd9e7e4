import { describe, expect, it } from 'vitest';
import { ControlledTransport, EtcdModel } from '../../src/dev/etcd-model/index.js';
import type { Kv, KvHeader, KvWatchEvent } from '../../src/ports/kv.js';
import { expectCode } from '../support/expect-code.js';
import { FakeClock } from '../support/fake-clock.js';
import { describeKvConformance } from '../support/kv-conformance.js';

describeKvConformance('etcd model', async () => {
  const clock = new FakeClock();
  const model = new EtcdModel(clock);
  const kv = model.client('conformance');
  return {
    kv,
    close: () => kv.close(),
    compact: async (rev) => model.compact(rev),
    advance: (ms) => clock.advance(ms),
  };
});

const DL = 2000;

function setup(opts: ConstructorParameters<typeof EtcdModel>[1] = {}) {
  const clock = new FakeClock();
  const model = new EtcdModel(clock, opts);
  return { clock, model, kv: model.client('c1') };
}

async function watchAll(kv: Kv, key: string, fromRevision: number) {
  const batches: { events: readonly KvWatchEvent[]; header: KvHeader }[] = [];
  const errors: Error[] = [];
  const sub = await kv.watch({ key, prefix: true, fromRevision }, { onEvents: (events, header) => batches.push({ events, header }), onError: (e) => errors.push(e) }, DL);
  return { batches, errors, sub };
}

describe('etcd model: lease timing', () => {
  it('derives the minimum TTL from the raft timing as etcd does: ceil(1.5 * election timeout), in whole seconds', () => {
    expect(setup().model.minLeaseTtlMs).toBe(2000);
    expect(setup({ heartbeatMs: 250, electionMs: 5000 }).model.minLeaseTtlMs).toBe(8000);
    expect(setup({ heartbeatMs: 100, electionMs: 500 }).model.minLeaseTtlMs).toBe(1000);
  });

  it('expires a lease exactly at its TTL after the last keepalive, on the model clock', async () => {
    const { clock, model, kv } = setup();
    const g = await kv.leaseGrant(3000, DL);
    model.put('/k', 'v', g.id);
    await clock.advance(2000);
    expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(3000);
    await clock.advance(2999);
    expect(model.get('/k')).toBeDefined();
    await clock.advance(1);
    expect(model.get('/k')).toBeUndefined();
    expect(model.lease(g.id)).toBeUndefined();
  });

  it('lease ids are distinct decimal int64s above 2^53 (callers must keep them as strings)', async () => {
    const { kv } = setup();
    const a = await kv.leaseGrant(2000, DL);
    const b = await kv.leaseGrant(2000, DL);
    expect(a.id).not.toBe(b.id);
    expect(BigInt(a.id) > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
    expect(a.id).toMatch(/^\d+$/);
  });
});

describe('etcd model: elections', () => {
  it('electLeader starts a new term (headers and status show it) and refreshes every lease to election timeout + TTL', async () => {
    const { clock, model, kv } = setup();
    const before = await kv.status(DL);
    const g = await kv.leaseGrant(2000, DL);
    model.put('/k', 'v', g.id);
    await clock.advance(1500);
    const term = model.electLeader();
    expect(term).toBe(before.raftTerm + 1);
    const after = await kv.status(DL);
    expect(after.raftTerm).toBe(term);
    expect(after.leader).not.toBe(before.leader);
    expect((await kv.range({ key: '/k' }, DL)).header.raftTerm).toBe(term);
    // Granted at 0 with 2 s, it would die at 2000; promoted at 1500 it lives to 1500 + 1000 + 2000.
    await clock.advance(2900);
    expect(model.get('/k')).toBeDefined();
    await clock.advance(200);
    expect(model.get('/k')).toBeUndefined();
  });

  it('earlyRevokeOnNextElection (etcd #15247): the lease is revoked at the election, before its TTL, its keys deleted in one revision; other leases are refreshed', async () => {
    const { model, kv } = setup();
    const doomed = await kv.leaseGrant(10_000, DL);
    const kept = await kv.leaseGrant(10_000, DL);
    const r = (await kv.txn({ compare: [], success: [{ op: 'put', key: '/a', value: '1', lease: doomed.id }, { op: 'put', key: '/b', value: '2', lease: doomed.id }, { op: 'put', key: '/c', value: '3', lease: kept.id }] }, DL)).header.revision;
    const w = await watchAll(kv, '/', r + 1);
    model.earlyRevokeOnNextElection(doomed.id);
    model.put('/x', 'unrelated');
    expect(model.get('/a')).toBeDefined();
    model.electLeader();
    await Promise.resolve();
    await new Promise((res) => setImmediate(res));
    expect(model.get('/a')).toBeUndefined();
    expect(model.get('/b')).toBeUndefined();
    expect(model.get('/c')).toBeDefined();
    expect((await kv.leaseKeepAlive(doomed.id, DL)).ttlMs).toBe(0);
    expect(w.batches.map((b) => b.events.map((e) => `${e.type} ${e.kv.key}`))).toEqual([['put /x'], ['delete /a', 'delete /b']]);
    // The flag is consumed: the next election revokes nothing.
    model.electLeader();
    expect(model.get('/c')).toBeDefined();
  });

  it('renewAfterRevoke (etcd #14758): the next keepalive of a revoked lease answers its TTL, once; its keys stay deleted', async () => {
    const { model, kv } = setup();
    const g = await kv.leaseGrant(4000, DL);
    model.put('/k', 'v', g.id);
    model.renewAfterRevoke(g.id);
    await kv.leaseRevoke(g.id, DL);
    expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(4000);
    expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(0);
    expect(model.get('/k')).toBeUndefined();
    expect(await kv.leaseTimeToLive(g.id, DL)).toBeUndefined();
  });
});

describe('etcd model: reads from a lagging member', () => {
  it('a serializable read on a lagging member is stale (and says so in its header); a linearizable one is current', async () => {
    const { model } = setup();
    const kv2 = model.client('c2', undefined, { member: 'm2' });
    const r1 = model.put('/k', 'old');
    model.put('/k', 'new');
    model.setLag('m2', 1);
    const stale = await kv2.range({ key: '/k', serializable: true }, DL);
    expect(stale.kvs[0]!.value).toBe('old');
    expect(stale.header.revision).toBe(r1);
    expect(stale.header.memberId).toBe(model.members()[1]!.id);
    expect((await kv2.range({ key: '/k' }, DL)).kvs[0]!.value).toBe('new');
    model.setLag('m2', 0);
    expect((await kv2.range({ key: '/k', serializable: true }, DL)).kvs[0]!.value).toBe('new');
  });
});

describe('etcd model: no quorum', () => {
  it('hang (default): requests are not applied and time out at their deadline; no lease expires; quorum back = new term, leases refreshed', async () => {
    const { clock, model, kv } = setup();
    const g = await kv.leaseGrant(2000, DL);
    model.put('/k', 'v', g.id);
    const term = model.raftTerm;
    model.unavailable(true);
    expect(model.leader).toBeUndefined();
    let settled = false;
    const p = expectCode(
      kv.txn({ compare: [], success: [{ op: 'put', key: '/x', value: '1' }] }, 1500).finally(() => (settled = true)),
      'TIMEOUT',
    );
    await clock.advance(1499);
    expect(settled).toBe(false);
    await clock.advance(1);
    const err = await p;
    expect(err.retryable).toBe(true);
    expect(model.get('/x')).toBeUndefined();
    await clock.advance(10_000);
    expect(model.get('/k')).toBeDefined();
    model.unavailable(false);
    expect(model.raftTerm).toBe(term + 1);
    await clock.advance(2900);
    expect(model.get('/k')).toBeDefined();
    await clock.advance(200);
    expect(model.get('/k')).toBeUndefined();
  });

  it('refuse: requests fail at once with a retryable UNAVAILABLE', async () => {
    const { model, kv } = setup();
    model.unavailable(true, 'refuse');
    const err = await expectCode(kv.range({ key: '/k' }, DL), 'UNAVAILABLE');
    expect(err.retryable).toBe(true);
    await expectCode(kv.leaseGrant(2000, DL), 'UNAVAILABLE');
  });
});

describe('etcd model: transports', () => {
  it('drop: UNAVAILABLE and not applied; hang: TIMEOUT at the deadline, not applied; ambiguous: TIMEOUT but applied', async () => {
    const clock = new FakeClock();
    const model = new EtcdModel(clock);
    const t = new ControlledTransport(clock);
    const kv = model.client('host-1', t);
    const put = (key: string) => kv.txn({ compare: [], success: [{ op: 'put', key, value: '1' }] }, 1000);

    t.mode = 'drop';
    expect((await expectCode(put('/dropped'), 'UNAVAILABLE')).retryable).toBe(true);
    expect(model.get('/dropped')).toBeUndefined();

    t.mode = 'hang';
    const hung = expectCode(put('/hung'), 'TIMEOUT');
    await clock.advance(1000);
    expect((await hung).retryable).toBe(true);
    expect(model.get('/hung')).toBeUndefined();

    t.mode = 'ok';
    t.modeFor.set('txn', 'ambiguous');
    const amb = expectCode(put('/ambiguous'), 'TIMEOUT');
    await clock.advance(1000);
    await amb;
    expect(model.get('/ambiguous')).toBeDefined();
    expect((await kv.range({ key: '/ambiguous' }, DL)).count).toBe(1);
    expect(t.log).toEqual(['host-1 txn drop', 'host-1 txn hang', 'host-1 txn ambiguous', 'host-1 range ok']);
  });

  it('a watch sees `created` before any event; held notifications arrive later, in order; endWatches ends a client\'s watches with one retryable error', async () => {
    const clock = new FakeClock();
    const model = new EtcdModel(clock);
    const t = new ControlledTransport(clock);
    const kv = model.client('host-1', t);
    const other = model.client('host-2');
    const r1 = model.put('/w/a', '1');
    let created = false;
    const early: boolean[] = [];
    const batches: string[][] = [];
    const errors: Error[] = [];
    const sub = await kv.watch(
      { key: '/w/', prefix: true, fromRevision: r1 },
      {
        onEvents: (events) => {
          early.push(!created);
          batches.push(events.map((e) => e.kv.key));
        },
        onError: (e) => errors.push(e),
      },
      DL,
    );
    created = true;
    const otherW = await watchAll(other, '/w/', r1);
    await clock.advance(0);
    t.holdNotifications();
    model.put('/w/b', '2');
    model.put('/w/c', '3');
    await clock.advance(0);
    expect(batches).toEqual([['/w/a']]);
    t.releaseNotifications();
    await clock.advance(0);
    expect(batches).toEqual([['/w/a'], ['/w/b'], ['/w/c']]);
    expect(early).toEqual([false, false, false]);
    model.endWatches('host-1');
    model.put('/w/d', '4');
    await clock.advance(0);
    expect(batches).toHaveLength(3);
    expect(errors).toHaveLength(1);
    expect((errors[0] as { code?: string; retryable?: boolean }).code).toBe('UNAVAILABLE');
    expect(model.openWatches('host-1')).toBe(0);
    expect(otherW.batches).toHaveLength(4);
    await sub.close();
    await otherW.sub.close();
    expect(model.openWatches()).toBe(0);
  });

  it('a closed client sends nothing and hears nothing more', async () => {
    const { clock, model, kv } = setup();
    const w = await watchAll(kv, '/', model.revision + 1);
    await kv.close();
    model.put('/k', 'v');
    await clock.advance(0);
    expect(w.batches).toEqual([]);
    await expectCode(kv.range({ key: '/k' }, DL), 'UNAVAILABLE');
  });
});

describe('etcd model: compaction and determinism', () => {
  it('compact refuses a future revision and a revision at or below the last compaction', () => {
    const { model } = setup();
    const r = model.put('/k', '1');
    expect(() => model.compact(r + 1)).toThrow(/future revision/);
    model.compact(r);
    expect(() => model.compact(r)).toThrow(/compacted/);
    expect(model.compactRevision).toBe(r);
  });

  it('retainRevisions compacts on its own, keeping that many revisions', async () => {
    const { model, kv } = setup({ retainRevisions: 10 });
    let last = 0;
    for (let i = 0; i < 25; i++) last = model.put('/k', String(i));
    expect(model.compactRevision).toBeGreaterThan(0);
    expect(last - model.compactRevision).toBeGreaterThanOrEqual(10);
    expect(last - model.compactRevision).toBeLessThan(20);
    await expectCode(kv.range({ key: '/k', revision: 2 }, DL), 'COMPACTED');
    expect((await kv.range({ key: '/k', revision: last - 10 }, DL)).kvs[0]!.value).toBe('14');
  });

  it('two models fed the same calls give the same ids, revisions, headers and events', async () => {
    const run = async () => {
      const { clock, model, kv } = setup();
      const out: unknown[] = [];
      const w = await watchAll(kv, '/', 1);
      const g = await kv.leaseGrant(2500, DL);
      out.push(g);
      out.push(await kv.txn({ compare: [{ key: '/a', target: 'mod', op: '=', value: 0 }], success: [{ op: 'put', key: '/a', value: 'x', lease: g.id }] }, DL));
      await clock.advance(1000);
      model.electLeader();
      await clock.advance(5000);
      out.push(await kv.range({ key: '/', prefix: true }, DL), await kv.status(DL), w.batches);
      return JSON.stringify(out);
    };
    expect(await run()).toBe(await run());
  });
});
