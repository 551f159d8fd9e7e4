/**
 * How big one etcd reply may be, and how a prefix read is cut into pages so that no reply comes near
 * that bound. Pure constants and arithmetic: the etcd client (src/adapters/etcd/etcd-client.ts), the
 * pager (src/adapters/kv/range-paged.ts) and the etcd model (src/dev/etcd-model) all use these, so
 * the model refuses exactly what the real client would.
 *
 * The arithmetic (see docs/limits.md):
 *  - a VM record is at most {@link VM_RECORD_MAX_BYTES} (128 KiB) once written; the API refuses a
 *    create whose record is over {@link VM_CREATE_MAX_BYTES} (96 KiB), leaving 32 KiB for status the
 *    agent and controller add later (reasons are bounded by the codec's `maxTextLength`, 8 KiB);
 *  - a page is {@link DEFAULT_PAGE_SIZE} (500) keys: 500 x (128 KiB + under 400 bytes of key and
 *    framing, {@link estimateRangeReplyBytes}) = 62.7 MiB, under the client's receive limit
 *    {@link ETCD_CLIENT_MAX_RECV_BYTES} (64 MiB), so a page of the largest records the API lets
 *    through is always readable; a reply that is too large anyway (records written around the API)
 *    only halves the page (see the pager);
 *  - why 500 and not fewer: each page is a linearizable round trip. Measured on this machine (a
 *    3-member etcd 3.4 with TLS, 40,000 keys of 1.2 KB, loaded by other work): 200 keys a page
 *    took 4.1-5.2 s, 500 took 2.5-2.7 s, 1000-5000 took 1.8-2.9 s: past 500 the read is bound by
 *    transfer and decoding, not by round trips, and a bigger page would need a bigger cap;
 *  - one record is far below etcd's request limit (1.5 MiB): a txn writing a record and its per-host
 *    index copy still carries 5 of them at the largest size.
 */
import { utf8Length } from './codec/names.js';

/**
 * The gRPC receive limit Tether sets on its etcd client (`grpc.max_receive_message_length`), in bytes:
 * 64 MiB instead of grpc-js's default 4 MiB.
 *
 * Why this value: it is what a page of {@link DEFAULT_PAGE_SIZE} of the largest records needs (62.7
 * MiB, see the module doc). It also covers what paging cannot split, a watch response: etcd 3.4
 * packs up to 1000 revisions into one watch response while a watcher catches up
 * (`watchBatchMaxRevs`), and one revision (a txn) may carry up to 1.5 MiB (`--max-request-bytes`):
 * at 4 MiB a watcher that fell behind a burst of lost-marking txns (each near the request limit)
 * could never catch up, failing with RESOURCE_EXHAUSTED on every retry. 64 MiB holds 40 such txns
 * per response; beyond that the watch fails once and its owner re-lists (paged), which always works.
 * It is a cap, not an allocation: memory is what etcd actually sends.
 */
export const ETCD_CLIENT_MAX_RECV_BYTES = 64 * 1024 * 1024;

/** Keys per page of a paged prefix read (see the module doc for why 500). */
export const DEFAULT_PAGE_SIZE = 500;

/**
 * Keys per page of a keys-only read: a Tether key is under 300 bytes (ids of at most 63 characters),
 * so 2000 keys stay under 1 MiB.
 */
export const DEFAULT_KEYS_PAGE_SIZE = 2000;

/** Largest VM record (UTF-8 bytes of its stored JSON) that writers may produce; see the module doc. */
export const VM_RECORD_MAX_BYTES = 128 * 1024;

/** Largest VM record the API accepts at create: {@link VM_RECORD_MAX_BYTES} minus 32 KiB for later status. */
export const VM_CREATE_MAX_BYTES = 96 * 1024;

/** Bytes of a protobuf length-delimited field holding `n` bytes (tag + varint length + data). */
function field(n: number): number {
  let len = 1;
  for (let v = n; v >= 0x80; v = Math.floor(v / 128)) len++;
  return 1 + len + n;
}

/**
 * The size of an etcd RangeResponse carrying `kvs`, as grpc-js would receive it, estimated from
 * above: keys and values exact, each KeyValue's integers (create/mod revision, version, lease) counted
 * at their widest (11 bytes each), plus 64 bytes of header. Invariant: never below the real size of a
 * reply of these entries, so a model that refuses at this estimate refuses everything grpc-js would.
 */
export function estimateRangeReplyBytes(kvs: readonly { readonly key: string; readonly value: string }[]): number {
  let n = 64;
  for (const kv of kvs) n += field(field(utf8Length(kv.key)) + field(utf8Length(kv.value)) + 4 * 11);
  return n;
}
