import type { GcTimings } from '../../domain/gc-timing.js';
import type { HostEvent, HostState } from '../../domain/host-lifecycle.js';
import type { ClusterStore, LeaseId } from '../../ports/cluster-store.js';
import type { HostContext } from '../host-context.js';

/**
 * What the parts of the host GC runner (heartbeat, registration, hold sync, guardian supervision)
 * share, owned by {@link HostGc} (src/agent/gc/host-gc.ts).
 *
 * Invariants: the lifecycle state is read here and changed only through {@link dispatch} (one
 * owner, events applied in order); `lease` is the lease this agent heartbeats on, set only by an
 * accepted registration and cleared only when the cluster says it is lost or taken over; once
 * `stopped`, no part starts new work.
 */
export class GcSession {
  /** The lease this agent heartbeats on (undefined: none, or not known to be ours any more). */
  lease: LeaseId | undefined;
  /** The other agent that holds this host id, while one does. */
  duplicateOf: string | undefined;
  /**
   * Witness bookkeeping (docs/peer-check.md "The witness"): when this agent last RECEIVED an
   * acknowledgement that renewed or granted its lease (monotonic ms), and how many keepalives it sent
   * since without an answer (each may still renew the lease once).
   */
  lastAckReceivedAt: number | undefined;
  unanswered = 0;
  /** A registration txn was sent and its outcome is unknown: it may have put this host back. */
  membershipUnresolved = false;
  /**
   * The lease this agent answered `silent` about: it never sends a keepalive on it again, and it
   * registers again only once etcd no longer knows it (persisted: ./persisted-state.ts `Silence`).
   */
  silencedLease: LeaseId | undefined;
  /** No registration before this (monotonic ms): the stay-away promised to peers; undefined: none. */
  silentUntil: number | undefined;
  /** The longest stay-away promised in the current promise (persisted for another boot). */
  promisedMs = 0;
  stopped = false;

  constructor(
    readonly ctx: HostContext,
    readonly store: ClusterStore,
    readonly t: GcTimings,
    private readonly read: () => HostState,
    /** Applies one lifecycle event (HostGc.dispatch). */
    readonly dispatch: (e: HostEvent) => void,
  ) {}

  /** The current lifecycle state. */
  get state(): HostState {
    return this.read();
  }
}
