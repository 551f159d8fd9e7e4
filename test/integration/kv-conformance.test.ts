/**
 * The `Kv` port on a REAL etcd 3.4 (LocalEtcdCluster, 3 members, TLS with client certificates):
 * `EtcdKv` must keep every rule of the port (src/ports/kv.ts) that Tether depends on: revisions,
 * txn compares on missing keys, all-or-nothing txns, etcd's txn limits, lease expiry deleting keys
 * in one revision, one watch batch per txn, compaction ending a watch with COMPACTED, unknown leases,
 * and raft terms in response headers. The same cases are what the etcd model is held to.
 *
 * afterAll stops the cluster and checks that no process carries its mark and its data dir is gone.
 */
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKv } from '../../src/adapters/etcd/etcd-kv.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { TetherError } from '../../src/domain/errors.js';
import type { Kv, KvHeader, KvOp, KvWatchEvent } from '../../src/ports/kv.js';
import { expectCode } from '../support/expect-code.js';
import { describeKvConformance } from '../support/kv-conformance.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const DL = 5000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: LocalEtcdCluster | undefined;
let dataDir = '';
const kvs: EtcdKv[] = [];

function newKv(): EtcdKv {
  const kv = new EtcdKv({ endpoints: cluster!.endpoints(), security: cluster!.clientTls() });
  kvs.push(kv);
  return kv;
}

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number): Promise<T> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (performance.now() > end) throw new Error(`${what}: not within ${timeoutMs}ms${last ? ` (last error: ${String(last)})` : ''}`);
    await sleep(50);
  }
}

/** Watch recorder: every batch with its header, and errors. */
function recorder() {
  const batches: { events: readonly KvWatchEvent[]; header: KvHeader }[] = [];
  const errors: Error[] = [];
  return { batches, errors, handlers: { onEvents: (events: readonly KvWatchEvent[], header: KvHeader) => void batches.push({ events, header }), onError: (e: Error) => void errors.push(e) } };
}

const put = (key: string, value: string, lease?: string): KvOp => (lease ? { op: 'put', key, value, lease } : { op: 'put', key, value });

/**
 * The cases, over `kv()`; `compact(rev)` compacts the store, `newTerm()` makes the cluster elect a
 * new leader and resolves once done.
 */
