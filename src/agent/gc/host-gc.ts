import type { PeerAnswer, PeerAsk } from '../../domain/peer-check.js';
import { answerAsWitness } from '../../domain/peer-witness.js';
import { PeerRounds, type PeerCheckDeps } from './peer-rounds.js';
import { afterTransition } from '../../domain/agent-transition.js';
import { admissionRefusal, gcStatus, type GcStatus } from '../../domain/agent-status.js';
import type { GcTimings } from '../../domain/gc-timing.js';
import { DEFAULT_HOLD_POLL_EVERY, reapplyLocalHold } from '../../domain/hold-sync.js';
import {
  evaluate,
  initialHostState,
  nextDeadline,
  resumeEffects,
  type FenceReason,
  type HostEffect,
  type HostEvent,
  type HostPhase,
  type HostState,
} from '../../domain/host-lifecycle.js';
import type { ClusterStore } from '../../ports/cluster-store.js';
import type { TimerHandle } from '../../ports/clock.js';
import type { Guardian } from '../../ports/guardian.js';
import type { HostContext } from '../host-context.js';
import { GcSession } from './gc-session.js';
import type { GcReport } from './gc-report.js';
import { GcRun, type GcMetrics } from './gc-run.js';
import { GuardianSupervisor } from './guardian-supervisor.js';
import { Heartbeat } from './heartbeat.js';
import { HoldSync } from './hold-sync.js';
import { loadHostState, loadSilence, localHoldSet, saveHostState, saveSilence } from './persisted-state.js';
import { Registrar } from './registration.js';

export type { GcMetrics } from './gc-run.js';
export type { GcStatus } from '../../domain/agent-status.js';

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
  /**
   * The machine this agent runs on (`/etc/machine-id`, src/adapters/machine-id.ts), registered with
   * the host record and `alive`: a copy of the state dir booted on another machine (same host id,
   * agent id and epoch) is then refused instead of running the host's VMs a second time. Absent: an
   * unknown machine (it may reattach only to legacy records that name none).
   */
  readonly machineId?: string;
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
  /** Where this host's peer channel listens, written in its record (`HostRecord.peerAddress`); absent: none. */
  readonly peerAddress?: string;
  /** The peer check (issue 11, docs/peer-check.md); absent: a detached host fences on time, whatever its peers say. */
  readonly peerCheck?: PeerCheckDeps;
}

/**
 * The host side of detached-host GC: heartbeats (etcd lease keepalives Tether drives itself),
 * detection, watchdog, fence, cleanup and rejoin. A thin composition: the decisions are pure
 * (src/domain/host-lifecycle.ts and the agent's src/domain/{heartbeat,registration-loop,hold-sync,
 * guardian-supervision,agent-transition,agent-status,persisted-host-state}.ts); the parts that talk
 * to the world are {@link Heartbeat}, {@link Registrar}, {@link HoldSync}, {@link GuardianSupervisor},
 * {@link GcRun} and ./persisted-state.ts.
 *
 * Invariants: one owner of the lifecycle state — events are applied one at a time, in order, by
 * {@link dispatch}; every deadline comes from the pure {@link nextDeadline} over `lastAck` on the
 * monotonic clock; the state is persisted (and the guardian fed) after every change, so that a
 * restarted agent resumes an interrupted fence or cleanup and keeps a pending watchdog deadline
 * (same boot only); all time comes from the injected Clock.
 */
export class HostGc {
  private state: HostState;
  private readonly queue: HostEvent[] = [];
  private draining = false;
  private deadlineTimer: TimerHandle | undefined;
  private readonly session: GcSession;
  private readonly run: GcRun;
  private readonly guardian: GuardianSupervisor;
  private readonly holds: HoldSync;
  private readonly heartbeat: Heartbeat;
  private readonly registrar: Registrar;
  private readonly peers: PeerRounds | undefined;
  private readonly t: GcTimings;
  /** Monotonic fence start of the current GC run, kept past the rejoin that clears it from the state. */
  private fenceStartMono: number | undefined;

