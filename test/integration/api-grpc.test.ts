/**
 * The gRPC wire layer end to end: a real server on 127.0.0.1:0 over an in-memory MicroVmService,
 * driven by a client that @grpc/proto-loader builds straight from the proto/ files.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, loadPackageDefinition, Metadata, status as GrpcStatus, type Client, type ServiceClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createMicroVmGrpcServer, type GrpcApiServer } from '../../src/api/grpc/index.js';
import { loadApiSecurity } from '../../src/api/auth/api-security.js';
import { devApiSecurity } from '../../src/dev/api-credentials.js';
import { removeDir, testDir } from '../support/real-host.js';
import { NotFoundError, TetherError } from '../../src/domain/errors.js';
import { vmKey, type VmRecord, type VmSpec } from '../../src/domain/vm.js';
import type { MicroVmService, VmFilter } from '../../src/ports/microvm-service.js';

/** In-memory service: enough behaviour to exercise every wire path. */
class FakeService implements MicroVmService {
  readonly records = new Map<string, VmRecord>();
  unavailable: string | undefined;
  created: VmSpec[] = [];

  private check(): void {
    if (this.unavailable) throw new TetherError('UNAVAILABLE', this.unavailable, { retryable: true });
  }
  async create(spec: VmSpec): Promise<VmRecord> {
    this.check();
    for (const r of this.records.values()) {
      if (vmKey(r.spec.id) === vmKey(spec.id)) throw new TetherError('ALREADY_EXISTS', `microvm ${vmKey(spec.id)} already exists`);
    }
    this.created.push(spec);
    const uid = randomBytes(16).toString('hex');
    const record: VmRecord = { uid, spec, phase: 'pending', createdAt: 1_700_000_000_000, updatedAt: 1_700_000_000_000, generation: 1, nics: [] };
    this.records.set(uid, record);
    return record;
  }
  async delete(uid: string): Promise<void> {
    this.check();
    const r = this.records.get(uid);
    if (!r) throw new NotFoundError(`microvm ${uid}`);
    this.records.set(uid, { ...r, phase: 'deleting', generation: r.generation + 1 });
  }
  async get(uid: string): Promise<VmRecord> {
    this.check();
    const r = this.records.get(uid);
    if (!r) throw new NotFoundError(`microvm ${uid}`);
    return r;
  }
  async list(filter: VmFilter): Promise<VmRecord[]> {
    this.check();
    return [...this.records.values()]
      .filter((r) => (!filter.namespace || r.spec.id.namespace === filter.namespace) && (!filter.name || r.spec.id.name === filter.name))
      .sort((a, b) => vmKey(a.spec.id).localeCompare(vmKey(b.spec.id)));
  }
}

type Callback<T> = (err: ServiceError | null, res: T) => void;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyObj = Record<string, any>;
interface MicroVmClient extends Client {
  CreateMicroVM(req: AnyObj, cb: Callback<AnyObj>): void;
  GetMicroVM(req: AnyObj, cb: Callback<AnyObj>): void;
  DeleteMicroVM(req: AnyObj, cb: Callback<AnyObj>): void;
  ListMicroVMs(req: AnyObj, cb: Callback<AnyObj>): void;
  ListMicroVMsStream(req: AnyObj): NodeJS.ReadableStream;
}

