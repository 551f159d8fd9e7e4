/**
 * Batching the controller's independent writes into as few txns as etcd's limits allow (issue 9,
 * item 3): lost-marking of a rejoined host's stale VMs, `lost` kept, `pending` noted, placements.
 *
 * Invariant: every merged change fits `limits` as the store counts it ({@link txnOpCounts},
 * {@link estimateTxnBytes}, plus the leadership compare), because the sum of its parts' counts (an
 * upper bound: merged guards on the same host are compared once) fits; a part that alone does not
 * fit is returned alone (the store refuses it, non-retryable, and the controller reports it).
 * Merging is all-or-nothing per txn: one lost race fails the whole batch, which the next sweep
 * rebuilds from the cache.
 */
import { estimateTxnBytes, txnOpCounts, type ClusterChange, type TxnLimits } from '../cluster-change.js';

/** The changes `parts`, merged greedily in order into changes within `limits` (see the module doc). */
export function mergeChanges(parts: readonly ClusterChange[], limits: TxnLimits): ClusterChange[] {
  return groupBySize(parts, (p) => p, limits).map(merge);
}

/**
 * `items` cut greedily, in order, into groups whose changes (`changeOf`) together fit `limits` by
 * the sum of their counts (see the module doc); one pass, each change counted once.
 */
export function groupBySize<T>(items: readonly T[], changeOf: (item: T) => ClusterChange, limits: TxnLimits): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let compares = 1; // the leadership compare
  let success = 0;
  let bytes = 0;
  for (const item of items) {
    const p = changeOf(item);
    const n = txnOpCounts(p, false);
    const b = estimateTxnBytes(p, false);
    if (cur.length > 0 && (compares + n.compares > limits.maxOps || success + n.success > limits.maxOps || bytes + b > limits.maxBytes)) {
      out.push(cur);
      cur = [];
      compares = 1;
      success = 0;
      bytes = 0;
    }
    cur.push(item);
    compares += n.compares;
    success += n.success;
    bytes += b;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** One change holding every write of `parts` (host guards and capacity guards once per host). */
export function merge(parts: readonly ClusterChange[]): ClusterChange {
  if (parts.length === 1) return parts[0]!;
  const guards = new Map<string, NonNullable<ClusterChange['guards']>[number]>();
  const capacityGuards = new Map<string, NonNullable<ClusterChange['capacityGuards']>[number]>();
  const hosts: NonNullable<ClusterChange['hosts']>[number][] = [];
  const vms: NonNullable<ClusterChange['vms']>[number][] = [];
  const events: NonNullable<ClusterChange['events']>[number][] = [];
  for (const p of parts) {
    for (const g of p.guards ?? []) if (!guards.has(g.hostId)) guards.set(g.hostId, g);
    for (const g of p.capacityGuards ?? []) {
      const had = capacityGuards.get(g.hostId);
      if (!had || BigInt(g.seenRevision) < BigInt(had.seenRevision)) capacityGuards.set(g.hostId, g);
    }
    hosts.push(...(p.hosts ?? []));
    vms.push(...(p.vms ?? []));
    events.push(...(p.events ?? []));
  }
  return {
    ...(hosts.length > 0 ? { hosts } : {}),
    ...(guards.size > 0 ? { guards: [...guards.values()] } : {}),
    ...(capacityGuards.size > 0 ? { capacityGuards: [...capacityGuards.values()] } : {}),
    ...(vms.length > 0 ? { vms } : {}),
    ...(events.length > 0 ? { events } : {}),
  };
}
