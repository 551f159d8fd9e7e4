/**
 * What `tether vm list` / `vm get` / `vm list --watch` read from the cluster, at fleet size: paged
 * reads pinned to one revision (src/adapters/kv/range-paged.ts), narrowed to the smallest prefix the
 * filters allow, then (with `--watch`) a watch of that same prefix from the next revision.
 *
 *  - `--host H` reads only `hostvms/H/` (the per-host index: a byte-identical copy of each record
 *    placed on H), never the whole `vms/` prefix;
 *  - `--namespace N` narrows to `vms/N/` (or `hostvms/H/N/`); with `--name` it is one key;
 *  - `--phase` filters on the client (phase is not part of any key).
 */
import type { KvControllerStore } from '../adapters/kv/kv-controller-store.js';
import { rangePaged } from '../adapters/kv/range-paged.js';
import type { ClusterVmPhase, ClusterVmRecord } from '../domain/cluster-vm.js';
import { decodeClusterVm } from '../domain/codec.js';
import { TetherError } from '../domain/errors.js';
import type { Subscription } from '../ports/controller-store.js';
import type { KvEntry } from '../ports/kv.js';

/** Every phase a cluster VM record may have (what `--phase` accepts). */
export const CLUSTER_VM_PHASES: readonly ClusterVmPhase[] = ['pending', 'creating', 'running', 'stopped', 'failed', 'deleting', 'lost'];

/** Filters of a cluster VM list. All optional; together they AND. */
export interface ClusterVmFilter {
  /** Only VMs placed on this host (reads `hostvms/<host>/`). */
  readonly host?: string;
  /** Only these phases. */
  readonly phases?: readonly ClusterVmPhase[];
  /** Only this namespace. */
  readonly namespace?: string;
  /** Only this name (with or without a namespace). */
  readonly name?: string;
}

/** One listed VM: `<ns>/<name>`, its record, and the record's mod revision. */
export interface ListedVm {
  readonly key: string;
  readonly record: ClusterVmRecord;
  readonly revision: string;
}

/** A cluster VM list at one revision. */
export interface ClusterVmList {
  /** The revision every page was read at; a watch from `revision + 1` misses nothing. */
  readonly revision: number;
  readonly vms: ListedVm[];
  /** Keys whose record failed the codec (skipped), with the reason. */
  readonly unreadable: { key: string; message: string }[];
  /** Pages read. */
  readonly pages: number;
}

/** Parses `--phase a,b` (repeatable); INVALID_ARGUMENT naming the flag for an unknown phase. */
export function parsePhases(values: readonly string[] | undefined): ClusterVmPhase[] | undefined {
  if (!values || values.length === 0) return undefined;
  const out: ClusterVmPhase[] = [];
  for (const v of values.flatMap((x) => x.split(',')).map((x) => x.trim()).filter(Boolean)) {
    if (!(CLUSTER_VM_PHASES as readonly string[]).includes(v)) {
      throw new TetherError('INVALID_ARGUMENT', `--phase ${JSON.stringify(v)}: not a phase (one of ${CLUSTER_VM_PHASES.join(', ')})`, { details: { field: 'phase' } });
    }
    out.push(v as ClusterVmPhase);
  }
  return out;
}

/** The prefix (or single key) a filter has to read, and how a key maps back to `<ns>/<name>`. */
function scope(store: KvControllerStore, f: ClusterVmFilter): { key: string; prefix: boolean; vmKey: (k: string) => string | undefined } {
  const k = store.keys;
  const base = f.host !== undefined ? k.hostVms(f.host) : k.vms();
  const vmKey = (key: string): string | undefined => (key.startsWith(base) ? key.slice(base.length) : undefined);
  if (f.namespace && f.name) return { key: `${base}${f.namespace}/${f.name}`, prefix: false, vmKey };
  if (f.namespace) return { key: `${base}${f.namespace}/`, prefix: true, vmKey };
  return { key: base, prefix: true, vmKey };
}

function matches(f: ClusterVmFilter, key: string, r: ClusterVmRecord): boolean {
  if (f.phases && !f.phases.includes(r.phase)) return false;
  if (f.name && !key.endsWith(`/${f.name}`)) return false;
  if (f.host !== undefined && r.hostId !== f.host) return false;
  return true;
}

