/**
 * The per-host VM index reads ({@link HostVmIndexStore}) over any {@link Kv}: real etcd or the etcd
 * model. `KvControllerStore` delegates to these, so the agent's store is the same class everywhere.
 *
 * Invariants: a list is paged and pinned to one revision ({@link rangePaged}); a watch covers exactly
 * `hostvms/<hostId>/` (the trailing `/` keeps `h1` from matching `h10`); every value passes the codec
 * under its record's key (`vms/<ns>/<name>`), so a refused copy is reported in the store's
 * {@link InvalidRecordLog} under the same key and revision as the record itself would be; a copy
 * whose `hostId` is not the host it is filed under is refused too (it could only come from a writer
 * that bypassed `changeTxn`).
 */
import { decodeClusterVm, InvalidRecordError, type Decoded } from '../../domain/codec.js';
import type { TxnLimits } from '../../domain/cluster-change.js';
import type { ClusterVmRecord } from '../../domain/cluster-vm.js';
import { planReindex, type ReindexEntry, type ReindexRecord } from '../../domain/host-vm-reindex.js';
import type { InvalidRecordLog } from '../../domain/codec/invalid-record-log.js';
import type { Keyspace } from '../../domain/keyspace.js';
import type { Clock } from '../../ports/clock.js';
import type { Revision, Subscription, WatchHandlers } from '../../ports/controller-store.js';
import type { HostVmBatch, HostVmEvent, HostVmList, VmRead } from '../../ports/host-vm-index.js';
import type { Kv, KvEntry, KvHeader } from '../../ports/kv.js';
import { rangePaged } from './range-paged.js';

/** What the index reads need of a store. */
export interface HostVmIndexDeps {
  readonly kv: Kv;
  readonly keys: Keyspace;
  readonly invalidRecords: InvalidRecordLog;
  readonly clock: Pick<Clock, 'nowMono'>;
  /** Notes each response header (raft term tracking of the store). */
  readonly onHeader?: (header: KvHeader) => void;
}

/**
 * Decodes an index copy under its record's key (`vms/` + what follows `hostvms/<hostId>/`, so a
 * malformed key, e.g. with a third segment, is refused and reported like the record's would be);
 * undefined when the entry is not under `hostvms/<hostId>/`.
 */
function decodeCopy(d: HostVmIndexDeps, hostId: string, kv: KvEntry): { key: string; decoded: Decoded<ClusterVmRecord> } | undefined {
  const prefix = d.keys.hostVms(hostId);
  if (!kv.key.startsWith(prefix)) return undefined;
  const parsed = { key: kv.key.slice(prefix.length) };
  const recordKey = `vms/${parsed.key}`;
  let decoded = decodeClusterVm(recordKey, kv.value);
  if (decoded.ok && decoded.value.hostId !== hostId) {
    decoded = { ok: false, error: new InvalidRecordError('vm', recordKey, 'hostId', `is ${decoded.value.hostId ?? 'absent'}, the index entry is under host ${hostId}`) };
  }
  const rev = String(kv.modRevision);
  if (decoded.ok) d.invalidRecords.clear(recordKey);
  else d.invalidRecords.report(decoded.error.at(rev), rev);
  return { key: parsed.key, decoded: decoded.ok ? decoded : { ok: false, error: decoded.error.at(rev) } };
}

/** See {@link HostVmIndexStore.listHostVms}. */
export async function listHostVms(d: HostVmIndexDeps, hostId: string, deadlineMs: number): Promise<HostVmList> {
  const res = await rangePaged(d.kv, { key: d.keys.hostVms(hostId), prefix: true }, { clock: d.clock, ...(d.onHeader ? { onPage: (h) => d.onHeader!(h) } : {}) }, deadlineMs);
  const entries: HostVmList['entries'] = [];
  const invalid: HostVmList['invalid'] = [];
  for (const kv of res.kvs) {
    const c = decodeCopy(d, hostId, kv);
    if (!c) continue;
    if (c.decoded.ok) entries.push({ key: c.key, record: c.decoded.value, revision: String(kv.modRevision) });
    else invalid.push(c.decoded.error);
  }
  return { revision: String(res.revision), entries, invalid };
}

