import { Counter, Gauge, Registry } from 'prom-client';
import type { HostPhase } from '../../domain/host-lifecycle.js';

const PHASES: HostPhase[] = ['starting', 'attached', 'suspect', 'detached', 'fencing', 'cleaning', 'clean', 'rejoining'];

/** What the metrics read at scrape time. */
export interface MetricsSource {
  phase(): HostPhase | undefined;
  lastAckAgeMs(): number | undefined;
  watchdogRemainingMs(): number | undefined;
  vmCount(): number;
  /** The peer check's last verdict while detached (issue 11), if any. */
  peerCheck?(): { readonly holdingBack: boolean; readonly witnesses: readonly string[] } | undefined;
}

/** The agent's Prometheus metrics; counters are bumped by the agent, gauges read at scrape time. */
export class AgentMetrics {
  readonly registry = new Registry();
  readonly vmsStopped: Counter<'method'>;
  readonly cleanupFailures: Counter;
  readonly auditLeaks: Gauge;
  /** Peer check transitions: `held-back` (a fence held back), `ended` (no longer). */
  readonly peerCheckEvents: Counter<'event'>;

  constructor(src: MetricsSource) {
    const r = this.registry;
    new Gauge({
      name: 'tether_host_lifecycle_state',
      help: 'Host lifecycle state: 1 for the current phase, 0 for the others',
      labelNames: ['phase'],
      registers: [r],
      collect() {
        const p = src.phase();
        for (const ph of PHASES) this.set({ phase: ph }, ph === p ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tether_last_ack_age_seconds',
      help: 'Seconds since the last acknowledged heartbeat (monotonic)',
      registers: [r],
      collect() {
        const v = src.lastAckAgeMs();
        this.set(v === undefined ? -1 : v / 1000);
      },
    });
    new Gauge({
      name: 'tether_watchdog_remaining_seconds',
      help: 'Seconds until the watchdog fires while detached; -1 when not armed',
      registers: [r],
      collect() {
        const v = src.watchdogRemainingMs();
        this.set(v === undefined ? -1 : v / 1000);
      },
    });
    new Gauge({
      name: 'tether_vms',
      help: 'MicroVMs recorded on this host',
      registers: [r],
      collect() {
        this.set(src.vmCount());
      },
    });
    new Gauge({
      name: 'tether_fence_held_back',
      help: 'Peer check (issue 11): 1 while a detached host holds its fence back on its peers\' answers, else 0',
      registers: [r],
      collect() {
        this.set(src.peerCheck?.()?.holdingBack === true ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tether_peer_witnesses',
      help: 'Peer check: peers that counted as witnesses in the last round while detached; -1 when no round',
      registers: [r],
      collect() {
        const v = src.peerCheck?.();
        this.set(v === undefined ? -1 : v.witnesses.length);
      },
    });
    this.peerCheckEvents = new Counter({ name: 'tether_fence_hold_back_total', help: 'Peer check: fences held back (event="held-back") and hold-backs ended (event="ended")', labelNames: ['event'], registers: [r] });
    this.vmsStopped = new Counter({ name: 'tether_gc_vms_stopped_total', help: 'VMs stopped by the fencer, by method', labelNames: ['method'], registers: [r] });
    this.cleanupFailures = new Counter({ name: 'tether_gc_cleanup_failures_total', help: 'Cleanup steps that failed', registers: [r] });
    this.auditLeaks = new Gauge({ name: 'tether_gc_audit_leaks', help: 'Leaks found by the last audit', registers: [r] });
  }

  /** Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