function loadClientCtor(): ServiceClientConstructor {
  const protoDir = fileURLToPath(new URL('../../proto/', import.meta.url));
  const def = loadSync('services/microvm/v1alpha1/microvms.proto', {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = loadPackageDefinition(def) as AnyObj;
  return pkg['microvm']['services']['api']['v1alpha1']['MicroVM'] as ServiceClientConstructor;
}

function call<T>(fn: (cb: Callback<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

async function failure(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('expected the call to fail');
}

function readAll(stream: NodeJS.ReadableStream): Promise<AnyObj[]> {
  return new Promise((resolve, reject) => {
    const out: AnyObj[] = [];
    stream.on('data', (m: AnyObj) => out.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(out));
  });
}

function spec(id: string, namespace: string, extra: AnyObj = {}): AnyObj {
  return {
    id,
    namespace,
    vcpu: 1,
    memory_in_mb: 256,
    kernel: { image: '', cmdline: { console: 'ttyS0' }, add_network_config: true },
    root_volume: { id: 'root', source: { container_source: 'alpine' } },
    interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: '10.0.0.2/24', gateway: '10.0.0.1' } }],
    metadata: { 'user-data': 'I2Nsb3VkLWNvbmZpZwo=' },
    labels: { tier: 'test' },
    ...extra,
  };
}

describe('Flintlock-compatible gRPC API', () => {
  const service = new FakeService();
  let server: GrpcApiServer;
  let client: MicroVmClient;
  let address: string;

  beforeAll(async () => {
    // The fake service keeps every VM pending: lift create admission, which tests of its own cover.
    server = createMicroVmGrpcServer(service, { createLimits: { maxConcurrentCreates: 1000, createQueueLength: 0, maxStartingVms: 1000 } });
    address = await server.listen('127.0.0.1:0');
    const Ctor = loadClientCtor();
    client = new Ctor(address, credentials.createInsecure()) as unknown as MicroVmClient;
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
  });

  beforeEach(() => {
    service.records.clear();
    service.created = [];
    service.unavailable = undefined;
  });

  it('binds the requested host with a real port', () => {
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(address).not.toBe('127.0.0.1:0');
    expect(server.address).toBe(address);
  });

  it('creates, gets, lists, streams and deletes', async () => {
    const created = await call<AnyObj>((cb) => client.CreateMicroVM({ microvm: spec('vm-b', 'ns1') }, cb));
    const mvm = created['microvm'];
    expect(mvm.status.state).toBe('PENDING');
    expect(mvm.spec.uid).toMatch(/^[0-9a-f]{32}$/);
    expect(mvm.spec.id).toBe('vm-b');
    expect(mvm.spec.interfaces[0]).toMatchObject({ device_id: 'eth0', type: 'TAP', address: { address: '10.0.0.2/24', gateway: '10.0.0.1' } });
    expect(mvm.spec.created_at).toEqual({ seconds: '1700000000', nanos: 0 });
    expect(service.created[0]!.kernelCmdline).toEqual({ console: 'ttyS0' });
    const uid: string = mvm.spec.uid;

    await call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1') }, cb));
    await call((cb) => client.CreateMicroVM({ microvm: spec('vm-c', 'ns2') }, cb));

    const got = await call<AnyObj>((cb) => client.GetMicroVM({ uid }, cb));
    expect(got['microvm'].spec).toEqual(mvm.spec);

    const all = await call<AnyObj>((cb) => client.ListMicroVMs({ namespace: '' }, cb));
    expect(all['microvm'].map((m: AnyObj) => `${m.spec.namespace}/${m.spec.id}`)).toEqual(['ns1/vm-a', 'ns1/vm-b', 'ns2/vm-c']);
    const ns1 = await call<AnyObj>((cb) => client.ListMicroVMs({ namespace: 'ns1' }, cb));
    expect(ns1['microvm'].map((m: AnyObj) => m.spec.id)).toEqual(['vm-a', 'vm-b']);
    const byName = await call<AnyObj>((cb) => client.ListMicroVMs({ namespace: 'ns1', name: 'vm-b' }, cb));
    expect(byName['microvm'].map((m: AnyObj) => m.spec.uid)).toEqual([uid]);

    const streamed = await readAll(client.ListMicroVMsStream({ namespace: 'ns1' }));
    expect(streamed.map((m) => m['microvm'].spec.id)).toEqual(['vm-a', 'vm-b']);
    const none = await readAll(client.ListMicroVMsStream({ namespace: 'nope' }));
    expect(none).toEqual([]);

    const empty = await call<AnyObj>((cb) => client.DeleteMicroVM({ uid }, cb));
    expect(empty).toEqual({});
    const after = await call<AnyObj>((cb) => client.GetMicroVM({ uid }, cb));
    expect(after['microvm'].status.state).toBe('DELETING');
    expect(after['microvm'].version).toBe(2);
  });

  it('answers NOT_FOUND for unknown uids', async () => {
    const get = await failure(call((cb) => client.GetMicroVM({ uid: 'ffffffffffffffffffffffffffffffff' }, cb)));
    expect(get.code).toBe(GrpcStatus.NOT_FOUND);
    expect(get.details).toContain('ffffffffffffffffffffffffffffffff');
    const del = await failure(call((cb) => client.DeleteMicroVM({ uid: 'ffffffffffffffffffffffffffffffff' }, cb)));
    expect(del.code).toBe(GrpcStatus.NOT_FOUND);
  });

  it('answers INVALID_ARGUMENT naming the field, and never calls the service', async () => {
    const err = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1', { vcpu: 0 }) }, cb)));
    expect(err.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(err.details).toMatch(/^microvm\.vcpu: /);
    expect(err.metadata.get('tether-field')).toEqual(['microvm.vcpu']);
    expect(err.metadata.get('tether-error-code')).toEqual(['INVALID_ARGUMENT']);

    const iface = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1', { interfaces: [{ device_id: '', type: 'TAP' }] }) }, cb)));
    expect(iface.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(iface.details).toMatch(/^microvm\.interfaces\[0\]\.device_id: /);

    const noSpec = await failure(call((cb) => client.CreateMicroVM({}, cb)));
    expect(noSpec.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(noSpec.details).toMatch(/^microvm: /);

    const noUid = await failure(call((cb) => client.GetMicroVM({ uid: '' }, cb)));
    expect(noUid.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(service.created).toEqual([]);
  });

  it('answers UNIMPLEMENTED for macvtap and unsupported volume sources', async () => {
    const macvtap = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1', { interfaces: [{ device_id: 'eth0', type: 'MACVTAP' }] }) }, cb)));
    expect(macvtap.code).toBe(GrpcStatus.UNIMPLEMENTED);
    expect(macvtap.details).toMatch(/^microvm\.interfaces\[0\]\.type: .*macvtap/);

    const virtiofs = await failure(
      call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1', { additional_volumes: [{ id: 'share', source: { virtiofs_source: '/srv/share' } }] }) }, cb)),
    );
    expect(virtiofs.code).toBe(GrpcStatus.UNIMPLEMENTED);
    expect(virtiofs.details).toMatch(/^microvm\.additional_volumes\[0\]\.source\.virtiofs_source: /);
    expect(service.created).toEqual([]);
  });

  it('passes UNAVAILABLE through with its message, on unary calls and on the stream', async () => {
    service.unavailable = 'host is not attached: no etcd lease';
    const err = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1') }, cb)));
    expect(err.code).toBe(GrpcStatus.UNAVAILABLE);
    expect(err.details).toBe('host is not attached: no etcd lease');
    expect(err.metadata.get('tether-retryable')).toEqual(['true']);

    const streamErr = await failure(readAll(client.ListMicroVMsStream({ namespace: 'ns1' })));
    expect(streamErr.code).toBe(GrpcStatus.UNAVAILABLE);
    expect(streamErr.details).toBe('host is not attached: no etcd lease');
  });

  it('passes ALREADY_EXISTS through', async () => {
    await call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1') }, cb));
    const err = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('vm-a', 'ns1') }, cb)));
    expect(err.code).toBe(GrpcStatus.ALREADY_EXISTS);
  });

  it('streams many VMs under flow control', async () => {
    // Far more messages than the stream's high-water mark (16), so the handler must wait for drain.
    await Promise.all(
      Array.from({ length: 100 }, (_, i) => {
        const big = spec(`vm-${String(i).padStart(3, '0')}`, 'bulk', { metadata: { blob: 'x'.repeat(8 * 1024) } });
        return call((cb) => client.CreateMicroVM({ microvm: big }, cb));
      }),
    );
    const streamed = await readAll(client.ListMicroVMsStream({ namespace: 'bulk' }));
    expect(streamed).toHaveLength(100);
    expect(streamed[99]!['microvm'].spec.id).toBe('vm-099');
  });

  it('survives a client cancelling a stream midway', async () => {
    await Promise.all(
      Array.from({ length: 60 }, (_, i) => call((cb) => client.CreateMicroVM({ microvm: spec(`vm-${i}`, 'cx', { metadata: { blob: 'y'.repeat(16 * 1024) } }) }, cb))),
    );
    const stream = client.ListMicroVMsStream({ namespace: 'cx' }) as NodeJS.ReadableStream & { cancel(): void };
    const code = await new Promise<number>((resolve) => {
      stream.once('data', () => stream.cancel());
      stream.on('error', (err: ServiceError) => resolve(err.code));
      stream.on('end', () => resolve(-1));
    });
    expect(code).toBe(GrpcStatus.CANCELLED);
    const after = await call<AnyObj>((cb) => client.ListMicroVMs({ namespace: 'cx' }, cb));
    expect(after['microvm']).toHaveLength(60);
  });

  it('rejects a second listen and survives a double close', async () => {
    await expect(server.listen('127.0.0.1:0')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    const other = createMicroVmGrpcServer(service);
    const addr = await other.listen('127.0.0.1:0');
    const Ctor = loadClientCtor();
    const c2 = new Ctor(addr, credentials.createInsecure()) as unknown as MicroVmClient;
    await call((cb) => c2.ListMicroVMs({ namespace: '' }, cb));
    c2.close();
    await other.close();
    await other.close();
    expect(other.address).toBeUndefined();
  });
});

describe('a Flintlock client with TLS + token (as CAPMVM configures one)', () => {
  const service = new FakeService();
  let server: GrpcApiServer;
  let dir: string;
  let address: string;
  let sec: ReturnType<typeof devApiSecurity>;
  const clients: Client[] = [];

  beforeAll(async () => {
    dir = testDir('api-grpc-tls');
    sec = devApiSecurity(join(dir, 'certs'));
    const security = loadApiSecurity(
      { tlsCert: sec.certs.serverCert, tlsKey: sec.certs.serverKey, tlsClientCa: sec.certs.ca, tlsClientValidate: true, insecure: false, basicAuthToken: '', basicAuthTokenFile: sec.tokenFile },
      () => undefined,
    );
    server = createMicroVmGrpcServer(service, { security });
    address = await server.listen('127.0.0.1:0');
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await server?.close();
    if (dir) removeDir(dir);
  });

  /** Flintlock's client: TLS channel credentials plus per-call credentials adding `authorization: basic <base64>`. */
  function flintlockClient(token: string | undefined, cert = sec.certs.clientCert, key = sec.certs.clientKey): MicroVmClient {
    const ssl = credentials.createSsl(readFileSync(sec.certs.ca), readFileSync(key), readFileSync(cert));
    const creds =
      token === undefined
        ? ssl
        : credentials.combineChannelCredentials(
            ssl,
            credentials.createFromMetadataGenerator((_params, cb) => {
              const md = new Metadata();
              md.add('authorization', `basic ${Buffer.from(token).toString('base64')}`);
              cb(null, md);
            }),
          );
    const c = new (loadClientCtor())(address, creds) as unknown as MicroVmClient;
    clients.push(c);
    return c;
  }

  it('creates, lists and deletes, reading back the metadata it is entitled to', async () => {
    const client = flintlockClient(sec.token);
    const created = await call<AnyObj>((cb) => client.CreateMicroVM({ microvm: spec('tls-a', 'secure') }, cb));
    const uid: string = created['microvm'].spec.uid;
    expect(created['microvm'].spec.metadata).toEqual({ 'user-data': 'I2Nsb3VkLWNvbmZpZwo=' });
    const listed = await call<AnyObj>((cb) => client.ListMicroVMs({ namespace: 'secure' }, cb));
    expect(listed['microvm'].map((m: AnyObj) => m.spec.uid)).toEqual([uid]);
    await call((cb) => client.DeleteMicroVM({ uid }, cb));
    const after = await call<AnyObj>((cb) => client.GetMicroVM({ uid }, cb));
    expect(after['microvm'].status.state).toBe('DELETING');
  });

  it('refuses the same client without the token (UNAUTHENTICATED) and changes nothing', async () => {
    const before = service.records.size;
    const client = flintlockClient(undefined);
    const err = await failure(call((cb) => client.CreateMicroVM({ microvm: spec('tls-b', 'secure') }, cb)));
    expect(err.code).toBe(GrpcStatus.UNAUTHENTICATED);
    const wrong = flintlockClient('not-the-token-but-long-enough');
    const err2 = await failure(call((cb) => wrong.ListMicroVMs({ namespace: '' }, cb)));
    expect(err2.code).toBe(GrpcStatus.UNAUTHENTICATED);
    expect(service.records.size).toBe(before);
  });

  it('refuses a client certificate from another CA at the handshake', async () => {
    const client = flintlockClient(sec.token, sec.certs.otherClientCert, sec.certs.otherClientKey);
    const err = await failure(call((cb) => client.ListMicroVMs({ namespace: '' }, cb)));
    expect(err.code).toBe(GrpcStatus.UNAVAILABLE);
  });
});
