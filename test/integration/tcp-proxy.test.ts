/**
 * FaultProxy against a local echo server, and FaultProxyGroup in front of a real 1-member etcd.
 * Without the `etcd` binary the etcd part FAILS (never skips), naming scripts/install-system.sh.
 *
 * The etcd part is also the reference for how etcd3 1.1.2 behaves behind a cut cable:
 *  - every call needs a deadline: without one it hangs as long as the cut lasts;
 *  - per-call deadlines: `lease.keepaliveOnce({ deadline })`, `get(k).options({ deadline })`,
 *    `put(k).value(v).options({ deadline })`, `if(...).then(...).options({ deadline }).commit()`,
 *    `client.lease(ttl, { autoKeepAlive: false, deadline })` for the grant;
 *  - with etcd3's default fault handling, one missed deadline opens the host's circuit breaker for
 *    5 s: calls then fail at once with BrokenCircuitError, even after the network is back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { noop } from 'cockatiel';
import { Etcd3, GRPCDeadlineExceededError, type Lease } from 'etcd3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { findEtcdBinary, findProcessesByMark, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { etcd3Security } from '../../src/adapters/etcd/etcd-client.js';
import { FaultProxy, FaultProxyGroup } from '../../src/dev/tcp-proxy.js';

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** An echo server that also records what it saw. */
interface Echo {
  server: Server;
  port: number;
  received: number;
  sockets: Set<Socket>;
  accepted: number;
}

async function startEcho(): Promise<Echo> {
  const echo: Echo = { server: createServer(), port: 0, received: 0, sockets: new Set(), accepted: 0 };
  echo.server.on('connection', (s) => {
    echo.accepted++;
    echo.sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => echo.sockets.delete(s));
    s.on('data', (d: Buffer) => {
      echo.received += d.length;
      s.write(d);
    });
  });
  await new Promise<void>((resolve) => echo.server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  echo.port = (echo.server.address() as { port: number }).port;
  return echo;
}

/** A client socket that records data and lifecycle events. */
interface Client {
  socket: Socket;
  data: string;
  ended: boolean;
  closed: boolean;
  error: NodeJS.ErrnoException | undefined;
  connected: Promise<void>;
}

function openClient(port: number): Client {
  const socket = connect({ host: '127.0.0.1', port });
  const c: Client = { socket, data: '', ended: false, closed: false, error: undefined, connected: Promise.resolve() };
  c.connected = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  c.connected.catch(() => undefined);
  socket.on('data', (d: Buffer) => (c.data += d.toString('utf8')));
  socket.on('end', () => (c.ended = true));
  socket.on('close', () => (c.closed = true));
  socket.on('error', (e) => (c.error = e));
  return c;
}

async function until(cond: () => boolean, timeoutMs = 2_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`condition not met within ${timeoutMs} ms: ${cond.toString()}`);
    await sleep(10);
  }
}

