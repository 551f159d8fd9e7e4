/**
 * The peer channel's transport with real TLS (issue 11, item 4): real HTTPS servers and clients on
 * loopback, the dev certificates of scripts/gen-certs.sh. Answers flow with mutual TLS; a client
 * without a certificate or with one of another CA is refused at the TLS layer; a server with a
 * certificate of another CA, or one that does not name the address it is reached at, is not
 * believed; stale and malformed answers are dropped; a peer that never answers costs the timeout
 * (on the injected clock) and no more; oversized and slow requests are cut off; everything started
 * is closed at the end (checked). No etcd needed for that part. Then two real agents on a real etcd
 * (the dev tooling turns their peer channel on): each advertises its peer address in its host record,
 * learns the other's into its saved pool (peers.json, 0600), and answers a question over mutual TLS.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer as createHttpsServer, request, type Server as HttpsServer } from 'node:https';
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { PeerClient, type PeerDropReason } from '../../src/agent/peer/peer-client.js';
import { PEER_LIST_FILE } from '../../src/agent/peer/peer-list.js';
import { adminCall } from '../../src/api/http/admin-server.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { decodePersistedPool } from '../../src/domain/peer-pool.js';
import { PEER_STATUS_PATH, PeerServer } from '../../src/agent/peer/peer-server.js';
import type { PeerTls } from '../../src/agent/peer/peer-tls.js';
import { devCerts, type DevCerts } from '../../src/dev/certs.js';
import type { PeerAnswer, PeerAsk } from '../../src/domain/peer-check.js';
import { FakeClock } from '../support/fake-clock.js';
import { silentLogger } from '../support/fake-ports.js';
import { AgentProcess, killHostLeftovers, removeDir, requireRealParts, testDir, testHostId, until } from '../support/real-host.js';

let dir = '';
let certs: DevCerts;
let tls: PeerTls;
/** A server certificate signed by the OTHER CA (made here with openssl from gen-certs' other-ca). */
let foreignServer: { cert: Buffer; key: Buffer };
const servers: PeerServer[] = [];
const rawServers: (HttpsServer | NetServer)[] = [];
const rawSockets = new Set<Socket>();

const nonce = (): string => randomBytes(16).toString('hex');
const answerOf = (hostId: string) => (q: PeerAsk): PeerAnswer => ({ hostId, nonce: q.nonce, epoch: 2, phase: 'detached', reachesEtcd: false, silent: true, ackAgeMs: 1500, unanswered: 1, ttl: 6000, promisedMs: q.stayAwayMs });

async function peerServer(hostId: string, opts: { host?: string; serverTls?: PeerTls; requestTimeoutMs?: number } = {}): Promise<{ server: PeerServer; address: string }> {
  const server = new PeerServer({ tls: opts.serverTls ?? tls, source: answerOf(hostId), logger: silentLogger(), clock: new SystemClock(), ...(opts.requestTimeoutMs ? { requestTimeoutMs: opts.requestTimeoutMs } : {}) });
  servers.push(server);
  return { server, address: await server.listen(opts.host ?? '127.0.0.1', 0) };
}

function client(clock = new SystemClock(), clientTls: PeerTls = tls, drops?: [string, PeerDropReason, string][]): PeerClient {
  return new PeerClient({ hostId: 'asker', tls: clientTls, clock, logger: silentLogger(), ...(drops ? { onDropped: (h, r, d) => drops.push([h, r, d]) } : {}) });
}

/** An HTTPS server with the cluster's server certificate that replies `body` to anything (a lying or broken peer). */
async function rawPeer(body: string): Promise<string> {
  const s = createHttpsServer({ ca: tls.ca, cert: tls.server.cert, key: tls.server.key, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', connection: 'close' });
      res.end(body);
    });
  });
  return listenRaw(s);
}

