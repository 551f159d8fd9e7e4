/**
 * The API's authentication pieces: Flintlock's token format, the constant-time compare, the rules
 * of the security settings and listeners, the gRPC auth interceptor on a real loopback server
 * (calls refused before any handler runs), metadata redaction, create admission and the admin
 * server's Host check.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status as GrpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkListenerSecurity, loadApiSecurity, type ApiSecurity, type ApiSecuritySettings } from '../../src/api/auth/api-security.js';
import { basicAuthorization, constantTimeEqual, readTokenFile, verifyBasicAuthorization, verifyBearerAuthorization } from '../../src/api/auth/token.js';
import { CreateAdmission } from '../../src/api/grpc/create-admission.js';
import { createMicroVmGrpcServer, loadMicroVmProto, REDACTED, type GrpcApiServer } from '../../src/api/grpc/index.js';
import { hostAllowed } from '../../src/api/http/admin-server.js';
import { parseListenAddress } from '../../src/api/listen-address.js';
import { TetherError } from '../../src/domain/errors.js';
import type { VmRecord, VmSpec } from '../../src/domain/vm.js';
import type { MicroVmService } from '../../src/ports/microvm-service.js';

const TOKEN = 'a-token-of-sufficient-length-012'; // 32 characters: its base64 ends in '=='

describe("token format (Flintlock's BasicAuthFunc)", () => {
  const b64 = Buffer.from(TOKEN).toString('base64');
  const table: [string | undefined, boolean, RegExp?][] = [
    [`basic ${b64}`, true],
    [`Basic ${b64}`, true],
    [`BASIC ${b64}`, true],
    [undefined, false, /missing authorization metadata/],
    ['', false, /missing authorization metadata/],
    [b64, false, /bad authorization string/],
    [`bearer ${b64}`, false, /unsupported authorization scheme/],
    [`basic ${TOKEN}`, false, /invalid auth token/], // the raw token, not its base64
    [`basic ${b64.replace(/=+$/, '')}`, false, /invalid auth token/], // unpadded: Flintlock compares exactly
    [`basic ${Buffer.from(`${TOKEN}x`).toString('base64')}`, false, /invalid auth token/],
    ['basic ', false, /empty authentication token/],
  ];
  for (const [value, ok, why] of table) {
    it(`${ok ? 'accepts' : 'refuses'} ${JSON.stringify(value)}`, () => {
      const verdict = verifyBasicAuthorization(value, TOKEN);
      if (ok) expect(verdict).toBeUndefined();
      else {
        expect(verdict).toMatch(why!);
        expect(verdict).not.toContain(TOKEN);
        expect(verdict).not.toContain(b64);
      }
    });
  }
  it('is what the client sends', () => {
    expect(basicAuthorization(TOKEN)).toBe(`basic ${b64}`);
    expect(verifyBasicAuthorization(basicAuthorization(TOKEN), TOKEN)).toBeUndefined();
  });
  it('HTTP takes Bearer <token>', () => {
    expect(verifyBearerAuthorization(`Bearer ${TOKEN}`, TOKEN)).toBeUndefined();
    expect(verifyBearerAuthorization(`bearer ${TOKEN}`, TOKEN)).toBeUndefined();
    expect(verifyBearerAuthorization(`Bearer ${TOKEN}0`, TOKEN)).toBe('invalid token');
    expect(verifyBearerAuthorization(`Basic ${TOKEN}`, TOKEN)).toMatch(/unsupported/);
    expect(verifyBearerAuthorization(undefined, TOKEN)).toMatch(/missing/);
  });
  it('compares whole values', () => {
    expect(constantTimeEqual('abc', 'abc')).toBe(true);
    expect(constantTimeEqual('abc', 'abd')).toBe(false);
    expect(constantTimeEqual('abc', 'abcd')).toBe(false);
    expect(constantTimeEqual('', '')).toBe(true);
  });
});

describe('security settings and listener rules', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-unit-auth-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const base: ApiSecuritySettings = { tlsCert: '', tlsKey: '', tlsClientCa: '', tlsClientValidate: false, insecure: false, basicAuthToken: '', basicAuthTokenFile: '' };
  const fails = (s: Partial<ApiSecuritySettings>, why: RegExp) => {
    let err: unknown;
    try {
      loadApiSecurity({ ...base, ...s }, () => undefined);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).message).toMatch(why);
  };

  it('refuses to start without a certificate unless --insecure (as Flintlock)', () => fails({}, /^tlsCert: no TLS certificate configured.*--insecure/));
  it('refuses --insecure with a certificate', () => fails({ insecure: true, tlsCert: '/x', tlsKey: '/y' }, /^insecure: cannot be combined/));
  it('refuses a certificate without its key', () => fails({ tlsCert: '/x' }, /^tlsKey: required/));
  it('refuses client validation without a CA', () => fails({ tlsCert: '/x', tlsKey: '/y', tlsClientValidate: true }, /^tlsClientCa: required/));
  it('refuses both token forms', () => fails({ insecure: true, basicAuthToken: TOKEN, basicAuthTokenFile: '/t' }, /^basicAuthTokenFile: set basicAuthToken or basicAuthTokenFile, not both/));
  it('refuses a short token', () => fails({ insecure: true, basicAuthToken: 'short' }, /^basicAuthToken: the token must be at least 16 characters/));
  it('names an unreadable certificate', () => fails({ tlsCert: join(dir, 'none.pem'), tlsKey: join(dir, 'none-key.pem') }, /^tlsCert: cannot read the certificate/));

  it('reads a token file, refusing one other users can read', () => {
    const f = join(dir, 'token');
    writeFileSync(f, `${TOKEN}\n`, { mode: 0o600 });
    expect(readTokenFile(f, 'basicAuthTokenFile')).toEqual({ token: TOKEN });
    chmodSync(f, 0o640);
    expect(readTokenFile(f, 'basicAuthTokenFile').warning).toMatch(/readable by its group/);
    chmodSync(f, 0o644);
    expect(() => readTokenFile(f, 'basicAuthTokenFile')).toThrow(/readable by other users.*chmod 600/);
  });

  it('warns when nothing authenticates callers', () => {
    const warnings: string[] = [];
    expect(loadApiSecurity({ ...base, insecure: true }, (m) => warnings.push(m))).toEqual({});
    expect(warnings.join('\n')).toMatch(/DISABLED/);
  });

  const tlsSec: ApiSecurity = { tls: { cert: Buffer.from(''), key: Buffer.from(''), requireClientCert: false } };
  const rows: [string, ApiSecurity, string, boolean, RegExp?][] = [
    ['plaintext on loopback', {}, '127.0.0.1:9090', true],
    ['plaintext on [::1]', {}, '[::1]:9090', true],
    ['plaintext on a unix socket', {}, 'unix:/run/tether/api.sock', true],
    ['plaintext on 0.0.0.0', { token: TOKEN }, '0.0.0.0:9090', false, /^listen: 0\.0\.0\.0:9090 is not a loopback address: a plaintext listener/],
    ['plaintext on a LAN address', {}, '10.1.2.3:9090', false, /not a loopback address/],
    ['TLS without any authentication on the network', tlsSec, '0.0.0.0:9090', false, /no authentication is configured/],
    ['TLS + token on the network', { ...tlsSec, token: TOKEN }, '0.0.0.0:9090', true],
    ['TLS + client certificates on the network', { tls: { ...tlsSec.tls!, requireClientCert: true } }, '[::]:9090', true],
    ['TLS without authentication on loopback', tlsSec, '127.0.0.1:9090', true],
  ];
  for (const [name, sec, addr, ok, why] of rows) {
    it(`${ok ? 'allows' : 'refuses'} ${name}`, () => {
      const run = () => checkListenerSecurity(sec, [{ key: 'listen', address: parseListenAddress(addr, 'listen') }]);
      if (ok) expect(run).not.toThrow();
      else expect(run).toThrow(why!);
    });
  }
  it('lets a metrics-only listener go without authentication (TLS still required off loopback)', () => {
    expect(() => checkListenerSecurity(tlsSec, [{ key: 'metricsListen', address: parseListenAddress('0.0.0.0:9100', 'metricsListen'), metricsOnly: true }])).not.toThrow();
    expect(() => checkListenerSecurity({}, [{ key: 'metricsListen', address: parseListenAddress('0.0.0.0:9100', 'metricsListen'), metricsOnly: true }])).toThrow(/^metricsListen: /);
  });
});

describe('admin HTTP Host check (DNS rebinding)', () => {
  const lo = parseListenAddress('127.0.0.1:9091', 'httpListen');
  const any = parseListenAddress('0.0.0.0:9091', 'httpListen');
  const v6 = parseListenAddress('[::1]:9091', 'httpListen');
  const lan = parseListenAddress('10.0.0.5:9091', 'httpListen');
  const rows: [string | undefined, typeof lo, boolean, string[]?][] = [
    ['127.0.0.1:9091', lo, true],
    ['localhost:9091', lo, true],
    ['[::1]:9091', lo, true],
    ['127.0.0.1:9092', lo, false],
    ['evil.example:9091', lo, false],
    ['localhost.evil.example:9091', lo, false],
    [undefined, lo, false],
    ['127.0.0.1', lo, false],
    ['[::1]:9091', v6, true],
    ['10.0.0.5:9091', lan, true],
    ['127.0.0.1:9091', lan, false],
    ['10.0.0.9:9091', lan, false],
    ['192.168.1.7:9091', any, true],
    ['metrics.internal:9091', any, false],
    ['metrics.internal:9091', any, true, ['metrics.internal']],
  ];
  for (const [host, bound, ok, extra] of rows) {
    it(`${ok ? 'accepts' : 'refuses'} Host ${JSON.stringify(host)} on ${bound.kind === 'tcp' ? bound.host : 'unix'}${extra ? ' with allowedHosts' : ''}`, () => {
      expect(hostAllowed(host, bound, extra)).toBe(ok);
    });
  }
});

describe('create admission', () => {
  it('runs a few at once, queues a few, refuses the rest with RESOURCE_EXHAUSTED naming the limits', async () => {
    const adm = new CreateAdmission({ maxConcurrentCreates: 2, createQueueLength: 1, maxStartingVms: 100 }, async () => 0);
    const gates: (() => void)[] = [];
    let ran = 0;
    const job = () =>
      adm.run(async () => {
        ran++;
        await new Promise<void>((r) => gates.push(r));
        return 'ok';
      });
    const a = job();
    const b = job();
    const c = job(); // queued
    await expect(job()).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', retryable: true, message: expect.stringMatching(/maxConcurrentCreates 2, createQueueLength 1/) });
    await new Promise((r) => setImmediate(r));
    expect(ran).toBe(2);
    expect(adm.load).toEqual({ running: 2, waiting: 1 });
    gates.shift()!();
    await a;
    await new Promise((r) => setImmediate(r));
    expect(ran).toBe(3);
    gates.splice(0).forEach((g) => g());
    await Promise.all([b, c]);
    await new Promise((r) => setImmediate(r));
    gates.splice(0).forEach((g) => g());
    expect(adm.load).toEqual({ running: 0, waiting: 0 });
  });

  it('refuses while too many VMs are still starting, without calling the service', async () => {
    let called = 0;
    const adm = new CreateAdmission({ maxConcurrentCreates: 4, createQueueLength: 4, maxStartingVms: 3 }, async () => 3);
    await expect(adm.run(async () => ++called)).rejects.toThrow(/3 microvms are still starting on this host \(maxStartingVms 3\)/);
    expect(called).toBe(0);
    expect(adm.load).toEqual({ running: 0, waiting: 0 });
  });
});

/** A service that records calls; create can be held open. */
class CountingService implements MicroVmService {
  calls: string[] = [];
  records: VmRecord[] = [];
  hold: Promise<void> | undefined;
  async create(spec: VmSpec): Promise<VmRecord> {
    this.calls.push('create');
    if (this.hold) await this.hold;
    const r: VmRecord = { uid: randomBytes(16).toString('hex'), spec, phase: 'pending', createdAt: 1, updatedAt: 1, generation: 1, nics: [] };
    this.records.push(r);
    return r;
  }
  async delete(): Promise<void> {
    this.calls.push('delete');
  }
  async get(uid: string): Promise<VmRecord> {
    this.calls.push('get');
    const r = this.records.find((x) => x.uid === uid);
    if (!r) throw new TetherError('NOT_FOUND', `microvm ${uid} not found`);
    return r;
  }
  async list(): Promise<VmRecord[]> {
    return this.records;
  }
}

