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
 * etcd 3.4.23 breaks the premise `observedExpiry >= lastAck + ttl` in one known case: after a raft
 * leader change, a deposed leader's lessor can revoke a lease whose keepalives went to the new leader
 * (etcd #15247, fixed in 3.5.13 and 3.4.31 by #16822/#17465). The lease then vanishes as early as just
 * after the host's last acknowledged keepalive. So when the loss is observed within one TTL of a raft
 * term change ({@link earlyRevokeSuspected}), the controller assumes `lastAck` may be as late as the
 * observation and waits `ttl + window` instead of `window` ({@link detachRecord} with `earlyRevoke`):
 * `fenceDeadline = observed + ttl + window >= lastAck + ttl + window`, which the inequality covers.
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
 * - `held`: the host acknowledged a hold (`holdSeen`): it applies it and does not self-fence. A hold
 *   the operator requested (`hold`) but the host has not acknowledged blocks nothing: the host does
 *   not apply it, so it self-fences on schedule (hold protocol, `host-record.ts`);
 * - `held-at-detach`: it applied a hold when it detached, so it does not self-fence — only an
 *   operator's `tether host fence <id> --confirm` may fence it, whatever the hold says now;
 * - `unsafe-timings`: its published timings break a rule of {@link checkTimings}, so the window
 *   proves nothing.
 */
export function fenceBlockers(record: Pick<HostRecord, 'holdSeen' | 'heldAtDetach' | 'timings'>): FenceBlocker[] {
  const b: FenceBlocker[] = [];
  if (record.holdSeen === true) b.push('held');
  if (record.heldAtDetach === true) b.push('held-at-detach');
  if (timingProblems(record) !== undefined) b.push('unsafe-timings');
  return b;
}

/** Options of {@link detachRecord}. */
export interface DetachOptions {
  /** Controller override of the window (lengthens only, see {@link effectiveFenceWindow}). */
  readonly fenceWindowOverride?: number;
  /**
   * The lease may have been revoked early (see {@link earlyRevokeSuspected}): wait the host's TTL on
   * top of the window, as if its last acknowledged keepalive had been at the observation.
   */
  readonly earlyRevoke?: boolean;
}

/**
 * The window from an observed lease loss to the fence: the effective window, plus the host's `ttl`
 * when an early revoke is suspected. Invariant: `>= timings.fenceWindow`, and `>= ttl + fenceWindow`
 * when `earlyRevoke`.
 */
export function lossToFenceMs(timings: Pick<GcTimings, 'fenceWindow' | 'ttl'>, opts: DetachOptions = {}): number {
  const window = effectiveFenceWindow(timings, opts.fenceWindowOverride);
  const ttl = Number.isFinite(timings.ttl) && timings.ttl > 0 ? timings.ttl : 0;
  return window + (opts.earlyRevoke === true ? ttl : 0);
}

/**
 * The record after the controller observed the host's lease gone at `observedWall`:
 * `detached`, `detachedAt = observedWall`, `fenceDeadline = observedWall + lossToFenceMs(...)`,
 * `heldAtDetach` = the host had ACKNOWLEDGED a hold (`holdSeen`): the hold it applies, so the one
 * that stops it self-fencing. A requested hold not yet acknowledged does not count, and a release not
 * yet acknowledged still counts as held.
 *
 * Invariant: `fenceDeadline - detachedAt >= record.timings.fenceWindow` (plus `ttl` with `earlyRevoke`).
 */
export function detachRecord(record: HostRecord, observedWall: number, opts: DetachOptions = {}): HostRecord {
  return {
    ...record,
    state: 'detached',
    detachedAt: observedWall,
    fenceDeadline: observedWall + lossToFenceMs(record.timings ?? { fenceWindow: 0, ttl: 0 }, opts),
    heldAtDetach: record.holdSeen === true,
    updatedAt: observedWall,
  };
}

/** The controller's last observation of a raft term change, on its monotonic clock. */
export interface TermChange {
  readonly term: number;
  /** When this controller first saw `term` (its first observation counts as a change: the history before it is unknown). */
  readonly seenMono: number;
}

/**
 * True when a lease loss observed at `lossMono` may be an early revoke (etcd #15247): a raft term
 * change was seen within one `ttl` of it, before OR after (the change may be noticed a little after
 * the deletion it caused, through another response's header). Pure; times on one monotonic clock.
 *
 * Invariant: `|change.seenMono - lossMono| <= ttl` ⇔ true; no change seen ⇒ false.
 */
export function earlyRevokeSuspected(lossMono: number, change: TermChange | undefined, ttl: number): boolean {
  if (change === undefined || !Number.isFinite(lossMono) || !Number.isFinite(change.seenMono)) return false;
  const t = Number.isFinite(ttl) && ttl > 0 ? ttl : 0;
  return Math.abs(change.seenMono - lossMono) <= t;
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

