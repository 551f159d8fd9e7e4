/**
 * The guardian's decisions, pure: which feed it holds and whether its deadline has passed.
 *
 * The guardian (`tether guardian`, src/guardian/) is the fence that does not need the agent. The
 * agent feeds it, through `<stateDir>/guardian/feed.json`, a deadline on CLOCK_MONOTONIC derived
 * from its last ACKNOWLEDGED heartbeat; when that deadline passes with no newer one, the guardian
 * kills every VM of the host itself.
 *
 * Invariants (enforced by test/unit/guardian.test.ts):
 * - only a valid feed of THIS host and THIS boot, newer (higher `seq`) than the one held, replaces
 *   the held feed; a malformed, other-boot, other-host, stale or missing feed never suppresses a
 *   deadline the guardian already holds (it keeps the last valid one);
 * - {@link guardianDecision} answers `fire` exactly when the held feed's deadline is at or before
 *   `now`, and `suspended` only for a held feed whose deadline is null (an acknowledged hold);
 * - unknown feed fields are ignored (a newer agent may add some: refusing them would make an older
 *   guardian keep an old deadline and fire); `v` must be 1.
 */
import { InvalidArgumentError } from './errors.js';

/** Version of the feed and fired-record formats. */
export const GUARDIAN_FORMAT_VERSION = 1;

/** Largest feed file the guardian reads, in bytes (a larger one is malformed). */
export const GUARDIAN_FEED_MAX_BYTES = 64 * 1024;

/** Longest `reason` text accepted in a feed. */
export const GUARDIAN_REASON_MAX = 200;

/** One feed written by the agent (`<stateDir>/guardian/feed.json`, replaced atomically). */
export interface GuardianFeedRecord {
  readonly v: 1;
  readonly hostId: string;
  /** `/proc/sys/kernel/random/boot_id` of the boot the deadline was measured on. */
  readonly bootId: string;
  /** Grows with every write (also across agent restarts on one boot). */
  readonly seq: number;
  /** CLOCK_MONOTONIC ms by which the guardian starts killing; null: suspended (acknowledged hold). */
  readonly deadlineMono: number | null;
  /** Host epoch the agent was registered at when it wrote this feed. */
  readonly epoch: number;
  /** Why this deadline (the agent's phase), for the journal. */
  readonly reason: string;
  /** The agent stopped gracefully with no VM process left: the guardian may exit once none is. */
  readonly shutdown?: true;
}

/** The files of the guardian under the agent's state dir. Plain string joins (pure). */
export interface GuardianFiles {
  readonly dir: string;
  readonly feed: string;
  readonly fired: string;
  readonly journal: string;
  readonly pid: string;
  readonly log: string;
}

/** `<stateDir>/guardian/{feed.json,fired.json,journal.jsonl,guardian.pid,guardian.log}`. */
export function guardianFiles(stateDir: string): GuardianFiles {
  const dir = `${stateDir.replace(/\/+$/, '')}/guardian`;
  return {
    dir,
    feed: `${dir}/feed.json`,
    fired: `${dir}/fired.json`,
    journal: `${dir}/journal.jsonl`,
    pid: `${dir}/guardian.pid`,
    log: `${dir}/guardian.log`,
  };
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function nonNegInt(o: Record<string, unknown>, field: string): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new InvalidArgumentError(field, `must be a non-negative integer, got ${JSON.stringify(v) ?? 'undefined'}`);
  }
  return v;
}

function shortString(o: Record<string, unknown>, field: string, max: number, allowEmpty = false): string {
  const v = o[field];
  if (typeof v !== 'string' || (!allowEmpty && v.length === 0) || v.length > max) {
    throw new InvalidArgumentError(field, `must be a ${allowEmpty ? '' : 'non-empty '}string of at most ${max} characters`);
  }
  return v;
}

/**
 * Validates a parsed feed. Throws {@link InvalidArgumentError} whose `field` names the first bad
 * field (`v`, `hostId`, `bootId`, `seq`, `deadlineMono`, `epoch`, `reason`, `shutdown`, or
 * `feed` when the value is not an object). Unknown fields are dropped.
 */
