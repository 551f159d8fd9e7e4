/**
 * The timeline's layout, shared by the text and the HTML renderers: lanes (the cluster, one per
 * host, the faults), time relative to the input's origin, the bands (fence windows up to their
 * deadline, watchdog countdowns, faults), one labelled mark per event, and the safety margins.
 *
 * The safety margin of one detachment is the cluster's fence deadline (the detach's `fenceDeadline`,
 * or the latest `fence-deadline-extended` for that host and epoch) minus the moment the host's last
 * VM was gone (its last `vm-stop` in that detachment). Negative: the cluster could have placed a VM
 * again while its old incarnation still ran — a violation.
 *
 * Invariants: pure (no Node, no clock); every string in the layout is the input's (possibly hostile)
 * text, unescaped — each renderer escapes for its medium; malformed event fields show as `?`, they
 * never throw.
 */
import type { ClusterEvent } from '../domain/cluster-event.js';
import type { HostTimelineEvent, TimelineInput } from '../domain/timeline.js';

/** How an event reads: good news, neutral, worth a look, bad. */
export type Severity = 'good' | 'info' | 'warn' | 'bad';

/** A lane: `cluster`, one per host (`host:<id>`), `faults`. */
export interface Lane {
  readonly id: string;
  readonly label: string;
  readonly kind: 'cluster' | 'host' | 'faults';
}

/** One point in time on a lane. `t`: ms since the origin. */
export interface Mark {
  readonly lane: string;
  readonly t: number;
  /** The event kind (e.g. `host-detached`, `vm-stop`). */
  readonly kind: string;
  /** What the event concerns (host or VM), may be ''. */
  readonly subject: string;
  /** One short line. */
  readonly label: string;
  readonly severity: Severity;
  /** The event's own line for people (cluster events' `detail`), if any: shown on hover in HTML. */
  readonly detail?: string;
  /** Heartbeats are many: all but the last before trouble are `minor` (ticks, not lines). */
  readonly minor?: boolean;
}

/** A span of time on a lane. */
export interface Band {
  readonly lane: string;
  readonly from: number;
  /** Undefined: still open at the end of the timeline. */
  readonly to?: number;
  readonly kind: 'fence-window' | 'watchdog' | 'fault';
  readonly label: string;
}

/** The safety margin of one detachment. */
export interface Margin {
  readonly hostId: string;
  readonly epoch: number;
  /** When the cluster saw the host detach (the fence window opens), ms since origin. */
  readonly detachedAt: number;
  /** The cluster's (latest) fence deadline, ms since origin. */
  readonly deadline: number;
  /** When the host's last VM was gone, ms since origin (undefined: no stop recorded). */
  readonly lastGone?: number;
  /** `deadline - lastGone` (undefined when unknown). */
  readonly marginMs?: number;
  /** True when the margin is negative, or a stop failed in this detachment. */
  readonly violation: boolean;
  /** Why the margin is unknown or what else matters (held at detach, stop failed...). */
  readonly note: string;
}

/** An invariant violation, at `t`. */
export interface LaidViolation {
  readonly t: number;
  readonly invariant: string;
  readonly detail: string;
}

/** Everything a renderer draws. */
export interface TimelineLayout {
  readonly title: string;
  readonly source: string;
  /** Wall ms of t=0. */
  readonly origin: number;
  /** Earliest and latest ms since origin shown (start <= 0 <= end unless events precede the origin). */
  readonly start: number;
  readonly end: number;
  readonly lanes: readonly Lane[];
  /** Sorted by `t`, then input order. */
  readonly marks: readonly Mark[];
  readonly bands: readonly Band[];
  readonly margins: readonly Margin[];
  readonly violations: readonly LaidViolation[];
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
/** A field as text: strings as they are, numbers printed, anything else `?`. */
export const field = (v: unknown): string => (typeof v === 'string' ? v : finite(v) ? String(v) : '?');
const list = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);

