import { existsSync, readFileSync } from 'node:fs';
import type { GcReport } from '../../agent/gc/gc-report.js';
import type { GcStatus } from '../../agent/gc/host-gc.js';
import { adminCall } from '../../api/http/admin-server.js';
import type { HostPhase } from '../../domain/host-lifecycle.js';
import type { HostTimelineEvent } from '../../domain/timeline.js';
import type { ChaosCluster } from './chaos-cluster.js';

/** A change of a host's phase as its agent reported it (wall ms of the poll that saw it). */
export interface PhaseChange {
  readonly at: number;
  readonly phase: HostPhase | 'unreachable';
  readonly epoch?: number;
  readonly lastAckAgeMs?: number;
  readonly watchdogRemainingMs?: number;
  readonly guardianRunning?: boolean;
}

/**
 * Polls every agent's `gc/status` once a second (800 ms deadline each, hosts in parallel) and
 * keeps each host's phase changes and every distinct GC report (`gc/report`, fetched whenever the
 * host is or was not attached). An agent that does not answer (SIGSTOPped, killed, restarting) is
 * recorded once as `unreachable`.
 */
export class HostObserver {
  readonly phases = new Map<string, PhaseChange[]>();
  readonly reports = new Map<string, Map<number, GcReport>>();
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly c: ChaosCluster) {
    for (const id of c.hostIds) {
      this.phases.set(id, []);
      this.reports.set(id, new Map());
    }
    this.loop = this.run();
  }

  /** The last phase seen for `hostId`. */
  last(hostId: string): PhaseChange | undefined {
    return this.phases.get(hostId)?.at(-1);
  }

  private async pollHost(id: string): Promise<void> {
    const h = this.c.dev.hosts.find((x) => x.id === id);
    if (!h) return;
    const now = Date.now();
    const list = this.phases.get(id)!;
    const prev = list.at(-1);
    const s = h.agent.running ? await adminCall<GcStatus>(h.agent.admin, 'GET', 'gc/status', undefined, 800).catch(() => undefined) : undefined;
    const phase = s?.phase ?? 'unreachable';
    if (prev?.phase !== phase || (s && prev?.epoch !== s.epoch)) {
      list.push({
        at: now,
        phase,
        ...(s ? { epoch: s.epoch, guardianRunning: s.guardianRunning } : {}),
        ...(s?.lastAckAgeMs !== undefined ? { lastAckAgeMs: s.lastAckAgeMs } : {}),
        ...(s?.watchdogRemainingMs !== undefined ? { watchdogRemainingMs: s.watchdogRemainingMs } : {}),
      });
    }
    if (s && (s.phase !== 'attached' || (prev && prev.phase !== 'attached'))) {
      const r = await adminCall<GcReport | null>(h.agent.admin, 'GET', 'gc/report', undefined, 800).catch(() => undefined);
      if (r) this.reports.get(id)!.set(r.startedAt, r);
    }
  }

  private async run(): Promise<void> {
    while (this.running) {
      const t0 = Date.now();
      await Promise.all(this.c.hostIds.map((id) => this.pollHost(id).catch(() => undefined)));
      await new Promise((r) => setTimeout(r, Math.max(50, 1000 - (Date.now() - t0))));
    }
  }

  /** One last poll of every host (reports included), then stops. */
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await Promise.all(this.c.hostIds.map(async (id) => {
      const h = this.c.dev.hosts.find((x) => x.id === id);
      if (!h?.agent.running) return;
      const r = await adminCall<GcReport | null>(h.agent.admin, 'GET', 'gc/report', undefined, 2000).catch(() => undefined);
      if (r) this.reports.get(id)!.set(r.startedAt, r);
    }));
  }

  /** `host` lane of the timeline: phase changes, GC reports and the guardian's `fired` lines. */
  timeline(hostId: string, guardianJournal: string | undefined, lastSeen: (uid: string) => number | undefined = () => undefined): HostTimelineEvent[] {
    const out: HostTimelineEvent[] = [];
    const reportedRejoins = new Set([...(this.reports.get(hostId)?.values() ?? [])].map((r) => r.rejoinedEpoch));
    let prevEpoch: number | undefined;
    for (const p of this.phases.get(hostId) ?? []) {
      if (p.phase === 'detached') {
        if (p.lastAckAgeMs !== undefined) out.push({ at: p.at - p.lastAckAgeMs, kind: 'heartbeat-acked', detail: 'last acknowledged heartbeat before the detach' });
        out.push({ at: p.at, kind: 'detached' });
        if (p.watchdogRemainingMs !== undefined) out.push({ at: p.at, kind: 'watchdog-armed', deadline: p.at + p.watchdogRemainingMs });
      }
      if (p.phase === 'attached' && prevEpoch !== undefined && p.epoch !== undefined && p.epoch > prevEpoch && !reportedRejoins.has(p.epoch)) out.push({ at: p.at, kind: 'rejoined', epoch: p.epoch, detail: 'seen by the chaos poller' });
      if (p.epoch !== undefined) prevEpoch = p.epoch;
    }
    for (const r of this.reports.get(hostId)?.values() ?? []) {
      out.push({ at: r.startedAt, kind: 'fence-started', reason: r.reason });
      if (r.reason === 'watchdog' && r.fenceStartAfterAckMs !== undefined) out.push({ at: r.startedAt, kind: 'watchdog-expired' });
      for (const s of r.stops) {
        // The agent's report says when it saw the VM gone; a guardian's kill (or a stop the agent
        // made while frozen) happened earlier. The process table says when the QEMU was last alive.
        const seen = lastSeen(s.uid);
        const at = seen !== undefined && s.method !== 'failed' ? Math.min(seen, r.startedAt + s.stoppedAfterMs) : r.startedAt + s.stoppedAfterMs;
        if (s.method === 'failed') out.push({ at, kind: 'vm-stop-failed', vm: s.vm, uid: s.uid, ...(s.error ? { error: s.error } : {}) });
        else out.push({ at, kind: 'vm-stop', vm: s.vm, uid: s.uid, method: s.method === 'graceful' ? 'graceful' : s.method === 'forced-guardian' ? 'forced-guardian' : 'forced' });
      }
      if (r.cleanAfterMs !== undefined) out.push({ at: r.startedAt + r.cleanAfterMs, kind: 'cleaned' });
      if (r.audit) out.push({ at: r.audit.at, kind: 'verified', leftovers: [...r.audit.leaks, ...r.audit.missing] });
      if (r.rejoinedEpoch !== undefined && r.rejoinedAfterMs !== undefined) out.push({ at: r.startedAt + r.rejoinedAfterMs, kind: 'rejoined', epoch: r.rejoinedEpoch });
    }
    for (const line of readJournal(guardianJournal)) {
      if (line.event === 'fired' && typeof line.at === 'number' && line.again !== true) out.push({ at: line.at, kind: 'guardian-fired', detail: `guardian journal: epoch ${String(line.epoch)}, late ${String(line.lateMs)} ms` });
    }
    return out.filter((e) => Number.isFinite(e.at)).sort((a, b) => a.at - b.at);
  }
}

/** The guardian journal's lines (rotated file first), unparsable lines dropped. */
export function readJournal(path: string | undefined): Record<string, unknown>[] {
  if (!path) return [];
  const out: Record<string, unknown>[] = [];
  for (const p of [`${path}.1`, path]) {
    if (!existsSync(p)) continue;
    for (const l of readFileSync(p, 'utf8').split('\n')) {
      try {
        if (l) out.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        /* torn line */
      }
    }
  }
  return out;
}
