import type { FreezeContract } from '../domain/freeze-contract.js';
import type { RegistrationInput } from '../domain/registration-txn.js';
import type { HostRecord } from '../domain/host-record.js';
import type { RegistrationRefusal } from '../domain/registration.js';

/** An etcd lease id (decimal string). */
export type LeaseId = string;

/**
 * Outcome of one keepalive that was answered.
 * - `alive`: the lease was renewed AND a linearizable read after the renewal found this host's
 *   `alive` key still on this lease (etcd 3.4.23 can renew a revoked lease, #14758: the renewal alone
 *   proves nothing);
 * - `lease-lost`: the cluster no longer knows the lease, or the `alive` key is gone from it;
 * - `taken-over`: the `alive` key is on another agent's lease: another agent registered this host id.
 */
export type KeepaliveAnswer =
  | { readonly kind: 'alive' }
  | { readonly kind: 'lease-lost'; readonly detail: string }
  | { readonly kind: 'taken-over'; readonly detail: string };

/** What a host sends when it (re-)registers (defined with the pure registration txn builder). */
export type Registration = RegistrationInput;

/** Result of a registration txn. */
export type RegistrationResult =
  | { readonly ok: true; readonly epoch: number; readonly hold: boolean }
  | { readonly ok: false; readonly reason: RegistrationRefusal; readonly detail: string };

/** Outcome of {@link ClusterStore.ackHold}. */
export type HoldAckResult = { readonly ok: true } | { readonly ok: false; readonly detail: string };

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
  /** One keepalive of `lease`, verified against `hosts/<hostId>/alive` (see {@link KeepaliveAnswer}). */
  keepalive(hostId: string, lease: LeaseId, deadlineMs: number): Promise<KeepaliveAnswer>;
  /** Revokes a lease (best effort). */
  revokeLease(lease: LeaseId, deadlineMs: number): Promise<void>;
  /**
   * Whether etcd still knows the lease (a read that renews nothing: the probe of a host that does not
   * send keepalives, docs/peer-check.md). An expired lease not yet revoked still exists.
   */
  leaseExists(lease: LeaseId, deadlineMs: number): Promise<boolean>;
  /** Registration txn: record + `alive` key on the lease. */
  register(reg: Registration, deadlineMs: number): Promise<RegistrationResult>;
  /** The host record, or undefined. */
  getHost(hostId: string, deadlineMs: number): Promise<HostRecord | undefined>;
  /** Sets the operator hold on a record (refused for unknown hosts). */
  setHold(hostId: string, hold: boolean, deadlineMs: number): Promise<HostRecord>;
  /**
   * Writes `holdSeen` (the hold this host applies) in a txn guarded by the record's epoch and by the
   * host's `alive` key being on `lease`: a host that lost its lease or was fenced writes nothing.
   * An ambiguous outcome (deadline passed) rejects with a retryable error: the caller must then act
   * as if it may or may not have been applied.
   */
  ackHold(hostId: string, epoch: number, lease: LeaseId, holdSeen: boolean, deadlineMs: number): Promise<HoldAckResult>;
  /**
   * The published freeze contract (`controller/freeze-contract`, issue 11), or undefined when none
   * is; one single-key linearizable read. A value that does not parse rejects with INVALID_RECORD.
   */
  getFreezeContract(deadlineMs: number): Promise<FreezeContract | undefined>;
  /**
   * Writes `freezeContractSeen` = `version` with the same guards as {@link ackHold} (epoch, state,
   * `alive` on `lease`). An ambiguous outcome rejects with a retryable error.
   */
  ackFreezeContract(hostId: string, epoch: number, lease: LeaseId, version: number, deadlineMs: number): Promise<HoldAckResult>;
  /** Closes connections. */
  close(): Promise<void>;
}
