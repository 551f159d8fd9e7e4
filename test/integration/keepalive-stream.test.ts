/**
 * EtcdKv's lease keepalives on a REAL etcd 3.4 (LocalEtcdCluster, 3 members, TLS): every keepalive
 * of one client goes on ONE long-lived LeaseKeepAlive stream (counted by etcd itself, through its
 * gRPC server metrics `grpc_server_started_total` / `grpc_server_msg_received_total` for
 * `LeaseKeepAlive`, and by the adapter's own counter), answers are matched to their lease, a
 * member restart re-opens the stream on the next call, and a stalled member (SIGSTOP) costs a
 * missed deadline, after which the next call uses a new stream; a cut cable (fault proxy blackhole:
 * connections open, bytes gone) costs each keepalive its deadline and no more, and keepalives work
 * again once it heals.
 *
 * afterAll stops the cluster and checks that no process carries its mark and its data dir is gone.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKv } from '../../src/adapters/etcd/etcd-kv.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { httpText } from '../../src/dev/etcd-http.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import { TetherError } from '../../src/domain/errors.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

let cluster: LocalEtcdCluster | undefined;
let dataDir = '';
const kvs: EtcdKv[] = [];

function newKv(): EtcdKv {
  const kv = new EtcdKv({ endpoints: cluster!.endpoints(), security: cluster!.clientTls() });
  kvs.push(kv);
  return kv;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Per member: LeaseKeepAlive streams started and keepalive messages received, from etcd's /metrics (undefined: not running). */
