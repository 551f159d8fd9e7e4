import type { VmRecord, VmSpec } from '../domain/vm.js';

/** Filter for listing VMs; empty fields match everything. */
export interface VmFilter {
  readonly namespace?: string;
  readonly name?: string;
}

/**
 * Inbound port: what the API (gRPC, CLI) asks of the agent.
 *
 * Errors are {@link TetherError}s: INVALID_ARGUMENT (naming the field), NOT_FOUND (unknown uid),
 * UNAVAILABLE (host not attached; message says why), UNIMPLEMENTED (unsupported spec part).
 */
export interface MicroVmService {
  /** Accepts the spec, records it, and starts creating the VM; resolves with the new record (phase `pending`/`creating`). */
  create(spec: VmSpec): Promise<VmRecord>;
  /** Starts deleting the VM with this uid; NOT_FOUND when unknown. */
  delete(uid: string): Promise<void>;
  /** The VM with this uid; NOT_FOUND when unknown. */
  get(uid: string): Promise<VmRecord>;
  /** VMs matching the filter, ordered by namespace, name. */
  list(filter: VmFilter): Promise<VmRecord[]>;
}
