import { TetherError, messageOf } from '../../domain/errors.js';
import type { GcTimings } from '../../domain/gc-timing.js';
import { nextHoldStep } from '../../domain/hold.js';
import type { HostRecord } from '../../domain/host-record.js';
import {
  admitsWork,
  evaluate,
  guardianDeadline,
  initialHostState,
  nextDeadline,
  resumeEffects,
  watchdogRemaining,
  type FenceReason,
  type HostEffect,
  type HostEvent,
  type HostPhase,
  type HostState,
} from '../../domain/host-lifecycle.js';
import type { ClusterStore, LeaseId } from '../../ports/cluster-store.js';
import type { TimerHandle } from '../../ports/clock.js';
import type { Guardian } from '../../ports/guardian.js';
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
  /** This agent instance's persistent id (one per state dir): the writer of `hosts/<id>/alive`. */
  readonly agentId: string;
  /** Human description of this agent (pid, machine, state dir), shown to a refused duplicate. */
  readonly holder: string;
  /**
   * The out-of-process fence. When given, it is fed every deadline, supervised every heartbeat, and
   * the host takes no new VMs while it is not known to run.
   */
  readonly guardian?: Guardian;
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
  /** The hold this host applies (acknowledged in the cluster, or forced locally while detached). */
  readonly held: boolean;
  readonly heldAtDetach: boolean;
  /** A local hold forced while detached (split-brain risk accepted by the operator). */
  readonly localHold: boolean;
  /** Whether the guardian process is known to run (undefined without a guardian). */
  readonly guardianRunning?: boolean;
  /** Why this agent does not act on the cluster now (another agent holds this host id), if so. */
  readonly duplicateOf?: string;
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
  /** The deadline last fed to the guardian (undefined: none yet). */
  private fedDeadline: number | null | undefined;
  private guardianUp: boolean | undefined;
  private duplicateOf: string | undefined;
  /** The hold-protocol steps, one at a time and in order (a caller waits for its own step). */
  private holdSyncs: Promise<void> = Promise.resolve();

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
    if (!admitsWork(this.state.phase)) return `host is ${this.state.phase}`;
    if (this.opts.guardian && this.guardianUp !== true) return 'the guardian (the fence that outlives the agent) is not running';
    return undefined;
  }

  /** Starts heartbeating (after registering) and resumes an interrupted fence or cleanup. */
  start(): void {
    this.ctx.logger.info({ phase: this.state.phase, epoch: this.state.epoch, lastAck: this.state.lastAck }, 'gc starting');
    if (this.localHold() && this.state.phase === 'detached' && !this.state.heldAtDetach) {
      this.dispatch({ kind: 'hold-changed', held: true, forceWhileDetached: true });
    }
    this.feedGuardian();
    void this.superviseGuardian();
    // A guardian that fired while no agent ran already fenced this host: finish the GC from there.
    if (!this.checkGuardianFired()) for (const e of resumeEffects(this.state)) void this.execute(e);
    this.armDeadline();
  }

  /**
   * Stops timers; the lease is left to expire (a restarted agent re-registers). The guardian keeps
   * guarding the VMs that still run; it is told to exit only when `noVmsLeft`.
   */
  stop(noVmsLeft = false): void {
    this.stopped = true;
    if (this.deadlineTimer) this.ctx.clock.clearTimer(this.deadlineTimer);
    if (this.heartbeatTimer) this.ctx.clock.clearTimer(this.heartbeatTimer);
    if (noVmsLeft) this.opts.guardian?.shutdown();
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
      ...(this.opts.guardian ? { guardianRunning: this.guardianUp === true } : {}),
      ...(this.duplicateOf === undefined ? {} : { duplicateOf: this.duplicateOf }),
      timings: this.t,
    };
  }

  /** The last GC run, if any. */
  lastReport(): GcReport | undefined {
    return this.run.last();
  }

  /**
   * `tether gc hold` / `release` on this host. While the host takes work (attached), the hold goes
   * through the cluster: the request is written to the host record, then the hold protocol
   * (src/domain/hold.ts) acknowledges and applies it, and this resolves once the host applies what
   * was asked (or says why not). While detached the cluster cannot learn of a hold and will fence on
   * schedule (the VMs could run twice), so a local hold then needs `acceptSplitBrainRisk`; a local
   * release while detached resumes the watchdog at once.
   */
  async setHold(held: boolean, acceptSplitBrainRisk = false): Promise<void> {
    const { inventory, clock, logger } = this.ctx;
    if (admitsWork(this.state.phase) && this.lease) {
      await this.store.setHold(this.ctx.hostId, held, this.t.heartbeatInterval * 2);
      inventory.addEvent('gc-hold-requested', clock.now(), { held });
      if (!held && this.localHold()) inventory.setMeta(META_LOCAL_HOLD, '0');
      await this.syncHold();
      if (this.state.held !== held) {
        throw new TetherError('UNAVAILABLE', `the hold was ${held ? 'requested' : 'released'} in the cluster, but this host could not acknowledge it yet (it retries every ${this.opts.holdPollEvery ?? 5} heartbeats): the hold is ${held ? 'NOT in force' : 'still in force'} until then`, { retryable: true });
      }
      return;
    }
    if (!held) {
      if (this.localHold()) {
        inventory.setMeta(META_LOCAL_HOLD, '0');
        logger.warn({ phase: this.state.phase }, 'local hold released while not attached: the watchdog resumes');
        inventory.addEvent('gc-local-hold-released', clock.now(), { phase: this.state.phase });
        this.dispatch({ kind: 'hold-changed', held: false, forceWhileDetached: true });
      }
      return;
    }
    if (!acceptSplitBrainRisk) {
      throw new TetherError(
        'FAILED_PRECONDITION',
        `refusing a local hold while ${this.state.phase}: the controller cannot learn of it and will fence this host on schedule, so its VMs could run twice. Pass --i-accept-split-brain-risk to force it.`,
      );
    }
    inventory.setMeta(META_LOCAL_HOLD, '1');
    logger.warn({ phase: this.state.phase }, 'LOCAL HOLD SET WHILE DETACHED: split-brain risk accepted by the operator');
    inventory.addEvent('gc-local-hold-split-brain-risk', clock.now(), { phase: this.state.phase });
    this.dispatch({ kind: 'hold-changed', held: true, forceWhileDetached: true });
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
        if (r.state !== prev) {
          this.saveState();
          this.feedGuardian();
        }
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
    if (to === 'attached' && this.opts.guardian?.fired() !== undefined && (from === 'rejoining' || from === 'clean')) {
      this.opts.guardian.acknowledgeFired();
    }
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
    void this.superviseGuardian();
    if (this.checkGuardianFired()) return;
    try {
      const answer = await this.store.keepalive(this.ctx.hostId, lease, this.t.heartbeatInterval);
      if (lease !== this.lease) return;
      if (answer.kind === 'alive') {
        if (this.checkGuardianFired()) return;
        this.dispatch({ kind: 'heartbeat-acked', sentAt });
        if (++this.acks % (this.opts.holdPollEvery ?? 5) === 0) void this.syncHold();
        return;
      }
      this.lease = undefined;
      if (answer.kind === 'lease-lost') {
        this.ctx.logger.warn({ lease, detail: answer.detail }, 'lease lost: the cluster no longer has this host on its lease; re-registering');
        this.ctx.inventory.addEvent('lease-lost', this.ctx.clock.now(), { lease, detail: answer.detail });
        this.dispatch({ kind: 'lease-lost' });
      } else {
        this.duplicateOf = answer.detail;
        this.ctx.logger.error({ lease, detail: answer.detail }, 'this host id was taken over by another agent: this agent stops acting on the cluster; its own watchdog fences its VMs on time');
        this.ctx.inventory.addEvent('host-taken-over', this.ctx.clock.now(), { lease, detail: answer.detail });
        this.dispatch({ kind: 'taken-over' });
      }
    } catch (err) {
      this.ctx.logger.debug({ err: messageOf(err) }, 'keepalive missed');
      this.dispatch({ kind: 'heartbeat-missed', sentAt });
    }
  }

  // --- hold protocol (src/domain/hold.ts: applied => seen, always) ---------------------------

  /** Reads the record and takes the next step of the hold protocol, after any step in progress. Never throws. */
  private syncHold(): Promise<void> {
    this.holdSyncs = this.holdSyncs.then(() => this.syncHoldOnce());
    return this.holdSyncs;
  }

  private async syncHoldOnce(): Promise<void> {
    try {
      const lease = this.lease;
      if (!lease || !admitsWork(this.state.phase)) return;
      const rec = await this.store.getHost(this.ctx.hostId, this.t.heartbeatInterval);
      if (!rec || rec.epoch !== this.state.epoch || lease !== this.lease) return;
      await this.holdStep(rec, lease);
    } catch (err) {
      this.ctx.logger.debug({ err: messageOf(err) }, 'hold sync failed; the next poll retries');
    }
  }

  private async holdStep(rec: HostRecord, lease: LeaseId): Promise<void> {
    const step = nextHoldStep(rec.hold, this.state.held, rec.holdSeen ?? false);
    const ack = async (seen: boolean) => {
      const r = await this.store.ackHold(this.ctx.hostId, this.state.epoch, lease, seen, this.t.heartbeatInterval);
      if (!r.ok) this.ctx.logger.warn({ held: seen, detail: r.detail }, 'hold acknowledgement refused');
      return r.ok;
    };
    switch (step.kind) {
      case 'none':
        return;
      case 'ack-then-apply':
        if (!(await ack(true))) return;
        if (lease !== this.lease || !admitsWork(this.state.phase)) return;
        return this.applyHold(true);
      case 'apply':
        return this.applyHold(true);
      case 'drop-then-ack':
        this.applyHold(false);
        await ack(false);
        return;
      case 'ack-release':
        await ack(false);
        return;
    }
  }

  private applyHold(held: boolean): void {
    if (this.state.held === held) return;
    this.ctx.logger.info({ held }, held ? 'hold acknowledged in the cluster and applied: watchdog and guardian suspended' : 'hold released: watchdog and guardian armed again');
    this.ctx.inventory.addEvent('gc-hold-applied', this.ctx.clock.now(), { held });
    this.dispatch({ kind: 'hold-changed', held });
  }

  // --- guardian --------------------------------------------------------------------------------

  /** Feeds the guardian the deadline of the current state when it changed. */
  private feedGuardian(): void {
    const g = this.opts.guardian;
    if (!g) return;
    const d = guardianDeadline(this.t, this.state);
    if (d === undefined || d === this.fedDeadline) return;
    g.feed(d, { epoch: this.state.epoch, reason: this.state.phase });
    this.fedDeadline = d;
  }

  /** Starts the guardian again when it is gone (its death must not silently remove the protection). */
  private async superviseGuardian(): Promise<void> {
    const g = this.opts.guardian;
    if (!g || this.stopped) return;
    try {
      const r = await g.ensureRunning();
      if (r.started) {
        const level = this.guardianUp === undefined ? 'info' : 'error';
        this.ctx.logger[level]({ pid: r.pid }, this.guardianUp === undefined ? 'guardian started' : 'guardian was not running: restarted');
        if (this.guardianUp !== undefined) this.ctx.inventory.addEvent('guardian-restarted', this.ctx.clock.now(), { pid: r.pid });
      }
      this.guardianUp = true;
    } catch (err) {
      if (this.guardianUp !== false) {
        this.ctx.logger.error({ err: messageOf(err) }, 'guardian cannot be started: this host takes no new VMs until it runs');
        this.ctx.inventory.addEvent('guardian-down', this.ctx.clock.now(), { err: messageOf(err) });
      }
      this.guardianUp = false;
    }
  }

  /** True (and the fence started) when the guardian fired: its kill is this host's self-fence. */
  private checkGuardianFired(): boolean {
    const fired = this.opts.guardian?.fired();
    if (fired === undefined) return false;
    const p = this.state.phase;
    if (p === 'fencing' || p === 'cleaning' || p === 'clean' || p === 'rejoining') return false;
    this.ctx.logger.error({ fired }, 'the guardian killed this host\'s VMs (its deadline passed before the agent could act): finishing the GC from there');
    this.ctx.inventory.addEvent('guardian-fired', this.ctx.clock.now(), { fired });
    this.dispatch({ kind: 'guardian-fired' });
    return true;
  }

  // --- registration --------------------------------------------------------------------------

  private async register(mode: 'reattach' | 'ready'): Promise<void> {
    if (this.registering) return;
    this.registering = mode;
    let backoff = 250;
    let lastError: string | undefined;
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
              agentId: this.opts.agentId,
              holder: this.opts.holder,
              holdApplied: this.state.held,
              record: { hostId: this.ctx.hostId, timings: this.t, capacity: this.opts.capacity, labels: this.opts.labels ?? {}, agentVersion: this.opts.agentVersion },
            },
            this.t.heartbeatInterval * 2,
          );
          if (res.ok) {
            this.lease = lease;
            this.duplicateOf = undefined;
            if (this.localHold()) this.ctx.inventory.setMeta(META_LOCAL_HOLD, '0');
            this.dispatch({ kind: 'registered', epoch: res.epoch, sentAt });
            void this.syncHold();
            return;
          }
          void this.store.revokeLease(lease, this.t.heartbeatInterval).catch(() => undefined);
          if (res.reason === 'duplicate') {
            if (this.duplicateOf !== res.detail) {
              this.ctx.logger.error({ detail: res.detail }, `registration refused: ${res.detail}. This agent does not act on the cluster (and fences nothing for it) while the other one holds this host id; retrying every ${this.t.ttl} ms`);
              this.ctx.inventory.addEvent('registration-refused', this.ctx.clock.now(), { reason: res.reason, detail: res.detail });
            }
            this.duplicateOf = res.detail;
            this.dispatch({ kind: 'register-refused', reason: res.reason });
            await this.ctx.clock.sleep(this.t.ttl);
            continue;
          }
          this.ctx.logger.warn({ reason: res.reason, detail: res.detail }, 'registration refused');
          this.ctx.inventory.addEvent('registration-refused', this.ctx.clock.now(), { reason: res.reason, detail: res.detail });
          this.dispatch({ kind: 'register-refused', reason: res.reason });
          return;
        } catch (err) {
          const retryable = !(err instanceof TetherError) || err.retryable;
          if (retryable) this.ctx.logger.debug({ mode, err: messageOf(err) }, 'registration attempt failed');
          else {
            // e.g. a malformed host record: say so loudly (once per message) and keep backing off.
            if (lastError !== messageOf(err)) {
              this.ctx.logger.error({ mode, code: err.code, err: messageOf(err) }, 'registration failed and will keep failing until an operator fixes the cause');
              this.ctx.inventory.addEvent('registration-error', this.ctx.clock.now(), { code: err.code, err: messageOf(err) });
            }
            lastError = messageOf(err);
          }
          await this.ctx.clock.sleep(backoff);
          backoff = Math.min(backoff * 2, retryable ? this.t.heartbeatInterval * 2 : this.t.ttl);
        }
      }
    } finally {
      this.registering = undefined;
    }
  }

  // --- fence and cleanup ---------------------------------------------------------------------

  private async fence(reason: FenceReason): Promise<void> {
    await this.run.fence(reason, this.state);
    const fired = this.opts.guardian?.fired();
    if (fired) this.run.attributeToGuardian(new Set(fired.killed.map((k) => k.uid)));
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
