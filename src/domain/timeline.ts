/**
 * What happened, as one input for `tether timeline`: the cluster's events, each host's own account
 * (from its GC report, or from the simulator's trace), the faults injected and the invariant
 * violations found. The simulator writes one for a failing (or requested) seed, chaos writes one in
 * its report, and `tether timeline --live` builds one from etcd's events plus a host's GC report.
 *
 * Invariants: every `at` is wall-clock ms (display and ordering only, never a decision); `origin` is
 * the wall ms shown as t=0; nothing here is trusted: strings come from etcd or from files and may be
 * hostile, so renderers escape them and converters drop entries without a finite `at`.
 * Pure: no Node, no clock.
 */
import type { ClusterEvent } from './cluster-event.js';
import type { FenceReason } from './host-lifecycle.js';

/** How a VM ended during a fence: `forced-guardian` is the guardian's SIGKILL (the agent was dead, frozen or too late). */
export type TimelineStopMethod = 'graceful' | 'forced' | 'forced-guardian';

/**
 * What a host knows of its own lifecycle, as points in (wall) time. A discriminated union on `kind`;
 * `detail`, when present, is one line for people.
 */
export type HostTimelineEvent = { readonly at: number; readonly detail?: string } & (
  /** An acknowledged heartbeat (send time). Many are allowed; the last one before trouble matters most. */
  | { readonly kind: 'heartbeat-acked' }
  /** The host noticed it had no acknowledged heartbeat for `detachAfter`. */
  | { readonly kind: 'detached' }
  /** The watchdog is counting down to `deadline` (wall ms: last ack + watchdogTimeout). */
  | { readonly kind: 'watchdog-armed'; readonly deadline: number }
  /** The watchdog deadline passed: the host fences itself. */
  | { readonly kind: 'watchdog-expired' }
  /** The host started stopping its VMs, and why. */
  | { readonly kind: 'fence-started'; readonly reason: FenceReason }
  /** One VM is gone, and how it went. */
  | { readonly kind: 'vm-stop'; readonly vm: string; readonly uid: string; readonly method: TimelineStopMethod }
  /** Stopping one VM failed: it may still run. */
  | { readonly kind: 'vm-stop-failed'; readonly vm: string; readonly uid: string; readonly error?: string }
  /** The host's own resources (taps, overlays, processes) were removed. */
  | { readonly kind: 'cleaned' }
  /** The audit after cleanup; `leftovers`: what it still found (empty: clean). */
  | { readonly kind: 'verified'; readonly leftovers: readonly string[] }
  /** The host registered again, ready for new work, at this epoch. */
  | { readonly kind: 'rejoined'; readonly epoch: number }
  /** The out-of-process guardian's deadline passed and it killed the VMs. */
  | { readonly kind: 'guardian-fired' }
);

/** Every kind of host timeline event. */
export type HostTimelineEventKind = HostTimelineEvent['kind'];

/** One host's lane. */
export interface HostTimeline {
  readonly hostId: string;
  readonly events: readonly HostTimelineEvent[];
}

/** A fault injected by the simulator's or chaos's nemesis (`until`: when it was healed, if it was). */
export interface TimelineFault {
  readonly at: number;
  readonly until?: number;
  readonly kind: string;
  readonly target: string;
  readonly detail?: string;
}

/** An invariant the simulator or chaos found broken. */
export interface TimelineViolation {
  readonly at: number;
  readonly invariant: string;
  readonly detail: string;
}

/** Everything `tether timeline` renders. */
export interface TimelineInput {
  readonly source: 'sim' | 'chaos' | 'live';
  /** e.g. "sim seed 42" / "chaos 2026-12-01T18:00Z". */
  readonly title: string;
  /** Wall ms shown as t=0. */
  readonly origin: number;
  /** Cluster events (src/domain/cluster-event.ts), each with `at`. */
  readonly cluster: readonly ClusterEvent[];
  readonly hosts: readonly HostTimeline[];
  readonly faults: readonly TimelineFault[];
  readonly violations: readonly TimelineViolation[];
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Cluster events as listed today: `tether events --json` (an array of {@link ClusterEvent}) or the
 * store's `StoredEvent`s (`{ key, event }`). Entries that are not objects with a string `kind` and a
 * finite `at` are dropped (etcd may hold anything); the result is sorted by `at` (stable).
 */
export function clusterEventsFrom(listed: readonly unknown[]): ClusterEvent[] {
  const out: ClusterEvent[] = [];
  for (const item of listed) {
    const e = isObject(item) && isObject(item.event) ? item.event : item;
    if (!isObject(e) || typeof e.kind !== 'string' || !finite(e.at)) continue;
    out.push(e as unknown as ClusterEvent);
  }
  return out.map((e, i) => [e, i] as const).sort((a, b) => a[0].at - b[0].at || a[1] - b[1]).map(([e]) => e);
}

/**
 * A live {@link TimelineInput} from what exists today: the cluster's events (see
 * {@link clusterEventsFrom}) and each host's timeline (see src/timeline/gc-report-events.ts, which
 * turns an agent's `tether gc report --json` / `gc status --json` into host events). `since`: wall
 * ms; older cluster and host events are dropped. `origin`: the earliest remaining event (or `now`
 * when there is none), so t=0 is when the story starts.
 */
export function liveTimelineInput(args: {
  readonly title: string;
  readonly events: readonly unknown[];
  readonly hosts?: readonly HostTimeline[];
  readonly since?: number;
  readonly now: number;
}): TimelineInput {
  const since = args.since ?? -Infinity;
  const cluster = clusterEventsFrom(args.events).filter((e) => e.at >= since);
  const hosts = (args.hosts ?? []).map((h) => ({ hostId: h.hostId, events: h.events.filter((e) => finite(e.at) && e.at >= since).slice().sort((a, b) => a.at - b.at) }));
  const times = [...cluster.map((e) => e.at), ...hosts.flatMap((h) => h.events.map((e) => e.at))];
  const origin = times.length > 0 ? Math.min(...times) : args.now;
  return { source: 'live', title: args.title, origin, cluster, hosts, faults: [], violations: [] };
}
