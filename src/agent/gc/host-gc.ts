import { TetherError, messageOf } from '../../domain/errors.js';
import type { GcTimings } from '../../domain/gc-timing.js';
import {
  admitsWork,
  evaluate,
  initialHostState,
  nextDeadline,
  resumeEffects,
  watchdogRemaining,
  type HostEffect,
  type HostEvent,
  type HostPhase,
  type HostState,
} from '../../domain/host-lifecycle.js';
import type { ClusterStore, LeaseId } from '../../ports/cluster-store.js';
import type { TimerHandle } from '../../ports/clock.js';
import type { HostContext } from '../host-context.js';
import type { GcReport } from './gc-report.js';
import { GcRun, type GcMetrics } from './gc-run.js';

export type { GcMetrics } from './gc-run.js';

/** Settings of {@link HostGc} beyond the timings. */
export interface HostGcOptions {
  readonly timings: GcTimings;
  /** Boot id of this machine: a persisted lastAck is trusted only on the same boot. */
  readonly bootId: string;
  readonly capacity: { vcpu: number; memoryMb: number };
  readonly labels?: Record<string, string>;
  readonly agentVersion: string;
  /** Read the cluster's hold flag every N acknowledged heartbeats (default 5). */
  readonly holdPollEvery?: number;
  /** Called on every lifecycle transition (metrics, tests). */
  readonly onTransition?: (from: HostPhase, to: HostPhase, reason: string) => void;
  /** Counters for the metrics endpoint. */
  readonly metrics?: GcMetrics;
}


/** What `tether gc status` shows. */
export interface GcStatus {
  readonly hostId: string;
  readonly phase: HostPhase;
  readonly epoch: number;
  readonly held: boolean;
  readonly heldAtDetach: boolean;
  readonly localHold: boolean;
  /** ms since the last acknowledged heartbeat (monotonic). */
  readonly lastAckAgeMs?: number;
  /** ms until the watchdog fires, while detached and not held. */
  readonly watchdogRemainingMs?: number;
  readonly timings: GcTimings;
}

const META_STATE = 'gc.state';

/** What survives an agent restart (monotonic times only trusted on the same boot). */
type PersistedState = Pick<HostState, 'phase' | 'epoch' | 'held' | 'lastAck' | 'fenceStartedAt' | 'fenceReason'>;

const META_LOCAL_HOLD = 'gc.localHold';

/**
 * The host side of detached-host GC: heartbeats (etcd lease keepalives Tether drives itself),
 * detection, watchdog, fence, cleanup and rejoin.
 *
 * Invariants: one owner of the lifecycle state — events are applied one at a time, in order, by
 * {@link dispatch}; every deadline comes from the pure {@link nextDeadline} over `lastAck` on the
 * monotonic clock; the state is persisted after every event so that a restarted agent resumes an
 * interrupted fence or cleanup and keeps a pending watchdog deadline (same boot only).
 */
export class HostGc {
  private state: HostState;
  private lease: LeaseId | undefined;
  private readonly queue: HostEvent[] = [];
  private draining = false;
  private deadlineTimer: TimerHandle | undefined;
  private heartbeatTimer: TimerHandle | undefined;
  private stopped = false;
  private acks = 0;
  private registering: 'reattach' | 'ready' | undefined;
  private readonly run: GcRun;
  private readonly t: GcTimings;
  /** Monotonic fence start of the current GC run, kept past the rejoin that clears it from the state. */
  private fenceStartMono: number | undefined;

  constructor(
    private readonly ctx: HostContext,
    private readonly store: ClusterStore,
    private readonly opts: HostGcOptions,
  ) {
    this.t = opts.timings;
    const saved = this.loadState();
    this.state = initialHostState(saved);
    this.fenceStartMono = this.state.fenceStartedAt;
    this.run = new GcRun(ctx, opts.timings, opts.metrics);
  }