  constructor(
    private readonly ctx: HostContext,
    store: ClusterStore,
    private readonly opts: HostGcOptions,
  ) {
    this.t = opts.timings;
    this.state = initialHostState(loadHostState(ctx.inventory, opts.bootId));
    this.fenceStartMono = this.state.fenceStartedAt;
    this.run = new GcRun(ctx, opts.timings, opts.metrics);
    this.session = new GcSession(ctx, store, this.t, () => this.state, (e) => this.dispatch(e));
    const pollEvery = opts.holdPollEvery ?? DEFAULT_HOLD_POLL_EVERY;
    this.guardian = new GuardianSupervisor(this.session, opts.guardian);
    this.holds = new HoldSync(this.session, pollEvery);
    this.heartbeat = new Heartbeat(this.session, this.guardian, this.holds, pollEvery);
    this.registrar = new Registrar(this.session, opts, this.holds);
    const silence = loadSilence(ctx.inventory, opts.bootId, ctx.clock.nowMono());
    this.session.silencedLease = silence?.lease;
    this.session.silentUntil = silence?.until;
    this.session.promisedMs = silence?.promisedMs ?? 0;
    if (opts.peerCheck) this.peers = new PeerRounds(this.session, opts.peerCheck, () => this.holds.contract(), opts.metrics);
  }

  /** Current phase. */
  get phase(): HostPhase {
    return this.state.phase;
  }

  /** Why new VMs are refused now, or undefined when the host takes work. */
  admission(): string | undefined {
    return admissionRefusal(this.state.phase, this.guardian.view());
  }

  /** Starts heartbeating (after registering) and resumes an interrupted fence or cleanup. */
  start(): void {
    this.ctx.logger.info({ phase: this.state.phase, epoch: this.state.epoch, lastAck: this.state.lastAck }, 'gc starting');
    if (reapplyLocalHold(this.state, localHoldSet(this.ctx.inventory))) {
      this.dispatch({ kind: 'hold-changed', held: true, forceWhileDetached: true });
    }
    this.guardian.feed();
    void this.guardian.supervise();
    if (this.state.phase === 'detached') this.peers?.start();
    // A guardian that fired while no agent ran already fenced this host: finish the GC from there.
    if (!this.guardian.checkFired()) for (const e of resumeEffects(this.state)) void this.execute(e);
    this.armDeadline();
  }

  /**
   * Stops timers; the lease is left to expire (a restarted agent re-registers). The guardian keeps
   * guarding the VMs that still run; it is told to exit only when `noVmsLeft`.
   */
  stop(noVmsLeft = false): void {
    this.session.stopped = true;
    if (this.deadlineTimer) this.ctx.clock.clearTimer(this.deadlineTimer);
    this.heartbeat.cancel();
    this.peers?.stop();
    if (noVmsLeft) this.guardian.shutdown();
  }

  /** Snapshot for `tether gc status`. */
  status(): GcStatus {
    return gcStatus({
      hostId: this.ctx.hostId,
      state: this.state,
      timings: this.t,
      now: this.ctx.clock.nowMono(),
      localHold: localHoldSet(this.ctx.inventory),
      guardian: this.guardian.view(),
      duplicateOf: this.session.duplicateOf,
      ...(this.peers?.verdict() === undefined ? {} : { peerCheck: this.peers.verdict()! }),
    });
  }

