/**
 * Mass-disruption freeze, pure (issue 4, item 6). Trouble in the control plane (a partition of the
 * controller, an etcd hiccup that revokes leases) must not look like every host failing at once: when
 * more than `limit` (default 55 %) of the hosts is detached at once, the controller fences and
 * reschedules nothing; when the share falls back, it resumes only a full fence window later.
 *
 * The pool counts hosts whose record is `attached`, `ready` or `detached`: fenced and retired hosts are
 * already out of the cluster. A pool of one detached host is 100 %: a one-host cluster never fences
 * automatically (there is nowhere to reschedule to anyway).
 *
 * Times are monotonic ms of the controller that evaluates.
 */
import type { HostRecordState } from './host-record.js';

/** Default share of detached hosts above which the controller freezes. */
export const DEFAULT_FREEZE_SHARE = 0.55;

/** Detached hosts out of the pool. */
export interface DetachedCount {
  readonly detached: number;
  readonly total: number;
}

/**
 * `normal`: fencing allowed. `frozen`: share above the limit, nothing is fenced. `resuming`: the share
 * fell back at `since`; fencing resumes at `resumeAt`.
 */
export type FreezeState =
  | { readonly mode: 'normal' }
  | { readonly mode: 'frozen'; readonly since: number; readonly count: DetachedCount }
  | { readonly mode: 'resuming'; readonly since: number; readonly resumeAt: number; readonly count: DetachedCount };

/** What changed in one {@link evaluateFreeze} step. */
export type FreezeTransition = 'entered' | 'fell-back' | 'resumed';

/** Initial state: not frozen. */
export const NOT_FROZEN: FreezeState = { mode: 'normal' };

/** One host as the freeze counts it: its record's state (undefined: no record any more) and whether its `alive` key exists. */
export interface PoolMember {
  readonly state: HostRecordState | undefined;
  readonly alive: boolean;
  /** C7: it left the pool (fenced, retired) within the leave grace: it still counts, as detached. */
  readonly leftRecently?: boolean;
}

/** True for the states of the pool (`attached`, `ready`, `detached`). */
export function inPool(state: HostRecordState | undefined): boolean {
  return state === 'attached' || state === 'ready' || state === 'detached';
}

/** C1: a pool host counts as detached when its record says so or its `alive` key is gone. */
export function countsDetached(m: Pick<PoolMember, 'state' | 'alive'>): boolean {
  return inPool(m.state) && (m.state === 'detached' || !m.alive);
}

/**
 * Counts the pool with the controller's commitments of docs/peer-check.md (issue 11):
 * - C1: a pool host whose `alive` key is gone counts as detached, whatever its record says;
 * - C3: while a freeze holds (`atFreeze`: the pool when the freeze began), only those hosts count:
 *   a host first registered since counts in neither number, and one of them now fenced, retired or
 *   without a record (an operator's doing: the controller fences nothing while frozen) counts as
 *   detached.
 *
 * - C7: outside a freeze, a host that left the pool (fenced, retired) within the leave grace still
 *   counts, as detached (a peer may have counted it as a witness just before it was fenced).
 *
 * `member(id)` looks a host up; `ids` are every host the controller knows (used without `atFreeze`).
 * Invariants: `detached <= total`; with `atFreeze`, `total = atFreeze.size`; a host counts as attached
 * only when its record is in the pool, not `detached`, and its `alive` key exists.
 */
export function countPool(member: (id: string) => PoolMember | undefined, ids: Iterable<string>, atFreeze?: ReadonlySet<string>): DetachedCount {
  let detached = 0;
  let total = 0;
  if (atFreeze !== undefined) {
    for (const id of atFreeze) {
      total++;
      const m = member(id);
      if (m === undefined || !inPool(m.state) || m.state === 'detached' || !m.alive) detached++;
    }
    return { detached, total };
  }
  for (const id of ids) {
    const m = member(id);
    if (m === undefined) continue;
    if (!inPool(m.state)) {
      if (m.leftRecently === true) {
        total++;
        detached++;
      }
      continue;
    }
    total++;
    if (countsDetached(m)) detached++;
  }
  return { detached, total };
}

/** True when the share of detached hosts is above `limit` (strictly). An empty pool never is. */
export function aboveLimit(c: DetachedCount, limit: number): boolean {
  return c.total > 0 && c.detached / c.total > limit;
}

/**
 * One step of the freeze: from `prev`, the current count and the time.
 * - above the limit: `frozen` (from any mode; `entered` unless already frozen);
 * - frozen and at or below the limit: `resuming` until `now + window` (`fell-back`);
 * - resuming and `now >= resumeAt`: `normal` (`resumed`).
 *
 * `window` is the longest fence window among the hosts: "a full fence window" for each of them.
 * Invariant: fencing is allowed only in `normal`; leaving `frozen` always passes through `resuming`
 * for a full `window`.
 */
export function evaluateFreeze(
  prev: FreezeState,
  count: DetachedCount,
  now: number,
  opts: { readonly limit: number; readonly window: number },
): { state: FreezeState; transition?: FreezeTransition } {
  if (aboveLimit(count, opts.limit)) {
    if (prev.mode === 'frozen') return { state: { ...prev, count } };
    return { state: { mode: 'frozen', since: now, count }, transition: 'entered' };
  }
  if (prev.mode === 'frozen') return { state: { mode: 'resuming', since: now, resumeAt: now + opts.window, count }, transition: 'fell-back' };
  if (prev.mode === 'resuming') {
    if (now >= prev.resumeAt) return { state: NOT_FROZEN, transition: 'resumed' };
    return { state: { ...prev, count } };
  }
  return { state: prev };
}

/** True when fencing and rescheduling are allowed. */
export function fencingAllowed(state: FreezeState): boolean {
  return state.mode === 'normal';
}

/** One line for status and events: why nothing is fenced, or undefined when fencing is allowed. */
export function describeFreeze(state: FreezeState, limit: number, now: number): string | undefined {
  const pct = (x: number) => `${Math.round(x * 100)}%`;
  if (state.mode === 'frozen') {
    const { detached, total } = state.count;
    return `mass-disruption freeze: ${detached} of ${total} hosts detached (${pct(detached / total)} > ${pct(limit)}); nothing is fenced or rescheduled`;
  }
  if (state.mode === 'resuming') {
    return `mass-disruption freeze lifting: fencing resumes in ${Math.max(0, Math.ceil((state.resumeAt - now) / 1000))}s (a full fence window after the share fell back)`;
  }
  return undefined;
}
