/**
 * The one codec of every record Tether keeps in etcd (ARCHITECTURE.md section 2), used by both
 * sides (agent, controller, CLI): a validating decode and an encode that goes through the same
 * schema, one per record kind.
 *
 * | key (relative to the prefix) | decode                    | value                   |
 * |------------------------------|---------------------------|-------------------------|
 * | `hosts/<id>/record`          | {@link decodeHostRecord}  | {@link HostRecord}      |
 * | `hosts/<id>/alive`           | {@link decodeAliveValue}  | {@link AliveValue}      |
 * | `vms/<ns>/<name>`            | {@link decodeClusterVm}   | {@link ClusterVmRecord} |
 * | `events/<ms>-<rand>`         | {@link decodeClusterEvent}| {@link ClusterEvent}    |
 * | `controller/status`          | {@link decodeControllerStatus} | {@link ControllerStatusValue} |
 * | `controller/leader`          | {@link decodeLeaderInfo}  | {@link LeaderInfoValue} |
 *
 * Invariants of every decode:
 * - it never throws: it returns `{ ok: true, value }` or `{ ok: false, error }` where `error` is an
 *   {@link InvalidRecordError} (code `INVALID_RECORD`, not retryable) whose message is
 *   `<key>: <field path>: <reason>` (e.g. `hosts/h1/record: timings.ttl: expected number, received string`)
 *   and whose `details` carry `key` and `field`;
 * - the key itself is checked: every id in it matches its alphabet, and the ids inside the value
 *   agree with the key (`hostId` of a host record, `spec.id` of a VM record) — so a value can never
 *   make a reader act on, or build a path for, another key's object;
 * - the raw value is at most {@link RECORD_LIMITS.maxRecordBytes} bytes of valid UTF-8 and JSON;
 *   unknown fields are refused (see ./codec/schemas.ts for why);
 * - the value returned is a fresh object built by the schema (never the parsed input itself).
 *
 * Every encode serialises the value and decodes it again with the same function: it returns what
 * decode accepts, or throws the same {@link InvalidRecordError}, so Tether never writes a record it
 * would refuse to read.
 */
import type * as z from 'zod';
import type { ClusterEvent } from './cluster-event.js';
import type { ClusterVmRecord } from './cluster-vm.js';
import { TetherError, type TetherErrorOptions } from './errors.js';
import type { HostRecord } from './host-record.js';
import { RECORD_LIMITS, isName, quoteForLog, utf8Length } from './codec/names.js';
import {
  aliveValueSchema,
  clusterEventSchema,
  clusterVmSchema,
  controllerStatusSchema,
  hostRecordSchema,
  leaderInfoSchema,
  type AliveValue,
} from './codec/schemas.js';

export { RECORD_LIMITS } from './codec/names.js';
export type { AliveValue } from './codec/schemas.js';

/** The value of `controller/status` as decoded (structurally the port's `ControllerStatus`). */
export type ControllerStatusValue = z.infer<typeof controllerStatusSchema>;
/** The value of `controller/leader` as decoded (structurally the port's `LeaderInfo`). */
export type LeaderInfoValue = z.infer<typeof leaderInfoSchema>;

/** Every record kind of the keyspace. */
export type RecordKind = 'host-record' | 'host-alive' | 'vm' | 'event' | 'controller-status' | 'controller-leader';

/** Field named when the problem is the key, not the value. */
export const KEY_FIELD = '(key)';
/** Field named when the problem is the whole value (size, encoding, JSON syntax, not an object). */
export const VALUE_FIELD = '(value)';

/**
 * A record read from etcd that failed its schema: code `INVALID_RECORD`, never retryable (the same
 * bytes fail the same way). Message: `<key>: <field>: <reason>`; `key` and `field` are quoted for
 * logs (control characters escaped, length bounded).
 */
export class InvalidRecordError extends TetherError {
  /** The key relative to the keyspace prefix, quoted for logs. */
  readonly key: string;
  /** Dotted path of the first offending field (`timings.ttl`, `spec.volumes[0].id`), or {@link KEY_FIELD} / {@link VALUE_FIELD}. */
  readonly field: string;
  readonly kind: RecordKind;
  /** Every problem found, `<field>: <reason>` (the message names the first). */
  readonly problems: readonly string[];
  /** The etcd `mod_revision` of the refused value, when the reader knows it (see {@link InvalidRecordError.at}). */
  readonly revision: string | undefined;
  private readonly reason: string;
  private readonly rawKey: string;

  constructor(kind: RecordKind, key: string, field: string, reason: string, problems: readonly string[] = [`${field}: ${reason}`], options: TetherErrorOptions = {}) {
    const k = quoteForLog(key);
    super('INVALID_RECORD', `${k}: ${field}: ${reason}`, { ...options, retryable: false, details: { ...options.details, key: k, field, kind } });
    this.name = 'InvalidRecordError';
    this.key = k;
    this.field = field;
    this.kind = kind;
    this.problems = problems;
    this.reason = reason;
    this.rawKey = key;
    this.revision = typeof options.details?.revision === 'string' ? options.details.revision : undefined;
  }

