/**
 * Size limits of a VM at create, enforced by the API (src/api/grpc/spec-mapping.ts: the gRPC
 * CreateMicroVM and the CLI's cluster create both map their spec through it) with errors that name
 * the field and the limit, e.g. `microvm.metadata["x"]: 70000 bytes, limit 65536`.
 *
 * Why these values (see docs/limits.md and src/domain/kv-read-limits.ts):
 *  - a VM record is stored twice in one txn (`vms/<ns>/<name>` and its per-host index copy) and
 *    must stay far below etcd's 1.5 MiB request limit: at {@link VM_CREATE_MAX_BYTES} (96 KiB) at
 *    create plus 32 KiB of later status, the largest record is 128 KiB, so one txn still carries
 *    five records with their copies;
 *  - a page of 500 of the largest records (62.7 MiB) stays under the etcd client's 64 MiB receive
 *    limit, so listing can never be broken by a few large creates (the "three creates with
 *    large metadata break listing for the whole cluster");
 *  - labels are for selection, metadata for payloads (user-data): labels get 16 KiB in total,
 *    metadata 64 KiB in total and 64 KiB per value.
 *
 * Invariant: every limit here is at most what the record codec reads back (`RECORD_LIMITS` in
 * ./names.ts: 1024 entries, keys of 1024 characters, values of 65536, records of 1 MiB), so a VM the
 * API accepts is always readable.
 */
import { VM_CREATE_MAX_BYTES, VM_RECORD_MAX_BYTES } from '../kv-read-limits.js';
import { RECORD_LIMITS, utf8Length } from './names.js';

export { VM_CREATE_MAX_BYTES, VM_RECORD_MAX_BYTES };

/** The API's size limits of a VM (bytes are UTF-8 bytes). */
export const VM_SIZE_LIMITS = {
  /** Entries of the labels map. */
  maxLabels: 256,
  /** Bytes of one label key. */
  maxLabelKeyBytes: 256,
  /** Bytes of one label value. */
  maxLabelValueBytes: 1024,
  /** Bytes of all label keys and values together. */
  maxLabelsBytes: 16 * 1024,
  /** Entries of the metadata map. */
  maxMetadataEntries: 256,
  /** Bytes of one metadata key. */
  maxMetadataKeyBytes: 256,
  /** Bytes of one metadata value (cloud-init user-data and the like). */
  maxMetadataValueBytes: 64 * 1024,
  /** Bytes of all metadata keys and values together. */
  maxMetadataBytes: 64 * 1024,
  /** Bytes of the whole VM record as written at create (its JSON, with {@link STATUS_ALLOWANCE_BYTES} for the status fields). */
  maxCreateRecordBytes: VM_CREATE_MAX_BYTES,
} as const;

/** Bytes counted for the record fields the writer adds to the spec at create (uid, host, phase, times). */
export const STATUS_ALLOWANCE_BYTES = 1024;

/** A size limit exceeded: `field` is the dotted path (with `["key"]` for a map entry), `message` names size and limit. */
export interface SizeViolation {
  readonly field: string;
  readonly message: string;
}

function quoteKey(k: string): string {
  return JSON.stringify(k.length > 64 ? `${k.slice(0, 64)}...` : k);
}

/**
 * The first size limit `map` exceeds, or undefined. `kind` picks the labels or the metadata limits;
 * `field` is the map's path (`microvm.labels`).
 */
export function mapSizeViolation(map: Readonly<Record<string, string>>, kind: 'labels' | 'metadata', field: string): SizeViolation | undefined {
  const L = VM_SIZE_LIMITS;
  const maxEntries = kind === 'labels' ? L.maxLabels : L.maxMetadataEntries;
  const maxKey = kind === 'labels' ? L.maxLabelKeyBytes : L.maxMetadataKeyBytes;
  const maxValue = kind === 'labels' ? L.maxLabelValueBytes : L.maxMetadataValueBytes;
  const maxTotal = kind === 'labels' ? L.maxLabelsBytes : L.maxMetadataBytes;
  const entries = Object.entries(map);
  if (entries.length > maxEntries) return { field, message: `${entries.length} entries, limit ${maxEntries}` };
  let total = 0;
  for (const [k, v] of entries) {
    const kb = utf8Length(k);
    if (kb > maxKey) return { field: `${field}[${quoteKey(k)}]`, message: `key of ${kb} bytes, limit ${maxKey}` };
    const vb = utf8Length(v);
    if (vb > maxValue) return { field: `${field}[${quoteKey(k)}]`, message: `${vb} bytes, limit ${maxValue}` };
    total += kb + vb;
  }
  if (total > maxTotal) return { field, message: `${total} bytes in total, limit ${maxTotal}` };
  return undefined;
}

/**
 * The whole-record limit: the JSON of `spec` plus {@link STATUS_ALLOWANCE_BYTES} must be at most
 * {@link VM_SIZE_LIMITS.maxCreateRecordBytes}. `field` is the spec's path (`microvm`).
 */
export function recordSizeViolation(spec: unknown, field: string): SizeViolation | undefined {
  const bytes = utf8Length(JSON.stringify(spec)) + STATUS_ALLOWANCE_BYTES;
  const limit = VM_SIZE_LIMITS.maxCreateRecordBytes;
  return bytes > limit ? { field, message: `record of ${bytes} bytes (spec plus ${STATUS_ALLOWANCE_BYTES} for its status), limit ${limit}` } : undefined;
}

// Compile-time-ish guard of the invariant in the module doc (evaluated once at load).
if (
  VM_SIZE_LIMITS.maxLabels > RECORD_LIMITS.maxMapEntries ||
  VM_SIZE_LIMITS.maxMetadataEntries > RECORD_LIMITS.maxMapEntries ||
  VM_SIZE_LIMITS.maxMetadataValueBytes > RECORD_LIMITS.maxMapValueLength ||
  VM_SIZE_LIMITS.maxMetadataKeyBytes > RECORD_LIMITS.maxMapKeyLength ||
  VM_RECORD_MAX_BYTES > RECORD_LIMITS.maxRecordBytes
) {
  throw new Error('VM_SIZE_LIMITS exceed what the record codec reads back (RECORD_LIMITS)');
}
