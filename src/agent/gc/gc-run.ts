import type { GcTimings } from '../../domain/gc-timing.js';
import type { FenceReason, HostState } from '../../domain/host-lifecycle.js';
import type { HostContext } from '../host-context.js';
import { cleanHost } from './cleaner.js';
import { fenceVms } from './fencer.js';
import type { GcReport } from './gc-report.js';

/** What the GC reports to metrics. */
export interface GcMetrics {
  vmStopped(method: string): void;
  cleanupFailed(count: number): void;
  auditLeaks(count: number): void;
  /** The peer check held the fence back (`held-back`) or stopped holding it back (`ended`). */
  peerCheck?(event: 'held-back' | 'ended'): void;
}

const META_REPORT = 'gc.report';

/** `{[k]: v}` when v is defined, `{}` otherwise. */
export function opt<K extends string>(k: K, v: number | undefined): Partial<Record<K, number>> {
  return v === undefined ? {} : ({ [k]: v } as Record<K, number>);
}

/**
 * One detached-host GC run — fence (stop every VM), cleanup (delete plans, leak sweep, audit) —
 * and its report, persisted in the inventory after every VM stopped so that a run resumed after an
 * agent restart keeps what was already recorded. Times are relative to the fence start, on the
 * monotonic clock (comparable across a restart on the same boot).
 */
export class GcRun {
  private report: GcReport | undefined;

  constructor(
    private readonly ctx: HostContext,
    private readonly t: GcTimings,
    private readonly metrics?: GcMetrics,
  ) {
    const saved = ctx.inventory.getMeta(META_REPORT);
    if (saved) this.report = JSON.parse(saved) as GcReport;
  }

  /** The last GC run, if any. */
  last(): GcReport | undefined {
    return this.report;
  }

  /** Stops every VM (graceful, then forced), recording each; `state` is the host state at fence start. */
  async fence(reason: FenceReason, state: HostState): Promise<void> {
    const { lastAck, detachedAt, fenceStartedAt } = state;
    const sinceAck = (t: number | undefined) => (lastAck === undefined || t === undefined ? undefined : Math.round(t - lastAck));
    const sinceFence = () => (fenceStartedAt === undefined ? undefined : Math.round(this.ctx.clock.nowMono() - fenceStartedAt));
    const prev = this.report;
    const resumed = prev !== undefined && prev.audit === undefined && prev.reason === reason;
    this.save(
      resumed
        ? prev
        : {
            reason,
            startedAt: this.ctx.clock.now(),
            ...opt('detectedAfterAckMs', sinceAck(detachedAt)),
            ...opt('fenceStartAfterAckMs', sinceAck(fenceStartedAt)),
            stops: [],
            removed: [],
            cleanupFailures: [],
          },
    );
    const done = new Set(this.report!.stops.filter((x) => x.method !== 'already-stopped').map((x) => x.uid));
    await fenceVms(this.ctx, { stopGraceMs: this.t.stopGrace, killTimeoutMs: this.t.killTimeout }, (stop) => {
      this.metrics?.vmStopped(stop.method);
      if (done.has(stop.uid)) return;
      const r = this.report!;
      this.save({ ...r, stops: [...r.stops.filter((x) => x.uid !== stop.uid), { ...stop, stoppedAfterMs: sinceFence() ?? stop.stoppedAfterMs }] });
    });
    this.save({ ...this.report!, ...opt('allStoppedAfterMs', sinceFence()) });
  }

  /**
   * Attributes the stops of `uids` to the guardian (its fire record lists the VMs it killed): a VM the
   * guardian killed while the agent's graceful stop waited must not read as stopped gracefully.
   */
  attributeToGuardian(uids: ReadonlySet<string>): void {
    const r = this.report;
    if (!r || uids.size === 0) return;
    this.save({ ...r, stops: r.stops.map((x) => (uids.has(x.uid) && x.method !== 'failed' ? { ...x, method: 'forced-guardian' } : x)) });
  }

  /** Removes everything and audits; resolves with the audit's verdict (clean or not). */
  async cleanup(state: HostState): Promise<boolean> {
    const r = await cleanHost(this.ctx);
    const base: GcReport = this.report ?? { reason: 'watchdog', startedAt: this.ctx.clock.now(), stops: [], removed: [], cleanupFailures: [] };
    const f = state.fenceStartedAt;
    this.save({
      ...base,
      removed: [...base.removed, ...r.removed],
      cleanupFailures: [...base.cleanupFailures, ...r.failures],
      audit: r.audit,
      ...opt('cleanAfterMs', f === undefined ? undefined : Math.round(this.ctx.clock.nowMono() - f)),
    });
    this.metrics?.cleanupFailed(r.failures.length);
    this.metrics?.auditLeaks(r.audit.leaks.length + r.audit.missing.length);
    this.ctx.inventory.addEvent('gc-audit', this.ctx.clock.now(), { clean: r.audit.clean, leaks: r.audit.leaks, missing: r.audit.missing });
    if (!r.audit.clean) this.ctx.logger.error({ leaks: r.audit.leaks, failures: r.failures }, 'cleanup left resources; retrying');
    return r.audit.clean;
  }

  /** Records the rejoin (epoch, and time since the fence start when known). */
  rejoined(epoch: number, afterMs: number | undefined): void {
    if (this.report) this.save({ ...this.report, rejoinedEpoch: epoch, ...opt('rejoinedAfterMs', afterMs) });
  }

  private save(r: GcReport): void {
    this.report = r;
    this.ctx.inventory.setMeta(META_REPORT, JSON.stringify(r));
  }
}
