/**
 * Size limits at the API, over a real loopback gRPC server and the CLI's client: a create past a
 * limit is refused INVALID_ARGUMENT before the service runs, and the error names the field, the size
 * and the limit (message and `tether-field` trailer).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createMicroVmGrpcServer } from '../../src/api/grpc/index.js';
import { MicroVmApiClient } from '../../src/cli/microvm-client.js';
import { VM_SIZE_LIMITS } from '../../src/domain/codec/vm-limits.js';
import { TetherError } from '../../src/domain/errors.js';
import type { VmRecord, VmSpec } from '../../src/domain/vm.js';
import type { MicroVmService } from '../../src/ports/microvm-service.js';

class RecordingService implements MicroVmService {
  created: VmSpec[] = [];
  records: VmRecord[] = [];
  async create(spec: VmSpec): Promise<VmRecord> {
    this.created.push(spec);
    const r: VmRecord = { uid: randomBytes(16).toString('hex'), spec, phase: 'pending', createdAt: 1, updatedAt: 1, generation: 1, nics: [] };
    this.records.push(r);
    return r;
  }
  async delete(): Promise<void> {}
  async get(uid: string): Promise<VmRecord> {
    throw new TetherError('NOT_FOUND', `microvm ${uid} not found`);
  }
  async list(): Promise<VmRecord[]> {
    return this.records;
  }
}

describe('CreateMicroVM size limits over gRPC', () => {
  it('refuses metadata, labels and records past their limits naming the field and the limit; accepts at the limit', async () => {
    const service = new RecordingService();
    const server = createMicroVmGrpcServer(service);
    const addr = await server.listen('127.0.0.1:0');
    const client = new MicroVmApiClient(addr, 10_000);
    const base = { id: 'big', namespace: 'ns', vcpu: 1, memory_in_mb: 96 };
    const refusal = async (extra: object): Promise<TetherError> => {
      const err = await client.create({ ...base, ...extra }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TetherError);
      return err as TetherError;
    };
    try {
      const meta = await refusal({ metadata: { x: 'y'.repeat(70_000) } });
      expect(meta.code).toBe('INVALID_ARGUMENT');
      expect(meta.message).toContain('microvm.metadata["x"]: 70000 bytes, limit 65536');

      const labels = await refusal({ labels: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`l${i}`, 'v'.repeat(1000)])) });
      expect(labels.code).toBe('INVALID_ARGUMENT');
      expect(labels.message).toMatch(/microvm\.labels: \d+ bytes in total, limit 16384/);

      const record = await refusal({ metadata: { a: '"'.repeat(50_000) } }); // 50 KB escaped to 100 KB of JSON
      expect(record.message).toMatch(/microvm: record of \d+ bytes \(spec plus 1024 for its status\), limit 98304/);
      expect(service.created).toHaveLength(0);

      await client.create({ ...base, metadata: { x: 'y'.repeat(VM_SIZE_LIMITS.maxMetadataValueBytes - 1) } });
      expect(service.created).toHaveLength(1);
    } finally {
      client.close();
      await server.close();
    }
  });
});

describe('ListMicroVMs of a host full of large VMs', () => {
  it('an authenticated CLI client reads 70 VMs at the metadata limit (4.6 MB, over grpc-js default 4 MiB) in one list', async () => {
    const token = 'a-token-of-sufficient-length-012';
    const service = new RecordingService();
    const server = createMicroVmGrpcServer(service, { security: { token }, createLimits: { maxConcurrentCreates: 4, createQueueLength: 32, maxStartingVms: 1000 } });
    const addr = await server.listen('127.0.0.1:0');
    const client = new MicroVmApiClient(addr, 20_000, { token });
    try {
      for (let i = 0; i < 70; i++) await client.create({ id: `vm${i}`, namespace: 'ns', vcpu: 1, memory_in_mb: 96, metadata: { 'user-data': 'u'.repeat(VM_SIZE_LIMITS.maxMetadataValueBytes - 10) } });
      const vms = await client.list();
      expect(vms).toHaveLength(70);
      expect(vms.every((v) => v.spec.metadata?.['user-data']?.length === VM_SIZE_LIMITS.maxMetadataValueBytes - 10)).toBe(true);
    } finally {
      client.close();
      await server.close();
    }
  }, 60_000);
});
