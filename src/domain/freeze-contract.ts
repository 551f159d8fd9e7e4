/**
 * The freeze contract (issue 11, docs/peer-check.md): the mass-disruption freeze's parameters as the
 * controller publishes them at `cluster/freeze-contract`, for hosts to learn while attached and to
 * rely on while detached (the peer check). A host acknowledges the version it holds in its record.
 *
 * Invariant the controller keeps: it never applies a looser contract than one a pool host
 * acknowledged: its effective share is at most, and its resume delay at least, those of every
 * acknowledged version ({@link tightest}).
 */
import { TetherError } from './errors.js';

/** One version of the contract. */
export interface FreezeContract {
  /** Increases with every change; hosts acknowledge it. */
  readonly version: number;
  /** Freeze when the detached share of the pool is strictly above this (0 < share < 1). */
  readonly share: number;
  /** After the share falls back, fencing resumes only this long later (ms). */
  readonly resumeDelay: number;
  /** Pool size when published (attached, ready and detached hosts). */
  readonly poolSize: number;
}

/**
 * Parses a contract read from etcd; throws a `TetherError` (`INVALID_RECORD`) naming the field.
 * Invariants of a parsed contract: integer version >= 1, 0 < share < 1, resumeDelay >= 0, integer
 * poolSize >= 0.
 */
export function parseFreezeContract(raw: unknown): FreezeContract {
  const bad = (field: string, want: string): never => {
    throw new TetherError('INVALID_RECORD', `freeze contract: ${field} must be ${want}`);
  };
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) bad('the record', 'an object');
  const r = raw as Record<string, unknown>;
  const int = (k: string, min: number) => (typeof r[k] === 'number' && Number.isInteger(r[k]) && (r[k] as number) >= min ? (r[k] as number) : bad(k, `an integer >= ${min}`));
  const version = int('version', 1);
  const share = typeof r.share === 'number' && r.share > 0 && r.share < 1 ? r.share : bad('share', 'a number strictly between 0 and 1');
  const resumeDelay = typeof r.resumeDelay === 'number' && Number.isFinite(r.resumeDelay) && r.resumeDelay >= 0 ? r.resumeDelay : bad('resumeDelay', 'a number of ms >= 0');
  const poolSize = int('poolSize', 0);
  return { version, share, resumeDelay, poolSize };
}

/**
 * The rule the controller may apply given the contracts hosts acknowledged: the smallest share and
 * the longest resume delay among `published` and every acknowledged one. Invariant: never looser
 * than any input.
 */
export function tightest(published: Pick<FreezeContract, 'share' | 'resumeDelay'>, acknowledged: Iterable<Pick<FreezeContract, 'share' | 'resumeDelay'>>): { share: number; resumeDelay: number } {
  let share = published.share;
  let resumeDelay = published.resumeDelay;
  for (const c of acknowledged) {
    share = Math.min(share, c.share);
    resumeDelay = Math.max(resumeDelay, c.resumeDelay);
  }
  return { share, resumeDelay };
}
