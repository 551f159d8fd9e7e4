/**
 * What an agent reads of the cluster's VM records: ONLY its own per-host index
 * (`hostvms/<hostId>/<ns>/<name>`, see `Keyspace.hostVm`), listed once, then watched; and single
 * records by name. No call here reads the whole `vms/` prefix, so an agent's cost to etcd does not
 * grow with the number of hosts or of other hosts' VMs.
 *
 * Index entries are byte-identical copies of `vms/<key>` written in the record's own txn (same
 * `mod_revision`): an entry's `revision` is the record's, and a txn comparing it is exact.
 */
import type { InvalidRecordError } from '../domain/codec.js';
import type { Revision, VmEntry } from '../domain/cluster-change.js';
import type { Subscription, WatchHandlers } from './controller-store.js';

/** One host's VM index at one store revision. */
export interface HostVmList {
  /** The revision every page was read at: watch from `revision + 1` to miss nothing after it. */
  readonly revision: Revision;
  /** Copies that pass the codec, keyed `<ns>/<name>`, each with its (and its record's) `mod_revision`. */
  readonly entries: VmEntry[];
  /**
   * Copies that exist but fail the codec (error key `vms/<ns>/<name>`, field, revision): "exists,
   * unreadable", never "deleted".
   */
  readonly invalid: InvalidRecordError[];
}

/** One change of a host's index seen by {@link HostVmIndexStore.watchHostVms}, in store order. */
export type HostVmEvent =
  | { readonly kind: 'put'; readonly entry: VmEntry }
  | { readonly kind: 'invalid'; readonly key: string; readonly revision: Revision; readonly error: InvalidRecordError }
  | { readonly kind: 'deleted'; readonly key: string; readonly revision: Revision };

/**
 * The changes of one watch response. Invariant: etcd never splits one revision's changes across
 * responses, so after applying a batch the reader has seen every change of the index up to `revision`.
 */
export interface HostVmBatch {
  readonly revision: Revision;
  readonly events: readonly HostVmEvent[];
}

/** One VM record read by name: present (readable), unreadable, or absent. */
export type VmRead =
  | { readonly kind: 'found'; readonly entry: VmEntry }
  | { readonly kind: 'invalid'; readonly error: InvalidRecordError; readonly revision: Revision }
  | { readonly kind: 'absent' };

/**
 * A host's view of the VM records (etcd in production). Every call has a deadline and fails like the
 * Kv port (retryable UNAVAILABLE/TIMEOUT; COMPACTED, not retryable as is, for a watch from a
 * compacted revision: the caller lists again).
 */
export interface HostVmIndexStore {
  /** Host `hostId`'s index, paged, every page pinned to one revision. */
  listHostVms(hostId: string, deadlineMs: number): Promise<HostVmList>;
  /**
   * Watches host `hostId`'s index from `fromRevision` (inclusive), one callback per watch response.
   * Resolves once established. After `onError` it is over: resume from the last revision seen + 1,
   * or list again after COMPACTED.
   */
  watchHostVms(hostId: string, fromRevision: Revision, handlers: WatchHandlers<HostVmBatch>, deadlineMs: number): Promise<Subscription>;
  /** `vms/<key>` by name: one single-key linearizable read. */
  getVm(key: string, deadlineMs: number): Promise<VmRead>;
}
