/**
 * A {@link ClusterChange} as ONE etcd txn, pure: the controller store sends what this builds, over
 * real etcd or the etcd model.
 *
 * Invariants: the txn has exactly the compares and success ops {@link txnOpCounts} counts (checked:
 * INTERNAL otherwise); every VM write also keeps the per-host index in the same txn: a placed record's
 * byte-identical copy at `hostvms/<next.hostId>/<key>` (same value, same `mod_revision`), and
 * `hostvms/<prevHostId>/<key>` deleted when the host changes or the record is deleted — so after a
 * commit `hostvms/H/` holds exactly the records placed on H, provided each writer's `prevHostId` is
 * the host of the revision it compares; a change over the store's {@link TxnLimits} is refused here with a
 * NON-retryable FAILED_PRECONDITION (it could never commit); every value goes through the codec's
 * encoders, so a record a reader would refuse is never written (INVALID_RECORD).
 */
import type { ClusterChange, Revision, TxnLimits, TxnOpCounts } from './cluster-change.js';
import { txnLimitProblem, txnOpCounts, utf8Length } from './cluster-change.js';
import { encodeClusterEvent, encodeClusterVm, encodeHostRecord } from './codec.js';
import { TetherError } from './errors.js';
import type { Keyspace } from './keyspace.js';
import { createIs, del, modIs, put, type KvCompare, type KvOp, type KvTxnRequest } from './kv-txn.js';

/** The txn of a change, its op counts and its request bytes (keys and values). */
export interface ChangeTxn {
  readonly txn: KvTxnRequest;
  readonly counts: TxnOpCounts;
  readonly bytes: number;
}

/**
 * Builds the txn of `change`. `leaderCreateRevision`, when given, adds the leadership compare
 * (`controller/leader` still created at that revision). An event-only change gets a create compare
 * on its first event key (etcd needs no compare, but the count is kept as {@link txnOpCounts} says).
 * @throws TetherError INVALID_ARGUMENT for an empty change, FAILED_PRECONDITION (not retryable,
 *   `details` = the counts) over `limits`, INVALID_RECORD for a value the codec refuses.
 */
export function changeTxn(keys: Keyspace, change: ClusterChange, limits: TxnLimits, leaderCreateRevision?: Revision): ChangeTxn {
  const compare: KvCompare[] = [];
  const puts: KvOp[] = [];
  const dels: KvOp[] = [];
  if (leaderCreateRevision !== undefined) compare.push(createIs(keys.leader(), leaderCreateRevision));
  for (const h of change.hosts ?? []) {
    const key = keys.hostRecord(h.hostId);
    compare.push(modIs(key, h.expectRevision));
    if (h.requireAliveAbsent) compare.push(createIs(keys.hostAlive(h.hostId), 0));
    if (h.next === null) dels.push(del(key));
    else puts.push(put(key, encodeHostRecord(keys.rel(key), h.next)));
  }
  for (const g of change.guards ?? []) compare.push(modIs(keys.hostRecord(g.hostId), g.expectRevision));
  for (const g of change.capacityGuards ?? []) {
    const key = keys.hostPlacements(g.hostId);
    compare.push({ key, target: 'mod', op: '<', value: Number(g.seenRevision) + 1 });
    puts.push(put(key, JSON.stringify({ hostId: g.hostId })));
  }
  for (const v of change.vms ?? []) {
    const key = keys.vm(v.key);
    compare.push(v.expectRevision === null ? createIs(key, 0) : modIs(key, v.expectRevision));
    const nextHost = v.next?.hostId ?? null;
    if (v.next === null) dels.push(del(key));
    else {
      const value = encodeClusterVm(keys.rel(key), v.next);
      puts.push(put(key, value));
      // The per-host index: a byte-identical copy in the same txn (so with the same mod_revision).
      if (nextHost !== null) puts.push(put(keys.hostVm(nextHost, v.key), value));
    }
    if (v.prevHostId !== null && v.prevHostId !== nextHost) dels.push(del(keys.hostVm(v.prevHostId, v.key)));
  }
  for (const e of change.events ?? []) {
    const key = keys.event(e.at);
    if (compare.length === 0) compare.push(createIs(key, 0));
    puts.push(put(key, encodeClusterEvent(keys.rel(key), e)));
  }
  const success = [...puts, ...dels];
  if (success.length === 0) throw new TetherError('INVALID_ARGUMENT', 'commit: nothing to write');
  const counts = txnOpCounts(change, leaderCreateRevision !== undefined);
  if (counts.compares !== compare.length || counts.success !== success.length) {
    throw new TetherError('INTERNAL', `commit: op count mismatch (${compare.length}/${success.length} built, ${counts.compares}/${counts.success} counted)`);
  }
  let bytes = 0;
  for (const c of compare) bytes += utf8Length(c.key);
  for (const o of success) bytes += utf8Length(o.key) + (o.op === 'put' ? utf8Length(o.value) : 0);
  const tooLarge = txnLimitProblem(counts, bytes, limits);
  if (tooLarge !== undefined) throw new TetherError('FAILED_PRECONDITION', `commit: ${tooLarge}`, { retryable: false, details: { ...counts } });
  return { txn: { compare, success }, counts, bytes };
}
