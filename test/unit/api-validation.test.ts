import { status as GrpcStatus } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  filterFromListRequest,
  grpcStatusFromError,
  microVmFromRecord,
  specFromCreateRequest,
  specFromFlintlock,
  stateFromPhase,
  timestampFromMs,
  uidFromRequest,
} from '../../src/api/grpc/index.js';
import type { MicroVmSpecIn } from '../../src/api/grpc/wire-types.js';
import { InvalidArgumentError, NotFoundError, TetherError, type ErrorCode } from '../../src/domain/errors.js';
import type { VmPhase, VmRecord, VmSpec } from '../../src/domain/vm.js';

/** A spec that passes every rule; rows below break one thing each. */
function goodSpec(): MicroVmSpecIn & Record<string, unknown> {
  return {
    id: 'web-1',
    namespace: 'team-a',
    labels: { app: 'web' },
    vcpu: 2,
    memory_in_mb: 512,
    kernel: { image: 'vmlinux-6.1', cmdline: { console: 'ttyS0', quiet: '' }, filename: 'boot/vmlinux', add_network_config: true },
    initrd: { image: 'initrd-basic', filename: 'initrd.img' },
    root_volume: { id: 'root', is_read_only: false, source: { container_source: 'alpine-3.20' } },
    additional_volumes: [{ id: 'data', is_read_only: true, mount_point: '/mnt/data', source: { container_source: 'data-disk' } }],
    interfaces: [
      { device_id: 'eth0', type: 'TAP', guest_mac: 'AA:BB:CC:00:11:22', address: { address: '10.0.0.2/24', gateway: '10.0.0.1', nameservers: [] } },
      { device_id: 'eth1', type: 'TAP' },
    ],
    metadata: { 'meta-data': 'aW5zdGFuY2UtaWQ6IHgK' },
  };
}

type Mutation = (s: Record<string, any>) => void; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Row {
  readonly name: string;
  readonly mutate: Mutation;
  readonly code: ErrorCode;
  readonly field: string;
}