async function listenRaw(s: HttpsServer | NetServer): Promise<string> {
  rawServers.push(s);
  s.on('connection', (c: Socket) => {
    rawSockets.add(c);
    c.on('close', () => rawSockets.delete(c));
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const a = s.address();
  if (a === null || typeof a === 'string') throw new Error('no address');
  return `127.0.0.1:${a.port}`;
}

/** A raw HTTPS POST with the given client material (or none): status, or the error. */
function post(address: string, body: string, creds: { cert?: Buffer; key?: Buffer }): Promise<number | string> {
  const [host, port] = address.split(':');
  return new Promise((resolve) => {
    const req = request({ host, port: Number(port), method: 'POST', path: PEER_STATUS_PATH, ca: tls.ca, ...creds, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve(`${err.code ?? ''} ${err.message}`));
    req.setTimeout(5000, () => req.destroy(new Error('test timeout')));
    req.end(body);
  });
}

beforeAll(() => {
  requireRealParts(['build']);
  dir = testDir('peer');
  certs = devCerts(join(dir, 'api-certs')); // the set AgentProcess gives agents whose state dirs are in `dir`
  const r = (p: string) => readFileSync(p);
  tls = { ca: r(certs.ca), server: { cert: r(certs.serverCert), key: r(certs.serverKey) }, client: { cert: r(certs.clientCert), key: r(certs.clientKey) } };
  // A server certificate from the other CA, for the same names: only the CA differs.
  const ext = join(certs.dir, 'foreign-ext.cnf');
  execFileSync('bash', ['-c', `set -e; cd "${certs.dir}"; umask 077
    openssl ecparam -name prime256v1 -genkey -noout -out foreign-server-key.pem
    openssl req -new -key foreign-server-key.pem -subj "/CN=tether server" -out foreign.csr
    printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth\\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\\n' > "${ext}"
    openssl x509 -req -in foreign.csr -CA other-ca.pem -CAkey other-ca-key.pem -CAcreateserial -sha256 -days 30 -extfile "${ext}" -out foreign-server.pem 2>/dev/null
    rm -f foreign.csr other-ca.srl`]);
  foreignServer = { cert: r(join(certs.dir, 'foreign-server.pem')), key: r(join(certs.dir, 'foreign-server-key.pem')) };
});

afterAll(async () => {
  try {
    await Promise.all(servers.map((s) => s.close()));
    for (const s of rawSockets) s.destroy();
    await Promise.all(rawServers.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))));
    // Everything this file started is closed: no listener, no connection.
    for (const s of servers) expect(s.connections()).toBe(0);
    for (const s of rawServers) expect(s.listening).toBe(false);
    expect(rawSockets.size).toBe(0);
  } finally {
    if (dir) removeDir(dir);
  }
});