  /** The same error for the value at etcd `revision` (`details.revision` set): what a reader throws or reports. */
  at(revision: string): InvalidRecordError {
    return new InvalidRecordError(this.kind, this.rawKey, this.field, this.reason, this.problems, { details: { revision } });
  }
}

/** Outcome of a decode: the typed value, or why the record was refused. */
export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: InvalidRecordError };

/** Raw value as etcd hands it: bytes (UTF-8) or an already decoded string. */
export type RawValue = string | Uint8Array;

// ---- keys -------------------------------------------------------------------------------------

/** A key of the keyspace, relative to the prefix, parsed and checked. */
export type ParsedKey =
  | { readonly kind: 'host-record' | 'host-alive'; readonly hostId: string }
  | { readonly kind: 'vm'; readonly namespace: string; readonly name: string }
  | { readonly kind: 'event'; readonly id: string }
  | { readonly kind: 'controller-status' | 'controller-leader' };

const EVENT_ID_RE = /^\d{15}-[0-9a-f]{8}$/;

/**
 * Parses a key relative to the prefix (`hosts/h1/record`, `vms/ns/web`, …). Undefined when the
 * key is not of any known shape or one of its ids breaks its alphabet (a `..` host id, a VM name
 * with `/`, an empty segment): such a key names nothing Tether may act on.
 */
export function parseKey(key: string): ParsedKey | undefined {
  if (key.length > 512) return undefined;
  const p = key.split('/');
  if (p[0] === 'hosts' && p.length === 3 && isName('host-id', p[1]) && (p[2] === 'record' || p[2] === 'alive')) {
    return { kind: p[2] === 'record' ? 'host-record' : 'host-alive', hostId: p[1] };
  }
  if (p[0] === 'vms' && p.length === 3 && isName('namespace', p[1]) && isName('name', p[2])) return { kind: 'vm', namespace: p[1], name: p[2] };
  if (p[0] === 'events' && p.length === 2 && EVENT_ID_RE.test(p[1]!)) return { kind: 'event', id: p[1]! };
  if (key === 'controller/status') return { kind: 'controller-status' };
  if (key === 'controller/leader') return { kind: 'controller-leader' };
  return undefined;
}

/** Key of a host's record. Throws INVALID_RECORD (field {@link KEY_FIELD}) for a host id outside its alphabet. */
export function hostRecordKey(hostId: string): string {
  return checkedKey('host-record', `hosts/${hostId}/record`);
}

/** Key of a host's alive value. Throws INVALID_RECORD for a host id outside its alphabet. */
export function hostAliveKey(hostId: string): string {
  return checkedKey('host-alive', `hosts/${hostId}/alive`);
}

/** Key of a VM record from its `<ns>/<name>`. Throws INVALID_RECORD when either is not a DNS label. */
export function vmRecordKey(vmKey: string): string {
  return checkedKey('vm', `vms/${vmKey}`);
}

function checkedKey(kind: RecordKind, key: string): string {
  if (parseKey(key)?.kind !== kind) throw new InvalidRecordError(kind, key, KEY_FIELD, `not a valid ${kind} key`);
  return key;
}

// ---- decode -----------------------------------------------------------------------------------

/** `hosts/<id>/record`. The record's `hostId` must be the key's. */
export function decodeHostRecord(key: string, raw: RawValue): Decoded<HostRecord> {
  return decodeWith('host-record', key, raw, hostRecordSchema, (k, v) =>
    k.kind === 'host-record' && v.hostId !== k.hostId ? ['hostId', `is ${quoteForLog(v.hostId, 64)}, the key names host ${k.hostId}`] : undefined,
  );
}

/** `hosts/<id>/alive`. */
export function decodeAliveValue(key: string, raw: RawValue): Decoded<AliveValue> {
  return decodeWith('host-alive', key, raw, aliveValueSchema);
}

/** `vms/<ns>/<name>`. The record's `spec.id` must be the key's namespace and name. */
export function decodeClusterVm(key: string, raw: RawValue): Decoded<ClusterVmRecord> {
  return decodeWith('vm', key, raw, clusterVmSchema, (k, v) => {
    if (k.kind !== 'vm') return undefined;
    if (v.spec.id.namespace !== k.namespace) return ['spec.id.namespace', `is ${v.spec.id.namespace}, the key names namespace ${k.namespace}`];
    if (v.spec.id.name !== k.name) return ['spec.id.name', `is ${v.spec.id.name}, the key names ${k.name}`];
    return undefined;
  });
}

/** `events/<ms>-<rand>`. */
export function decodeClusterEvent(key: string, raw: RawValue): Decoded<ClusterEvent> {
  return decodeWith('event', key, raw, clusterEventSchema);
}

/** `controller/status`. */
export function decodeControllerStatus(key: string, raw: RawValue): Decoded<ControllerStatusValue> {
  return decodeWith('controller-status', key, raw, controllerStatusSchema);
}

