/**
 * Locating and loading Tether's Flintlock-compatible `.proto` files.
 *
 * The files live in `<package root>/proto/`. This module runs from `src/api/grpc/` (tsx, vitest)
 * and from `dist/src/api/grpc/` (compiled), so the folder is found by walking up from the module
 * until a directory holds both `package.json` and `proto/types/microvm.proto`.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader';
import { TetherError } from '../../domain/errors.js';

/** Proto package of the service. */
export const MICROVM_SERVICE_PACKAGE = 'microvm.services.api.v1alpha1';
/** Fully qualified service name; method paths are `/${MICROVM_SERVICE_NAME}/<Method>`. */
export const MICROVM_SERVICE_NAME = `${MICROVM_SERVICE_PACKAGE}.MicroVM`;
/** Service proto, relative to the proto root (same path as in Flintlock's `api/` tree). */
export const MICROVM_SERVICE_PROTO = 'services/microvm/v1alpha1/microvms.proto';
/** Types proto, relative to the proto root. */
export const MICROVM_TYPES_PROTO = 'types/microvm.proto';

/**
 * proto-loader options every Tether server and client uses. The wire shapes in `wire-types.ts`
 * assume exactly these.
 */
export const PROTO_LOADER_OPTIONS: Readonly<Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

/**
 * Absolute path of the `proto/` folder: the first ancestor of `from` (a file URL or path; default
 * this module) holding `package.json` and `proto/types/microvm.proto`. Throws INTERNAL when there
 * is none (a broken install).
 */
export function findProtoRoot(from: string | URL = import.meta.url): string {
  const start = typeof from === 'string' && !from.startsWith('file:') ? from : fileURLToPath(from);
  let dir = existsSync(join(start, 'package.json')) ? start : dirname(start);
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto', MICROVM_TYPES_PROTO))) return join(dir, 'proto');
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new TetherError('INTERNAL', `cannot find the proto/ folder above ${start}`);
}

/** The loaded MicroVM API: proto-loader's definition, the grpc object tree and the service. */
export interface MicroVmProto {
  readonly protoRoot: string;
  readonly packageDefinition: PackageDefinition;
  readonly grpcObject: GrpcObject;
  /** Service definition for `Server.addService`. */
  readonly service: ServiceDefinition;
  /** Client constructor for the MicroVM service: `new Client(address, credentials)`. */
  readonly Client: ServiceClientConstructor;
}

const cache = new Map<string, MicroVmProto>();

/**
 * Loads (once per proto root) the MicroVM service with {@link PROTO_LOADER_OPTIONS}. Well-known
 * `google/protobuf/*` imports are served by protobufjs' bundled copies. Throws INTERNAL when the
 * protos are missing or do not define the service.
 */
export function loadMicroVmProto(protoRoot: string = findProtoRoot()): MicroVmProto {
  const cached = cache.get(protoRoot);
  if (cached) return cached;
  let packageDefinition: PackageDefinition;
  try {
    packageDefinition = loadSync(MICROVM_SERVICE_PROTO, { ...PROTO_LOADER_OPTIONS, includeDirs: [protoRoot] });
  } catch (err) {
    throw new TetherError('INTERNAL', `loading ${MICROVM_SERVICE_PROTO} from ${protoRoot}: ${(err as Error).message}`, { cause: err });
  }
  const grpcObject = loadPackageDefinition(packageDefinition);
  let node: unknown = grpcObject;
  for (const part of MICROVM_SERVICE_NAME.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  const Client = node as ServiceClientConstructor | undefined;
  if (typeof Client !== 'function' || typeof Client.service !== 'object') {
    throw new TetherError('INTERNAL', `${MICROVM_SERVICE_NAME} not defined by ${protoRoot}/${MICROVM_SERVICE_PROTO}`);
  }
  const loaded: MicroVmProto = { protoRoot, packageDefinition, grpcObject, service: Client.service, Client };
  cache.set(protoRoot, loaded);
  return loaded;
}