type Cb = (err: ServiceError | null, res: { microvm: { spec: { uid: string; metadata: Record<string, string> } } }) => void;
interface RawClient extends Client {
  CreateMicroVM(req: unknown, md: Metadata, cb: Cb): void;
  GetMicroVM(req: unknown, md: Metadata, cb: Cb): void;
  DeleteMicroVM(req: unknown, md: Metadata, cb: Cb): void;
}

describe('gRPC auth interceptor on a real loopback server', () => {
  const service = new CountingService();
  let server: GrpcApiServer;
  let client: RawClient;
  beforeAll(async () => {
    server = createMicroVmGrpcServer(service, { security: { token: TOKEN }, createLimits: { maxConcurrentCreates: 1, createQueueLength: 0, maxStartingVms: 50 } });
    const addr = await server.listen('127.0.0.1:0');
    client = new (loadMicroVmProto().Client)(addr, credentials.createInsecure()) as unknown as RawClient;
  });
  afterAll(async () => {
    client?.close();
    await server?.close();
  });
  const md = (auth?: string) => {
    const m = new Metadata();
    if (auth !== undefined) m.set('authorization', auth);
    return m;
  };
  const spec = { id: 'a', namespace: 'ns', vcpu: 1, memory_in_mb: 96, metadata: { 'user-data': 'c2VjcmV0' } };
  const call = <T>(fn: (cb: (err: ServiceError | null, res: T) => void) => void) => new Promise<T>((res, rej) => fn((e, r) => (e ? rej(e) : res(r))));

  it('refuses calls without the token before any handler runs, and takes the right one', async () => {
    for (const auth of [undefined, 'basic d3Jvbmc=', `bearer ${TOKEN}`, `basic ${TOKEN}`]) {
      const err = (await call((cb) => client.CreateMicroVM({ microvm: spec }, md(auth), cb as Cb)).catch((e: unknown) => e)) as ServiceError;
      expect(err.code).toBe(GrpcStatus.UNAUTHENTICATED);
      const del = (await call((cb) => client.DeleteMicroVM({ uid: 'x' }, md(auth), cb as Cb)).catch((e: unknown) => e)) as ServiceError;
      expect(del.code).toBe(GrpcStatus.UNAUTHENTICATED);
    }
    expect(service.calls).toEqual([]);
    const ok = await call<{ microvm: { spec: { uid: string; metadata: Record<string, string> } } }>((cb) => client.CreateMicroVM({ microvm: spec }, md(basicAuthorization(TOKEN)), cb as Cb));
    expect(service.calls).toEqual(['create']);
    expect(ok.microvm.spec.metadata).toEqual({ 'user-data': 'c2VjcmV0' });
  });

  it('bounds concurrent creates with RESOURCE_EXHAUSTED and a clear message', async () => {
    let release!: () => void;
    service.hold = new Promise<void>((r) => (release = r));
    const calls = service.calls.length;
    const first = call((cb) => client.CreateMicroVM({ microvm: { ...spec, id: 'b' } }, md(basicAuthorization(TOKEN)), cb as Cb));
    // Wait until the first create holds the only slot (inside the service), whatever the machine's load.
    while (service.calls.length === calls) await new Promise((r) => setImmediate(r));
    const err = (await call((cb) => client.CreateMicroVM({ microvm: { ...spec, id: 'c' } }, md(basicAuthorization(TOKEN)), cb as Cb)).catch((e: unknown) => e)) as ServiceError;
    expect(err.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(/too many CreateMicroVM calls at once: 1 running and 0 waiting \(maxConcurrentCreates 1, createQueueLength 0\)/);
    release();
    service.hold = undefined;
    await first;
  });
});

describe('metadata redaction', () => {
  it('anonymous callers (no credential configured) read metadata values redacted; keys stay', async () => {
    const service = new CountingService();
    const server = createMicroVmGrpcServer(service);
    const addr = await server.listen('127.0.0.1:0');
    const client = new (loadMicroVmProto().Client)(addr, credentials.createInsecure()) as unknown as RawClient;
    try {
      const created = await new Promise<{ microvm: { spec: { uid: string; metadata: Record<string, string> } } }>((res, rej) =>
        client.CreateMicroVM({ microvm: { id: 'a', namespace: 'ns', vcpu: 1, memory_in_mb: 96, metadata: { 'user-data': 'c2VjcmV0' } } }, new Metadata(), (e, r) => (e ? rej(e) : res(r))),
      );
      expect(created.microvm.spec.metadata).toEqual({ 'user-data': REDACTED });
      expect(service.records[0]!.spec.metadata).toEqual({ 'user-data': 'c2VjcmV0' });
    } finally {
      client.close();
      await server.close();
    }
  });
});
