/**
 * Reading a {@link TimelineInput} from JSON someone else wrote (the simulator, a chaos report, an
 * earlier `tether timeline --live --json`). Pure.
 *
 * Invariant: the top-level shape is checked (a clear error naming the file and the field); entries
 * are not trusted either way — the layout ignores those without a finite `at` and renders every
 * string escaped.
 */
import { TetherError } from '../domain/errors.js';
import type { TimelineInput } from '../domain/timeline.js';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * `v` as a timeline input: a {@link TimelineInput} itself, or an object holding one under
 * `timeline` (as a chaos report does).
 *
 * @throws TetherError `INVALID_ARGUMENT` naming `source` and the first field that is wrong.
 */
export function parseTimelineInput(v: unknown, source: string): TimelineInput {
  const t = isObject(v) && isObject(v.timeline) ? v.timeline : v;
  if (!isObject(t)) throw new TetherError('INVALID_ARGUMENT', `${source}: not a timeline (a JSON object with source, title, origin, cluster, hosts, faults, violations)`);
  for (const k of ['cluster', 'hosts', 'faults', 'violations'] as const) {
    if (t[k] !== undefined && !Array.isArray(t[k])) throw new TetherError('INVALID_ARGUMENT', `${source}: "${k}" must be an array`, { details: { field: k } });
  }
  if (typeof t.origin !== 'number' || !Number.isFinite(t.origin)) throw new TetherError('INVALID_ARGUMENT', `${source}: "origin" must be a number (wall ms shown as t=0)`, { details: { field: 'origin' } });
  const hosts = ((t.hosts as unknown[] | undefined) ?? []).map((h, i) => {
    if (!isObject(h) || typeof h.hostId !== 'string' || !Array.isArray(h.events)) throw new TetherError('INVALID_ARGUMENT', `${source}: hosts[${i}] must be { hostId: string, events: [] }`, { details: { field: `hosts[${i}]` } });
    return { hostId: h.hostId, events: h.events };
  });
  const source_ = t.source === 'sim' || t.source === 'chaos' || t.source === 'live' ? t.source : 'live';
  return {
    source: source_,
    title: typeof t.title === 'string' ? t.title : source,
    origin: t.origin,
    cluster: ((t.cluster as unknown[] | undefined) ?? []).filter(isObject),
    hosts,
    faults: ((t.faults as unknown[] | undefined) ?? []).filter(isObject),
    violations: ((t.violations as unknown[] | undefined) ?? []).filter(isObject),
  } as unknown as TimelineInput;
}
