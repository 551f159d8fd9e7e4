/**
 * The behaviours of etcd 3.4 that Tether depends on, as one vitest table run against every `Kv`
 * implementation: the etcd model (test/unit/etcd-model.test.ts, on a fake clock) and a real etcd
 * 3.4 (test/integration/kv-conformance.test.ts). A case that passes on real etcd and fails on the
 * model means the model is wrong; the other way round, the adapter is.
 *
 * Every case uses its own key prefix, so the table can share one real etcd cluster; revisions are
 * compared relative to what the case itself wrote (other writers may exist). Time passes only
 * through `advance` (a fake clock's advance for the model, a real sleep for etcd); lease cases use
 * etcd's minimum TTL (2 s), so the real-etcd run stays short.
 */
import { describe, expect, it } from 'vitest';
import { TetherError } from '../../src/domain/errors.js';
import type { Subscription } from '../../src/ports/controller-store.js';
import type { Kv, KvHeader, KvOp, KvTxnRequest, KvWatchEvent } from '../../src/ports/kv.js';
import { expectCode } from './expect-code.js';

/** One implementation under test. */
export interface KvUnderTest {
  readonly kv: Kv;
  close(): Promise<void>;
  /** Compacts the store's history below `rev` (etcd's Compact). Cases that need it are skipped without it. */
  compact?(rev: number): Promise<void>;
  /** Lets `ms` of the implementation's time pass (default: a real sleep). */
  advance?(ms: number): Promise<void>;
}

/** Deadline of every call in the table: generous, a shared machine may be slow. */
const DL = 5000;

let seq = 0;

/** A watch that records its batches. */
interface Recorder {
  readonly batches: { events: readonly KvWatchEvent[]; header: KvHeader }[];
  readonly errors: Error[];
  sub?: Subscription;
  /** Set when `watch()` itself rejected. */
  rejected?: unknown;
}

async function record(kv: Kv, key: string, fromRevision: number, prefix = true): Promise<Recorder> {
  const r: Recorder = { batches: [], errors: [] };
  try {
    r.sub = await kv.watch(
      { key, prefix, fromRevision },
      { onEvents: (events, header) => r.batches.push({ events, header }), onError: (err) => r.errors.push(err) },
      DL,
    );
  } catch (err) {
    r.rejected = err;
  }
  return r;
}

const put = (key: string, value: string, lease?: string): KvOp => ({ op: 'put', key, value, ...(lease !== undefined ? { lease } : {}) });

/**
 * Registers the conformance table under `describe(name)`. `makeKv` is called once per case and must
 * give a fresh client (the model: a fresh model; real etcd: a new client on the shared cluster).
 */
