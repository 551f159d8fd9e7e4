/**
 * The cluster side of the fence (ARCHITECTURE.md section 3), pure: when a host's lease is gone the
 * controller marks its record `detached` with `fenceDeadline = observedExpiry + fenceWindow`, and
 * treats its VMs as gone only at that deadline — and never for a held host or a host that publishes
 * unsafe timings.
 *
 * Why the window is long enough: the host stops every VM by `lastAck + watchdogTimeout + stopGrace +
 * killTimeout`; the lease cannot expire before `lastAck + ttl`, so the controller observes the expiry at
 * `observedExpiry >= lastAck + ttl`; the safety inequality `watchdogTimeout + stopGrace + killTimeout +
 * clockDriftMargin <= ttl + fenceWindow` (rechecked here on the host's published timings) then puts
 * `fenceDeadline` after the host's last VM is gone, with the drift margin to spare.
 *
 * Times here are controller wall-clock ms (what records carry). The controller arms its timers on its
 * monotonic clock from these values; see {@link takeoverFenceDeadline} for a replica that takes over.
 */
import type { FenceBlocker } from './cluster-event.js';
import { checkTimings, describeViolations, type GcTimings } from './gc-timing.js';
import type { HostRecord } from './host-record.js';

export type { FenceBlocker } from './cluster-event.js';

/**
 * The window the controller waits after observing a lease expiry: the host's published
 * `fenceWindow`, lengthened (never shortened) by the controller's `override`.
 *
 * Invariant: `effectiveFenceWindow(t, o) >= t.fenceWindow`, so the safety inequality checked on the
 * published timings still holds for the window actually used.
 */
export function effectiveFenceWindow(t: Pick<GcTimings, 'fenceWindow'>, override?: number): number {
  const published = Number.isFinite(t.fenceWindow) && t.fenceWindow >= 0 ? t.fenceWindow : 0;
  return Math.max(published, override !== undefined && Number.isFinite(override) ? override : 0);
}

/**
 * Violations of the host's published timings (empty when safe), as one message; `undefined` when
 * the timings are safe. A missing or malformed `timings` object is unsafe.
 */
export function timingProblems(record: Pick<HostRecord, 'timings'>): string | undefined {
  const t = record.timings as GcTimings | undefined;
  if (t === undefined || t === null || typeof t !== 'object') return 'the record publishes no timings';
  // Records are immutable once parsed: the verdict of one timings object never changes (the
  // controller asks for every host on every status and decision; 5,000 hosts made this a hot path).
  const known = verdicts.get(t);
  if (known !== undefined) return known === OK ? undefined : known;
  const v = checkTimings(t);
  const verdict = v.length === 0 ? undefined : describeViolations(v);
  verdicts.set(t, verdict ?? OK);
  return verdict;
}

const OK = '';
const verdicts = new WeakMap<object, string>();

/**
 * Why this host must not be fenced automatically; empty when it may be.
 * - `held`: the operator holds it now (no fence, no reschedule);
 * - `held-at-detach`: it was held when it detached, so it does not self-fence — only an operator's
 *   `tether host fence <id> --confirm` may fence it, whatever the hold says now;
 * - `unsafe-timings`: its published timings break a rule of {@link checkTimings}, so the window
 *   proves nothing.
 */
export function fenceBlockers(record: Pick<HostRecord, 'hold' | 'heldAtDetach' | 'timings'>): FenceBlocker[] {
  const b: FenceBlocker[] = [];
  if (record.hold) b.push('held');
  if (record.heldAtDetach === true) b.push('held-at-detach');
  if (timingProblems(record) !== undefined) b.push('unsafe-timings');
  return b;
}

/** Options of {@link detachRecord}. */
export interface DetachOptions {
  /** Controller override of the window (lengthens only, see {@link effectiveFenceWindow}). */
  readonly fenceWindowOverride?: number;
  /**
   * Treat the host as held although `record.hold` is false now: the controller saw the hold released so
   * recently that the host may not have read the release yet (it would not self-fence).
   */
  readonly releasedRecently?: boolean;
}