  /** Current phase. */
  get phase(): HostPhase {
    return this.state.phase;
  }

  /** Why new VMs are refused now, or undefined when the host takes work. */
  admission(): string | undefined {
    return admitsWork(this.state.phase) ? undefined : `host is ${this.state.phase}`;
  }

  /** Starts heartbeating (after registering) and resumes an interrupted fence or cleanup. */
  start(): void {
    this.ctx.logger.info({ phase: this.state.phase, epoch: this.state.epoch, lastAck: this.state.lastAck }, 'gc starting');
    if (this.localHold() && !this.state.held) this.dispatch({ kind: 'hold-changed', held: true });
    for (const e of resumeEffects(this.state)) void this.execute(e);
    this.armDeadline();
  }

  /** Stops timers; the lease is left to expire (a restarted agent re-registers). */
  stop(): void {
    this.stopped = true;
    if (this.deadlineTimer) this.ctx.clock.clearTimer(this.deadlineTimer);
    if (this.heartbeatTimer) this.ctx.clock.clearTimer(this.heartbeatTimer);
  }

  /** Snapshot for `tether gc status`. */
  status(): GcStatus {
    const now = this.ctx.clock.nowMono();
    const s = this.state;
    const remaining = watchdogRemaining(this.t, s, now);
    return {
      hostId: this.ctx.hostId,
      phase: s.phase,
      epoch: s.epoch,
      held: s.held,
      heldAtDetach: s.heldAtDetach,
      localHold: this.localHold(),
      ...(s.lastAck === undefined ? {} : { lastAckAgeMs: Math.round(now - s.lastAck) }),
      ...(remaining === undefined ? {} : { watchdogRemainingMs: Math.round(remaining) }),
      timings: this.t,
    };
  }

  /** The last GC run, if any. */
  lastReport(): GcReport | undefined {
    return this.run.last();
  }

  /**
   * Local operator hold. Setting it while not attached cannot reach the controller, which will
   * fence on schedule (VMs could run twice), so it needs `acceptSplitBrainRisk`.
   */
  setLocalHold(held: boolean, acceptSplitBrainRisk = false): void {
    if (held && !admitsWork(this.state.phase) && !acceptSplitBrainRisk) {
      throw new TetherError(
        'FAILED_PRECONDITION',
        `refusing a local hold while ${this.state.phase}: the controller cannot learn of it and will fence this host on schedule, so its VMs could run twice. Pass --i-accept-split-brain-risk to force it.`,
      );
    }
    this.ctx.inventory.setMeta(META_LOCAL_HOLD, held ? '1' : '0');
    if (held && !admitsWork(this.state.phase)) {
      this.ctx.logger.warn({ phase: this.state.phase }, 'LOCAL HOLD SET WHILE DETACHED: split-brain risk accepted by the operator');
      this.ctx.inventory.addEvent('gc-local-hold-split-brain-risk', this.ctx.clock.now(), { phase: this.state.phase });
    }
    this.dispatch({ kind: 'hold-changed', held });
  }