  /**
   * This host's answer to a peer's question (issue 11, docs/peer-check.md "The witness"), decided by
   * {@link answerAsWitness}. Answering `silent` is a promise, recorded (persisted) BEFORE the answer
   * leaves: no keepalive on the current lease ever again, and no registration until etcd no longer
   * knows that lease and `stayAwayMs` has passed (the longest stay-away asked wins).
   */
  peerAnswer(ask: PeerAsk): PeerAnswer {
    const st = this.state;
    const ss = this.session;
    const { answer, promise } = answerAsWitness({
      now: this.ctx.clock.nowMono(),
      hostId: this.ctx.hostId,
      ask,
      timings: this.t,
      settings: this.opts.peerCheck?.settings ?? { interval: this.t.heartbeatInterval, timeout: this.t.heartbeatInterval },
      phase: st.phase,
      epoch: st.epoch,
      lastAck: st.lastAck,
      lastAckReceivedAt: ss.lastAckReceivedAt,
      unanswered: ss.unanswered,
      membershipUnresolved: ss.membershipUnresolved,
      duplicate: ss.duplicateOf !== undefined,
      lease: ss.lease,
      promise: { lease: ss.silencedLease, until: ss.silentUntil, promisedMs: ss.promisedMs },
    });
    if (promise !== undefined) {
      // persisted before the answer leaves: a restarted agent keeps the promise
      saveSilence(this.ctx.inventory, { ...(promise.lease !== undefined ? { lease: promise.lease } : {}), until: promise.until, promisedMs: promise.promisedMs, bootId: this.opts.bootId });
      ss.silencedLease = promise.lease;
      ss.silentUntil = promise.until;
      ss.promisedMs = promise.promisedMs;
      if (promise.first) this.ctx.logger.info({ lease: promise.lease, stayAwayMs: answer.promisedMs }, 'answered a peer as a witness: this lease is never renewed again; the host registers anew once etcd no longer knows it and the promised stay-away has passed');
    }
    return answer;
  }

  /** The last GC run, if any. */
  lastReport(): GcReport | undefined {
    return this.run.last();
  }

  /**
   * `tether gc hold` / `release` on this host: through the cluster while attached (resolves once
   * applied), locally while detached only with `acceptSplitBrainRisk` (see {@link HoldSync.request}).
   */
  setHold(held: boolean, acceptSplitBrainRisk = false): Promise<void> {
    return this.holds.request(held, acceptSplitBrainRisk);
  }

  /** Applies one event; effects run asynchronously and feed their outcome back here. */
  dispatch(e: HostEvent): void {
    this.queue.push(e);
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const ev = this.queue.shift()!;
        const prev = this.state;
        const r = evaluate(this.t, prev, ev, this.ctx.clock.nowMono());
        this.state = r.state;
        if (r.state !== prev) {
          saveHostState(this.ctx.inventory, this.state, this.opts.bootId);
          this.guardian.feed();
        }
        for (const eff of r.effects) void this.execute(eff);
      }
    } finally {
      this.draining = false;
    }
    this.armDeadline();
  }

  private async execute(e: HostEffect): Promise<void> {
    if (this.session.stopped) return;
    switch (e.kind) {
      case 'transition':
        this.onTransition(e.from, e.to, e.reason);
        return;
      case 'register':
        return this.registrar.register(e.mode);
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
    const next = afterTransition(from, to);
    if (to === 'detached') this.peers?.start();
    else this.peers?.stop();
    if (next.heartbeat === 'start') this.heartbeat.schedule(0);
    if (next.rejoined) {
      this.guardian.acknowledgeFired();
      this.run.rejoined(this.state.epoch, this.fenceStartMono === undefined ? undefined : Math.round(clock.nowMono() - this.fenceStartMono));
    }
    if (next.fenceStarted) this.fenceStartMono = this.state.fenceStartedAt;
    if (next.heartbeat === 'stop') this.heartbeat.cancel();
  }

  // --- fence and cleanup (src/agent/gc/gc-run.ts) -------------------------------------------

  private async fence(reason: FenceReason): Promise<void> {
    await this.run.fence(reason, this.state);
    const killed = this.guardian.killedUids();
    if (killed) this.run.attributeToGuardian(killed);
    this.dispatch({ kind: 'vms-stopped' });
  }

  private async cleanup(): Promise<void> {
    const clean = await this.run.cleanup(this.state);
    if (!clean) await this.ctx.clock.sleep(1000);
    this.dispatch({ kind: 'cleanup-finished', clean });
  }

  private armDeadline(): void {
    if (this.deadlineTimer) this.ctx.clock.clearTimer(this.deadlineTimer);
    this.deadlineTimer = undefined;
    if (this.session.stopped) return;
    const at = nextDeadline(this.t, this.state);
    if (at === undefined) return;
    this.deadlineTimer = this.ctx.clock.setTimer(Math.max(0, at - this.ctx.clock.nowMono()), () => {
      this.deadlineTimer = undefined;
      this.dispatch({ kind: 'tick' });
    });
  }
}