function kvCases(name: string, h: { kv: () => Kv; compact: (rev: number) => Promise<void>; newTerm: () => Promise<void> }): void {
  describe(name, () => {
    it('revisions: a txn bumps the store revision by one; every key it writes gets that mod revision; versions count puts', async () => {
      const kv = h.kv();
      const p = `/kvc/rev/${Math.random()}/`;
      const t1 = await kv.txn({ compare: [], success: [put(`${p}a`, '1'), put(`${p}b`, '1')] }, DL);
      expect(t1.succeeded).toBe(true);
      const t2 = await kv.txn({ compare: [], success: [put(`${p}a`, '2')] }, DL);
      expect(t2.header.revision).toBe(t1.header.revision + 1);
      const r = await kv.range({ key: p, prefix: true }, DL);
      expect(r.header.revision).toBe(t2.header.revision);
      expect(r.kvs.map((e) => [e.key.slice(p.length), e.value, e.createRevision, e.modRevision, e.version])).toEqual([
        ['a', '2', t1.header.revision, t2.header.revision, 2],
        ['b', '1', t1.header.revision, t1.header.revision, 1],
      ]);
      expect(r.count).toBe(2);
      // A read-only txn does not bump the revision.
      const t3 = await kv.txn({ compare: [], success: [{ op: 'range', key: p, prefix: true }] }, DL);
      expect(t3.header.revision).toBe(t2.header.revision);
      expect(t3.responses[0]).toMatchObject({ op: 'range', count: 2 });
      // limit, keysOnly, reads at a revision, serializable reads
      const lim = await kv.range({ key: p, prefix: true, limit: 1 }, DL);
      expect([lim.kvs.length, lim.more, lim.count]).toEqual([1, true, 2]);
      const old = await kv.range({ key: `${p}a`, revision: t1.header.revision }, DL);
      expect(old.kvs[0]?.value).toBe('1');
      const keys = await kv.range({ key: p, prefix: true, keysOnly: true }, DL);
      expect(keys.kvs.map((e) => e.value)).toEqual(['', '']);
      const ser = await kv.range({ key: `${p}a`, serializable: true }, DL);
      expect(ser.kvs.length).toBeLessThanOrEqual(1);
    });

    it('txn compares on a missing key: create/mod/version are 0, lease is 0, a value compare never matches', async () => {
      const kv = h.kv();
      const k = `/kvc/missing/${Math.random()}`;
      const ok = async (c: Parameters<Kv['txn']>[0]['compare'][number]) => (await kv.txn({ compare: [c], success: [] }, DL)).succeeded;
      expect(await ok({ key: k, target: 'create', op: '=', value: 0 })).toBe(true);
      expect(await ok({ key: k, target: 'mod', op: '=', value: 0 })).toBe(true);
      expect(await ok({ key: k, target: 'version', op: '=', value: 0 })).toBe(true);
      expect(await ok({ key: k, target: 'lease', op: '=', value: '0' })).toBe(true);
      expect(await ok({ key: k, target: 'value', op: '=', value: '' })).toBe(false);
      expect(await ok({ key: k, target: 'value', op: '!=', value: 'x' })).toBe(false);
      expect(await ok({ key: k, target: 'mod', op: '>', value: 0 })).toBe(false);
    });

    it('a txn is all-or-nothing: a failed compare writes nothing and runs the failure branch; a duplicate key is refused (FAILED_PRECONDITION) and writes nothing', async () => {
      const kv = h.kv();
      const p = `/kvc/aon/${Math.random()}/`;
      const w = await kv.txn({ compare: [], success: [put(`${p}x`, '1')] }, DL);
      const res = await kv.txn(
        { compare: [{ key: `${p}x`, target: 'mod', op: '=', value: w.header.revision + 100 }], success: [put(`${p}a`, '1'), put(`${p}b`, '1')], failure: [{ op: 'range', key: `${p}x` }] },
        DL,
      );
      expect(res.succeeded).toBe(false);
      expect(res.responses).toHaveLength(1);
      expect(res.responses[0]).toMatchObject({ op: 'range', count: 1 });
      expect(res.header.revision).toBe(w.header.revision);
      const dup = await expectCode(kv.txn({ compare: [], success: [put(`${p}c`, '1'), put(`${p}c`, '2')] }, DL), 'FAILED_PRECONDITION');
      expect(dup.retryable).toBe(false);
      expect((await kv.range({ key: p, prefix: true }, DL)).kvs.map((e) => e.key.slice(p.length))).toEqual(['x']);
      const del = await kv.txn({ compare: [{ key: `${p}x`, target: 'version', op: '=', value: 1 }], success: [{ op: 'delete', key: p, prefix: true }] }, DL);
      expect(del.responses[0]).toEqual({ op: 'delete', deleted: 1 });
    });

    it("txns over etcd's limits are refused as FAILED_PRECONDITION, not retryable: 129 ops", async () => {
      const kv = h.kv();
      const p = `/kvc/limit/${Math.random()}/`;
      const ops = Array.from({ length: 129 }, (_, i) => put(`${p}${i}`, 'v'));
      const err = await expectCode(kv.txn({ compare: [], success: ops }, DL), 'FAILED_PRECONDITION');
      expect(err.retryable).toBe(false);
      expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(0);
      expect((await kv.txn({ compare: [], success: ops.slice(0, 128) }, DL)).succeeded).toBe(true);
    });

    it('a watch delivers each txn as one batch, in revision order, with its header', async () => {
      const kv = h.kv();
      const p = `/kvc/watch/${Math.random()}/`;
      const start = (await kv.range({ key: p, prefix: true }, DL)).header.revision + 1;
      const rec = recorder();
      const sub = await kv.watch({ key: p, prefix: true, fromRevision: start }, rec.handlers, DL);
      try {
        const t1 = await kv.txn({ compare: [], success: [put(`${p}a`, '1'), put(`${p}b`, '1'), put(`${p}c`, '1')] }, DL);
        const t2 = await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}a` }, put(`${p}b`, '2')] }, DL);
        await until('two batches', () => rec.batches.length >= 2 || undefined, DL);
        expect(rec.batches.map((b) => b.events.map((e) => [e.type, e.kv.key.slice(p.length), e.kv.modRevision]))).toEqual([
          [
            ['put', 'a', t1.header.revision],
            ['put', 'b', t1.header.revision],
            ['put', 'c', t1.header.revision],
          ],
          [
            ['delete', 'a', t2.header.revision],
            ['put', 'b', t2.header.revision],
          ],
        ]);
        expect(rec.batches[1]!.header.raftTerm).toBeGreaterThan(0);
        expect(rec.batches[1]!.events[0]!.kv.value).toBe('');
        expect(rec.errors).toEqual([]);
      } finally {
        await sub.close();
      }
      // Catching up from an old revision still splits the history into one batch per txn.
      const rec2 = recorder();
      const sub2 = await kv.watch({ key: p, prefix: true, fromRevision: start }, rec2.handlers, DL);
      try {
        await until('two batches again', () => rec2.batches.length >= 2 || undefined, DL);
        expect(rec2.batches.map((b) => b.events.length)).toEqual([3, 2]);
      } finally {
        await sub2.close();
      }
    });

    it('a lease shorter than the minimum TTL is raised to it; its expiry deletes its keys in one revision (one batch of deletes); its keepalive then answers ttlMs 0', async () => {
      const kv = h.kv();
      const p = `/kvc/lease/${Math.random()}/`;
      const g = await kv.leaseGrant(1000, DL);
      expect(g.ttlMs).toBeGreaterThanOrEqual(1000);
      expect(g.id).toMatch(/^\d+$/);
      const t = await kv.txn({ compare: [], success: [put(`${p}a`, '1', g.id), put(`${p}b`, '1', g.id)] }, DL);
      const r = await kv.range({ key: `${p}a` }, DL);
      expect(r.kvs[0]?.lease).toBe(g.id);
      expect(await kv.txn({ compare: [{ key: `${p}a`, target: 'lease', op: '=', value: g.id }], success: [] }, DL)).toMatchObject({ succeeded: true });
      const ttl = await kv.leaseTimeToLive(g.id, DL);
      expect(ttl?.grantedMs).toBe(g.ttlMs);
      expect(ttl!.remainingMs).toBeLessThanOrEqual(g.ttlMs);
      const rec = recorder();
      const sub = await kv.watch({ key: p, prefix: true, fromRevision: t.header.revision + 1 }, rec.handlers, DL);
      try {
        await until('lease expiry', () => rec.batches.length >= 1 || undefined, g.ttlMs + 15_000);
        expect(rec.batches).toHaveLength(1);
        const evs = rec.batches[0]!.events;
        expect(evs.map((e) => [e.type, e.kv.key.slice(p.length)])).toEqual([
          ['delete', 'a'],
          ['delete', 'b'],
        ]);
        expect(evs[0]!.kv.modRevision).toBe(evs[1]!.kv.modRevision);
      } finally {
        await sub.close();
      }
      expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(0);
      expect(await kv.leaseTimeToLive(g.id, DL)).toBeUndefined();
      await kv.leaseRevoke(g.id, DL); // unknown lease: not an error
    }, 30_000);

    it('keepalive renews a known lease; revoke deletes its keys at once; an unknown lease keeps alive with ttlMs 0', async () => {
      const kv = h.kv();
      const p = `/kvc/revoke/${Math.random()}/`;
      const g = await kv.leaseGrant(10_000, DL);
      await kv.txn({ compare: [], success: [put(`${p}a`, '1', g.id)] }, DL);
      const ka = await kv.leaseKeepAlive(g.id, DL);
      expect(ka.ttlMs).toBe(g.ttlMs);
      expect(ka.header.raftTerm).toBeGreaterThan(0);
      await kv.leaseRevoke(g.id, DL);
      expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(0);
      expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(0);
      expect((await kv.leaseKeepAlive('123456789', DL)).ttlMs).toBe(0);
    });

    it('a watch from a compacted revision fails with COMPACTED naming the compact revision', async () => {
      const kv = h.kv();
      const p = `/kvc/compact/${Math.random()}/`;
      const t1 = await kv.txn({ compare: [], success: [put(`${p}a`, '1')] }, DL);
      const t2 = await kv.txn({ compare: [], success: [put(`${p}a`, '2')] }, DL);
      await h.compact(t2.header.revision);
      const rec = recorder();
      let err: unknown;
      try {
        const sub = await kv.watch({ key: p, prefix: true, fromRevision: t1.header.revision }, rec.handlers, DL);
        await until('watch error', () => rec.errors[0], DL);
        err = rec.errors[0];
        await sub.close();
      } catch (e) {
        err = e; // a Kv may also refuse the watch outright
      }
      expect(err).toBeInstanceOf(TetherError);
      expect((err as TetherError).code).toBe('COMPACTED');
      expect((err as TetherError).details.compactRevision).toBe(t2.header.revision);
      expect(rec.batches).toEqual([]);
      await expectCode(kv.range({ key: p, prefix: true, revision: t1.header.revision }, DL), 'COMPACTED');
    });

    it('response headers carry the raft term; status agrees; a new leader raises it', async () => {
      const kv = h.kv();
      const s = await kv.status(DL);
      expect(s.version).toMatch(/^3\.4\./);
      expect(s.raftTerm).toBeGreaterThan(0);
      expect(s.leader).toBeTruthy();
      const r = await kv.range({ key: '/kvc/term' }, DL);
      expect(r.header.raftTerm).toBe(s.raftTerm);
      await h.newTerm();
      const later = await until('a higher term', async () => {
        const x = await kv.range({ key: '/kvc/term' }, DL);
        return x.header.raftTerm > s.raftTerm ? x : undefined;
      }, 20_000);
      expect(later.header.raftTerm).toBeGreaterThan(s.raftTerm);
    }, 60_000);
  });
}

describe('EtcdKv against real etcd 3.4 (3 members, TLS)', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-kv-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test' });
    await cluster.start();
  }, 60_000);

  afterAll(async () => {
    for (const kv of kvs) await kv.close().catch(() => undefined);
    await stopTestEtcd(cluster, dataDir);
  });

  // The shared table the etcd model is held to (test/support/kv-conformance.ts), on this real etcd.
  describeKvConformance('EtcdKv on real etcd 3.4', async () => {
    const kv = newKv();
    return { kv, close: () => kv.close(), compact: async (rev) => void (await kv.client.kv.compact({ revision: rev, physical: true })) };
  });

  it('a dead member costs a retry, not the call: reads and txns keep succeeding while one of three refuses connections', async () => {
    const c = cluster!;
    const kv = newKv();
    const termBefore = (await kv.range({ key: 'warm' }, 2000)).header.raftTerm; // connections up
    const victim = (await c.waitForLeader(10_000)) === 0 ? 1 : 0; // a follower: quorum and leader stay
    await c.stopMember(victim);
    try {
      const failures: string[] = [];
      const terms = new Set<number>([termBefore]);
      for (let i = 0; i < 30; i++) {
        try {
          // Deadlines far above a loaded CI's latency: what is checked is that a dead member never fails a call.
          terms.add((await kv.range({ key: 'dead-member' }, 10_000)).header.raftTerm);
          terms.add((await kv.txn({ compare: [], success: [{ op: 'put', key: `dead-member/${i}`, value: 'x' }] }, 10_000)).header.raftTerm);
        } catch (err) {
          failures.push(`#${i}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      terms.add((await kv.range({ key: 'dead-member' }, 10_000)).header.raftTerm);
      // Without the retry, about a third of the calls went to the dead member and failed. An election
      // among the two live members (a starved CI can cause one) fails a call with etcd's own "leader
      // changed" / "no leader": not this test's concern, and excused only when the term did change.
      const excusable = (f: string) => terms.size > 1 && /leader changed|no leader/.test(f);
      expect(failures.filter((f) => !excusable(f))).toEqual([]);
    } finally {
      await c.restart(victim);
      await c.waitForHealthy(30_000);
    }
  }, 180_000);

  kvCases('EtcdKv', {
    kv: newKv,
    compact: async (rev) => {
      await newKv().client.kv.compact({ revision: rev, physical: true });
    },
    newTerm: async () => {
      const c = cluster!;
      const leader = await c.waitForLeader(10_000);
      await c.stopMember(leader);
      try {
        await c.waitForLeader(20_000);
      } finally {
        await c.restart(leader);
      }
      await c.waitForHealthy(30_000);
    },
  });
});
