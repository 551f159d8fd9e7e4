/**
 * Cluster events: `events/<zero-padded ms>-<rand>` in etcd, bounded retention. A discriminated union
 * on `kind`; every event carries the wall-clock `at` (ms, display and ordering only) and a one-line
 * human `detail`.
 *
 * Invariant: kind strings are part of the public contract (`tether events --json`); never rename one.
 */

/** Why the controller will not fence a detached host automatically. */
export type FenceBlocker = 'held' | 'held-at-detach' | 'unsafe-timings';

interface EventBase {
  /** Wall-clock ms. */
  readonly at: number;
  /** One line for people. */
  readonly detail: string;
}

/** Every kind of cluster event with its payload. */
export type ClusterEventBody =
  | { readonly kind: 'controller-elected'; readonly controllerId: string }
  | {
      readonly kind: 'host-detached';
      readonly hostId: string;
      readonly epoch: number;
      readonly fenceDeadline: number;
      readonly heldAtDetach: boolean;
      /** Set when the lease vanished within one TTL of a raft term change: the window was lengthened by the TTL (etcd #15247). */
      readonly termChange?: { readonly term: number; readonly extendedByMs: number };
    }
  | { readonly kind: 'host-returned'; readonly hostId: string; readonly epoch: number }
  | { readonly kind: 'host-fence-blocked'; readonly hostId: string; readonly epoch: number; readonly blockers: readonly FenceBlocker[] }
  | { readonly kind: 'host-unsafe-timings'; readonly hostId: string; readonly epoch: number; readonly violations: string }
  | {
      readonly kind: 'fence-deadline-extended';
      readonly hostId: string;
      readonly epoch: number;
      readonly from: number | null;
      readonly to: number;
      /** Absent: a controller takeover. */
      readonly why?: 'takeover' | 'raft-term-change';
    }
  | {
      readonly kind: 'host-fenced';
      readonly hostId: string;
      readonly epoch: number;
      readonly by: 'controller' | 'operator';
      /** VMs to be marked lost (the first 100 when there are more; see `lostVmCount`). */
      readonly lostVms: readonly string[];
      /** How many VMs were to be marked lost (they are, in `host-vms-lost` events). */
      readonly lostVmCount?: number;
    }
  | { readonly kind: 'host-vms-lost'; readonly hostId: string; readonly epoch: number; readonly by: 'controller' | 'operator'; readonly vms: readonly string[] }
  | { readonly kind: 'controller-error'; readonly hostId: string | null; readonly action: string; readonly code: string }
  | { readonly kind: 'host-hold-changed'; readonly hostId: string; readonly hold: boolean }
  | { readonly kind: 'host-retired'; readonly hostId: string; readonly epoch: number }
  | { readonly kind: 'host-removed'; readonly hostId: string }
  | { readonly kind: 'freeze-entered'; readonly detached: number; readonly total: number; readonly limit: number }
  | { readonly kind: 'freeze-lifted'; readonly detached: number; readonly total: number; readonly resumeAt: number }
  | { readonly kind: 'freeze-resumed' }
  | { readonly kind: 'vm-lost'; readonly vm: string; readonly hostId: string; readonly hostEpoch: number; readonly hostRejoinedEpoch: number }
  | { readonly kind: 'vm-rescheduled'; readonly vm: string; readonly fromHost: string | null; readonly toHost: string; readonly uid: string }
  | { readonly kind: 'vm-pending'; readonly vm: string; readonly reason: string }
  | { readonly kind: 'vm-lost-kept'; readonly vm: string; readonly hostId: string | null };

/** A cluster event. */
export type ClusterEvent = EventBase & ClusterEventBody;

/** Every event kind. */
export type ClusterEventKind = ClusterEvent['kind'];
