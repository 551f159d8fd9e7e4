import { messageOf } from '../../domain/errors.js';
import { heartbeatPhase, judgeKeepalive, nextBeatAfterMiss, probeFirst, type KeepaliveOutcome } from '../../domain/heartbeat.js';
import type { TimerHandle } from '../../ports/clock.js';
import type { GcSession } from './gc-session.js';
import type { GuardianSupervisor } from './guardian-supervisor.js';
import type { HoldSync } from './hold-sync.js';

/**
 * The heartbeat loop: one keepalive every `heartbeatInterval` (measured from one send to the next),
 * each with a deadline of one interval; one that failed early is retried sooner ({@link nextBeatAfterMiss});
 * what an answer means is decided by
 * src/domain/heartbeat.ts. Each beat also checks on the guardian (restart when gone, fire → fence).
 *
 * Invariants: one timer, on the injected Clock; acknowledgements carry the SEND time, from which
 * the lifecycle measures every deadline; no keepalive is sent once stopped or outside the phases
 * that heartbeat.
 */
export class Heartbeat {
  private timer: TimerHandle | undefined;
  private acks = 0;

  constructor(
    private readonly s: GcSession,
    private readonly guardian: GuardianSupervisor,
    private readonly holds: HoldSync,
    private readonly holdPollEvery: number,
  ) {}

  /** The next keepalive in `delay` ms (replacing a scheduled one); nothing once stopped. */
  schedule(delay: number): void {
    if (this.s.stopped) return;
    this.cancel();
    this.timer = this.s.ctx.clock.setTimer(delay, () => void this.beat());
  }

  /** Cancels the next keepalive. */
  cancel(): void {
    if (this.timer) this.s.ctx.clock.clearTimer(this.timer);
    this.timer = undefined;
  }

  /**
   * A read that renews nothing (docs/peer-check.md "The witness"): does etcd still know `lease`?
   * Gone: `lease-lost` (re-register). Unreachable, or known but `silenced` (never renewed again):
   * undefined and nothing else this beat. Known and not silenced: undefined, and the beat sends its
   * keepalive (etcd answered, so it is likely to be acknowledged).
   */
  private async probe(lease: string, kind: 'probe' | 'silenced'): Promise<KeepaliveOutcome | undefined> {
    const s = this.s;
    let exists: boolean;
    try {
      exists = await s.store.leaseExists(lease, s.t.heartbeatInterval);
    } catch (err) {
      s.ctx.logger.debug({ err: messageOf(err), kind }, 'lease probe failed');
      return kind === 'silenced' ? undefined : { kind: 'no-answer' };
    }
    if (!exists) return { kind: 'lease-lost', detail: `etcd no longer knows lease ${lease}${kind === 'silenced' ? ' (not renewed since this host answered its peers as a witness)' : ''}` };
    return undefined;
  }

  /** One keepalive with a deadline of one interval; the next is sent one interval after this one was (sooner after an early failure). */
  private async beat(): Promise<void> {
    const s = this.s;
    const { clock, logger, inventory } = s.ctx;
    this.timer = undefined;
    if (s.stopped || !heartbeatPhase(s.state.phase)) return;
    const lease = s.lease;
    const sentAt = clock.nowMono();
    this.schedule(s.t.heartbeatInterval);
    if (!lease) return;
    void this.guardian.supervise();
    if (this.guardian.checkFired()) return;
    let outcome: KeepaliveOutcome | undefined;
    const probe = probeFirst(s.silencedLease === lease, s.unanswered);
    if (probe !== 'none') outcome = await this.probe(lease, probe);
    if (outcome === undefined && (probe === 'silenced' || (probe === 'probe' && lease !== s.lease))) return;
    if (outcome === undefined) {
      s.unanswered++;
      try {
        outcome = await s.store.keepalive(s.ctx.hostId, lease, s.t.heartbeatInterval);
      } catch (err) {
        logger.debug({ err: messageOf(err) }, 'keepalive missed');
        outcome = { kind: 'no-answer' };
      }
      if (outcome.kind === 'alive' && lease === s.lease) {
        s.unanswered = 0;
        s.lastAckReceivedAt = clock.nowMono();
      }
    }
    const stale = lease !== s.lease;
    // The guardian may have fired while the keepalive was out: its kill is the fence, not the ack.
    if (outcome.kind === 'alive' && !stale && this.guardian.checkFired()) return;
    const v = judgeKeepalive(outcome, sentAt, stale, this.acks, this.holdPollEvery);
    this.acks = v.acks;
    if (v.dropLease) s.lease = undefined;
    if (!stale && outcome.kind === 'lease-lost') {
      logger.warn({ lease, detail: outcome.detail }, 'lease lost: the cluster no longer has this host on its lease; re-registering');
      inventory.addEvent('lease-lost', clock.now(), { lease, detail: outcome.detail });
    }
    if (v.duplicateOf !== undefined) {
      s.duplicateOf = v.duplicateOf;
      logger.error({ lease, detail: v.duplicateOf }, 'this host id was taken over by another agent: this agent stops acting on the cluster; its own watchdog fences its VMs on time');
      inventory.addEvent('host-taken-over', clock.now(), { lease, detail: v.duplicateOf });
    }
    if (v.event) s.dispatch(v.event);
    if (v.pollHold) void this.holds.sync();
    if (outcome.kind === 'no-answer' && !stale && this.timer) {
      const now = clock.nowMono();
      const at = nextBeatAfterMiss(s.t, sentAt, now);
      if (at < sentAt + s.t.heartbeatInterval) this.schedule(Math.max(0, at - now));
    }
  }
}
