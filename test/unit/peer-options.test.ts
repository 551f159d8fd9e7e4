import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPeerTls, loadPeerTls, type PeerTlsFiles } from '../../src/agent/peer/peer-tls.js';
import { AGENT_SCHEMA, toAgentConfig } from '../../src/cli/agent-config.js';
import { resolveConfig } from '../../src/cli/config-schema.js';
import { resolvePeerChannel } from '../../src/cli/peer-options.js';
import { devCerts, type DevCerts } from '../../src/dev/certs.js';
import { InvalidArgumentError } from '../../src/domain/errors.js';

/** The peer channel's settings: off by default, defaults from the cluster's material, refusals that name the setting. */

const base = { etcdEndpoints: ['https://127.0.0.1:2379'], tlsCert: '/s.pem', tlsKey: '/s-key.pem', tlsClientCa: '', etcdCa: '/ca.pem', etcdCert: '/c.pem', etcdKey: '/c-key.pem' };

function refusal(f: () => unknown): { field: string; message: string } {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return { field: (err as InvalidArgumentError).field, message: (err as Error).message };
  }
  throw new Error('not refused');
}

describe('peer channel settings', () => {
  it('is off by default, in the agent config too', () => {
    expect(resolvePeerChannel({ ...base, peerListen: '' })).toBeUndefined();
    const cfg = toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId: 'h1' }, {}, undefined));
    expect(cfg.peerChannel).toBeUndefined();
    expect(cfg.peerListen).toBe('');
  });

  it('defaults reuse the API server certificate, the etcd client certificate and the etcd CA', () => {
    const p = resolvePeerChannel({ ...base, peerListen: '10.0.0.5:9443' })!;
    expect(p).toMatchObject({ listenHost: '10.0.0.5', listenPort: 9443, advertise: '10.0.0.5:9443' });
    expect(p.files).toEqual({
      serverCert: { path: '/s.pem', field: 'peerTlsCert (defaulted to tlsCert)' },
      serverKey: { path: '/s-key.pem', field: 'peerTlsKey (defaulted to tlsKey)' },
      clientCert: { path: '/c.pem', field: 'peerClientCert (defaulted to etcdCert)' },
      clientKey: { path: '/c-key.pem', field: 'peerClientKey (defaulted to etcdKey)' },
      ca: { path: '/ca.pem', field: 'peerTlsCa (defaulted to etcdCa)' },
    });
    const own = resolvePeerChannel({ ...base, etcdCa: '', tlsClientCa: '/api-ca.pem', peerListen: '[::1]:0', peerTlsCert: '/p.pem' })!;
    expect(own.files.serverCert).toEqual({ path: '/p.pem', field: 'peerTlsCert' });
    expect(own.files.ca.path).toBe('/api-ca.pem');
    expect(own.advertise).toBeUndefined(); // port 0: the bound port is advertised
    expect(resolvePeerChannel({ ...base, peerListen: '0.0.0.0:9443', peerAdvertise: 'node-7.example.org:9443' })!.advertise).toBe('node-7.example.org:9443');
  });

  it('refuses, naming the setting', () => {
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: '0.0.0.0:9443' }))).toMatchObject({ field: 'peerListen', message: expect.stringContaining('peerAdvertise') });
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: '[::]:9443' })).field).toBe('peerListen');
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: '10.0.0.5:9443', peerAdvertise: '0.0.0.0:9443' })).field).toBe('peerAdvertise');
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: '', peerAdvertise: '10.0.0.5:9443' })).field).toBe('peerAdvertise');
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: 'unix:/run/p.sock' })).field).toBe('peerListen');
    expect(refusal(() => resolvePeerChannel({ ...base, peerListen: 'node-7:9443' })).field).toBe('peerListen');
    expect(refusal(() => resolvePeerChannel({ ...base, etcdEndpoints: [], peerListen: '10.0.0.5:9443' })).message).toContain('standalone');
    expect(refusal(() => resolvePeerChannel({ ...base, tlsCert: '', peerListen: '10.0.0.5:9443' })).field).toBe('peerTlsCert');
    expect(refusal(() => resolvePeerChannel({ ...base, etcdKey: '', peerListen: '10.0.0.5:9443' })).field).toBe('peerClientKey');
    expect(refusal(() => resolvePeerChannel({ ...base, etcdCa: '', peerListen: '10.0.0.5:9443' })).message).toMatch(/^peerTlsCa: .*etcdCa \/ tlsClientCa/);
    expect(refusal(() => toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId: 'h1', peerListen: '127.0.0.1:9443' }, {}, undefined))).message).toContain('standalone');
  });
});

describe('peer TLS material checks at start', () => {
  let dir = '';
  let certs: DevCerts;
  const f = (over: Partial<Record<keyof PeerTlsFiles, string>> = {}): PeerTlsFiles => {
    const e = (k: keyof PeerTlsFiles, path: string) => ({ path: over[k] ?? path, field: k });
    return { ca: e('ca', certs.ca), serverCert: e('serverCert', certs.serverCert), serverKey: e('serverKey', certs.serverKey), clientCert: e('clientCert', certs.clientCert), clientKey: e('clientKey', certs.clientKey) };
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'peer-tls-'));
    certs = devCerts(join(dir, 'certs'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts the dev set for 127.0.0.1, ::1 and localhost', () => {
    const files = f();
    const tls = loadPeerTls(files);
    expect(tls.ca.equals(readFileSync(certs.ca))).toBe(true);
    for (const a of ['127.0.0.1:9443', '[::1]:9443', 'localhost:9443']) expect(() => checkPeerTls(tls, files, a)).not.toThrow();
  });

  it('refuses a missing file, a certificate of another CA, and an address the server certificate does not name', () => {
    expect(refusal(() => loadPeerTls(f({ serverKey: join(dir, 'nope.pem') }))).field).toBe('serverKey');
    const other = f({ clientCert: certs.otherClientCert, clientKey: certs.otherClientKey });
    expect(refusal(() => checkPeerTls(loadPeerTls(other), other, '127.0.0.1:9443'))).toMatchObject({ field: 'clientCert', message: expect.stringContaining('not signed by the peer CA') });
    const files = f();
    expect(refusal(() => checkPeerTls(loadPeerTls(files), files, '10.1.2.3:9443'))).toMatchObject({ field: 'serverCert', message: expect.stringContaining('does not name 10.1.2.3') });
    expect(refusal(() => checkPeerTls(loadPeerTls(files), files, 'node-7.example.org:9443')).field).toBe('serverCert');
    const notPem = f({ ca: certs.serverKey });
    expect(refusal(() => checkPeerTls(loadPeerTls(notPem), notPem, '127.0.0.1:1')).field).toBe('ca');
  });
});
