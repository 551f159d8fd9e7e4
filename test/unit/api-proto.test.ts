import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { findProtoRoot, loadMicroVmProto, MICROVM_SERVICE_NAME } from '../../src/api/grpc/index.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

describe('proto loading', () => {
  it('finds proto/ from the source tree and from the compiled tree', () => {
    const expected = join(repoRoot, 'proto');
    expect(findProtoRoot()).toBe(expected);
    // Compiled code runs from dist/src/api/grpc/; the folder need not exist for the walk.
    expect(findProtoRoot(pathToFileURL(join(repoRoot, 'dist/src/api/grpc/proto.js')))).toBe(expected);
    expect(findProtoRoot(join(repoRoot, 'dist/src/api/grpc/proto.js'))).toBe(expected);
  });

  it('fails with INTERNAL when there is no proto folder above', () => {
    expect(() => findProtoRoot('/')).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
  });

  it('defines the MicroVM service with Flintlock method paths', () => {
    const proto = loadMicroVmProto();
    expect(proto.Client.serviceName).toBe('MicroVM');
    expect(Object.values(proto.service).map((m) => [m.path, m.responseStream])).toEqual([
      [`/${MICROVM_SERVICE_NAME}/CreateMicroVM`, false],
      [`/${MICROVM_SERVICE_NAME}/DeleteMicroVM`, false],
      [`/${MICROVM_SERVICE_NAME}/GetMicroVM`, false],
      [`/${MICROVM_SERVICE_NAME}/ListMicroVMs`, false],
      [`/${MICROVM_SERVICE_NAME}/ListMicroVMsStream`, true],
    ]);
    expect(loadMicroVmProto()).toBe(proto);
  });
});
