import type { HostRecord } from '../domain/host-record.js';

/** An etcd lease id (decimal string). */
export type LeaseId = string;

/** Outcome of one keepalive that was answered. */
export type KeepaliveAnswer = 'alive' | 'lease-lost';

/** What a host sends when it (re-)registers. */
export interface Registration {
  readonly hostId: string;
  /** `reattach`: keep the epoch; refused when the record was fenced or its epoch moved on. `ready`: rejoin with epoch + 1. */
  readonly mode: 'reattach' | 'ready';
  /** The epoch the host believes it has (0 when it never registered). */
  readonly epoch: number;
  readonly record: Omit<HostRecord, 'state' | 'epoch' | 'hold' | 'updatedAt'>;
  readonly lease: LeaseId;
}

/** Result of a registration txn. */
export type RegistrationResult =
  | { readonly ok: true; readonly epoch: number; readonly hold: boolean }
  | { readonly ok: false; readonly reason: 'fenced' | 'epoch-mismatch'; readonly detail: string };

/**
 * The cluster's store (etcd in production).
 *
 * Invariants: every call has a deadline (`deadlineMs`, relative) and rejects with a retryable
 * TIMEOUT when no answer came by then — quorum loss makes etcd calls hang, and only deadlines
 * reveal it; host writes are txns comparing the record's epoch and state, so a fenced host
 * (zombie) can change nothing.
 */
export interface ClusterStore {
  /** Grants a lease of `ttlMs` (whole seconds). */
  grantLease(ttlMs: number, deadlineMs: number): Promise<LeaseId>;
  /** One keepalive; 'lease-lost' when the cluster no longer knows the lease. */
  keepalive(lease: LeaseId, deadlineMs: number): Promise<KeepaliveAnswer>;
  /** Revokes a lease (best effort). */
  revokeLease(lease: LeaseId, deadlineMs: number): Promise<void>;
  /** Registration txn: record + `alive` key on the lease. */
  register(reg: Registration, deadlineMs: number): Promise<RegistrationResult>;
  /** The host record, or undefined. */
  getHost(hostId: string, deadlineMs: number): Promise<HostRecord | undefined>;
  /** Sets the operator hold on a record (refused for unknown hosts). */
  setHold(hostId: string, hold: boolean, deadlineMs: number): Promise<HostRecord>;
  /** Closes connections. */
  close(): Promise<void>;
}