describe('FaultProxy (echo server)', () => {
  let echo: Echo;
  let proxy: FaultProxy;
  const clients: Client[] = [];

  function client(): Client {
    const c = openClient(proxy.port);
    clients.push(c);
    return c;
  }

  beforeEach(async () => {
    echo = await startEcho();
    proxy = await FaultProxy.start(`127.0.0.1:${echo.port}`);
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await proxy.close();
    for (const s of echo.sockets) s.destroy();
    await new Promise<void>((resolve) => echo.server.close(() => resolve()));
  });

  it('passes bytes both ways and counts them', async () => {
    expect(proxy.address).toBe(`127.0.0.1:${proxy.port}`);
    expect(proxy.port).toBeGreaterThan(0);
    const c = client();
    await c.connected;
    c.socket.write('hello');
    await until(() => c.data === 'hello');
    expect(proxy.stats()).toMatchObject({ connectionsAccepted: 1, connectionsOpen: 1, bytesForwardedUp: 5, bytesForwardedDown: 5, bytesDroppedUp: 0 });
    c.socket.end();
    await until(() => c.closed);
    await until(() => proxy.stats().connectionsOpen === 0);
  });

  it('blackhole keeps connections open and silent, accepts new ones that go nowhere; heal breaks them', async () => {
    const a = client();
    await a.connected;
    a.socket.write('before');
    await until(() => a.data === 'before');

    await proxy.blackhole();
    expect(proxy.mode).toBe('blackhole');
    a.socket.write('lost-up');
    // The server's answer to something it did get must not reach the client either.
    for (const s of echo.sockets) s.write('lost-down');
    const b = client();
    await b.connected; // the handshake completes: the proxy's kernel answers
    b.socket.write('nowhere');
    await sleep(400);
    expect(a.data).toBe('before');
    expect(b.data).toBe('');
    expect(echo.received).toBe('before'.length);
    expect(echo.accepted).toBe(1); // b never reached the upstream
    expect([a.ended, a.closed, a.error, b.ended, b.closed, b.error]).toEqual([false, false, undefined, false, false, undefined]);

    // The server going away is hidden too.
    for (const s of echo.sockets) s.destroy();
    await sleep(200);
    expect([a.ended, a.closed]).toEqual([false, false]);
    expect(proxy.stats()).toMatchObject({
      connectionsOpen: 2,
      bytesDroppedUp: 'lost-up'.length + 'nowhere'.length,
      bytesDroppedDown: 'lost-down'.length,
    });

    await proxy.heal();
    expect(proxy.mode).toBe('pass');
    await until(() => a.closed && b.closed);
    const c = client();
    await c.connected;
    c.socket.write('again');
    await until(() => c.data === 'again');
  });

  it('refuse closes the listener and resets connections; heal listens again on the same port', async () => {
    const port = proxy.port;
    const a = client();
    await a.connected;
    await proxy.refuse();
    expect(proxy.mode).toBe('refuse');
    await until(() => a.closed);
    const b = client();
    await expect(b.connected).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    await proxy.heal();
    expect(proxy.port).toBe(port);
    const c = client();
    await c.connected;
    c.socket.write('back');
    await until(() => c.data === 'back');
  });

  it('adds latency in each direction, keeping byte order', async () => {
    proxy.latency(150);
    const c = client();
    await c.connected;
    const t0 = performance.now();
    for (const part of ['a', 'b', 'c', 'd']) c.socket.write(part);
    await until(() => c.data === 'abcd');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(280);
    proxy.latency(0);
    const t1 = performance.now();
    c.socket.write('e');
    await until(() => c.data === 'abcde');
    expect(performance.now() - t1).toBeLessThan(100);
  });

  it('close destroys every connection and the listener', async () => {
    const a = client();
    await a.connected;
    await proxy.close();
    await until(() => a.closed);
    const b = client();
    await expect(b.connected).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(proxy.heal()).rejects.toThrow(/closed/);
  });
});