/** `+1.234s`, `+2m03.456s`, `-0.500s`: ms relative to the origin, to the millisecond. */
export function formatOffset(ms: number): string {
  if (!finite(ms)) return '?';
  const sign = ms < 0 ? '-' : '+';
  const a = Math.round(Math.abs(ms));
  const m = Math.floor(a / 60000);
  const s = ((a % 60000) / 1000).toFixed(3);
  return m > 0 ? `${sign}${m}m${s.padStart(6, '0')}s` : `${sign}${s}s`;
}

/** A signed duration: `+1.234s`, `-0.800s`. */
export const formatSigned = formatOffset;

function clusterMark(e: ClusterEvent, t: number, rel: (wall: number) => number): Mark {
  const r = e as unknown as Record<string, unknown>;
  const base = { lane: 'cluster', t, kind: field(r.kind) };
  const host = field(r.hostId);
  switch (e.kind) {
    case 'controller-elected':
      return { ...base, subject: field(r.controllerId), label: `controller ${field(r.controllerId)} elected`, severity: 'info' };
    case 'host-detached':
      return { ...base, subject: host, label: `${host} detached (epoch ${field(r.epoch)}), fence deadline ${finite(r.fenceDeadline) ? formatOffset(rel(r.fenceDeadline)) : '?'}${r.heldAtDetach === true ? ', held at detach' : ''}`, severity: 'warn' };
    case 'host-returned':
      return { ...base, subject: host, label: `${host} returned (epoch ${field(r.epoch)})`, severity: 'good' };
    case 'host-fence-blocked':
      return { ...base, subject: host, label: `${host} fence blocked: ${list(r.blockers).map(field).join(', ')}`, severity: 'warn' };
    case 'host-unsafe-timings':
      return { ...base, subject: host, label: `${host} publishes unsafe timings: ${field(r.violations)}`, severity: 'warn' };
    case 'fence-deadline-extended':
      return { ...base, subject: host, label: `${host} fence deadline moved to ${finite(r.to) ? formatOffset(rel(r.to)) : '?'}${r.why === undefined ? '' : ` (${field(r.why)})`}`, severity: 'warn' };
    case 'host-fenced': {
      const n = finite(r.lostVmCount) ? r.lostVmCount : list(r.lostVms).length;
      return { ...base, subject: host, label: `${host} FENCED by ${field(r.by)} (epoch ${field(r.epoch)}), ${n} VM(s) lost`, severity: 'bad' };
    }
    case 'host-vms-lost':
      return { ...base, subject: host, label: `${host}: ${list(r.vms).length} VM(s) marked lost`, severity: 'warn' };
    case 'controller-error':
      return { ...base, subject: r.hostId === null ? '' : host, label: `controller error ${field(r.code)} in ${field(r.action)}${r.hostId === null ? '' : ` (${host})`}`, severity: 'bad' };
    case 'host-hold-changed':
      return { ...base, subject: host, label: `${host} hold ${r.hold === true ? 'on' : 'off'}`, severity: 'info' };
    case 'host-retired':
      return { ...base, subject: host, label: `${host} retired (epoch ${field(r.epoch)})`, severity: 'info' };
    case 'host-removed':
      return { ...base, subject: host, label: `${host} removed`, severity: 'info' };
    case 'freeze-entered':
      return { ...base, subject: '', label: `mass freeze: ${field(r.detached)}/${field(r.total)} hosts detached (limit ${field(r.limit)})`, severity: 'warn' };
    case 'freeze-lifted':
      return { ...base, subject: '', label: `freeze lifted (${field(r.detached)}/${field(r.total)} detached)`, severity: 'info' };
    case 'freeze-resumed':
      return { ...base, subject: '', label: 'fencing resumed after the freeze', severity: 'info' };
    case 'vm-lost':
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} lost on ${host}`, severity: 'warn' };
    case 'vm-rescheduled':
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} rescheduled ${r.fromHost === null ? '' : `from ${field(r.fromHost)} `}to ${field(r.toHost)}`, severity: 'good' };
    case 'vm-pending':
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} pending: ${field(r.reason)}`, severity: 'warn' };
    case 'vm-lost-kept':
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} lost, kept (not placed again)`, severity: 'info' };
    default:
      return { ...base, subject: '', label: `${field(r.kind)}: ${field(r.detail)}`, severity: 'info' };
  }
}

