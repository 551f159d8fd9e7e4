/**
 * The wire codec of the peer channel (issue 11, docs/peer-check.md "Peer channel"): the question
 * `POST /v1/peer/status {from, nonce}` and the answer {@link PeerAnswer}. Both sides go through it:
 * the server validates the question and the answer it is about to send, the client validates every
 * answer it receives.
 *
 * Invariants:
 * - decode never throws: `{ ok: true, value }` or `{ ok: false, error }` where `error` is a
 *   {@link PeerMessageError} (code `INVALID_RECORD`, not retryable) naming the field
 *   (`ackAgeMs: too big: expected number to be <=2592000000`);
 * - raw input is bounded before it is parsed ({@link PEER_WIRE_LIMITS}) and must be UTF-8 JSON;
 * - objects are STRICT: an unknown field is refused, never stripped. A newer peer's answer with a
 *   field this version does not know is dropped, so it never counts as a witness: the host then
 *   fences on time, which is always safe (upgrade every agent before relying on a new field);
 * - the value returned is a fresh object built by the schema;
 * - encode validates with the same schema and throws the same error: nothing leaves this agent that
 *   its peers would refuse.
 */
import * as z from 'zod';
import { TetherError } from '../errors.js';
import type { HostPhase } from '../host-lifecycle.js';
import type { PeerAnswer } from '../peer-check.js';
import { RECORD_LIMITS, quoteForLog, utf8Length } from './names.js';
import { nameOf } from './schemas.js';

/** Size bounds of the peer channel's bodies (bytes of UTF-8). */
export const PEER_WIRE_LIMITS = {
  /** Largest question a server reads. */
  maxQuestionBytes: 1024,
  /** Largest answer a client reads. */
  maxAnswerBytes: 4096,
} as const;

/** A question's nonce: 32 lowercase hex digits (128 random bits). */
export const PEER_NONCE_RE = /^[0-9a-f]{32}$/;

/** True when `s` is a well-formed nonce. */
export function isPeerNonce(s: unknown): s is string {
  return typeof s === 'string' && PEER_NONCE_RE.test(s);
}

/**
 * `POST /v1/peer/status` body: who asks (display and logs only: not authenticated), the nonce to
 * echo, and how long a witness must promise not to register again (ms; docs/peer-check.md).
 */
export interface PeerQuestion {
  readonly from: string;
  readonly nonce: string;
  readonly stayAwayMs: number;
}

/** A peer message (question or answer) that failed its schema: code `INVALID_RECORD`, never retryable. */
export class PeerMessageError extends TetherError {
  /** Dotted path of the first offending field, or `(value)` for the whole body. */
  readonly field: string;
  /** Every problem found, `<field>: <reason>`. */
  readonly problems: readonly string[];
  constructor(what: 'peer-question' | 'peer-answer', field: string, reason: string, problems: readonly string[] = [`${field}: ${reason}`]) {
    super('INVALID_RECORD', `${what}: ${field}: ${reason}`, { retryable: false, details: { kind: what, field } });
    this.name = 'PeerMessageError';
    this.field = field;
    this.problems = problems;
  }
}

/** Outcome of a decode. */
export type PeerDecoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: PeerMessageError };

/** Every {@link HostPhase}; `satisfies` fails to compile when a phase is added to the type and not here. */
const PHASES = {
  starting: true,
  attached: true,
  suspect: true,
  detached: true,
  fencing: true,
  cleaning: true,
  clean: true,
  rejoining: true,
} as const satisfies Record<HostPhase, true>;

/** The longest stay-away a question may ask (1 h): a witness never promises more. */
export const STAY_AWAY_MAX_MS = 3_600_000;

const nonceSchema = z.string().max(64).regex(PEER_NONCE_RE, 'must be 32 lowercase hex digits');
const duration = z.number().min(0).max(RECORD_LIMITS.maxDurationMs);

