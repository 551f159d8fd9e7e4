import type { GcTimings } from './gc-timing.js';

/**
 * Cluster-side state of a host (ARCHITECTURE.md section 2): `attached` -> `detached` (lease gone)
 * -> `fenced` (window passed; VMs lost) -> `ready` (came back clean, new epoch) -> `attached`;
 * `retired` before the record is removed.
 */
export type HostRecordState = 'attached' | 'detached' | 'fenced' | 'ready' | 'retired';

/** `hosts/<id>/record`, written by txn only. */
export interface HostRecord {
  readonly hostId: string;
  readonly state: HostRecordState;
  /** Grows by one each time the host rejoins after a fence. */
  readonly epoch: number;
  /** The host's GC timings, published so the controller can check the safety inequality. */
  readonly timings: GcTimings;
  /**
   * Operator hold as requested (by `tether host hold` or `tether gc hold`). It takes effect only once
   * the host acknowledges it in {@link HostRecord.holdSeen}.
   */
  readonly hold: boolean;
  /**
   * The hold the host APPLIES, written by the host itself in a txn guarded by its epoch.
   * Invariant (hold protocol, ARCHITECTURE.md section 4): whenever the host applies a hold,
   * `holdSeen` is true in the cluster — the host writes `holdSeen: true` BEFORE it applies a hold and
   * drops a hold locally BEFORE it writes `holdSeen: false`. So the controller honours exactly
   * `holdSeen` (never `hold`): a hold the host has not acknowledged does not stop a fence, and a
   * release the host has not acknowledged does not allow one. Absent: false.
   */
  readonly holdSeen?: boolean;
  /** Operator drain: the host takes no new VMs and its VMs are being moved elsewhere. */
  readonly draining?: boolean;
  /** Whether the host was held when it detached (the controller then never fences it automatically). */
  readonly heldAtDetach?: boolean;
  /** Controller wall-clock ms when the lease was seen gone. */
  readonly detachedAt?: number;
  /** Controller wall-clock ms after which the host's VMs may be treated as gone. */
  readonly fenceDeadline?: number;
  readonly capacity: { readonly vcpu: number; readonly memoryMb: number };
  readonly labels: Readonly<Record<string, string>>;
  readonly agentVersion: string;
  /**
   * The machine that registered this epoch (`/etc/machine-id`, see src/domain/registration.ts): only
   * an agent on this machine may reattach at this epoch. Absent on records written before machine
   * ids (legacy: any machine may, as before).
   */
  readonly machineId?: string;
  /**
   * Where this host's peer channel listens (`host:port`, issue 11; see docs/peer-check.md "Peer
   * channel"), written by the host at each registration. Absent: the host runs no peer channel (it
   * still counts in its peers' pool, but cannot be asked).
   */
  readonly peerAddress?: string;
  /**
   * The version of the freeze contract (`controller/freeze-contract`, issue 11) this host holds,
   * written by the host itself (guarded by its epoch and lease) BEFORE it relies on that version. The
   * controller applies no looser contract than one a pool host acknowledged; absent: none (the
   * controller then assumes the tightest version it ever published).
   */
  readonly freezeContractSeen?: number;
  /** Wall-clock ms of the last write (display only). */
  readonly updatedAt: number;
}