  /** Applies one event; effects run asynchronously and feed their outcome back here. */
  dispatch(e: HostEvent): void {
    this.queue.push(e);
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const ev = this.queue.shift()!;
        const now = this.ctx.clock.nowMono();
        const prev = this.state;
        const r = evaluate(this.t, prev, ev, now);
        this.state = r.state;
        if (r.state !== prev) this.saveState();
        for (const eff of r.effects) void this.execute(eff);
      }
    } finally {
      this.draining = false;
    }
    this.armDeadline();
  }

  private async execute(e: HostEffect): Promise<void> {
    if (this.stopped) return;
    switch (e.kind) {
      case 'transition':
        this.onTransition(e.from, e.to, e.reason);
        return;
      case 'register':
        return this.register(e.mode);
      case 'stop-vms':
        return this.fence(e.reason);
      case 'run-cleanup':
        return this.cleanup();
    }
  }

  private onTransition(from: HostPhase, to: HostPhase, reason: string): void {
    const { clock, inventory, logger } = this.ctx;
    logger.info({ from, to, reason, epoch: this.state.epoch }, `host ${from} -> ${to}`);
    inventory.addEvent('host-transition', clock.now(), { from, to, reason, epoch: this.state.epoch });
    this.opts.onTransition?.(from, to, reason);
    if (to === 'attached') this.scheduleHeartbeat(0);
    if (to === 'attached' && (from === 'rejoining' || from === 'clean')) {
      this.run.rejoined(this.state.epoch, this.fenceStartMono === undefined ? undefined : Math.round(this.ctx.clock.nowMono() - this.fenceStartMono));
    }
    if (to === 'fencing') this.fenceStartMono = this.state.fenceStartedAt;
    if (to === 'fencing' || to === 'cleaning' || to === 'clean') {
      if (this.heartbeatTimer) this.ctx.clock.clearTimer(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
    }
  }

  // --- heartbeats ----------------------------------------------------------------------------

  private scheduleHeartbeat(delay: number): void {
    if (this.stopped) return;
    if (this.heartbeatTimer) this.ctx.clock.clearTimer(this.heartbeatTimer);
    this.heartbeatTimer = this.ctx.clock.setTimer(delay, () => void this.beat());
  }

  /** One keepalive with a deadline of heartbeatInterval; the next is sent one interval after this one was. */
  private async beat(): Promise<void> {
    this.heartbeatTimer = undefined;
    const p = this.state.phase;
    if (this.stopped || !(p === 'attached' || p === 'suspect' || p === 'detached')) return;
    const lease = this.lease;
    const sentAt = this.ctx.clock.nowMono();
    this.scheduleHeartbeat(this.t.heartbeatInterval);
    if (!lease) return;
    try {
      const answer = await this.store.keepalive(lease, this.t.heartbeatInterval);
      if (lease !== this.lease) return;
      if (answer === 'alive') {
        this.dispatch({ kind: 'heartbeat-acked', sentAt });
        if (++this.acks % (this.opts.holdPollEvery ?? 5) === 0) void this.pollHold();
      } else {
        this.lease = undefined;
        this.ctx.logger.warn({ lease }, 'lease lost: the cluster no longer knows this lease; re-registering');
        this.ctx.inventory.addEvent('lease-lost', this.ctx.clock.now(), { lease });
        this.dispatch({ kind: 'lease-lost' });
      }
    } catch (err) {
      this.ctx.logger.debug({ err: messageOf(err) }, 'keepalive missed');
      this.dispatch({ kind: 'heartbeat-missed', sentAt });
    }
  }

  private async pollHold(): Promise<void> {
    try {
      const rec = await this.store.getHost(this.ctx.hostId, this.t.heartbeatInterval);
      const held = (rec?.hold ?? false) || this.localHold();
      if (rec && held !== this.state.held && admitsWork(this.state.phase)) this.dispatch({ kind: 'hold-changed', held });
    } catch {
      /* the next poll will tell */
    }
  }

  // --- registration --------------------------------------------------------------------------

  private async register(mode: 'reattach' | 'ready'): Promise<void> {
    if (this.registering) return;
    this.registering = mode;
    let backoff = 250;
    try {
      while (!this.stopped) {
        const p = this.state.phase;
        if (mode === 'reattach' && !(p === 'starting' || p === 'detached' || p === 'attached' || p === 'suspect')) return;
        if (mode === 'ready' && !(p === 'clean' || p === 'rejoining')) return;
        if (mode === 'reattach' && p !== 'starting' && this.lease) return;
        const sentAt = this.ctx.clock.nowMono();
        try {
          const lease = await this.store.grantLease(this.t.ttl, this.t.heartbeatInterval * 2);
          if (mode === 'ready') this.dispatch({ kind: 'cluster-reachable' });
          const res = await this.store.register(
            {
              hostId: this.ctx.hostId,
              mode,
              epoch: this.state.epoch,
              lease,
              record: { hostId: this.ctx.hostId, timings: this.t, capacity: this.opts.capacity, labels: this.opts.labels ?? {}, agentVersion: this.opts.agentVersion },
            },
            this.t.heartbeatInterval * 2,
          );
          if (res.ok) {
            this.lease = lease;
            this.dispatch({ kind: 'registered', epoch: res.epoch, sentAt });
            if (res.hold !== this.state.held) this.dispatch({ kind: 'hold-changed', held: res.hold || this.localHold() });
            return;
          }
          this.ctx.logger.warn({ reason: res.reason, detail: res.detail }, 'registration refused');
          this.ctx.inventory.addEvent('registration-refused', this.ctx.clock.now(), { reason: res.reason, detail: res.detail });
          void this.store.revokeLease(lease, this.t.heartbeatInterval).catch(() => undefined);
          this.dispatch({ kind: 'register-refused', reason: res.reason });
          return;
        } catch (err) {
          this.ctx.logger.debug({ mode, err: messageOf(err) }, 'registration attempt failed');
          await this.ctx.clock.sleep(backoff);
          backoff = Math.min(backoff * 2, this.t.heartbeatInterval * 2);
        }
      }
    } finally {
      this.registering = undefined;
    }
  }

  // --- fence and cleanup ---------------------------------------------------------------------

  private async fence(reason: 'watchdog' | 'cluster-fenced'): Promise<void> {
    await this.run.fence(reason, this.state);
    this.dispatch({ kind: 'vms-stopped' });
  }

  private async cleanup(): Promise<void> {
    const clean = await this.run.cleanup(this.state);
    if (!clean) await this.ctx.clock.sleep(1000);
    this.dispatch({ kind: 'cleanup-finished', clean });
  }

  // --- timers and persistence ----------------------------------------------------------------

  private armDeadline(): void {
    if (this.deadlineTimer) this.ctx.clock.clearTimer(this.deadlineTimer);
    this.deadlineTimer = undefined;
    if (this.stopped) return;
    const at = nextDeadline(this.t, this.state);
    if (at === undefined) return;
    this.deadlineTimer = this.ctx.clock.setTimer(Math.max(0, at - this.ctx.clock.nowMono()), () => {
      this.deadlineTimer = undefined;
      this.dispatch({ kind: 'tick' });
    });
  }

  private localHold(): boolean {
    return this.ctx.inventory.getMeta(META_LOCAL_HOLD) === '1';
  }

  private loadState(): Parameters<typeof initialHostState>[0] {
    const raw = this.ctx.inventory.getMeta(META_STATE);
    if (!raw) return undefined;
    const saved = JSON.parse(raw) as PersistedState & { bootId: string };
    const sameBoot = saved.bootId === this.opts.bootId;
    return {
      phase: saved.phase,
      epoch: saved.epoch,
      held: saved.held,
      ...(saved.fenceReason ? { fenceReason: saved.fenceReason } : {}),
      ...(sameBoot && saved.lastAck !== undefined ? { lastAck: saved.lastAck } : {}),
      ...(sameBoot && saved.fenceStartedAt !== undefined ? { fenceStartedAt: saved.fenceStartedAt } : {}),
    };
  }

  private saveState(): void {
    const s = this.state;
    const persisted: PersistedState & { bootId: string } = {
      bootId: this.opts.bootId,
      phase: s.phase,
      epoch: s.epoch,
      held: s.held,
      ...(s.lastAck === undefined ? {} : { lastAck: s.lastAck }),
      ...(s.fenceStartedAt === undefined ? {} : { fenceStartedAt: s.fenceStartedAt }),
      ...(s.fenceReason === undefined ? {} : { fenceReason: s.fenceReason }),
    };
    this.ctx.inventory.setMeta(META_STATE, JSON.stringify(persisted));
  }

}