const BAD: readonly Row[] = [
  { name: 'missing id', mutate: (s) => (s.id = ''), code: 'INVALID_ARGUMENT', field: 'microvm.id' },
  { name: 'uppercase id', mutate: (s) => (s.id = 'Web'), code: 'INVALID_ARGUMENT', field: 'microvm.id' },
  { name: 'id with trailing dash', mutate: (s) => (s.id = 'web-'), code: 'INVALID_ARGUMENT', field: 'microvm.id' },
  { name: 'id of 64 chars', mutate: (s) => (s.id = 'a'.repeat(64)), code: 'INVALID_ARGUMENT', field: 'microvm.id' },
  { name: 'missing namespace', mutate: (s) => delete s.namespace, code: 'INVALID_ARGUMENT', field: 'microvm.namespace' },
  { name: 'namespace with underscore', mutate: (s) => (s.namespace = 'team_a'), code: 'INVALID_ARGUMENT', field: 'microvm.namespace' },
  { name: 'empty label key', mutate: (s) => (s.labels = { '': 'x' }), code: 'INVALID_ARGUMENT', field: 'microvm.labels' },
  { name: 'vcpu unset (0)', mutate: (s) => (s.vcpu = 0), code: 'INVALID_ARGUMENT', field: 'microvm.vcpu' },
  { name: 'vcpu 33', mutate: (s) => (s.vcpu = 33), code: 'INVALID_ARGUMENT', field: 'microvm.vcpu' },
  { name: 'negative vcpu', mutate: (s) => (s.vcpu = -1), code: 'INVALID_ARGUMENT', field: 'microvm.vcpu' },
  { name: 'memory 71 MiB', mutate: (s) => (s.memory_in_mb = 71), code: 'INVALID_ARGUMENT', field: 'microvm.memory_in_mb' },
  { name: 'memory 16385 MiB', mutate: (s) => (s.memory_in_mb = 16385), code: 'INVALID_ARGUMENT', field: 'microvm.memory_in_mb' },
  { name: 'kernel image with ..', mutate: (s) => (s.kernel.image = '../etc/passwd'), code: 'INVALID_ARGUMENT', field: 'microvm.kernel.image' },
  { name: 'kernel image with space', mutate: (s) => (s.kernel.image = 'my kernel'), code: 'INVALID_ARGUMENT', field: 'microvm.kernel.image' },
  { name: 'cmdline value with space', mutate: (s) => (s.kernel.cmdline = { init: '/bin/sh -c x' }), code: 'INVALID_ARGUMENT', field: 'microvm.kernel.cmdline["init"]' },
  { name: 'cmdline key with =', mutate: (s) => (s.kernel.cmdline = { 'a=b': 'c' }), code: 'INVALID_ARGUMENT', field: 'microvm.kernel.cmdline["a=b"]' },
  { name: 'cmdline too long', mutate: (s) => (s.kernel.cmdline = { big: 'x'.repeat(1100) }), code: 'INVALID_ARGUMENT', field: 'microvm.kernel.cmdline' },
  { name: 'initrd image absolute path', mutate: (s) => (s.initrd.image = '/boot/initrd'), code: 'INVALID_ARGUMENT', field: 'microvm.initrd.image' },
  { name: 'root volume bad id', mutate: (s) => (s.root_volume.id = 'a/b'), code: 'INVALID_ARGUMENT', field: 'microvm.root_volume.id' },
  { name: 'root volume bad image name', mutate: (s) => (s.root_volume.source.container_source = 'a//b'), code: 'INVALID_ARGUMENT', field: 'microvm.root_volume.source.container_source' },
  { name: 'root volume virtiofs', mutate: (s) => (s.root_volume.source = { virtiofs_source: '/srv/share' }), code: 'UNIMPLEMENTED', field: 'microvm.root_volume.source.virtiofs_source' },
  { name: 'root volume two sources', mutate: (s) => (s.root_volume.source = { container_source: 'a', virtiofs_source: '/srv' }), code: 'INVALID_ARGUMENT', field: 'microvm.root_volume.source' },
  { name: 'root volume partition id', mutate: (s) => (s.root_volume.partition_id = 'b3c1-uuid'), code: 'UNIMPLEMENTED', field: 'microvm.root_volume.partition_id' },
  { name: 'root volume resize', mutate: (s) => (s.root_volume.size_in_mb = 4096), code: 'UNIMPLEMENTED', field: 'microvm.root_volume.size_in_mb' },
  { name: 'negative volume size', mutate: (s) => (s.root_volume.size_in_mb = -5), code: 'INVALID_ARGUMENT', field: 'microvm.root_volume.size_in_mb' },
  { name: 'additional volume without source', mutate: (s) => (s.additional_volumes[0].source = null), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes[0].source.container_source' },
  { name: 'additional volume without id', mutate: (s) => (s.additional_volumes[0].id = ''), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes[0].id' },
  { name: 'additional volume id clashes with root', mutate: (s) => (s.additional_volumes[0].id = 'root'), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes[0].id' },
  { name: 'additional volume relative mount point', mutate: (s) => (s.additional_volumes[0].mount_point = 'mnt/data'), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes[0].mount_point' },
  { name: 'additional volume mount point with ..', mutate: (s) => (s.additional_volumes[0].mount_point = '/mnt/../etc'), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes[0].mount_point' },
  { name: 'additional volume virtiofs', mutate: (s) => (s.additional_volumes[0].source = { virtiofs_source: '/srv' }), code: 'UNIMPLEMENTED', field: 'microvm.additional_volumes[0].source.virtiofs_source' },
  { name: 'too many volumes', mutate: (s) => (s.additional_volumes = Array.from({ length: 17 }, (_, i) => ({ id: `v${i}`, source: { container_source: 'd' } }))), code: 'INVALID_ARGUMENT', field: 'microvm.additional_volumes' },
  { name: 'interface without device_id', mutate: (s) => (s.interfaces[0].device_id = ''), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].device_id' },
  { name: 'interface name too long', mutate: (s) => (s.interfaces[1].device_id = 'a'.repeat(16)), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[1].device_id' },
  { name: 'interface name with slash', mutate: (s) => (s.interfaces[0].device_id = 'eth/0'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].device_id' },
  { name: 'duplicate interface', mutate: (s) => (s.interfaces[1].device_id = 'eth0'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[1].device_id' },
  { name: 'macvtap interface', mutate: (s) => (s.interfaces[1].type = 'MACVTAP'), code: 'UNIMPLEMENTED', field: 'microvm.interfaces[1].type' },
  { name: 'type left at proto default (MACVTAP)', mutate: (s) => delete s.interfaces[1].type, code: 'UNIMPLEMENTED', field: 'microvm.interfaces[1].type' },
  { name: 'unknown interface type', mutate: (s) => (s.interfaces[0].type = 7), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].type' },
  { name: 'malformed MAC', mutate: (s) => (s.interfaces[0].guest_mac = 'aa:bb:cc:dd:ee'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].guest_mac' },
  { name: 'multicast MAC', mutate: (s) => (s.interfaces[0].guest_mac = '01:00:5e:00:00:01'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].guest_mac' },
  { name: 'duplicate MAC', mutate: (s) => (s.interfaces[1].guest_mac = 'aa:bb:cc:00:11:22'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[1].guest_mac' },
  { name: 'address without prefix', mutate: (s) => (s.interfaces[0].address.address = '10.0.0.2'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.address' },
  { name: 'address octet > 255', mutate: (s) => (s.interfaces[0].address.address = '10.0.0.256/24'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.address' },
  { name: 'address is the network address', mutate: (s) => (s.interfaces[0].address.address = '10.0.0.0/24'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.address' },
  { name: 'address prefix 33', mutate: (s) => (s.interfaces[0].address.address = '10.0.0.2/33'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.address' },
  { name: 'empty static address', mutate: (s) => (s.interfaces[0].address = { address: '' }), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.address' },
  { name: 'IPv6 address', mutate: (s) => (s.interfaces[0].address = { address: 'fd00::2/64' }), code: 'UNIMPLEMENTED', field: 'microvm.interfaces[0].address.address' },
  { name: 'bad gateway', mutate: (s) => (s.interfaces[0].address.gateway = '10.0.0'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.gateway' },
  { name: 'gateway equals address', mutate: (s) => (s.interfaces[0].address.gateway = '10.0.0.2'), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces[0].address.gateway' },
  { name: 'nameservers', mutate: (s) => (s.interfaces[0].address.nameservers = ['1.1.1.1']), code: 'UNIMPLEMENTED', field: 'microvm.interfaces[0].address.nameservers' },
  { name: 'bridge override', mutate: (s) => (s.interfaces[0].overrides = { bridge_name: 'br0' }), code: 'UNIMPLEMENTED', field: 'microvm.interfaces[0].overrides.bridge_name' },
  { name: 'too many interfaces', mutate: (s) => (s.interfaces = Array.from({ length: 17 }, (_, i) => ({ device_id: `eth${i}`, type: 'TAP' }))), code: 'INVALID_ARGUMENT', field: 'microvm.interfaces' },
  { name: 'empty metadata key', mutate: (s) => (s.metadata = { '': 'x' }), code: 'INVALID_ARGUMENT', field: 'microvm.metadata' },
  { name: 'metadata value past its limit', mutate: (s) => (s.metadata = { 'user-data': 'x'.repeat(65537) }), code: 'INVALID_ARGUMENT', field: 'microvm.metadata["user-data"]' },
  { name: 'too many labels', mutate: (s) => (s.labels = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`l${i}`, 'v']))), code: 'INVALID_ARGUMENT', field: 'microvm.labels' },
  { name: 'label value past its limit', mutate: (s) => (s.labels = { app: 'x'.repeat(1025) }), code: 'INVALID_ARGUMENT', field: 'microvm.labels["app"]' },
  { name: 'label key past its limit', mutate: (s) => (s.labels = { ['k'.repeat(257)]: 'v' }), code: 'INVALID_ARGUMENT', field: `microvm.labels["${'k'.repeat(64)}..."]` },
  { name: 'labels over their total', mutate: (s) => (s.labels = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`l${i}`, 'x'.repeat(1000)]))), code: 'INVALID_ARGUMENT', field: 'microvm.labels' },
  { name: 'metadata over its total', mutate: (s) => (s.metadata = Object.fromEntries(Array.from({ length: 2 }, (_, i) => [`k${i}`, 'x'.repeat(40_000)]))), code: 'INVALID_ARGUMENT', field: 'microvm.metadata' },
  { name: 'whole record past its limit (JSON escapes)', mutate: (s) => (s.metadata = { blob: '\u0001'.repeat(20_000) }), code: 'INVALID_ARGUMENT', field: 'microvm' },
  { name: 'client-chosen uid', mutate: (s) => (s.uid = '0123456789abcdef0123456789abcdef'), code: 'INVALID_ARGUMENT', field: 'microvm.uid' },
  { name: 'firecracker provider', mutate: (s) => (s.provider = 'firecracker'), code: 'UNIMPLEMENTED', field: 'microvm.provider' },
  { name: 'guest agent', mutate: (s) => (s.allow_guest_agent = true), code: 'UNIMPLEMENTED', field: 'microvm.allow_guest_agent' },
  { name: 'cpu config', mutate: (s) => (s.cpu_config = { features_to_enable: ['amx'], kvm_capabilities_to_disable: [] }), code: 'UNIMPLEMENTED', field: 'microvm.cpu_config' },
];

function errorOf(fn: () => unknown): TetherError {
  try {
    fn();
  } catch (err) {
    if (err instanceof TetherError) return err;
    throw err;
  }
  throw new Error('expected a TetherError, got success');
}

describe('specFromFlintlock: bad input', () => {
  it.each(BAD)('$name -> $code at $field', ({ mutate, code, field }) => {
    const spec = goodSpec();
    mutate(spec);
    const err = errorOf(() => specFromFlintlock(spec));
    expect(err.code).toBe(code);
    expect(err.details['field']).toBe(field);
    expect(err.message.startsWith(`${field}: `)).toBe(true);
    if (code === 'INVALID_ARGUMENT') expect((err as InvalidArgumentError).field).toBe(field);
    // The wire status keeps the message and carries the field in a trailer.
    const status = grpcStatusFromError(err);
    expect(status.code).toBe(code === 'INVALID_ARGUMENT' ? GrpcStatus.INVALID_ARGUMENT : GrpcStatus.UNIMPLEMENTED);
    expect(status.details).toBe(err.message);
    expect(status.metadata.get('tether-field')).toEqual([field]);
  });

  it('names the field, its size and the limit, in bytes (UTF-8), for every size limit', () => {
    const err = (extra: object): string => errorOf(() => specFromFlintlock({ ...goodSpec(), ...extra })).message;
    expect(err({ metadata: { x: 'y'.repeat(70_000) } })).toBe('microvm.metadata["x"]: 70000 bytes, limit 65536');
    expect(err({ labels: { app: 'é'.repeat(600) } })).toBe('microvm.labels["app"]: 1200 bytes, limit 1024');
    expect(err({ labels: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`l${i}`, 'x'.repeat(1000)])) })).toMatch(/^microvm\.labels: 200\d\d bytes in total, limit 16384$/);
    expect(err({ metadata: { a: '\u0001'.repeat(20_000) } })).toMatch(/^microvm: record of \d+ bytes \(spec plus 1024 for its status\), limit 98304$/);
    // At the limits exactly: accepted.
    const ok = specFromFlintlock({ ...goodSpec(), metadata: { x: 'y'.repeat(65536 - 1) }, labels: { a: 'b'.repeat(1024) } });
    expect(ok.metadata['x']).toHaveLength(65535);
  });

  it('rejects a request without a spec', () => {
    const err = errorOf(() => specFromCreateRequest({ microvm: null }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.details['field']).toBe('microvm');
  });

  it('requires a uid for get/delete', () => {
    expect(errorOf(() => uidFromRequest({ uid: '' })).details['field']).toBe('uid');
    expect(uidFromRequest({ uid: 'abc' })).toBe('abc');
  });
});

describe('specFromFlintlock: good input', () => {
  it('maps every supported field', () => {
    const spec = specFromFlintlock(goodSpec());
    expect(spec).toEqual({
      id: { namespace: 'team-a', name: 'web-1' },
      vcpu: 2,
      memoryMb: 512,
      kernelImage: 'vmlinux-6.1',
      kernelCmdline: { console: 'ttyS0', quiet: '' },
      initrdImage: 'initrd-basic',
      volumes: [
        { id: 'root', image: 'alpine-3.20', readOnly: false, isRoot: true },
        { id: 'data', image: 'data-disk', readOnly: true, isRoot: false },
      ],
      interfaces: [
        { guestDeviceName: 'eth0', guestMac: 'aa:bb:cc:00:11:22', address: '10.0.0.2/24', gateway: '10.0.0.1' },
        { guestDeviceName: 'eth1' },
      ],
      labels: { app: 'web' },
      metadata: { 'meta-data': 'aW5zdGFuY2UtaWQ6IHgK' },
    } satisfies VmSpec);
  });

  it('uses built-in kernel, initrd and disk when names are empty or parts are absent', () => {
    const spec = specFromFlintlock({ id: 'a', namespace: 'b', vcpu: 1, memory_in_mb: 72, kernel: null, root_volume: null });
    expect(spec.kernelImage).toBe('');
    expect(spec.initrdImage).toBe('');
    expect(spec.kernelCmdline).toEqual({});
    expect(spec.volumes).toEqual([{ id: 'root', image: '', readOnly: false, isRoot: true }]);
    expect(spec.interfaces).toEqual([]);
  });

  it('accepts what Flintlock itself echoes back (empty optionals, zero size, explicit empty uid)', () => {
    const s = goodSpec();
    Object.assign(s, { uid: '', provider: '', cpu_config: { features_to_enable: [], kvm_capabilities_to_disable: [] } });
    Object.assign(s.root_volume as object, { partition_id: '', size_in_mb: 0, mount_point: '' });
    Object.assign(s, { created_at: { seconds: '1', nanos: 0 } });
    expect(() => specFromFlintlock(s)).not.toThrow();
  });

  it('accepts a gateway in CIDR form and stores it bare; accepts /32 and /31 host addresses', () => {
    const s = goodSpec();
    (s.interfaces as Record<string, unknown>[])[0]!.address = { address: '192.168.1.7/32', gateway: '192.168.1.1/24' };
    (s.interfaces as Record<string, unknown>[])[1]!.address = { address: '10.1.0.0/31' };
    const spec = specFromFlintlock(s);
    expect(spec.interfaces[0]).toMatchObject({ address: '192.168.1.7/32', gateway: '192.168.1.1' });
    expect(spec.interfaces[1]).toMatchObject({ address: '10.1.0.0/31' });
  });

  it('round-trips: spec -> record -> Flintlock MicroVM -> spec is the identity', () => {
    const spec = specFromFlintlock(goodSpec());
    const record: VmRecord = {
      uid: '0123456789abcdef0123456789abcdef',
      spec,
      phase: 'running',
      createdAt: 1_700_000_000_123,
      updatedAt: 1_700_000_005_000,
      generation: 4,
      nics: [
        { guestDeviceName: 'eth0', hostDeviceName: 'tt0123456789a0', mac: 'aa:bb:cc:00:11:22' },
        { guestDeviceName: 'eth1', hostDeviceName: 'tt0123456789a1', mac: '02:01:23:45:67:01' },
      ],
    };
    const mvm = microVmFromRecord(record);
    expect(mvm.version).toBe(4);
    expect(mvm.spec.uid).toBe(record.uid);
    expect(mvm.spec.created_at).toEqual({ seconds: '1700000000', nanos: 123_000_000 });
    expect(mvm.spec.updated_at).toEqual({ seconds: '1700000005', nanos: 0 });
    expect(mvm.spec.root_volume).toEqual({ id: 'root', is_read_only: false, source: { container_source: 'alpine-3.20' } });
    expect(mvm.spec.interfaces[0]).toEqual({
      device_id: 'eth0',
      type: 'TAP',
      guest_mac: 'aa:bb:cc:00:11:22',
      address: { address: '10.0.0.2/24', gateway: '10.0.0.1', nameservers: [] },
    });
    expect(mvm.status).toEqual({
      state: 'CREATED',
      volumes: {},
      network_interfaces: {
        eth0: { host_device_name: 'tt0123456789a0', index: 0, mac_address: 'aa:bb:cc:00:11:22' },
        eth1: { host_device_name: 'tt0123456789a1', index: 1, mac_address: '02:01:23:45:67:01' },
      },
      retry: 0,
    });
    const { uid: _uid, ...echoed } = mvm.spec;
    expect(specFromFlintlock(echoed)).toEqual(spec);
  });
});

describe('status mapping', () => {
  it.each<[VmPhase, string]>([
    ['pending', 'PENDING'],
    ['creating', 'PENDING'],
    ['running', 'CREATED'],
    ['failed', 'FAILED'],
    ['stopped', 'FAILED'],
    ['deleting', 'DELETING'],
    ['deleted', 'DELETING'],
  ])('phase %s -> %s', (phase, state) => {
    expect(stateFromPhase(phase)).toBe(state);
  });

  it('renders timestamps with non-negative nanos', () => {
    expect(timestampFromMs(0)).toEqual({ seconds: '0', nanos: 0 });
    expect(timestampFromMs(-1)).toEqual({ seconds: '-1', nanos: 999_000_000 });
  });

  it.each<[TetherError | Error, GrpcStatus]>([
    [new InvalidArgumentError('microvm.vcpu', 'bad'), GrpcStatus.INVALID_ARGUMENT],
    [new NotFoundError('microvm abc'), GrpcStatus.NOT_FOUND],
    [new TetherError('ALREADY_EXISTS', 'x'), GrpcStatus.ALREADY_EXISTS],
    [new TetherError('UNAVAILABLE', 'host not attached', { retryable: true }), GrpcStatus.UNAVAILABLE],
    [new TetherError('UNIMPLEMENTED', 'x'), GrpcStatus.UNIMPLEMENTED],
    [new TetherError('FAILED_PRECONDITION', 'x'), GrpcStatus.FAILED_PRECONDITION],
    [new TetherError('VMM_ERROR', 'qemu died'), GrpcStatus.INTERNAL],
    [new Error('boom'), GrpcStatus.INTERNAL],
  ])('%s -> grpc %i', (err, code) => {
    const status = grpcStatusFromError(err);
    expect(status.code).toBe(code);
    expect(status.details).toBe(err.message);
    expect(status.metadata.get('tether-error-code')).toEqual([err instanceof TetherError ? err.code : 'INTERNAL']);
  });

  it('marks retryable errors', () => {
    expect(grpcStatusFromError(new TetherError('UNAVAILABLE', 'x', { retryable: true })).metadata.get('tether-retryable')).toEqual(['true']);
  });
});

describe('list filter', () => {
  it('drops empty namespace and name', () => {
    expect(filterFromListRequest({ namespace: '', name: undefined })).toEqual({});
    expect(filterFromListRequest({ namespace: 'ns', name: '' })).toEqual({ namespace: 'ns' });
    expect(filterFromListRequest({ namespace: 'ns', name: 'vm' })).toEqual({ namespace: 'ns', name: 'vm' });
  });
});
