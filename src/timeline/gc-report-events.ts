/**
 * A host's own account for the timeline, from what its agent publishes today: the last GC run
 * (`tether gc report --json`, admin `GET gc/report`) and its status (`tether gc status --json`,
 * `GET gc/status`), which names the host. Pure.
 *
 * Invariants: wall times are rebuilt from the report's wall `startedAt` (fence start) and its
 * monotonic offsets (so they are as good as the host's clock; display only); a field of the wrong
 * type is ignored, never trusted; a VM whose stop failed becomes `vm-stop-failed`, never a stop.
 */
import type { GcReport, VmStopReport } from '../agent/gc/gc-report.js';
import type { GcStatus } from '../agent/gc/host-gc.js';
import { TetherError } from '../domain/errors.js';
import type { HostTimeline, HostTimelineEvent, TimelineStopMethod } from '../domain/timeline.js';

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const text = (v: unknown): string => (typeof v === 'string' ? v : finite(v) ? String(v) : '?');

function stopMethod(m: VmStopReport['method']): { method: TimelineStopMethod; detail?: string } {
  if (m === 'graceful') return { method: 'graceful' };
  if (m === 'forced-guardian') return { method: 'forced-guardian' };
  if (m === 'already-stopped') return { method: 'graceful', detail: 'was already stopped' };
  return { method: 'forced', detail: text(m) };
}

/**
 * The host events one GC report tells: last acknowledged heartbeat, detection, the watchdog and its
 * deadline (when the fence came from the watchdog, it started at the deadline), the fence start,
 * each VM's end, the cleanup, the audit, the rejoin.
 */
export function hostEventsFromGcReport(r: GcReport): HostTimelineEvent[] {
  const out: HostTimelineEvent[] = [];
  if (!isObject(r) || !finite(r.startedAt)) return out;
  const start = r.startedAt;
  const lastAck = finite(r.fenceStartAfterAckMs) ? start - r.fenceStartAfterAckMs : undefined;
  if (lastAck !== undefined) out.push({ kind: 'heartbeat-acked', at: lastAck, detail: 'last acknowledged heartbeat' });
  if (lastAck !== undefined && finite(r.detectedAfterAckMs)) {
    const detectedAt = lastAck + r.detectedAfterAckMs;
    out.push({ kind: 'detached', at: detectedAt });
    if (r.reason === 'watchdog') out.push({ kind: 'watchdog-armed', at: detectedAt, deadline: start });
  }
  if (r.reason === 'watchdog') out.push({ kind: 'watchdog-expired', at: start });
  if (r.reason === 'guardian') out.push({ kind: 'guardian-fired', at: start });
  out.push({ kind: 'fence-started', at: start, reason: r.reason === 'watchdog' || r.reason === 'guardian' || r.reason === 'cluster-fenced' ? r.reason : 'watchdog' });
  for (const s of Array.isArray(r.stops) ? r.stops : []) {
    if (!isObject(s) || !finite(s.stoppedAfterMs)) continue;
    const at = start + s.stoppedAfterMs;
    if (s.method === 'failed') {
      out.push({ kind: 'vm-stop-failed', at, vm: text(s.vm), uid: text(s.uid), ...(typeof s.error === 'string' ? { error: s.error } : {}) });
      continue;
    }
    const m = stopMethod(s.method as VmStopReport['method']);
    out.push({ kind: 'vm-stop', at, vm: text(s.vm), uid: text(s.uid), method: m.method, ...(m.detail === undefined ? {} : { detail: m.detail }) });
  }
  if (finite(r.cleanAfterMs)) {
    const removed = Array.isArray(r.removed) ? r.removed.length : 0;
    const failures = Array.isArray(r.cleanupFailures) ? r.cleanupFailures.length : 0;
    out.push({ kind: 'cleaned', at: start + r.cleanAfterMs, detail: `${removed} resource(s) removed, ${failures} failure(s)` });
  }
  if (isObject(r.audit) && finite(r.audit.at)) {
    const leaks = Array.isArray(r.audit.leaks) ? r.audit.leaks.map(text) : [];
    out.push({ kind: 'verified', at: r.audit.at, leftovers: leaks });
  }
  if (finite(r.rejoinedEpoch) && finite(r.rejoinedAfterMs)) out.push({ kind: 'rejoined', at: start + r.rejoinedAfterMs, epoch: r.rejoinedEpoch });
  return out.map((e, i) => [e, i] as const).sort((a, b) => a[0].at - b[0].at || a[1] - b[1]).map(([e]) => e);
}

/** What one `--host-report` file holds: a GC report, a GC status, or both (`{ status, report }`). */
export interface HostReportParts {
  readonly hostId?: string;
  readonly status?: GcStatus;
  readonly report?: GcReport | null;
}

function isReport(v: unknown): v is GcReport {
  return isObject(v) && finite(v.startedAt) && Array.isArray(v.stops);
}
function isStatus(v: unknown): v is GcStatus {
  return isObject(v) && typeof v.hostId === 'string' && typeof v.phase === 'string';
}

/**
 * Recognises a parsed `--host-report` file: `tether gc report --json` (a report, or `null` when the
 * host never fenced), `tether gc status --json`, or `{ hostId?, status?, report? }`.
 *
 * @throws TetherError `INVALID_ARGUMENT` naming `source` when it is none of these.
 */
export function parseHostReport(v: unknown, source: string): HostReportParts {
  if (v === null) return { report: null };
  if (isReport(v)) return { report: v };
  if (isStatus(v)) return { hostId: v.hostId, status: v };
  if (isObject(v) && ('status' in v || 'report' in v)) {
    const status = isStatus(v.status) ? v.status : undefined;
    const report = isReport(v.report) ? v.report : v.report === null ? null : undefined;
    const hostId = typeof v.hostId === 'string' ? v.hostId : status?.hostId;
    if (status === undefined && report === undefined) throw new TetherError('INVALID_ARGUMENT', `${source}: neither its "status" nor its "report" is a GC status or report`);
    return { ...(hostId === undefined ? {} : { hostId }), ...(status === undefined ? {} : { status }), ...(report === undefined ? {} : { report }) };
  }
  throw new TetherError('INVALID_ARGUMENT', `${source}: not a GC report (tether gc report --json), a GC status (tether gc status --json) or { status, report }`);
}

/**
 * One lane per host from the parsed files. A report without a host id takes the id of the only
 * status given (when exactly one names a host), else `fallbackHostId`. Files naming the same host
 * are merged.
 */
export function hostTimelinesFromReports(parts: readonly HostReportParts[], fallbackHostId = 'host'): HostTimeline[] {
  const named = [...new Set(parts.map((p) => p.hostId).filter((h): h is string => h !== undefined))];
  const byHost = new Map<string, HostTimelineEvent[]>();
  for (const p of parts) {
    const hostId = p.hostId ?? (named.length === 1 ? named[0]! : fallbackHostId);
    const events = byHost.get(hostId) ?? [];
    if (p.report) events.push(...hostEventsFromGcReport(p.report));
    byHost.set(hostId, events);
  }
  return [...byHost].map(([hostId, events]) => ({ hostId, events: events.slice().sort((a, b) => a.at - b.at) }));
}