/** Schema of {@link PeerQuestion}. */
export const peerQuestionSchema = z.strictObject({ from: nameOf('host-id'), nonce: nonceSchema, stayAwayMs: z.int().min(0).max(STAY_AWAY_MAX_MS) });

/** Schema of {@link PeerAnswer}. */
export const peerAnswerSchema = z.strictObject({
  hostId: nameOf('host-id'),
  nonce: nonceSchema,
  epoch: z.int().min(0).max(RECORD_LIMITS.maxCounter),
  phase: z.enum(Object.keys(PHASES) as [HostPhase, ...HostPhase[]]),
  reachesEtcd: z.boolean(),
  silent: z.boolean(),
  ackAgeMs: duration.optional(),
  unanswered: z.int().min(0).max(1_000_000),
  ttl: z.number().gt(0).max(RECORD_LIMITS.maxDurationMs),
  promisedMs: z.int().min(0).max(STAY_AWAY_MAX_MS),
});

/** Decodes a question body. Never throws. */
export function decodePeerQuestion(raw: string | Uint8Array): PeerDecoded<PeerQuestion> {
  return decodeWith('peer-question', raw, PEER_WIRE_LIMITS.maxQuestionBytes, peerQuestionSchema);
}

/** Decodes an answer body. Never throws. */
export function decodePeerAnswer(raw: string | Uint8Array): PeerDecoded<PeerAnswer> {
  return decodeWith('peer-answer', raw, PEER_WIRE_LIMITS.maxAnswerBytes, peerAnswerSchema);
}

/** JSON of a question, as {@link decodePeerQuestion} accepts it. Throws {@link PeerMessageError}. */
export function encodePeerQuestion(q: PeerQuestion): string {
  return encodeWith(q, decodePeerQuestion);
}

/** JSON of an answer, as {@link decodePeerAnswer} accepts it. Throws {@link PeerMessageError}. */
export function encodePeerAnswer(a: PeerAnswer): string {
  return encodeWith(a, decodePeerAnswer);
}

function encodeWith<T>(value: T, decode: (raw: string) => PeerDecoded<T>): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch {
    json = undefined;
  }
  const d = decode(json ?? '');
  if (!d.ok) throw d.error;
  return json!;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

function decodeWith<S extends z.ZodType>(what: 'peer-question' | 'peer-answer', raw: string | Uint8Array, maxBytes: number, schema: S): PeerDecoded<z.infer<S>> {
  const fail = (field: string, reason: string, problems?: readonly string[]): PeerDecoded<never> => ({ ok: false, error: new PeerMessageError(what, field, reason, problems) });
  let text: string;
  if (typeof raw === 'string') {
    if (raw.length > maxBytes || utf8Length(raw) > maxBytes) return fail('(value)', `larger than ${maxBytes} bytes`);
    text = raw;
  } else {
    if (raw.length > maxBytes) return fail('(value)', `larger than ${maxBytes} bytes (${raw.length})`);
    try {
      text = utf8.decode(raw);
    } catch {
      return fail('(value)', 'not valid UTF-8');
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return fail('(value)', `not JSON (${quoteForLog(err instanceof Error ? err.message : String(err), 120)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('(value)', `expected an object, received ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}`);
  const r = schema.safeParse(json);
  if (!r.success) {
    const problems = r.error.issues.map(describeIssue);
    const [field, reason] = problems[0]!;
    return fail(field, reason, problems.map(([f, m]) => `${f}: ${m}`));
  }
  return { ok: true, value: r.data };
}

function describeIssue(issue: z.core.$ZodIssue): [string, string] {
  if (issue.code === 'unrecognized_keys') return [quoteForLog(String(issue.keys[0] ?? ''), 64), 'unknown field (refused: this version does not know it)'];
  const path = issue.path.map(String).join('.');
  return [path === '' ? '(value)' : path, issue.message.replace(/^Invalid input: /, '')];
}