describe('peer channel (real TLS)', () => {
  it('answers flow both ways with mutual TLS; receivedAt is the injected clock; the nonce is echoed', async () => {
    const a = await peerServer('h2');
    const b = await peerServer('h3');
    const clock = new FakeClock();
    await clock.advance(12_345);
    const n = nonce();
    const got = await client(clock).queryPeers([{ hostId: 'h2', address: a.address }, { hostId: 'h3', address: b.address }], { nonce: n, stayAwayMs: 0 }, 5000);
    expect([...got.keys()].sort()).toEqual(['h2', 'h3']);
    expect(got.get('h2')).toEqual({ answer: answerOf('h2')({ nonce: n, stayAwayMs: 0 }), receivedAt: 12_345 });
    expect(a.server.stats.answered).toBe(1);
    expect(b.server.stats.answered).toBe(1);
  });

  it('a client without a certificate, or with one of another CA, is refused at the TLS layer', async () => {
    const { server, address } = await peerServer('h2');
    const body = JSON.stringify({ from: 'h9', nonce: nonce(), stayAwayMs: 0 });
    expect(await post(address, body, { cert: tls.client.cert, key: tls.client.key })).toBe(200); // the path works
    const none = await post(address, body, {});
    const foreign = await post(address, body, { cert: readFileSync(certs.otherClientCert), key: readFileSync(certs.otherClientKey) });
    for (const r of [none, foreign]) expect(typeof r).toBe('string'); // no HTTP status at all: the handshake failed
    await until('both handshakes counted', () => server.stats.tlsErrors >= 2, 5000, 20);
    expect(server.stats.answered).toBe(1);
    // The same through PeerClient with the other CA's client certificate: no answer counted.
    const drops: [string, PeerDropReason, string][] = [];
    const other: PeerTls = { ...tls, client: { cert: readFileSync(certs.otherClientCert), key: readFileSync(certs.otherClientKey) } };
    expect((await client(new SystemClock(), other, drops).queryPeers([{ hostId: 'h2', address }], { nonce: nonce(), stayAwayMs: 0 }, 5000)).size).toBe(0);
    expect(drops.map((d) => d[0])).toEqual(['h2']);
    expect(server.stats.answered).toBe(1);
  });

  it('a server with a certificate of another CA is not believed, nor one that does not name the address', async () => {
    const foreign = await peerServer('h2', { serverTls: { ...tls, server: foreignServer } });
    // Same CA, but reached at 127.0.0.2: the certificate names 127.0.0.1, ::1 and localhost only.
    const misnamed = await peerServer('h3', { host: '127.0.0.2' });
    const good = await peerServer('h4');
    const drops: [string, PeerDropReason, string][] = [];
    const got = await client(new SystemClock(), tls, drops).queryPeers(
      [{ hostId: 'h2', address: foreign.address }, { hostId: 'h3', address: misnamed.address }, { hostId: 'h4', address: good.address }],
      { nonce: nonce(), stayAwayMs: 0 },
      5000,
    );
    expect([...got.keys()]).toEqual(['h4']);
    const why = new Map(drops.map(([h, r, d]) => [h, `${r} ${d}`]));
    expect(why.get('h2')).toMatch(/^tls .*(certificate|issuer)/i);
    expect(why.get('h3')).toMatch(/^tls .*(altname|IP: 127\.0\.0\.2)/i);
    expect(foreign.server.stats.answered + misnamed.server.stats.answered).toBeLessThanOrEqual(2); // they may answer; nobody believes them
  });

  it('a stale nonce, a malformed answer and an HTTP error are dropped; the good answer is kept', async () => {
    const n = nonce();
    const stale = await rawPeer(JSON.stringify(answerOf('h2')({ nonce: nonce(), stayAwayMs: 0 })));
    const malformed = await rawPeer(JSON.stringify({ ...answerOf('h3')({ nonce: n, stayAwayMs: 0 }), ttl: -1 }));
    const notJson = await rawPeer('<html>');
    const good = await peerServer('h5');
    const drops: [string, PeerDropReason, string][] = [];
    const got = await client(new SystemClock(), tls, drops).queryPeers(
      [
        { hostId: 'h2', address: stale },
        { hostId: 'h3', address: malformed },
        { hostId: 'h4', address: notJson },
        { hostId: 'h5', address: good.address },
        { hostId: 'h6', address: 'not an address' },
      ],
      { nonce: n, stayAwayMs: 0 },
      5000,
    );
    expect([...got.keys()]).toEqual(['h5']);
    expect(Object.fromEntries(drops.map(([h, r]) => [h, r]))).toEqual({ h2: 'stale-nonce', h3: 'invalid', h4: 'invalid', h6: 'bad-address' });
    expect(drops.find((d) => d[0] === 'h3')![2]).toContain('ttl');
  });

  it('a peer that never answers costs the timeout on the injected clock, no more; its connection is closed', async () => {
    // Accepts TCP and never speaks TLS (a hung agent, a cut cable behind a live socket).
    const hole = createNetServer((c) => c.resume()); // reads (and so sees the client's FIN), never writes
    const holeAddr = await listenRaw(hole);
    const good = await peerServer('h2');
    const clock = new FakeClock();
    let result: Map<string, unknown> | undefined;
    const drops: [string, PeerDropReason, string][] = [];
    const q = client(clock, tls, drops)
      .queryPeers([{ hostId: 'h2', address: good.address }, { hostId: 'hole', address: holeAddr }], { nonce: nonce(), stayAwayMs: 0 }, 1000)
      .then((m) => (result = m));
    await until('good peer answered', () => good.server.stats.answered === 1, 10_000, 20);
    await until('hole connected', () => rawSockets.size > 0, 10_000, 20);
    await new Promise((r) => setTimeout(r, 500)); // real time passes; the fake clock does not
    expect(result).toBeUndefined(); // still waiting for the hole: nothing but the clock ends the call
    await clock.advance(999);
    expect(result).toBeUndefined();
    await clock.advance(1);
    await q;
    expect([...result!.keys()]).toEqual(['h2']);
    expect(drops).toEqual([['hole', 'timeout', 'no answer within 1000 ms']]);
    await until('the hole connection is closed by the client', () => rawSockets.size === 0, 5000, 20);
    expect(clock.pending()).toBe(0); // no timer left behind
  });

  it('at most maxConcurrent calls are in flight; queued calls get only what is left of the round', async () => {
    const peers = await Promise.all(['h2', 'h3', 'h4'].map((h) => peerServer(h)));
    const one = (clock: FakeClock | SystemClock, drops?: [string, PeerDropReason, string][]) =>
      new PeerClient({ hostId: 'asker', tls, clock, logger: silentLogger(), maxConcurrent: 1, ...(drops ? { onDropped: (h, r, d) => drops.push([h, r, d]) } : {}) });
    const got = await one(new SystemClock()).queryPeers(peers.map((p, i) => ({ hostId: `h${i + 2}`, address: p.address })), { nonce: nonce(), stayAwayMs: 0 }, 5000);
    expect([...got.keys()].sort()).toEqual(['h2', 'h3', 'h4']);
    // One slot, taken by a peer that never answers: the round still ends at its deadline.
    const holeAddr = await listenRaw(createNetServer((c) => c.resume()));
    const clock = new FakeClock();
    const drops: [string, PeerDropReason, string][] = [];
    let done = false;
    const q = one(clock, drops).queryPeers([{ hostId: 'hole', address: holeAddr }, { hostId: 'h2', address: peers[0]!.address }], { nonce: nonce(), stayAwayMs: 0 }, 1000).then((m) => ((done = true), m));
    await until('hole connected', () => rawSockets.size > 0, 10_000, 20);
    await clock.advance(1000);
    const m = await q;
    expect(done).toBe(true);
    expect(m.size).toBe(0);
    expect(drops.map(([h, r]) => `${h} ${r}`)).toEqual(['hole timeout', 'h2 timeout']);
    await until('the hole connection is closed by the client', () => rawSockets.size === 0, 5000, 20);
  });

  it('the server cuts off oversized bodies, bad questions and slow clients', async () => {
    const { server, address } = await peerServer('h2', { requestTimeoutMs: 500 });
    const creds = { cert: tls.client.cert, key: tls.client.key };
    expect(await post(address, JSON.stringify({ from: 'h1', nonce: nonce(), stayAwayMs: 0, pad: 'x'.repeat(2048) }), creds)).toBe(413);
    expect(await post(address, JSON.stringify({ from: 'h1', nonce: 'ABC', stayAwayMs: 0 }), creds)).toBe(400);
    expect(await post(address, JSON.stringify({ from: '../x', nonce: nonce(), stayAwayMs: 0 }), creds)).toBe(400);
    expect(server.stats.answered).toBe(0);
    // A client that completes TLS and then sends half a request: disconnected by the server.
    const [host, port] = address.split(':');
    const s = tlsConnect({ host, port: Number(port), ca: tls.ca, ...creds });
    s.on('error', () => undefined);
    await new Promise<void>((r) => s.once('secureConnect', () => r()));
    s.write(`POST ${PEER_STATUS_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"from":`);
    await until('slow client disconnected', () => s.destroyed || s.readableEnded, 10_000, 20);
    // A raw TCP client that never starts TLS: disconnected too.
    const raw = connect(Number(port), host);
    raw.on('error', () => undefined);
    let rawClosed = false;
    raw.on('close', () => (rawClosed = true));
    await until('silent TCP client disconnected', () => rawClosed, 10_000, 20);
    s.destroy();
    await until('no connection left', () => server.connections() === 0, 5000, 20);
  });

  it('close() really closes: the port refuses connections and no socket stays open', async () => {
    const { server, address } = await peerServer('h2');
    const [host, port] = address.split(':');
    const s = tlsConnect({ host, port: Number(port), ca: tls.ca, cert: tls.client.cert, key: tls.client.key });
    s.on('error', () => undefined);
    await new Promise<void>((r) => s.once('secureConnect', () => r()));
    expect(server.connections()).toBe(1);
    await server.close();
    expect(server.connections()).toBe(0);
    await until('client saw the close', () => s.destroyed || s.readableEnded, 5000, 20);
    const refused = await new Promise<string>((resolve) => {
      const c = connect(Number(port), host);
      c.on('connect', () => {
        c.destroy();
        resolve('connected');
      });
      c.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');
    s.destroy();
  });
});

describe('peer channel between real agents on real etcd', () => {
  let etcd: LocalEtcdCluster | undefined;
  const agents: AgentProcess[] = [];
  const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '6s', '--stop-grace', '2s', '--kill-timeout', '2s', '--fence-window', '8s', '--accel', 'tcg'];

  afterAll(async () => {
    for (const a of agents) await a.kill();
    for (const a of agents) killHostLeftovers(a.hostId);
    await etcd?.stop();
    expect(agents.every((a) => !a.running)).toBe(true);
    // The agents' peer ports are closed with them.
    for (const a of agents) {
      const [host, port] = a.peer!.split(':');
      const r = await new Promise<string>((resolve) => {
        const c = connect(Number(port), host);
        c.on('connect', () => (c.destroy(), resolve('connected')));
        c.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      });
      expect(r).toBe('ECONNREFUSED');
    }
  });

  it('each agent advertises its address, learns the other, and answers over mutual TLS', async () => {
    requireRealParts(['root', 'etcd', 'build']);
    etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test' });
    await etcd.start();
    for (const tag of ['pa', 'pb']) {
      const id = testHostId(tag);
      agents.push(new AgentProcess(id, join(dir, id), [...etcd.agentArgs(), ...TIMINGS]));
    }
    await Promise.all(agents.map((a) => a.start()));
    for (const a of agents) expect(a.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    await until('both attached', async () => {
      const st = await Promise.all(agents.map((a) => adminCall<GcStatus>(a.admin, 'GET', 'gc/status', undefined, 3000).catch(() => undefined)));
      return st.every((s) => s?.phase === 'attached');
    }, 60_000, 200);
    // Each one's saved pool names the other with the address the other advertised in its record.
    for (const [me, other] of [[agents[0]!, agents[1]!], [agents[1]!, agents[0]!]] as const) {
      const file = join(me.stateDir, PEER_LIST_FILE);
      await until(`${me.hostId} knows ${other.hostId}`, () => {
        try {
          const d = decodePersistedPool(readFileSync(file, 'utf8'), me.hostId);
          return d.ok && d.members.some((m) => m.hostId === other.hostId && m.peerAddress === other.peer);
        } catch {
          return false;
        }
      }, 30_000, 200);
      expect(statSync(file).mode & 0o777).toBe(0o600);
    }
    // Asked with the cluster's client certificate, both answer for themselves, echoing the nonce.
    const n = nonce();
    const got = await client().queryPeers(agents.map((a) => ({ hostId: a.hostId, address: a.peer! })), { nonce: n, stayAwayMs: 0 }, 5000);
    for (const a of agents) expect(got.get(a.hostId)?.answer).toMatchObject({ hostId: a.hostId, nonce: n, phase: 'attached', reachesEtcd: true });
    // A client of another CA gets nothing from a real agent either.
    const other: PeerTls = { ...tls, client: { cert: readFileSync(certs.otherClientCert), key: readFileSync(certs.otherClientKey) } };
    expect((await client(new SystemClock(), other).queryPeers(agents.map((a) => ({ hostId: a.hostId, address: a.peer! })), { nonce: nonce(), stayAwayMs: 0 }, 5000)).size).toBe(0);
  }, 180_000);
});
