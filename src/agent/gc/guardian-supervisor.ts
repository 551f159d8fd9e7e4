import type { GuardianView } from '../../domain/agent-status.js';
import { messageOf } from '../../domain/errors.js';
import { guardianFeedDue, guardianFireStartsFence, judgeGuardianCheck, type GuardianCheck } from '../../domain/guardian-supervision.js';
import { guardianDeadline } from '../../domain/host-lifecycle.js';
import type { Guardian } from '../../ports/guardian.js';
import type { GcSession } from './gc-session.js';

/**
 * The agent's side of the guardian (the fence that outlives the agent): feeds it the deadline of the
 * current state, starts it again when it is gone, and turns its fire into the lifecycle's
 * `guardian-fired`. Decisions: src/domain/guardian-supervision.ts. Without a guardian every method
 * does nothing.
 *
 * Invariant: only {@link guardianDeadline} is fed (derived from acknowledged heartbeats), once per change.
 */
export class GuardianSupervisor {
  /** The deadline last fed (undefined: none yet). */
  private fed: number | null | undefined;
  /** Whether the guardian is known to run (undefined: not checked yet). */
  private up: boolean | undefined;
  /** The check in progress, if any. */
  private checking: Promise<void> | undefined;

  constructor(
    private readonly s: GcSession,
    private readonly g: Guardian | undefined,
  ) {}

  /** The guardian as status and admission see it. */
  view(): GuardianView {
    return this.g ? { configured: true, running: this.up === true } : { configured: false };
  }

  /** Feeds the guardian the deadline of the current state when it changed. */
  feed(): void {
    if (!this.g) return;
    const st = this.s.state;
    const d = guardianDeadline(this.s.t, st);
    if (!guardianFeedDue(d, this.fed)) return;
    this.g.feed(d, { epoch: st.epoch, reason: st.phase });
    this.fed = d;
  }

  /**
   * Starts the guardian again when it is gone (its death must not silently remove the protection).
   * Never throws. Checks do not overlap: a call while one runs shares it (a start that several
   * overlapping checks saw would otherwise be reported as restarts).
   */
  supervise(): Promise<void> {
    if (!this.g || this.s.stopped) return Promise.resolve();
    this.checking ??= this.check(this.g).finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async check(g: Guardian): Promise<void> {
    const { logger, inventory, clock } = this.s.ctx;
    let check: GuardianCheck;
    let pid: number | undefined;
    let error = '';
    try {
      const r = await g.ensureRunning();
      check = { kind: r.started ? 'started' : 'running' };
      pid = r.pid;
    } catch (err) {
      check = { kind: 'failed' };
      error = messageOf(err);
    }
    const v = judgeGuardianCheck(this.up, check);
    if (v.notice === 'started') logger.info({ pid }, 'guardian started');
    if (v.notice === 'restarted') {
      logger.error({ pid }, 'guardian was not running: restarted');
      inventory.addEvent('guardian-restarted', clock.now(), { pid });
    }
    if (v.notice === 'down') {
      logger.error({ err: error }, 'guardian cannot be started: this host takes no new VMs until it runs');
      inventory.addEvent('guardian-down', clock.now(), { err: error });
    }
    this.up = v.up;
  }

  /** True (and the fence started) when the guardian fired: its kill is this host's self-fence. */
  checkFired(): boolean {
    const fired = this.g?.fired();
    if (fired === undefined || !guardianFireStartsFence(this.s.state.phase)) return false;
    this.s.ctx.logger.error({ fired }, 'the guardian killed this host\'s VMs (its deadline passed before the agent could act): finishing the GC from there');
    this.s.ctx.inventory.addEvent('guardian-fired', this.s.ctx.clock.now(), { fired });
    this.s.dispatch({ kind: 'guardian-fired' });
    return true;
  }

  /** The uids of the VMs the guardian killed, when it fired. */
  killedUids(): Set<string> | undefined {
    const fired = this.g?.fired();
    return fired ? new Set(fired.killed.map((k) => k.uid)) : undefined;
  }

  /** The host rejoined after the GC that followed a fire: the guardian forgets its marker. */
  acknowledgeFired(): void {
    if (this.g?.fired() !== undefined) this.g.acknowledgeFired();
  }

  /** Tells the guardian to exit (graceful agent stop with no VM left). */
  shutdown(): void {
    this.g?.shutdown();
  }
}