async function keepaliveMetrics(): Promise<({ started: number; received: number } | undefined)[]> {
  const c = cluster!;
  const out: ({ started: number; received: number } | undefined)[] = [];
  for (let i = 0; i < 3; i++) {
    if (!c.isRunning(i) || c.isPaused(i)) {
      out.push(undefined);
      continue;
    }
    const text = await httpText(`${c.clientUrl(i)}/metrics`, 'GET', undefined, 3000, c.httpTls());
    const value = (metric: string): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${metric}{`) && l.includes('grpc_method="LeaseKeepAlive"'));
      if (!line) throw new Error(`etcd member ${i} publishes no ${metric} for LeaseKeepAlive (is --metrics basic or extensive on?)`);
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    out.push({ started: value('grpc_server_started_total'), received: value('grpc_server_msg_received_total') });
  }
  return out;
}

/**
 * SIGSTOPs member `i` and waits until every thread of it is stopped: on this machine (itself a VM,
 * shared by busy tests) a stop was seen to take effect only after the member answered one more
 * request, 2.5 ms after the signal.
 */
async function freeze(i: number): Promise<void> {
  cluster!.pause(i);
  const pid = cluster!.pid(i)!;
  for (let waited = 0; ; waited += 20) {
    const states = readdirSync(`/proc/${pid}/task`).map((t) => readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ')[1]![0]);
    if (states.every((x) => x === 'T')) return;
    if (waited > 5000) throw new Error(`etcd member ${i} (pid ${pid}) not stopped 5 s after SIGSTOP: thread states ${states.join('')}`);
    await sleep(20);
  }
}

/** Index of the member whose id is `memberId` (hex, as the Kv header names it). */
async function memberIndex(memberId: string | undefined): Promise<number> {
  for (let i = 0; i < 3; i++) {
    if (!cluster!.isRunning(i) || cluster!.isPaused(i)) continue;
    if (BigInt((await cluster!.memberStatus(i)).memberId).toString(16) === memberId) return i;
  }
  return -1;
}

/** Per member: what changed between two scrapes (members not scraped both times count 0). */
function delta(a: Awaited<ReturnType<typeof keepaliveMetrics>>, b: Awaited<ReturnType<typeof keepaliveMetrics>>): { started: number; received: number }[] {
  return a.map((x, i) => {
    const y = b[i];
    return x && y ? { started: y.started - x.started, received: y.received - x.received } : { started: 0, received: 0 };
  });
}

const sum = (d: { started: number; received: number }[], k: 'started' | 'received') => d.reduce((n, x) => n + x[k], 0);

describe('EtcdKv lease keepalives: one long-lived stream per client (real etcd 3.4, 3 members, TLS)', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-ka-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test' });
    await cluster.start();
  }, 60_000);

  afterAll(async () => {
    for (const kv of kvs) await kv.close().catch(() => undefined);
    await stopTestEtcd(cluster, dataDir);
  });

  it('N keepalives of several leases, sequential and concurrent (several per lease at once), go on ONE stream; each answer is its own lease', async () => {
    const kv = newKv();
    const leases = [await kv.leaseGrant(10_000, 5000), await kv.leaseGrant(20_000, 5000), await kv.leaseGrant(30_000, 5000)];
    const before = await keepaliveMetrics();
    let n = 0;
    for (let round = 0; round < 20; round++) {
      // Every lease at once, the first one three times: answers must come back to the right caller.
      const calls = [...leases, leases[0]!, leases[0]!].map(async (l) => ({ l, r: await kv.leaseKeepAlive(l.id, 5000) }));
      n += calls.length;
      for (const { l, r } of await Promise.all(calls)) {
        expect(r.ttlMs).toBe(l.ttlMs);
        expect(r.header.raftTerm).toBeGreaterThan(0);
        expect(r.header.revision).toBeGreaterThan(0);
      }
    }
    const d = delta(before, await keepaliveMetrics());
    expect(kv.keepaliveStreamsOpened).toBe(1);
    expect(sum(d, 'started')).toBe(1);
    expect(sum(d, 'received')).toBe(n);
    // An unknown lease answers ttl 0 on the same stream, and does not disturb the others.
    const [unknown, known] = await Promise.all([kv.leaseKeepAlive('123456789', 5000), kv.leaseKeepAlive(leases[1]!.id, 5000)]);
    expect([unknown.ttlMs, known.ttlMs]).toEqual([0, 20_000]);
    expect(kv.keepaliveStreamsOpened).toBe(1);
    for (const l of leases) await kv.leaseRevoke(l.id, 5000);
  }, 60_000);

  it('a restart of the member serving the stream breaks it; the next calls re-open it elsewhere (retryable failures only) and the lease lives on', async () => {
    const c = cluster!;
    const kv = newKv();
    const g = await kv.leaseGrant(10_000, 5000);
    const m0 = await keepaliveMetrics();
    const first = await kv.leaseKeepAlive(g.id, 5000);
    const serving = await memberIndex(first.header.memberId);
    expect(serving).toBeGreaterThanOrEqual(0);
    expect(delta(m0, await keepaliveMetrics())[serving]).toEqual({ started: 1, received: 1 });
    expect(kv.keepaliveStreamsOpened).toBe(1);
    await c.stopMember(serving);
    let failures = 0;
    try {
      let ok = false;
      for (let i = 0; i < 20 && !ok; i++) {
        try {
          const r = await kv.leaseKeepAlive(g.id, 2000);
          expect(r.ttlMs).toBe(10_000);
          ok = true;
        } catch (err) {
          failures++;
          expect(err).toBeInstanceOf(TetherError);
          expect((err as TetherError).retryable).toBe(true);
          expect(['UNAVAILABLE', 'TIMEOUT']).toContain((err as TetherError).code);
          await sleep(200);
        }
      }
      expect(ok).toBe(true);
    } finally {
      await c.restart(serving);
      await c.waitForHealthy(30_000);
    }
    // The stream broke with its member: at most the call that found it broken fails (plus calls during an election if it was the leader).
    expect(kv.keepaliveStreamsOpened).toBeGreaterThanOrEqual(2);
    const opened = kv.keepaliveStreamsOpened;
    const m1 = await keepaliveMetrics();
    for (let i = 0; i < 10; i++) expect((await kv.leaseKeepAlive(g.id, 5000)).ttlMs).toBe(10_000);
    const d = delta(m1, await keepaliveMetrics());
    // Steady again: one stream, no new ones, every keepalive on it.
    expect(kv.keepaliveStreamsOpened).toBe(opened);
    expect(sum(d, 'started')).toBe(0);
    expect(sum(d, 'received')).toBe(10);
    expect(failures).toBeLessThan(20);
    await kv.leaseRevoke(g.id, 5000);
  }, 120_000);

  it('a frozen member (SIGSTOP) costs the call its deadline (retryable TIMEOUT); the stalled stream is retired and the next calls use a new one', async () => {
    const c = cluster!;
    const kv = newKv();
    const g = await kv.leaseGrant(15_000, 5000);
    const m0 = await keepaliveMetrics();
    const first = await kv.leaseKeepAlive(g.id, 5000);
    const d0 = delta(m0, await keepaliveMetrics());
    // The member that served it: named by etcd in the answer's header, and where the stream started.
    const serving = await memberIndex(first.header.memberId);
    expect(serving).toBeGreaterThanOrEqual(0);
    expect(d0[serving]).toEqual({ started: 1, received: 1 });
    await freeze(serving);
    try {
      const err = await kv.leaseKeepAlive(g.id, 800).then(
        (r) => ({ answeredBy: r.header.memberId, paused: first.header.memberId, d0 }),
        (e: unknown) => e,
      );
      expect(err, JSON.stringify(err)).toBeInstanceOf(TetherError);
      expect((err as TetherError).code).toBe('TIMEOUT');
      expect((err as TetherError).retryable).toBe(true);
      // The next calls do not queue behind the frozen member: a new stream (to a member picked at
      // random, maybe the frozen one again: then that call misses too and the next one moves on).
      let ok = false;
      for (let i = 0; i < 20 && !ok; i++) {
        try {
          ok = (await kv.leaseKeepAlive(g.id, 1500)).ttlMs === 15_000;
        } catch (e) {
          expect((e as TetherError).retryable).toBe(true);
        }
      }
      expect(ok).toBe(true);
      expect(kv.keepaliveStreamsOpened).toBeGreaterThanOrEqual(2);
    } finally {
      c.resume(serving);
      await c.waitForHealthy(30_000);
    }
    await kv.leaseRevoke(g.id, 5000);
  }, 120_000);

  it('a cut cable (every member blackholed): each keepalive fails by its deadline (retryable); after heal they succeed and the lease lived', async () => {
    const group = await FaultProxyGroup.start(cluster!.endpoints());
    try {
      const kv = new EtcdKv({ endpoints: group.endpoints(), security: cluster!.clientTls() });
      kvs.push(kv);
      const g = await kv.leaseGrant(10_000, 5000);
      expect((await kv.leaseKeepAlive(g.id, 5000)).ttlMs).toBe(10_000);
      await group.blackhole();
      let timeouts = 0;
      for (let i = 0; i < 5; i++) {
        const err = await kv.leaseKeepAlive(g.id, 500).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(TetherError);
        expect((err as TetherError).retryable).toBe(true);
        if ((err as TetherError).code === 'TIMEOUT') timeouts++;
      }
      expect(timeouts).toBeGreaterThan(0);
      await group.heal();
      let ok = false;
      for (let i = 0; i < 20 && !ok; i++) {
        try {
          ok = (await kv.leaseKeepAlive(g.id, 1000)).ttlMs === 10_000;
        } catch {
          await sleep(100);
        }
      }
      expect(ok).toBe(true);
      await kv.leaseRevoke(g.id, 5000);
    } finally {
      await group.close();
    }
  }, 60_000);

  it('close() ends the stream: a keepalive after close fails as a retryable UNAVAILABLE', async () => {
    const kv = newKv();
    const g = await kv.leaseGrant(10_000, 5000);
    await kv.leaseKeepAlive(g.id, 5000);
    await kv.leaseRevoke(g.id, 5000);
    await kv.close();
    const err = await kv.leaseKeepAlive(g.id, 1000).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).retryable).toBe(true);
  }, 30_000);

  it('with etcd user/password auth on (the token in the stream metadata): keepalives of an authenticated client share one stream too (runs last: auth stays on)', async () => {
    const c = cluster!;
    const certs = c.certs!;
    let root = false;
    const etcdctl = (...args: string[]) =>
      execFileSync('timeout', ['10', 'etcdctl', ...args], {
        encoding: 'utf8',
        env: { ...process.env, ETCDCTL_API: '3', ETCDCTL_ENDPOINTS: c.endpoints().join(','), ETCDCTL_CACERT: certs.ca, ETCDCTL_CERT: certs.clientCert, ETCDCTL_KEY: certs.clientKey, ...(root ? { ETCDCTL_USER: 'root:root-pw' } : {}) },
      });
    etcdctl('user', 'add', 'root:root-pw');
    etcdctl('user', 'grant-role', 'root', 'root');
    etcdctl('role', 'add', 'ka');
    etcdctl('role', 'grant-permission', '--prefix=true', 'ka', 'readwrite', '/ka/');
    etcdctl('user', 'add', 'ka-user:ka-pw');
    etcdctl('user', 'grant-role', 'ka-user', 'ka');
    etcdctl('auth', 'enable');
    root = true;
    const kv = new EtcdKv({ endpoints: c.endpoints(), security: { ...c.clientTls(), username: 'ka-user', password: 'ka-pw' } });
    kvs.push(kv);
    const g = await kv.leaseGrant(10_000, 5000);
    await kv.txn({ compare: [], success: [{ op: 'put', key: '/ka/k', value: 'v', lease: g.id }] }, 5000);
    for (let i = 0; i < 10; i++) expect((await kv.leaseKeepAlive(g.id, 5000)).ttlMs).toBe(10_000);
    expect(kv.keepaliveStreamsOpened).toBe(1);
    await kv.leaseRevoke(g.id, 5000);
  }, 60_000);
});