describe('FaultProxyGroup in front of a real etcd', () => {
  let dataDir: string | undefined;
  let cluster: LocalEtcdCluster | undefined;
  let group: FaultProxyGroup | undefined;
  const clients: Etcd3[] = [];

  /** A deadline `ms` from now (grpc-js takes wall-clock ms since the epoch). */
  const deadline = (ms: number): { deadline: number } => ({ deadline: Date.now() + ms });

  /** Resolves with how long `p` took to reject; fails if it resolves. */
  async function rejectsAfter(p: Promise<unknown>): Promise<{ ms: number; err: unknown }> {
    const t0 = performance.now();
    const err = await p.then(
      () => {
        throw new Error('expected the call to fail');
      },
      (e: unknown) => e,
    );
    return { ms: performance.now() - t0, err };
  }

  beforeAll(async () => {
    findEtcdBinary(); // throws, naming scripts/install-system.sh, when etcd is missing
    dataDir = mkdtempSync('/tmp/tether-test-proxy-etcd-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1 });
    await cluster.start();
    group = await FaultProxyGroup.start(cluster.endpoints());
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await group?.heal();
  });

  afterAll(async () => {
    await group?.close();
    await cluster?.stop();
    if (cluster !== undefined) expect(findProcessesByMark(cluster.mark)).toEqual([]);
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
  });

  it('fronts every endpoint with the same scheme', () => {
    const eps = group!.endpoints();
    expect(eps).toHaveLength(1);
    expect(eps[0]).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/); // the cluster runs TLS; the proxy passes it through
    expect(eps[0]).not.toBe(cluster!.endpoints()[0]);
  });

  it('blackholed: keepaliveOnce, get, put, txn and grant hang until their deadline; after heal calls succeed again', async () => {
    // No etcd3 retry and no circuit breaker: each call fails once, at its deadline.
    const client = new Etcd3({ hosts: group!.endpoints(), ...etcd3Security(group!.endpoints(), cluster!.clientTls()), faultHandling: { host: () => noop, global: noop } });
    clients.push(client);
    await client.put('tether/proxy/k').value('v').options(deadline(2_000));
    const lease: Lease = client.lease(10, { autoKeepAlive: false, ...deadline(2_000) });
    await lease.grant();
    expect(Number((await lease.keepaliveOnce(deadline(2_000))).TTL)).toBe(10);

    await group!.blackhole();
    let noDeadlineSettled = false;
    const noDeadline = client
      .get('tether/proxy/k')
      .string()
      .finally(() => (noDeadlineSettled = true));
    noDeadline.catch(() => undefined);

    const calls: [string, () => Promise<unknown>][] = [
      ['keepaliveOnce', () => lease.keepaliveOnce(deadline(700))],
      ['get', () => client.get('tether/proxy/k').options(deadline(700)).string()],
      ['put', () => client.put('tether/proxy/k').value('w').options(deadline(700)).exec()],
      ['txn', () => client.if('tether/proxy/k', 'Value', '==', 'v').then(client.put('tether/proxy/k').value('x')).options(deadline(700)).commit()],
      ['lease grant', () => client.lease(5, { autoKeepAlive: false, ...deadline(700) }).grant()],
    ];
    for (const [name, call] of calls) {
      const { ms, err } = await rejectsAfter(call());
      console.log(`[tcp-proxy] blackholed ${name}: ${(err as Error).constructor.name} after ${Math.round(ms)} ms`);
      expect(err, name).toBeInstanceOf(GRPCDeadlineExceededError);
      expect(ms, name).toBeGreaterThanOrEqual(650);
      expect(ms, name).toBeLessThan(2_000);
    }
    expect(noDeadlineSettled).toBe(false); // ~3.5 s in: a call without a deadline is still waiting
    expect(group!.stats().bytesDroppedUp).toBeGreaterThan(0);

    await group!.heal();
    const t0 = performance.now();
    let failures = 0;
    for (;;) {
      try {
        expect(await client.get('tether/proxy/k').options(deadline(500)).string()).toBe('v');
        break;
      } catch (err) {
        failures++;
        if (performance.now() - t0 > 5_000) throw err;
        await sleep(50);
      }
    }
    const reconnectMs = Math.round(performance.now() - t0);
    console.log(`[tcp-proxy] after heal: get OK ${reconnectMs} ms later (${failures} failed tries before)`);
    expect(reconnectMs).toBeLessThan(2_000);
    // The call without a deadline was on a connection that heal() destroyed: it ends with an error.
    await until(() => noDeadlineSettled, 2_000);
    await expect(noDeadline).rejects.toThrow(/UNAVAILABLE/);
    // The lease outlived the 3.5 s cut (TTL 10 s): the server kept it.
    expect(Number((await lease.keepaliveOnce(deadline(2_000))).TTL)).toBe(10);
  });

  it('with etcd3 default fault handling, one missed deadline makes calls fail fast for ~5 s, even after heal', async () => {
    const client = new Etcd3({ hosts: group!.endpoints(), ...etcd3Security(group!.endpoints(), cluster!.clientTls()) });
    clients.push(client);
    await client.put('tether/proxy/d').value('1').options(deadline(2_000));
    await group!.blackhole();
    const first = await rejectsAfter(client.get('tether/proxy/d').options(deadline(600)).string());
    expect(first.err).toBeInstanceOf(GRPCDeadlineExceededError);
    // DEADLINE_EXCEEDED is "recoverable" to etcd3: its retry policy re-ran the call twice (failing at
    // once, same absolute deadline) and the three failures opened the host's circuit breaker.
    await group!.heal();
    const t0 = performance.now();
    const afterHeal = await rejectsAfter(client.get('tether/proxy/d').options(deadline(600)).string());
    expect((afterHeal.err as Error).constructor.name).toBe('BrokenCircuitError');
    expect(afterHeal.ms).toBeLessThan(100);
    for (;;) {
      try {
        await client.get('tether/proxy/d').options(deadline(500)).string();
        break;
      } catch (err) {
        if (performance.now() - t0 > 8_000) throw err;
        await sleep(100);
      }
    }
    const blockedMs = Math.round(performance.now() - t0);
    console.log(`[tcp-proxy] default etcd3 policies: calls failed fast for ${blockedMs} ms after heal`);
    expect(blockedMs).toBeGreaterThan(3_000);
  });
});