/** `controller/leader`. */
export function decodeLeaderInfo(key: string, raw: RawValue): Decoded<LeaderInfoValue> {
  return decodeWith('controller-leader', key, raw, leaderInfoSchema);
}

// ---- encode -----------------------------------------------------------------------------------

/** JSON of a host record, as {@link decodeHostRecord} accepts it. Throws {@link InvalidRecordError}. */
export function encodeHostRecord(key: string, value: HostRecord): string {
  return encodeWith(key, value, decodeHostRecord);
}

/** JSON of an alive value. Throws {@link InvalidRecordError}. */
export function encodeAliveValue(key: string, value: AliveValue): string {
  return encodeWith(key, value, decodeAliveValue);
}

/** JSON of a VM record. Throws {@link InvalidRecordError}. */
export function encodeClusterVm(key: string, value: ClusterVmRecord): string {
  return encodeWith(key, value, decodeClusterVm);
}

/** JSON of an event. Throws {@link InvalidRecordError}. */
export function encodeClusterEvent(key: string, value: ClusterEvent): string {
  return encodeWith(key, value, decodeClusterEvent);
}

/** JSON of the controller status. Throws {@link InvalidRecordError}. */
export function encodeControllerStatus(key: string, value: ControllerStatusValue): string {
  return encodeWith(key, value, decodeControllerStatus);
}

/** JSON of the leader value. Throws {@link InvalidRecordError}. */
export function encodeLeaderInfo(key: string, value: LeaderInfoValue): string {
  return encodeWith(key, value, decodeLeaderInfo);
}

function encodeWith<T>(key: string, value: T, decode: (key: string, raw: RawValue) => Decoded<T>): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch {
    json = undefined;
  }
  const d = decode(key, json ?? '');
  if (!d.ok) throw d.error;
  return json!;
}

// ---- internals --------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

function decodeWith<S extends z.ZodType>(
  kind: RecordKind,
  key: string,
  raw: RawValue,
  schema: S,
  agree?: (k: ParsedKey, v: z.infer<S>) => [field: string, reason: string] | undefined,
): Decoded<z.infer<S>> {
  const fail = (field: string, reason: string, problems?: readonly string[]): Decoded<never> => ({ ok: false, error: new InvalidRecordError(kind, key, field, reason, problems) });
  const k = parseKey(key);
  if (k?.kind !== kind) return fail(KEY_FIELD, `not a valid ${kind} key (ids must match their alphabets: no '/', '..', NUL or empty segment)`);

  let text: string;
  if (typeof raw === 'string') {
    if (raw.length > RECORD_LIMITS.maxRecordBytes || utf8Length(raw) > RECORD_LIMITS.maxRecordBytes) return fail(VALUE_FIELD, `larger than ${RECORD_LIMITS.maxRecordBytes} bytes`);
    text = raw;
  } else {
    if (raw.length > RECORD_LIMITS.maxRecordBytes) return fail(VALUE_FIELD, `larger than ${RECORD_LIMITS.maxRecordBytes} bytes (${raw.length})`);
    try {
      text = utf8.decode(raw);
    } catch {
      return fail(VALUE_FIELD, 'not valid UTF-8');
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return fail(VALUE_FIELD, `not JSON (${quoteForLog(err instanceof Error ? err.message : String(err), 120)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail(VALUE_FIELD, `expected an object, received ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}`);

  const r = schema.safeParse(json);
  if (!r.success) {
    const problems = r.error.issues.map(describeIssue);
    const [field, reason] = problems[0]!;
    return fail(field, reason, problems.map(([f, m]) => `${f}: ${m}`));
  }
  const mismatch = agree?.(k, r.data);
  if (mismatch) return fail(mismatch[0], mismatch[1]);
  return { ok: true, value: r.data };
}

/** `[field path, reason]` of one zod issue; unknown keys name the key itself. */
function describeIssue(issue: z.core.$ZodIssue): [string, string] {
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => quoteForLog(k, 64));
    return [pathOf([...issue.path, issue.keys[0] ?? '']), `unknown field${keys.length > 1 ? `s ${keys.join(', ')}` : ''} (refused: this version does not know it)`];
  }
  if (issue.code === 'invalid_union' && 'discriminator' in issue) return [pathOf(issue.path), `unknown kind (expected one of the known event kinds)`];
  return [pathOf(issue.path), issue.message.replace(/^Invalid input: /, '')];
}

/** `timings.ttl`, `spec.volumes[0].id`, `labels["a b"]`; {@link VALUE_FIELD} for the root. */
function pathOf(path: readonly PropertyKey[]): string {
  if (path.length === 0) return VALUE_FIELD;
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else {
      const s = String(seg);
      out += /^[A-Za-z_][A-Za-z0-9_]*$/.test(s) ? `${out ? '.' : ''}${s}` : `[${JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s)}]`;
    }
  }
  return out;
}