/**
 * The cluster's VMs matching `f`, read in pages of `pageSize` keys pinned to one revision (never one
 * reply of the whole prefix), sorted by key. Bounded by `deadlineMs` overall.
 */
export async function listClusterVms(store: KvControllerStore, f: ClusterVmFilter, opts: { pageSize?: number; deadlineMs: number }): Promise<ClusterVmList> {
  if (f.host !== undefined && (f.host === '' || f.host.includes('/'))) throw new TetherError('INVALID_ARGUMENT', `--host ${JSON.stringify(f.host)}: not a host id`, { details: { field: 'host' } });
  const s = scope(store, f);
  const res = await rangePaged(store.kv, { key: s.key, prefix: s.prefix }, { ...(opts.pageSize ? { pageSize: opts.pageSize } : {}) }, opts.deadlineMs);
  const vms: ListedVm[] = [];
  const unreadable: { key: string; message: string }[] = [];
  for (const kv of res.kvs) {
    const key = s.vmKey(kv.key);
    if (key === undefined) continue;
    // An index entry is a byte-identical copy of `vms/<key>`: decoded under that name.
    const d = decodeClusterVm(store.keys.rel(store.keys.vm(key)), kv.value);
    if (!d.ok) {
      unreadable.push({ key, message: d.error.message });
      continue;
    }
    if (matches(f, key, d.value)) vms.push({ key, record: d.value, revision: String(kv.modRevision) });
  }
  return { revision: res.revision, vms, unreadable, pages: res.pages };
}

/** One VM record by `<ns>/<name>`: a single-key read, never a scan. */
export async function getClusterVm(store: KvControllerStore, key: string, deadlineMs: number): Promise<ListedVm | undefined> {
  const kv = (await store.kv.range({ key: store.keys.vm(key) }, deadlineMs)).kvs[0];
  if (!kv) return undefined;
  const d = decodeClusterVm(store.keys.rel(kv.key), kv.value);
  if (!d.ok) throw d.error.at(String(kv.modRevision));
  return { key, record: d.value, revision: String(kv.modRevision) };
}

/** A change seen by {@link watchClusterVms}: a VM that now matches (`put`), or one that left the filter or was deleted (`gone`). */
export type ClusterVmChange = { readonly type: 'put'; readonly vm: ListedVm } | { readonly type: 'gone'; readonly key: string; readonly revision: string };

/**
 * Watches the filter's prefix from `fromRevision` (the list's revision + 1: nothing between is
 * missed). A VM that stops matching (phase changed, moved off `--host`, deleted) is reported `gone`
 * once. Errors (compaction, disconnect) end the watch through `onError`; the caller lists again.
 */
export async function watchClusterVms(
  store: KvControllerStore,
  f: ClusterVmFilter,
  fromRevision: number,
  initial: readonly ListedVm[],
  handlers: { onChange(c: ClusterVmChange): void; onError(err: Error): void },
  deadlineMs: number,
): Promise<Subscription> {
  const s = scope(store, f);
  const shown = new Set(initial.map((v) => v.key));
  const seen = (kv: KvEntry, type: 'put' | 'delete'): void => {
    const key = s.vmKey(kv.key);
    if (key === undefined || (!s.prefix && kv.key !== s.key)) return;
    const d = type === 'put' ? decodeClusterVm(store.keys.rel(store.keys.vm(key)), kv.value) : undefined;
    if (d?.ok && matches(f, key, d.value)) {
      shown.add(key);
      handlers.onChange({ type: 'put', vm: { key, record: d.value, revision: String(kv.modRevision) } });
    } else if (shown.delete(key)) {
      handlers.onChange({ type: 'gone', key, revision: String(kv.modRevision) });
    }
  };
  return store.kv.watch(
    { key: s.key, prefix: true, fromRevision },
    {
      onEvents: (events) => {
        for (const e of events) seen(e.kv, e.type);
      },
      onError: (err) => handlers.onError(err),
    },
    deadlineMs,
  );
}
