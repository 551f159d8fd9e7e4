/**
 * Tether domain -> Flintlock wire: {@link VmRecord} -> `flintlock.types.MicroVM`, and
 * {@link TetherError} -> gRPC status.
 *
 * Pure: no I/O, no clock; the only dependency on `@grpc/grpc-js` is its status enum and Metadata.
 */
import { Metadata, status as GrpcStatus } from '@grpc/grpc-js';
import { messageOf, TetherError, type ErrorCode } from '../../domain/errors.js';
import type { VmPhase, VmRecord, VmVolume } from '../../domain/vm.js';
import type { FlintlockMicroVM, MicroVmStateWire, NetworkInterfaceOut, NetworkInterfaceStatusOut, TimestampWire, VolumeOut } from './wire-types.js';

/**
 * Flintlock state for each Tether phase. Flintlock knows only PENDING, CREATED, FAILED, DELETING:
 * - `pending`, `creating` -> PENDING (accepted, not running yet);
 * - `running` -> CREATED;
 * - `failed` -> FAILED;
 * - `stopped` -> FAILED: the VM is down although nobody asked to delete it (e.g. stopped by the
 *   detached-host GC), and a reconciler such as CAPMVM must not wait on it as if it were coming up;
 * - `deleting`, `deleted` -> DELETING (on its way out; a finished delete normally reads NOT_FOUND).
 */
export const STATE_BY_PHASE: Readonly<Record<VmPhase, MicroVmStateWire>> = {
  pending: 'PENDING',
  creating: 'PENDING',
  running: 'CREATED',
  failed: 'FAILED',
  stopped: 'FAILED',
  deleting: 'DELETING',
  deleted: 'DELETING',
};

/** The Flintlock state of a phase; see {@link STATE_BY_PHASE}. Total over {@link VmPhase}. */
export function stateFromPhase(phase: VmPhase): MicroVmStateWire {
  return STATE_BY_PHASE[phase];
}

/** Wall-clock ms since the epoch -> `google.protobuf.Timestamp` (nanos always in 0..999_999_999). */
export function timestampFromMs(ms: number): TimestampWire {
  const whole = Math.floor(ms);
  const seconds = Math.floor(whole / 1000);
  const nanos = (whole - seconds * 1000) * 1_000_000;
  return { seconds: String(seconds), nanos };
}

const INT32_MAX = 2 ** 31 - 1;

function volumeOut(v: VmVolume): VolumeOut {
  return { id: v.id, is_read_only: v.readOnly, source: { container_source: v.image } };
}

/**
 * A {@link VmRecord} as Flintlock's `MicroVM`.
 *
 * Invariants: `spec.uid` is the record's uid; `version` is the record's generation (clamped to
 * int32); `spec` is what {@link specFromFlintlock} accepted, so mapping a spec in and back out keeps
 * id, namespace, labels, vcpu, memory, kernel image and cmdline, initrd image, volumes (id, image,
 * read-only), interfaces (device_id, TAP, MAC, address, gateway) and metadata. Fields Tether drops
 * on input (filenames, mount points, add_network_config) come back unset/false. The root volume is
 * always present (its `container_source` is '' for the built-in disk); `initrd` is omitted when
 * the built-in one is used. `status.network_interfaces` is keyed by device_id with the host tap
 * and MAC from `record.nics`; `index` is the nic's position (Tether does not track ifindex).
 * `status.volumes` is empty and `deleted_at` unset: Tether records neither.
 */
