import { checkPeers, peerWindowOpensAt, stayAwayFor, type PeerCheckSettings, type PeerCheckVerdict } from '../../domain/peer-check.js';
import type { FreezeContract } from '../../domain/freeze-contract.js';
import { messageOf } from '../../domain/errors.js';
import type { TimerHandle } from '../../ports/clock.js';
import type { PeerDirectory, PeerTransport } from '../../ports/peers.js';
import type { GcMetrics } from './gc-run.js';
import type { GcSession } from './gc-session.js';

/** What the peer check needs from the agent (HostGcOptions.peerCheck). */
export interface PeerCheckDeps {
  readonly transport: PeerTransport;
  readonly directory: PeerDirectory;
  /**
   * The freeze contract this host acknowledged (undefined: none, never hold back). Default: the one
   * the hold sync learned and acknowledged (`HoldSync.contract()`).
   */
  readonly contract?: () => FreezeContract | undefined;
  readonly settings: PeerCheckSettings;
  /** A fresh nonce per round: 32 lowercase hex digits. */
  readonly nonce: () => string;
}

/**
 * The peer check's rounds (docs/peer-check.md "The host's rule"): while the host is detached (and
 * was not held when it detached), one round every `interval`: ask every known peer, judge the answers
 * with the pure {@link checkPeers}, and feed the verdict to the lifecycle as `peer-verdict` (valid
 * until `sentAt + interval + timeout`; the lifecycle fences when none replaces it in time).
 *
 * Invariants: one round at a time, on the injected Clock; nothing is sent once stopped or outside
 * `detached`; a failed round yields a negative verdict, never an exception.
 */
export class PeerRounds {
  private timer: TimerHandle | undefined;
  private running = false;
  private last: PeerCheckVerdict | undefined;

  private readonly contract: () => FreezeContract | undefined;

  constructor(
    private readonly s: GcSession,
    private readonly deps: PeerCheckDeps,
    acknowledged: () => FreezeContract | undefined,
    private readonly metrics?: GcMetrics,
  ) {
    this.contract = deps.contract ?? acknowledged;
  }

  /** The last verdict of this detachment (status). */
  verdict(): PeerCheckVerdict | undefined {
    return this.last;
  }

  /** Starts the rounds now (on detaching); a running series is kept. */
  start(): void {
    if (this.timer !== undefined || this.running) return;
    this.last = undefined;
    const lastAck = this.s.state.lastAck;
    const opens = lastAck === undefined ? 0 : peerWindowOpensAt(this.s.t, this.deps.settings, lastAck);
    this.schedule(Math.max(0, opens - this.s.ctx.clock.nowMono()));
  }

  /** Stops the rounds (left `detached`). */
  stop(): void {
    if (this.timer) this.s.ctx.clock.clearTimer(this.timer);
    this.timer = undefined;
  }

  private schedule(ms: number): void {
    if (this.s.stopped) return;
    this.timer = this.s.ctx.clock.setTimer(ms, () => {
      this.timer = undefined;
      void this.round();
    });
  }

  private wanted(): boolean {
    const st = this.s.state;
    return !this.s.stopped && st.phase === 'detached' && !st.heldAtDetach && st.lastAck !== undefined;
  }

  private async round(): Promise<void> {
    if (!this.wanted() || this.running) return;
    this.running = true;
    const { clock, logger, inventory, hostId } = this.s.ctx;
    const { settings } = this.deps;
    const sentAt = clock.nowMono();
    try {
      // Without a contract nothing can be held back: ask nobody (an answer commits the witness).
      const peers = this.contract() === undefined ? [] : this.deps.directory.peers();
      const nonce = this.deps.nonce();
      const stayAwayMs = stayAwayFor(this.s.t, this.s.state.lastAck!, sentAt);
      let answers: Awaited<ReturnType<PeerTransport['query']>> = new Map();
      try {
        answers = peers.length > 0 ? await this.deps.transport.query(peers, { nonce, stayAwayMs }, settings.timeout) : new Map();
      } catch (err) {
        logger.warn({ err: messageOf(err) }, 'peer round failed');
      }
      if (!this.wanted()) return;
      const st = this.s.state;
      const v = checkPeers({
        now: clock.nowMono(),
        hostId,
        lastAck: st.lastAck!,
        timings: this.s.t,
        contract: this.contract(),
        peers: this.deps.directory.peerIds(),
        settings,
        round: { nonce, stayAwayMs, sentAt, answers },
      });
      const before = this.last?.holdBack ?? false;
      this.last = v;
      if (v.holdBack !== before) {
        const kind = v.holdBack ? 'fence-held-back' : 'fence-hold-back-ended';
        logger.warn({ witnesses: v.witnesses, needed: v.needed, pool: v.pool }, v.detail);
        inventory.addEvent(kind, clock.now(), { detail: v.detail, witnesses: v.witnesses, needed: v.needed, pool: v.pool });
        this.metrics?.peerCheck?.(v.holdBack ? 'held-back' : 'ended');
      } else {
        logger.debug({ witnesses: v.witnesses.length, needed: v.needed, rejected: v.rejected }, v.detail);
      }
      this.s.dispatch({ kind: 'peer-verdict', holdBack: v.holdBack, until: v.until ?? 0, guardianDeadline: v.guardianDeadline ?? 0, detail: v.detail });
    } finally {
      this.running = false;
      if (this.wanted()) this.schedule(Math.max(0, sentAt + settings.interval - clock.nowMono()));
    }
  }
}