export function validateGuardianFeed(value: unknown): GuardianFeedRecord {
  if (!isObject(value)) throw new InvalidArgumentError('feed', 'must be a JSON object');
  if (value.v !== GUARDIAN_FORMAT_VERSION) throw new InvalidArgumentError('v', `must be ${GUARDIAN_FORMAT_VERSION}, got ${JSON.stringify(value.v) ?? 'undefined'}`);
  const hostId = shortString(value, 'hostId', 253);
  const bootId = shortString(value, 'bootId', 64);
  const seq = nonNegInt(value, 'seq');
  const d = value.deadlineMono;
  if (d !== null && (typeof d !== 'number' || !Number.isFinite(d) || d < 0)) {
    throw new InvalidArgumentError('deadlineMono', `must be null or a non-negative finite number, got ${JSON.stringify(d) ?? 'undefined'}`);
  }
  const epoch = nonNegInt(value, 'epoch');
  const reason = shortString(value, 'reason', GUARDIAN_REASON_MAX, true);
  if (value.shutdown !== undefined && value.shutdown !== true) throw new InvalidArgumentError('shutdown', 'must be true or absent');
  return { v: 1, hostId, bootId, seq, deadlineMono: d, epoch, reason, ...(value.shutdown === true ? { shutdown: true as const } : {}) };
}