export function microVmFromRecord(record: VmRecord): FlintlockMicroVM {
  const { spec } = record;
  const root = spec.volumes.find((v) => v.isRoot);
  const interfaces: NetworkInterfaceOut[] = spec.interfaces.map((i) => {
    const out: NetworkInterfaceOut = { device_id: i.guestDeviceName, type: 'TAP' };
    if (i.guestMac !== undefined) out.guest_mac = i.guestMac;
    if (i.address !== undefined) {
      out.address = { address: i.address, nameservers: [] };
      if (i.gateway !== undefined) out.address.gateway = i.gateway;
    }
    return out;
  });
  const nics: Record<string, NetworkInterfaceStatusOut> = {};
  record.nics.forEach((n, index) => {
    nics[n.guestDeviceName] = { host_device_name: n.hostDeviceName, index, mac_address: n.mac };
  });

  return {
    version: Math.min(Math.max(0, Math.trunc(record.generation)), INT32_MAX),
    spec: {
      id: spec.id.name,
      namespace: spec.id.namespace,
      labels: { ...spec.labels },
      vcpu: spec.vcpu,
      memory_in_mb: spec.memoryMb,
      kernel: { image: spec.kernelImage, cmdline: { ...spec.kernelCmdline }, add_network_config: false },
      ...(spec.initrdImage !== '' ? { initrd: { image: spec.initrdImage } } : {}),
      ...(root ? { root_volume: volumeOut(root) } : {}),
      additional_volumes: spec.volumes.filter((v) => !v.isRoot).map(volumeOut),
      interfaces,
      metadata: { ...spec.metadata },
      created_at: timestampFromMs(record.createdAt),
      updated_at: timestampFromMs(record.updatedAt),
      uid: record.uid,
    },
    status: {
      state: stateFromPhase(record.phase),
      volumes: {},
      network_interfaces: nics,
      retry: 0,
    },
  };
}

/**
 * gRPC code for each Tether error code that has a natural one; every other code (and any error
 * that is not a {@link TetherError}) becomes INTERNAL.
 */
export const GRPC_CODE_BY_ERROR_CODE: Readonly<Partial<Record<ErrorCode, GrpcStatus>>> = {
  INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  ALREADY_EXISTS: GrpcStatus.ALREADY_EXISTS,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  UNIMPLEMENTED: GrpcStatus.UNIMPLEMENTED,
  FAILED_PRECONDITION: GrpcStatus.FAILED_PRECONDITION,
  UNAUTHENTICATED: GrpcStatus.UNAUTHENTICATED,
  PERMISSION_DENIED: GrpcStatus.PERMISSION_DENIED,
  RESOURCE_EXHAUSTED: GrpcStatus.RESOURCE_EXHAUSTED,
};

/** Trailer carrying the Tether error code (e.g. `VMM_ERROR` behind an INTERNAL status). */
export const ERROR_CODE_TRAILER = 'tether-error-code';
/** Trailer carrying the offending field path, when the error names one. */
export const ERROR_FIELD_TRAILER = 'tether-field';
/** Trailer set to `true` when the error is marked retryable. */
export const ERROR_RETRYABLE_TRAILER = 'tether-retryable';

/** A status a grpc-js handler can return or emit. */
export interface GrpcErrorStatus {
  readonly code: GrpcStatus;
  readonly details: string;
  readonly metadata: Metadata;
}

/**
 * Any thrown value -> gRPC status. Invariants: `details` is the error's message unchanged (so an
 * INVALID_ARGUMENT message starts with the field path); `code` follows
 * {@link GRPC_CODE_BY_ERROR_CODE}; trailers {@link ERROR_CODE_TRAILER}, {@link ERROR_FIELD_TRAILER}
 * and {@link ERROR_RETRYABLE_TRAILER} carry the structured parts.
 */
export function grpcStatusFromError(err: unknown): GrpcErrorStatus {
  const metadata = new Metadata();
  if (err instanceof TetherError) {
    metadata.set(ERROR_CODE_TRAILER, err.code);
    const field = err.details['field'];
    // Header values must be printable ASCII; a field path quoting a user's odd map key may not be.
    if (typeof field === 'string' && /^[ -~]+$/.test(field)) metadata.set(ERROR_FIELD_TRAILER, field);
    if (err.retryable) metadata.set(ERROR_RETRYABLE_TRAILER, 'true');
    return { code: GRPC_CODE_BY_ERROR_CODE[err.code] ?? GrpcStatus.INTERNAL, details: err.message, metadata };
  }
  metadata.set(ERROR_CODE_TRAILER, 'INTERNAL');
  return { code: GrpcStatus.INTERNAL, details: messageOf(err), metadata };
}