export function describeKvConformance(name: string, makeKv: () => Promise<KvUnderTest>): void {
  describe(`Kv conformance: ${name}`, () => {
    /** Runs `body` with a fresh client and a key prefix of its own; closes the client after. */
    const withKv = (body: (t: KvUnderTest & { p: string; advance(ms: number): Promise<void>; until(pred: () => boolean, maxMs: number): Promise<void> }) => Promise<void>) => async () => {
      const t = await makeKv();
      const p = `/kvconf/${process.pid}-${++seq}/`;
      const advance = t.advance ? (ms: number) => t.advance!(ms) : (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
      const until = async (pred: () => boolean, maxMs: number): Promise<void> => {
        for (let waited = 0; !pred(); waited += 50) {
          if (waited >= maxMs) throw new Error(`condition not met within ${maxMs} ms`);
          await advance(50);
        }
      };
      try {
        await body({ ...t, p, advance, until });
      } finally {
        await t.close();
      }
    };

    describe('revisions and headers', () => {
      it('a put bumps the revision by one and the key carries it; a delete of a missing key, a read-only txn and a failed txn without ops do not', withKv(async ({ kv, p }) => {
        const r0 = (await kv.range({ key: `${p}a` }, DL)).header.revision;
        const w = await kv.txn({ compare: [], success: [put(`${p}a`, '1')] }, DL);
        expect(w.succeeded).toBe(true);
        const r1 = w.header.revision;
        expect(r1).toBeGreaterThan(r0);
        const got = await kv.range({ key: `${p}a` }, DL);
        expect(got.kvs[0]).toMatchObject({ key: `${p}a`, value: '1', createRevision: r1, modRevision: r1, version: 1 });
        expect(got.kvs[0]!.lease).toBeUndefined();
        const d = await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}missing` }] }, DL);
        expect(d.responses).toEqual([{ op: 'delete', deleted: 0 }]);
        const ro = await kv.txn({ compare: [], success: [{ op: 'range', key: `${p}a` }] }, DL);
        const f = await kv.txn({ compare: [{ key: `${p}a`, target: 'version', op: '=', value: 7 }], success: [put(`${p}a`, 'x')] }, DL);
        expect(f.succeeded).toBe(false);
        expect(f.responses).toEqual([]);
        const after = (await kv.range({ key: `${p}a` }, DL)).header.revision;
        // Other writers may share the store: our own no-op requests must not have moved it past our key.
        expect(d.header.revision).toBe(ro.header.revision);
        expect(after).toBeGreaterThanOrEqual(r1);
        expect((await kv.range({ key: `${p}a` }, DL)).kvs[0]!.modRevision).toBe(r1);
      }));

      it('a txn writing several keys is one revision: every key gets that modRevision', withKv(async ({ kv, p }) => {
        const w = await kv.txn({ compare: [], success: [put(`${p}a`, '1'), put(`${p}b`, '2'), { op: 'delete', key: `${p}c` }] }, DL);
        const got = await kv.range({ key: p, prefix: true }, DL);
        expect(got.kvs.map((e) => e.modRevision)).toEqual([w.header.revision, w.header.revision]);
      }));

      it('versions count puts since creation; a delete and re-put starts again at 1 with a new createRevision', withKv(async ({ kv, p }) => {
        const r1 = (await kv.txn({ compare: [], success: [put(`${p}k`, '1')] }, DL)).header.revision;
        const r2 = (await kv.txn({ compare: [], success: [put(`${p}k`, '2')] }, DL)).header.revision;
        expect((await kv.range({ key: `${p}k` }, DL)).kvs[0]).toMatchObject({ createRevision: r1, modRevision: r2, version: 2 });
        await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}k` }] }, DL);
        const r4 = (await kv.txn({ compare: [], success: [put(`${p}k`, '3')] }, DL)).header.revision;
        expect((await kv.range({ key: `${p}k` }, DL)).kvs[0]).toMatchObject({ createRevision: r4, modRevision: r4, version: 1 });
      }));

      it('headers carry a raft term > 0 and revisions that never go backwards; status names version 3.4 and a leader', withKv(async ({ kv, p }) => {
        let last = 0;
        for (let i = 0; i < 5; i++) {
          const h = i % 2 === 0 ? (await kv.txn({ compare: [], success: [put(`${p}k`, String(i))] }, DL)).header : (await kv.range({ key: `${p}k` }, DL)).header;
          expect(h.raftTerm).toBeGreaterThan(0);
          expect(h.revision).toBeGreaterThanOrEqual(last);
          last = h.revision;
        }
        const s = await kv.status(DL);
        expect(s.version).toMatch(/^3\.4\./);
        expect(s.raftTerm).toBeGreaterThan(0);
        expect(s.header.raftTerm).toBeGreaterThan(0);
        expect(s.leader).toBeTruthy();
      }));
    });

    describe('ranges', () => {
      it('prefix ranges are in key order; limit returns the first keys with `more` and the full `count`; keysOnly drops values', withKv(async ({ kv, p }) => {
        await kv.txn({ compare: [], success: [put(`${p}c`, '3'), put(`${p}a`, '1'), put(`${p}b`, '2'), put(`${p.slice(0, -1)}x`, 'outside')] }, DL);
        const all = await kv.range({ key: p, prefix: true }, DL);
        expect(all.kvs.map((e) => e.key)).toEqual([`${p}a`, `${p}b`, `${p}c`]);
        expect(all).toMatchObject({ more: false, count: 3 });
        const two = await kv.range({ key: p, prefix: true, limit: 2 }, DL);
        expect(two.kvs.map((e) => e.value)).toEqual(['1', '2']);
        expect(two).toMatchObject({ more: true, count: 3 });
        const keys = await kv.range({ key: p, prefix: true, keysOnly: true }, DL);
        expect(keys.kvs.map((e) => [e.key, e.value])).toEqual([[`${p}a`, ''], [`${p}b`, ''], [`${p}c`, '']]);
        const one = await kv.range({ key: `${p}b` }, DL);
        expect(one.kvs.map((e) => e.value)).toEqual(['2']);
        expect((await kv.range({ key: `${p}zz` }, DL))).toMatchObject({ kvs: [], count: 0, more: false });
      }));

      it('a prefix range from a start key (`from`, paging) runs to the end of the prefix: count and more cover that part, at a pinned revision too', withKv(async ({ kv, p }) => {
        const r1 = (await kv.txn({ compare: [], success: [put(`${p}a`, '1'), put(`${p}b`, '2'), put(`${p}b/x`, '3'), put(`${p}c`, '4'), put(`${p.slice(0, -1)}z`, 'outside')] }, DL)).header.revision;
        await kv.txn({ compare: [], success: [put(`${p}d`, 'later')] }, DL);
        const rest = await kv.range({ key: p, prefix: true, from: `${p}b\0`, revision: r1 }, DL);
        expect(rest.kvs.map((e) => e.key)).toEqual([`${p}b/x`, `${p}c`]);
        expect(rest).toMatchObject({ more: false, count: 2 });
        const page = await kv.range({ key: p, prefix: true, from: `${p}b`, limit: 1 }, DL);
        expect(page.kvs.map((e) => e.value)).toEqual(['2']);
        expect(page).toMatchObject({ more: true, count: 4 });
      }));

      it('a range at an old revision sees the store as it was then', withKv(async ({ kv, p }) => {
        const r1 = (await kv.txn({ compare: [], success: [put(`${p}k`, 'old'), put(`${p}gone`, 'x')] }, DL)).header.revision;
        await kv.txn({ compare: [], success: [put(`${p}k`, 'new'), { op: 'delete', key: `${p}gone` }, put(`${p}born`, 'y')] }, DL);
        const then = await kv.range({ key: p, prefix: true, revision: r1 }, DL);
        expect(then.kvs.map((e) => [e.key, e.value])).toEqual([[`${p}gone`, 'x'], [`${p}k`, 'old']]);
        const now = await kv.range({ key: p, prefix: true }, DL);
        expect(now.kvs.map((e) => [e.key, e.value])).toEqual([[`${p}born`, 'y'], [`${p}k`, 'new']]);
      }));

      it('a serializable range answers (possibly stale, never newer than a linearizable one after it)', withKv(async ({ kv, p }) => {
        await kv.txn({ compare: [], success: [put(`${p}k`, '1')] }, DL);
        const s = await kv.range({ key: `${p}k`, serializable: true }, DL);
        const l = await kv.range({ key: `${p}k` }, DL);
        expect(s.header.revision).toBeLessThanOrEqual(l.header.revision);
        expect(s.kvs.length).toBeLessThanOrEqual(1);
      }));
    });

    describe('txns', () => {
      it('compares on a missing key: create/mod/version are 0, lease is 0, a value compare never matches (= or !=)', withKv(async ({ kv, p }) => {
        const k = `${p}missing`;
        const ok = async (c: KvTxnRequest['compare'][number]): Promise<boolean> => (await kv.txn({ compare: [c], success: [] }, DL)).succeeded;
        expect(await ok({ key: k, target: 'create', op: '=', value: 0 })).toBe(true);
        expect(await ok({ key: k, target: 'mod', op: '=', value: 0 })).toBe(true);
        expect(await ok({ key: k, target: 'version', op: '=', value: 0 })).toBe(true);
        expect(await ok({ key: k, target: 'mod', op: '>', value: 0 })).toBe(false);
        expect(await ok({ key: k, target: 'lease', op: '=', value: '0' })).toBe(true);
        expect(await ok({ key: k, target: 'value', op: '=', value: '' })).toBe(false);
        expect(await ok({ key: k, target: 'value', op: '!=', value: 'x' })).toBe(false);
      }));

      it('compares on an existing key: mod, create, version, value and lease', withKv(async ({ kv, p }) => {
        const k = `${p}k`;
        const r = (await kv.txn({ compare: [], success: [put(k, 'v')] }, DL)).header.revision;
        const ok = async (c: KvTxnRequest['compare'][number]): Promise<boolean> => (await kv.txn({ compare: [c], success: [] }, DL)).succeeded;
        expect(await ok({ key: k, target: 'mod', op: '=', value: r })).toBe(true);
        expect(await ok({ key: k, target: 'mod', op: '<', value: r + 1 })).toBe(true);
        expect(await ok({ key: k, target: 'create', op: '!=', value: r })).toBe(false);
        expect(await ok({ key: k, target: 'version', op: '>', value: 0 })).toBe(true);
        expect(await ok({ key: k, target: 'value', op: '=', value: 'v' })).toBe(true);
        expect(await ok({ key: k, target: 'value', op: '!=', value: 'v' })).toBe(false);
        expect(await ok({ key: k, target: 'lease', op: '=', value: '0' })).toBe(true);
      }));

      it('create-if-absent: the compare sees the state before the txn, so only the first of two identical txns succeeds', withKv(async ({ kv, p }) => {
        const req: KvTxnRequest = { compare: [{ key: `${p}k`, target: 'mod', op: '=', value: 0 }], success: [put(`${p}k`, 'first')], failure: [{ op: 'range', key: `${p}k` }] };
        expect((await kv.txn(req, DL)).succeeded).toBe(true);
        const second = await kv.txn(req, DL);
        expect(second.succeeded).toBe(false);
        expect(second.responses).toHaveLength(1);
        const r = second.responses[0]!;
        expect(r.op).toBe('range');
        if (r.op === 'range') expect(r.kvs.map((e) => e.value)).toEqual(['first']);
      }));

      it('a txn is all-or-nothing: a put on an unknown lease refuses the whole txn (etcd: NotFound; UNAVAILABLE, not applied), nothing is written', withKv(async ({ kv, p }) => {
        const g = await kv.leaseGrant(2000, DL);
        await kv.leaseRevoke(g.id, DL);
        await expectCode(kv.txn({ compare: [], success: [put(`${p}a`, '1'), put(`${p}b`, '2', g.id)] }, DL), 'UNAVAILABLE');
        expect((await kv.range({ key: p, prefix: true }, DL)).kvs).toEqual([]);
      }));

      it('128 success ops are accepted; 129 are refused (FAILED_PRECONDITION, not retryable) and nothing is written', withKv(async ({ kv, p }) => {
        const ops = (n: number) => Array.from({ length: n }, (_, i) => put(`${p}k${String(i).padStart(3, '0')}`, 'v'));
        const err = await expectCode(kv.txn({ compare: [], success: ops(129) }, DL), 'FAILED_PRECONDITION');
        expect(err.retryable).toBe(false);
        expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(0);
        const ok = await kv.txn({ compare: [], success: ops(128) }, DL);
        expect(ok.succeeded).toBe(true);
        expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(128);
      }));

      it('compares count toward the limit like ops, each list bounded on its own: 128 compares + 128 success + 128 failure ops pass, 129 compares do not', withKv(async ({ kv, p }) => {
        const compares = (n: number): KvTxnRequest['compare'] => Array.from({ length: n }, (_, i) => ({ key: `${p}c${i}`, target: 'mod' as const, op: '=' as const, value: 0 }));
        const ops = (tag: string) => Array.from({ length: 128 }, (_, i) => put(`${p}${tag}${i}`, 'v'));
        const ok = await kv.txn({ compare: compares(128), success: ops('s'), failure: ops('f') }, DL);
        expect(ok.succeeded).toBe(true);
        const err = await expectCode(kv.txn({ compare: compares(129), success: [put(`${p}x`, 'v')] }, DL), 'FAILED_PRECONDITION');
        expect(err.retryable).toBe(false);
        expect((await kv.range({ key: `${p}x` }, DL)).count).toBe(0);
      }));

      it('a key written twice in one branch is refused (two puts, or a put under a delete of the same branch); deletes may overlap; branches are checked apart', withKv(async ({ kv, p }) => {
        const refused = async (req: KvTxnRequest) => {
          const err = await expectCode(kv.txn(req, DL), 'FAILED_PRECONDITION');
          expect(err.retryable).toBe(false);
        };
        await refused({ compare: [], success: [put(`${p}k`, '1'), put(`${p}k`, '2')] });
        await refused({ compare: [], success: [{ op: 'delete', key: `${p}k` }, put(`${p}k`, '2')] });
        await refused({ compare: [], success: [put(`${p}sub/k`, '2'), { op: 'delete', key: `${p}sub/`, prefix: true }] });
        await refused({ compare: [], success: [], failure: [put(`${p}k`, '1'), put(`${p}k`, '2')] });
        expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(0);
        expect((await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}k` }, { op: 'delete', key: `${p}k` }] }, DL)).succeeded).toBe(true);
        expect((await kv.txn({ compare: [], success: [put(`${p}k`, 's')], failure: [put(`${p}k`, 'f')] }, DL)).succeeded).toBe(true);
        expect((await kv.range({ key: `${p}k` }, DL)).kvs[0]!.value).toBe('s');
      }));

      it('a request above 1.5 MiB is refused (FAILED_PRECONDITION, not retryable); 1.4 MiB passes', withKv(async ({ kv, p }) => {
        const err = await expectCode(kv.txn({ compare: [], success: [put(`${p}big`, 'x'.repeat(1.6 * 1024 * 1024))] }, DL), 'FAILED_PRECONDITION');
        expect(err.retryable).toBe(false);
        expect((await kv.range({ key: `${p}big` }, DL)).count).toBe(0);
        const ok = await kv.txn({ compare: [], success: [put(`${p}big`, 'x'.repeat(1.4 * 1024 * 1024))] }, DL);
        expect(ok.succeeded).toBe(true);
        await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}big` }] }, DL);
      }));

      it('a delete op reports how many keys it removed; a prefix delete removes every key under the prefix in one revision', withKv(async ({ kv, p }) => {
        await kv.txn({ compare: [], success: [put(`${p}d/1`, '1'), put(`${p}d/2`, '2'), put(`${p}e`, '3')] }, DL);
        const d = await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}d/`, prefix: true }] }, DL);
        expect(d.responses).toEqual([{ op: 'delete', deleted: 2 }]);
        expect((await kv.range({ key: p, prefix: true }, DL)).kvs.map((e) => e.key)).toEqual([`${p}e`]);
      }));
    });

    describe('leases', () => {
      it('a grant is rounded up to whole seconds and to the minimum TTL (2 s with etcd defaults)', withKv(async ({ kv }) => {
        const a = await kv.leaseGrant(500, DL);
        const b = await kv.leaseGrant(2001, DL);
        const c = await kv.leaseGrant(3000, DL);
        expect([a.ttlMs, b.ttlMs, c.ttlMs]).toEqual([2000, 3000, 3000]);
        expect(new Set([a.id, b.id, c.id]).size).toBe(3);
        expect(a.header.raftTerm).toBeGreaterThan(0);
        for (const l of [a, b, c]) await kv.leaseRevoke(l.id, DL);
      }));

      it('a keepalive answers the granted TTL and resets the remaining time to it; time-to-live reports both', withKv(async ({ kv, advance }) => {
        const g = await kv.leaseGrant(3000, DL);
        await advance(1100);
        const before = await kv.leaseTimeToLive(g.id, DL);
        expect(before?.grantedMs).toBe(3000);
        expect(before!.remainingMs).toBeLessThanOrEqual(2000);
        expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(3000);
        const after = await kv.leaseTimeToLive(g.id, DL);
        expect(after!.remainingMs).toBeGreaterThanOrEqual(2000);
        expect(after!.remainingMs).toBeLessThanOrEqual(3000);
        await kv.leaseRevoke(g.id, DL);
      }));

      it('unknown leases: keepalive answers ttl 0, time-to-live undefined, revoke is not an error', withKv(async ({ kv }) => {
        const g = await kv.leaseGrant(2000, DL);
        await kv.leaseRevoke(g.id, DL);
        expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(0);
        expect(await kv.leaseTimeToLive(g.id, DL)).toBeUndefined();
        await kv.leaseRevoke(g.id, DL);
        await kv.leaseRevoke('123456789', DL);
      }));

      it('a revoke deletes every key on the lease in ONE revision and one watch batch; a key re-put without the lease survives', withKv(async ({ kv, p, until }) => {
        const g = await kv.leaseGrant(10_000, DL);
        const w = await kv.txn({ compare: [], success: [put(`${p}a`, '1', g.id), put(`${p}b`, '2', g.id), put(`${p}c`, '3', g.id)] }, DL);
        expect((await kv.range({ key: `${p}a` }, DL)).kvs[0]!.lease).toBe(g.id);
        await kv.txn({ compare: [{ key: `${p}c`, target: 'lease', op: '=', value: g.id }], success: [put(`${p}c`, 'kept')] }, DL);
        const rec = await record(kv, p, w.header.revision + 2);
        const rv = await kv.leaseRevoke(g.id, DL);
        await until(() => rec.batches.length >= 1, 3000);
        await rec.sub?.close();
        expect(rec.batches).toHaveLength(1);
        const evs = rec.batches[0]!.events;
        expect(evs.map((e) => [e.type, e.kv.key])).toEqual([['delete', `${p}a`], ['delete', `${p}b`]]);
        expect(new Set(evs.map((e) => e.kv.modRevision)).size).toBe(1);
        expect(evs[0]!.kv.modRevision).toBeLessThanOrEqual(rv.header.revision);
        const left = await kv.range({ key: p, prefix: true }, DL);
        expect(left.kvs.map((e) => [e.key, e.value, e.lease])).toEqual([[`${p}c`, 'kept', undefined]]);
      }));

      it('expiry: kept alive past its TTL the lease lives; left alone it expires after its TTL (not before), deleting its keys in one revision and one batch', withKv(async ({ kv, p, advance, until }) => {
        const g = await kv.leaseGrant(2000, DL);
        expect(g.ttlMs).toBe(2000);
        const w = await kv.txn({ compare: [], success: [put(`${p}a`, '1', g.id), put(`${p}b`, '2', g.id), put(`${p}free`, '3')] }, DL);
        const rec = await record(kv, p, w.header.revision + 1);
        for (let i = 0; i < 6; i++) {
          await advance(500);
          expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(2000);
        }
        expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(3);
        await advance(1000);
        // Half the TTL after the last keepalive: still there (etcd never expires a lease early).
        expect((await kv.range({ key: p, prefix: true }, DL)).count).toBe(3);
        await until(() => rec.batches.length >= 1, 5000);
        await rec.sub?.close();
        expect(rec.batches).toHaveLength(1);
        const evs = rec.batches[0]!.events;
        expect(evs.map((e) => [e.type, e.kv.key])).toEqual([['delete', `${p}a`], ['delete', `${p}b`]]);
        expect(evs[0]!.kv.modRevision).toBe(evs[1]!.kv.modRevision);
        expect((await kv.range({ key: p, prefix: true }, DL)).kvs.map((e) => e.key)).toEqual([`${p}free`]);
        expect((await kv.leaseKeepAlive(g.id, DL)).ttlMs).toBe(0);
        expect(await kv.leaseTimeToLive(g.id, DL)).toBeUndefined();
      }));
    });

    describe('watches', () => {
      it('a watch from an old revision replays history, one batch per revision in revision order, then live changes', withKv(async ({ kv, p, until }) => {
        const r1 = (await kv.txn({ compare: [], success: [put(`${p}a`, '1')] }, DL)).header.revision;
        const r2 = (await kv.txn({ compare: [], success: [put(`${p}b`, '2'), put(`${p}c`, '3')] }, DL)).header.revision;
        const r3 = (await kv.txn({ compare: [], success: [{ op: 'delete', key: `${p}a` }] }, DL)).header.revision;
        const rec = await record(kv, p, r1);
        expect(rec.rejected).toBeUndefined();
        await until(() => rec.batches.length >= 3, 3000);
        const r4 = (await kv.txn({ compare: [], success: [put(`${p}d`, '4')] }, DL)).header.revision;
        await until(() => rec.batches.length >= 4, 3000);
        await rec.sub?.close();
        expect(rec.errors).toEqual([]);
        const seen = rec.batches.map((b) => b.events.map((e) => `${e.type} ${e.kv.key.slice(p.length)} @${e.kv.modRevision}`));
        expect(seen).toEqual([[`put a @${r1}`], [`put b @${r2}`, `put c @${r2}`], [`delete a @${r3}`], [`put d @${r4}`]]);
        const del = rec.batches[2]!.events[0]!;
        expect(del.kv.value).toBe('');
        for (const b of rec.batches) {
          expect(b.header.raftTerm).toBeGreaterThan(0);
          expect(b.header.revision).toBeGreaterThanOrEqual(b.events[0]!.kv.modRevision);
        }
      }));

      it('a watch from a mid revision starts there (inclusive); keys outside the prefix are not seen; a closed watch sees nothing more', withKv(async ({ kv, p, until, advance }) => {
        await kv.txn({ compare: [], success: [put(`${p}w/a`, '1')] }, DL);
        const r2 = (await kv.txn({ compare: [], success: [put(`${p}w/b`, '2'), put(`${p}other`, 'x')] }, DL)).header.revision;
        const rec = await record(kv, `${p}w/`, r2);
        await until(() => rec.batches.length >= 1, 3000);
        await kv.txn({ compare: [], success: [put(`${p}other`, 'y')] }, DL);
        await kv.txn({ compare: [], success: [put(`${p}w/c`, '3')] }, DL);
        await until(() => rec.batches.length >= 2, 3000);
        await rec.sub?.close();
        await kv.txn({ compare: [], success: [put(`${p}w/d`, '4')] }, DL);
        await advance(300);
        expect(rec.batches.map((b) => b.events.map((e) => e.kv.key.slice(p.length)))).toEqual([['w/b'], ['w/c']]);
      }));

      it('a single-key watch sees only that key', withKv(async ({ kv, p, until }) => {
        const r = (await kv.range({ key: p }, DL)).header.revision;
        const rec = await record(kv, `${p}k`, r + 1, false);
        await kv.txn({ compare: [], success: [put(`${p}k2`, 'no'), put(`${p}k`, 'yes')] }, DL);
        await until(() => rec.batches.length >= 1, 3000);
        await rec.sub?.close();
        expect(rec.batches.map((b) => b.events.map((e) => e.kv.key))).toEqual([[`${p}k`]]);
      }));
    });

    describe('compaction', () => {
      it('a range or watch below the compaction fails with COMPACTED (details.compactRevision); at the compaction revision they work', withKv(async ({ kv, p, compact, until }) => {
        if (!compact) return;
        const r1 = (await kv.txn({ compare: [], success: [put(`${p}k`, '1')] }, DL)).header.revision;
        await kv.txn({ compare: [], success: [put(`${p}k`, '2')] }, DL);
        const r3 = (await kv.txn({ compare: [], success: [put(`${p}k`, '3')] }, DL)).header.revision;
        await compact(r3);
        const err = await expectCode(kv.range({ key: `${p}k`, revision: r1 }, DL), 'COMPACTED');
        expect(err.retryable).toBe(false);
        // etcd's range error does not say where the history starts; an implementation that knows tells.
        if (err.details.compactRevision !== undefined) expect(Number(err.details.compactRevision)).toBeGreaterThanOrEqual(r3);
        expect((await kv.range({ key: `${p}k`, revision: r3 }, DL)).kvs[0]!.value).toBe('3');

        // etcd confirms the watch, then cancels it as compacted: the port allows either a rejected
        // watch() or an onError, both COMPACTED.
        const rec = await record(kv, p, r1);
        if (rec.rejected === undefined) await until(() => rec.errors.length > 0, 3000);
        const werr = (rec.rejected ?? rec.errors[0]) as TetherError;
        expect(werr).toBeInstanceOf(TetherError);
        expect(werr.code).toBe('COMPACTED');
        expect(Number(werr.details.compactRevision)).toBeGreaterThanOrEqual(r3);
        expect(rec.batches).toEqual([]);
        await rec.sub?.close();

        const ok = await record(kv, p, r3);
        await until(() => ok.batches.length >= 1, 3000);
        await ok.sub?.close();
        expect(ok.errors).toEqual([]);
        expect(ok.batches[0]!.events.map((e) => e.kv.value)).toEqual(['3']);
      }));
    });
  });
}