/** Parses and validates feed text; a bad text throws {@link InvalidArgumentError} (field `feed` for bad JSON or size). */
export function parseGuardianFeed(text: string): GuardianFeedRecord {
  if (text.length > GUARDIAN_FEED_MAX_BYTES) throw new InvalidArgumentError('feed', `larger than ${GUARDIAN_FEED_MAX_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError('feed', `not JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return validateGuardianFeed(value);
}

/** What reading the feed file did to the held feed (journaled on every change). */
export type FeedOutcome =
  /** First valid deadline held. */
  | 'armed'
  /** A newer feed moved the deadline (or ended a suspension). */
  | 're-armed'
  /** A newer feed suspended the deadline (null: acknowledged hold). */
  | 'suspended'
  /** A newer feed with the same deadline (e.g. only the reason or epoch changed). */
  | 'renewed'
  /** A newer feed says the agent shut down gracefully. */
  | 'shutdown'
  /** The same feed as held (same seq): nothing to do. */
  | 'same'
  /** No feed file: the held feed (if any) stays. */
  | 'missing'
  /** An older seq than the one held: ignored. */
  | 'stale'
  /** Rejected (malformed, other host, other boot): the held feed stays; `error` says why. */
  | 'rejected';

/** Result of {@link absorbFeed}. */
export interface FeedAbsorption {
  /** The feed the guardian holds from now on. */
  readonly held: GuardianFeedRecord | undefined;
  readonly outcome: FeedOutcome;
  /** For `rejected`: the named-field error. */
  readonly error?: InvalidArgumentError;
}

/**
 * Folds the feed file's text (undefined: no file) into the held feed. Only a valid feed of
 * `expect.hostId` on `expect.bootId` with a higher seq than the held one replaces it.
 */
export function absorbFeed(
  held: GuardianFeedRecord | undefined,
  text: string | undefined,
  expect: { readonly hostId: string; readonly bootId: string },
): FeedAbsorption {
  if (text === undefined) return { held, outcome: 'missing' };
  let feed: GuardianFeedRecord;
  try {
    feed = parseGuardianFeed(text);
  } catch (err) {
    if (err instanceof InvalidArgumentError) return { held, outcome: 'rejected', error: err };
    throw err;
  }
  if (feed.hostId !== expect.hostId) {
    return { held, outcome: 'rejected', error: new InvalidArgumentError('hostId', `feed is for host ${feed.hostId}, this guardian serves ${expect.hostId}`) };
  }
  if (feed.bootId !== expect.bootId) {
    return { held, outcome: 'rejected', error: new InvalidArgumentError('bootId', `feed was written on boot ${feed.bootId}, this is boot ${expect.bootId} (its monotonic deadline means nothing here)`) };
  }
  if (held !== undefined && feed.seq === held.seq) return { held, outcome: 'same' };
  if (held !== undefined && feed.seq < held.seq) return { held, outcome: 'stale' };
  const sameDeadline = held !== undefined && !held.shutdown && held.deadlineMono === feed.deadlineMono;
  let outcome: FeedOutcome;
  if (feed.shutdown) outcome = 'shutdown';
  else if (sameDeadline) outcome = 'renewed';
  else if (feed.deadlineMono === null) outcome = 'suspended';
  else outcome = held === undefined ? 'armed' : 're-armed';
  return { held: feed, outcome };
}

/** What the guardian does now. */
export type GuardianDecision =
  /** No feed of this boot held yet: nothing to enforce. */
  | { readonly kind: 'idle' }
  /** Acknowledged hold: nothing to enforce until a deadline is fed. */
  | { readonly kind: 'suspended' }
  /** Deadline pending: look again (and re-read the feed) no later than `until`. */
  | { readonly kind: 'wait'; readonly until: number }
  /** Deadline passed: kill every VM of the host. `lateMs`: how long after the deadline this is. */
  | { readonly kind: 'fire'; readonly deadlineMono: number; readonly lateMs: number; readonly seq: number };

/**
 * The guardian's decision for the held feed at monotonic `now`. A feed of another boot counts as
 * none (its monotonic deadline has no meaning on this boot); {@link absorbFeed} never holds one.
 */
export function guardianDecision(feed: GuardianFeedRecord | undefined, bootId: string, now: number): GuardianDecision {
  if (feed === undefined || feed.bootId !== bootId) return { kind: 'idle' };
  if (feed.deadlineMono === null) return { kind: 'suspended' };
  if (now < feed.deadlineMono) return { kind: 'wait', until: feed.deadlineMono };
  return { kind: 'fire', deadlineMono: feed.deadlineMono, lateMs: now - feed.deadlineMono, seq: feed.seq };
}

/**
 * True when the guardian may exit: the held feed says the agent shut down gracefully and no VM
 * process of this host is left (`ownedVms` counted by the caller).
 */
export function guardianMayExit(feed: GuardianFeedRecord | undefined, ownedVms: number): boolean {
  return feed?.shutdown === true && ownedVms === 0;
}

/** One VM process the guardian killed (or tried to). */
export interface GuardianKill {
  readonly pid: number;
  readonly uid: string;
  /** ms from the fire to the process verified gone; undefined while unverified or for a survivor. */
  readonly goneAfterMs?: number;
}

/** `<stateDir>/guardian/fired.json`: written before the kill starts, updated after. */
export interface GuardianFiredRecord {
  readonly v: 1;
  readonly hostId: string;
  readonly bootId: string;
  /** The feed whose deadline passed. */
  readonly seq: number;
  readonly epoch: number;
  readonly reason: string;
  readonly deadlineMono: number;
  /** Monotonic ms the guardian fired at (>= deadlineMono). */
  readonly firedAtMono: number;
  /** Wall-clock ms of the fire, for display only. */
  readonly firedAt: number;
  /** `killing` while in progress (a guardian that died mid-kill leaves it so), then `done` or `incomplete`. */
  readonly state: 'killing' | 'done' | 'incomplete';
  /** Verified VM processes it signalled, with how long each took to be gone. */
  readonly killed: readonly GuardianKill[];
  /** Processes still alive killTimeout after the signal. */
  readonly survivors: readonly GuardianKill[];
  /** Processes in the host's cgroup that failed the ownership check: reported, never signalled. */
  readonly leaks: readonly { readonly pid: number; readonly why: string }[];
  /** ms from the fire to the end of verification. */
  readonly tookMs?: number;
}

/**
 * Validates a fired record read back by the agent. Throws {@link InvalidArgumentError} naming the
 * first bad field.
 */
export function validateFiredRecord(value: unknown): GuardianFiredRecord {
  if (!isObject(value)) throw new InvalidArgumentError('fired', 'must be a JSON object');
  if (value.v !== GUARDIAN_FORMAT_VERSION) throw new InvalidArgumentError('v', `must be ${GUARDIAN_FORMAT_VERSION}`);
  shortString(value, 'hostId', 253);
  shortString(value, 'bootId', 64);
  nonNegInt(value, 'seq');
  nonNegInt(value, 'epoch');
  for (const f of ['deadlineMono', 'firedAtMono', 'firedAt'] as const) {
    if (typeof value[f] !== 'number' || !Number.isFinite(value[f])) throw new InvalidArgumentError(f, 'must be a finite number');
  }
  if (value.state !== 'killing' && value.state !== 'done' && value.state !== 'incomplete') {
    throw new InvalidArgumentError('state', 'must be killing, done or incomplete');
  }
  for (const f of ['killed', 'survivors', 'leaks'] as const) {
    if (!Array.isArray(value[f])) throw new InvalidArgumentError(f, 'must be an array');
  }
  return value as unknown as GuardianFiredRecord;
}