/** See {@link HostVmIndexStore.watchHostVms}. */
export async function watchHostVms(d: HostVmIndexDeps, hostId: string, fromRevision: Revision, handlers: WatchHandlers<HostVmBatch>, deadlineMs: number): Promise<Subscription> {
  let open = true;
  const ref: { sub?: Subscription } = {};
  const sub = await d.kv.watch(
    { key: d.keys.hostVms(hostId), prefix: true, fromRevision: Number(fromRevision) },
    {
      onEvents: (events, header) => {
        if (!open) return;
        d.onHeader?.(header);
        const out: HostVmEvent[] = [];
        let top = 0;
        for (const { kv, type } of events) {
          if (kv.modRevision > top) top = kv.modRevision;
          const revision = String(kv.modRevision);
          if (type === 'delete') {
            const prefix = d.keys.hostVms(hostId);
            if (kv.key.startsWith(prefix)) out.push({ kind: 'deleted', key: kv.key.slice(prefix.length), revision });
            continue;
          }
          const c = decodeCopy(d, hostId, kv);
          if (!c) continue;
          out.push(c.decoded.ok ? { kind: 'put', entry: { key: c.key, record: c.decoded.value, revision } } : { kind: 'invalid', key: c.key, revision, error: c.decoded.error });
        }
        if (top > 0) handlers.onEvent({ revision: String(top), events: out });
      },
      onError: (err) => {
        if (!open) return;
        open = false;
        void ref.sub?.close().catch(() => undefined);
        handlers.onError(err);
      },
    },
    deadlineMs,
  );
  ref.sub = sub;
  if (!open) {
    void sub.close().catch(() => undefined);
    return { close: async () => undefined };
  }
  return {
    close: async () => {
      if (!open) return;
      open = false;
      await sub.close().catch(() => undefined);
    },
  };
}

/** See {@link HostVmIndexStore.getVm}. */
export async function getVm(d: HostVmIndexDeps, key: string, deadlineMs: number): Promise<VmRead> {
  const res = await d.kv.range({ key: d.keys.vm(key) }, deadlineMs);
  d.onHeader?.(res.header);
  const kv = res.kvs[0];
  if (!kv) return { kind: 'absent' };
  const rel = d.keys.rel(kv.key);
  const rev = String(kv.modRevision);
  const decoded = decodeClusterVm(rel, kv.value);
  if (decoded.ok) {
    d.invalidRecords.clear(rel);
    return { kind: 'found', entry: { key, record: decoded.value, revision: rev } };
  }
  const error = decoded.error.at(rev);
  d.invalidRecords.report(error, rev);
  return { kind: 'invalid', error, revision: rev };
}

/** Outcome of {@link reindexHostVms}. */
export interface ReindexResult {
  /** Passes run (each: one consistent read of `vms/` and `hostvms/`, then its txns). */
  readonly passes: number;
  /** Records whose index copy was (re)written. */
  readonly copies: number;
  /** Index entries deleted because no record is placed on their host. */
  readonly orphans: number;
  /** Records left alone because they fail the codec (at the last pass). */
  readonly unreadable: number;
  /** Txns that lost a compare (their records changed meanwhile: the next pass sees the new state). */
  readonly conflicts: number;
  /** True when the last pass found nothing to do: the index matches the records at its revision. */
  readonly complete: boolean;
}

/** Passes of {@link reindexHostVms} before it gives up on a cluster that keeps changing. */
export const REINDEX_PASSES = 5;

/**
 * Builds (backfills) the per-host VM index from the records: `tether admin reindex`. Idempotent and
 * safe beside running agents and controllers: each pass reads `vms/` and `hostvms/` paged at ONE
 * revision, then sends {@link planReindex}'s txns (each guarded by the `mod_revision`s it read);
 * passes repeat until one finds nothing to do (at most {@link REINDEX_PASSES}).
 */
export async function reindexHostVms(d: HostVmIndexDeps, limits: TxnLimits, deadlineMs: number): Promise<ReindexResult> {
  let copies = 0;
  let orphans = 0;
  let conflicts = 0;
  let unreadable = 0;
  for (let pass = 1; pass <= REINDEX_PASSES; pass++) {
    const vms = await rangePaged(d.kv, { key: d.keys.vms(), prefix: true }, { clock: d.clock }, deadlineMs);
    const idx = await rangePaged(d.kv, { key: d.keys.hostVmsAll(), prefix: true }, { clock: d.clock, revision: vms.revision }, deadlineMs);
    const records: ReindexRecord[] = vms.kvs.map((kv) => {
      const key = d.keys.parseVmKey(kv.key)!;
      const decoded = decodeClusterVm(d.keys.rel(kv.key), kv.value);
      return { key, value: kv.value, modRevision: kv.modRevision, hostId: decoded.ok ? decoded.value.hostId : undefined, readable: decoded.ok };
    });
    const index: ReindexEntry[] = [];
    for (const kv of idx.kvs) {
      const p = d.keys.parseHostVmKey(kv.key);
      if (p) index.push({ hostId: p.hostId, key: p.key, value: kv.value, modRevision: kv.modRevision });
    }
    const plan = planReindex(d.keys, records, index, limits);
    unreadable = plan.unreadable;
    if (plan.txns.length === 0) return { passes: pass, copies, orphans, unreadable, conflicts, complete: true };
    for (const t of plan.txns) {
      const res = await d.kv.txn(t.txn, deadlineMs);
      if (!res.succeeded) {
        conflicts++;
        continue;
      }
      copies += t.copies;
      orphans += t.orphans;
    }
  }
  return { passes: REINDEX_PASSES, copies, orphans, unreadable, conflicts, complete: false };
}