/**
 * The record after the controller observed the host's lease gone at `observedWall`:
 * `detached`, `detachedAt = observedWall`, `fenceDeadline = observedWall + effective window`,
 * `heldAtDetach` = held now (or released too recently for the host to know).
 *
 * Invariant: `fenceDeadline - detachedAt >= record.timings.fenceWindow`.
 */
export function detachRecord(record: HostRecord, observedWall: number, opts: DetachOptions = {}): HostRecord {
  const window = effectiveFenceWindow(record.timings ?? { fenceWindow: 0 }, opts.fenceWindowOverride);
  return {
    ...record,
    state: 'detached',
    detachedAt: observedWall,
    fenceDeadline: observedWall + window,
    heldAtDetach: record.hold || opts.releasedRecently === true,
    updatedAt: observedWall,
  };
}

/**
 * Controller failover: the deadline a replica uses for a host that was already `detached` when it
 * took over (or first saw the record) at `takeoverWall` — the recorded deadline or a full window from
 * its own takeover, whichever is later (the two controllers' clocks are not comparable beyond the drift
 * margin, so the recorded value alone is not trusted).
 *
 * Invariants: the result is `>= recorded` and `>= takeoverWall + window`: failover never shortens a
 * pending window.
 */
export function takeoverFenceDeadline(recorded: number | undefined, takeoverWall: number, window: number): number {
  const full = takeoverWall + window;
  return recorded !== undefined && Number.isFinite(recorded) ? Math.max(recorded, full) : full;
}

/** The record after the fence: `fenced`, keeping `detachedAt`/`fenceDeadline` for the record. */
export function fencedRecord(record: HostRecord, nowWall: number): HostRecord {
  return { ...record, state: 'fenced', updatedAt: nowWall };
}

/** What the controller should do about one host, from its record and whether its `alive` key exists. */
export type HostDecision =
  /** Nothing to do (attached with a lease, fenced, retired, unknown). */
  | { readonly kind: 'none' }
  /** Lease gone while `attached`/`ready`: write `detached` (txn: record unchanged and `alive` still absent). */
  | { readonly kind: 'detach' }
  /** `detached` and absent: fence at the deadline (subject to the mass-disruption freeze). */
  | { readonly kind: 'await-fence' }
  /** `detached` but never fenced automatically, for these reasons. */
  | { readonly kind: 'never-fence'; readonly blockers: readonly FenceBlocker[] }
  /** `detached` while an `alive` key exists: the host is re-registering; its txn will change the record. */
  | { readonly kind: 'await-return' };

/**
 * The per-host decision, pure.
 * Invariants: a host whose `alive` key exists is never detached or fenced; a blocked host (see
 * {@link fenceBlockers}) is never `await-fence`.
 */
export function decideHost(record: HostRecord | undefined, alive: boolean): HostDecision {
  if (record === undefined) return { kind: 'none' };
  switch (record.state) {
    case 'attached':
    case 'ready':
      return alive ? { kind: 'none' } : { kind: 'detach' };
    case 'detached': {
      if (alive) return { kind: 'await-return' };
      const blockers = fenceBlockers(record);
      return blockers.length > 0 ? { kind: 'never-fence', blockers } : { kind: 'await-fence' };
    }
    default:
      return { kind: 'none' };
  }
}

/**
 * The fence column of `tether host list`: a countdown, `due` (deadline passed, waiting for the
 * controller or the freeze), `never (<reasons>)`, or `-`.
 */
export function describeFence(record: HostRecord, alive: boolean, nowWall: number): string {
  const d = decideHost(record, alive);
  if (d.kind === 'never-fence') return `never (${d.blockers.join(', ')})`;
  if (d.kind === 'detach') return 'lease gone';
  if (d.kind !== 'await-fence' || record.fenceDeadline === undefined) return '-';
  const left = record.fenceDeadline - nowWall;
  return left > 0 ? `in ${Math.ceil(left / 1000)}s` : 'due';
}