const STOP_SEVERITY = { graceful: 'good', forced: 'warn', 'forced-guardian': 'warn' } as const;

function hostMark(hostId: string, e: HostTimelineEvent, t: number, rel: (wall: number) => number): Mark {
  const r = e as unknown as Record<string, unknown>;
  const base = { lane: `host:${hostId}`, t, kind: field(r.kind), subject: hostId };
  const extra = typeof r.detail === 'string' && r.detail !== '' ? ` (${r.detail})` : '';
  switch (e.kind) {
    case 'heartbeat-acked':
      return { ...base, label: 'heartbeat acknowledged', severity: 'info' };
    case 'detached':
      return { ...base, label: `detached: no acknowledged heartbeat${extra}`, severity: 'warn' };
    case 'watchdog-armed':
      return { ...base, label: `watchdog armed, deadline ${finite(r.deadline) ? formatOffset(rel(r.deadline)) : '?'}${extra}`, severity: 'warn' };
    case 'watchdog-expired':
      return { ...base, label: `watchdog expired: fencing itself${extra}`, severity: 'warn' };
    case 'fence-started':
      return { ...base, label: `fence started (${field(r.reason)})${extra}`, severity: 'warn' };
    case 'vm-stop': {
      const m = field(r.method);
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} stopped, ${m}${extra}`, severity: STOP_SEVERITY[m as keyof typeof STOP_SEVERITY] ?? 'warn' };
    }
    case 'vm-stop-failed':
      return { ...base, subject: field(r.vm), label: `vm ${field(r.vm)} STOP FAILED${typeof r.error === 'string' ? `: ${r.error}` : ''}`, severity: 'bad' };
    case 'cleaned':
      return { ...base, label: `cleaned${extra}`, severity: 'good' };
    case 'verified': {
      const left = list(r.leftovers).map(field);
      return left.length === 0 ? { ...base, label: 'verified clean', severity: 'good' } : { ...base, label: `audit found ${left.length} leftover(s): ${left.slice(0, 5).join(', ')}${left.length > 5 ? ', ...' : ''}`, severity: 'bad' };
    }
    case 'rejoined':
      return { ...base, label: `rejoined at epoch ${field(r.epoch)}${extra}`, severity: 'good' };
    case 'guardian-fired':
      return { ...base, label: `guardian fired: killed the VMs${extra}`, severity: 'warn' };
    default:
      return { ...base, label: `${field(r.kind)}${extra}`, severity: 'info' };
  }
}

/** Mass-freeze spans `[from, to)` from freeze-entered / freeze-lifted (`resumeAt`) events; `to` Infinity while never lifted. */
function freezeSpans(cluster: readonly ClusterEvent[]): { from: number; to: number }[] {
  const spans: { from: number; to: number }[] = [];
  let open: number | undefined;
  for (const e of cluster) {
    if (e.kind === 'freeze-entered' && open === undefined) open = e.at;
    else if ((e.kind === 'freeze-lifted' || e.kind === 'freeze-resumed') && open !== undefined) {
      const r = e as unknown as Record<string, unknown>;
      spans.push({ from: open, to: e.kind === 'freeze-lifted' && finite(r.resumeAt) ? Math.max(r.resumeAt, e.at) : e.at });
      open = undefined;
    }
  }
  if (open !== undefined) spans.push({ from: open, to: Infinity });
  return spans;
}

/**
 * One margin per `host-detached`. The episode of a detachment runs from the end of the host's
 * previous one (its last return, rejoin or detach before it) to its return, next detach or rejoin; the
 * host's VM stops in that span count. The deadline is the detach's, raised by a later
 * `fence-deadline-extended` of the same epoch, and pushed past any mass freeze it falls in (the
 * cluster fences nothing while frozen: up to the freeze's `resumeAt`).
 */
function margins(input: TimelineInput, rel: (wall: number) => number): Margin[] {
  const out: Margin[] = [];
  const cluster = input.cluster.filter((e) => finite(e.at));
  const frozen = freezeSpans(cluster);
  const hostOf = (e: ClusterEvent) => (e as unknown as Record<string, unknown>).hostId;
  for (const d of cluster) {
    if (d.kind !== 'host-detached') continue;
    const r = d as unknown as Record<string, unknown>;
    const hostId = field(r.hostId);
    const epoch = finite(r.epoch) ? r.epoch : NaN;
    const later = cluster.filter((e) => e.at >= d.at && e !== d && hostOf(e) === r.hostId);
    const endEvent = later.find((e) => e.kind === 'host-returned' || e.kind === 'host-detached');
    let deadline = finite(r.fenceDeadline) ? r.fenceDeadline : NaN;
    for (const x of later) {
      if (endEvent && x.at > endEvent.at) break;
      if (x.kind === 'fence-deadline-extended' && (x as unknown as Record<string, unknown>).epoch === r.epoch && finite(x.to)) deadline = Math.max(deadline, x.to);
    }
    const recorded = deadline;
    for (const f of frozen) if (f.from <= deadline && deadline < f.to) deadline = f.to;
    const host = input.hosts.find((h) => h.hostId === hostId);
    const events = (host?.events ?? []).filter((e) => finite(e.at));
    const before = [
      ...cluster.filter((e) => e.at < d.at && hostOf(e) === r.hostId && (e.kind === 'host-detached' || e.kind === 'host-returned')).map((e) => e.at),
      ...events.filter((e) => e.at < d.at && e.kind === 'rejoined').map((e) => e.at),
    ];
    const from = before.length > 0 ? Math.max(...before) : -Infinity;
    const rejoin = events.find((e) => e.kind === 'rejoined' && e.at >= d.at);
    const returned = endEvent?.kind === 'host-returned';
    const fenced = later.some((e) => e.kind === 'host-fenced' && (!endEvent || e.at <= endEvent.at));
    // a return ends the episode too: stops after it belong to later trouble (chaos saw false violations)
    const until = Math.min(endEvent?.at ?? Infinity, rejoin?.at ?? Infinity);
    const inEpisode = events.filter((e) => e.at > from && e.at <= until);
    const stops = inEpisode.filter((e) => e.kind === 'vm-stop');
    const failed = inEpisode.filter((e) => e.kind === 'vm-stop-failed');
    const notes: string[] = [];
    const held = r.heldAtDetach === true && !fenced;
    if (held) notes.push('held at detach: the cluster does not fence it automatically');
    if (!Number.isNaN(recorded) && deadline !== recorded) notes.push(finite(deadline) ? `mass freeze: fencing resumed only at ${formatOffset(rel(deadline))}` : 'mass freeze: the cluster fenced nothing');
    if (Number.isNaN(recorded)) notes.push('no fence deadline recorded');
    let lastGone: number | undefined;
    if (stops.length > 0) lastGone = Math.max(...stops.map((e) => e.at));
    else if (!host) notes.push('no account from this host (pass its GC report)');
    else if (returned && !fenced) notes.push('no VM stop recorded; the host returned (not fenced)');
    else notes.push('no VM stop recorded');
    if (failed.length > 0) notes.push(`${failed.length} VM stop(s) FAILED: those VMs may still run`);
    const marginMs = lastGone !== undefined && finite(deadline) && !held ? deadline - lastGone : undefined;
    out.push({
      hostId,
      epoch,
      detachedAt: rel(d.at),
      deadline: finite(deadline) ? rel(deadline) : NaN,
      ...(lastGone === undefined ? {} : { lastGone: rel(lastGone) }),
      ...(marginMs === undefined ? {} : { marginMs }),
      violation: (marginMs !== undefined && marginMs < 0) || failed.length > 0,
      note: notes.join('; '),
    });
  }
  return out;
}

/**
 * Lays out `input`. Heartbeats are kept as minor marks except the last one before each other host
 * event (the "last acknowledged heartbeat"), which is a full mark.
 */
export function layoutTimeline(input: TimelineInput): TimelineLayout {
  const origin = finite(input.origin) ? input.origin : 0;
  const rel = (wall: number) => wall - origin;
  const lanes: Lane[] = [{ id: 'cluster', label: 'cluster', kind: 'cluster' }];
  const marks: Mark[] = [];
  const bands: Band[] = [];
  for (const e of input.cluster) {
    if (!finite(e.at)) continue;
    const m = clusterMark(e, rel(e.at), rel);
    marks.push(typeof e.detail === 'string' && e.detail !== '' ? { ...m, detail: e.detail } : m);
  }
  const hostIds = new Set<string>();
  for (const h of input.hosts) hostIds.add(field(h.hostId));
  for (const e of input.cluster) {
    const r = e as unknown as Record<string, unknown>;
    if (e.kind === 'host-detached' && typeof r.hostId === 'string') hostIds.add(r.hostId);
  }
  for (const id of hostIds) lanes.push({ id: `host:${id}`, label: id, kind: 'host' });
  for (const h of input.hosts) {
    const id = field(h.hostId);
    const events = (Array.isArray(h.events) ? h.events : []).filter((e) => finite(e.at)).slice().sort((a, b) => a.at - b.at);
    events.forEach((e, i) => {
      const m = hostMark(id, e, rel(e.at), rel);
      const next = events[i + 1];
      const minor = e.kind === 'heartbeat-acked' && next !== undefined && next.kind === 'heartbeat-acked';
      marks.push(minor ? { ...m, minor: true } : m);
      if (e.kind === 'watchdog-armed' && finite(e.deadline)) bands.push({ lane: `host:${id}`, from: rel(e.at), to: rel(e.deadline), kind: 'watchdog', label: `watchdog until ${formatOffset(rel(e.deadline))}` });
    });
  }
  const laidMargins = margins(input, rel);
  for (const m of laidMargins) {
    const deadline = finite(m.deadline) ? { to: m.deadline } : {};
    bands.push({ lane: `host:${m.hostId}`, from: m.detachedAt, ...deadline, kind: 'fence-window', label: `fence window (epoch ${field(m.epoch)})${finite(m.deadline) ? `, deadline ${formatOffset(m.deadline)}` : ''}` });
  }
  if (input.faults.length > 0) lanes.push({ id: 'faults', label: 'faults', kind: 'faults' });
  for (const f of input.faults) {
    if (!finite(f.at)) continue;
    const label = `${field(f.kind)} ${field(f.target)}${typeof f.detail === 'string' && f.detail !== '' ? ` (${f.detail})` : ''}`;
    bands.push({ lane: 'faults', from: rel(f.at), ...(finite(f.until) ? { to: rel(f.until) } : {}), kind: 'fault', label });
    marks.push({ lane: 'faults', t: rel(f.at), kind: 'fault', subject: field(f.target), label: `fault: ${label}${finite(f.until) ? ` until ${formatOffset(rel(f.until))}` : ''}`, severity: 'warn' });
  }
  const violations = input.violations.filter((v) => finite(v.at)).map((v) => ({ t: rel(v.at), invariant: field(v.invariant), detail: field(v.detail) }));
  const order = marks.map((m, i) => [m, i] as const).sort((a, b) => a[0].t - b[0].t || a[1] - b[1]).map(([m]) => m);
  const times = [0, ...order.map((m) => m.t), ...bands.flatMap((b) => (b.to === undefined ? [b.from] : [b.from, b.to])), ...violations.map((v) => v.t), ...laidMargins.flatMap((m) => [m.deadline, m.lastGone ?? NaN])].filter(finite);
  return {
    title: field(input.title),
    source: field(input.source),
    origin,
    start: Math.min(...times),
    end: Math.max(...times),
    lanes,
    marks: order,
    bands,
    margins: laidMargins,
    violations,
  };
}
