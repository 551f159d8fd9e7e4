import { TetherError, messageOf } from '../../domain/errors.js';
import { parseFreezeContract, type FreezeContract } from '../../domain/freeze-contract.js';
import { nextContractStep } from '../../domain/freeze-contract-ack.js';
import { nextHoldStep } from '../../domain/hold.js';
import { holdActions, holdReadCounts, holdSyncApplies, routeHoldRequest } from '../../domain/hold-sync.js';
import { admitsWork } from '../../domain/host-lifecycle.js';
import type { LeaseId } from '../../ports/cluster-store.js';
import type { HostRecord } from '../../domain/host-record.js';
import type { Inventory } from '../../ports/inventory.js';
import type { GcSession } from './gc-session.js';
import { localHoldSet, setLocalHold } from './persisted-state.js';

/** The freeze contract is read on every this-many-th hold poll (and when the record lacks its acknowledgement). */
export const CONTRACT_POLL_EVERY = 5;

/** Inventory meta key of the freeze contract this host relies on (JSON; '' or absent: none). */
const META_FREEZE_CONTRACT = 'gc.freezeContract';

/** The freeze contract persisted in the inventory, or undefined (none, or unreadable: then none is relied on). */
export function loadFreezeContract(inventory: Inventory): FreezeContract | undefined {
  const raw = inventory.getMeta(META_FREEZE_CONTRACT);
  if (raw === undefined || raw === '') return undefined;
  try {
    return parseFreezeContract(JSON.parse(raw));
  } catch {
    return undefined;
  }
}

/**
 * The hold protocol on this host (src/domain/hold.ts: applied ⇒ seen, always; when and in which
 * order: src/domain/hold-sync.ts), and the operator's `tether gc hold` / `release`; and, in the same
 * poll, the freeze contract (issue 11, src/domain/freeze-contract-ack.ts): one more single-key read
 * of `controller/freeze-contract`, the acknowledgement written before a new version is relied on.
 *
 * Invariant: one step at a time, in order (a caller waits for its own step); the applied hold
 * changes only through the lifecycle's `hold-changed` event; {@link contract} is never tighter than
 * what the controller applies for this host (persisted before it is returned, so a restarted agent
 * relies on the same one).
 */
export class HoldSync {
  private chain: Promise<void> = Promise.resolve();
  private held: FreezeContract | undefined;
  private polls = 0;

  constructor(
    private readonly s: GcSession,
    /** Read the hold every this many acknowledged heartbeats (for the operator's message). */
    private readonly pollEvery: number,
  ) {
    this.held = loadFreezeContract(s.ctx.inventory);
  }

  /**
   * The freeze contract this host may rely on (its record acknowledged it, or the safe blend while a
   * change is acknowledged); undefined: none, the fence is never held back.
   */
  contract(): FreezeContract | undefined {
    return this.held;
  }

  /** Reads the record and takes the next step of the hold protocol, after any step in progress. Never throws. */
  sync(): Promise<void> {
    this.chain = this.chain.then(() => this.once());
    return this.chain;
  }

  private async once(): Promise<void> {
    const s = this.s;
    try {
      const lease = s.lease;
      if (lease === undefined || !holdSyncApplies(s.state.phase, true)) return;
      const rec = await s.store.getHost(s.ctx.hostId, s.t.heartbeatInterval);
      if (!rec || !holdReadCounts(rec.epoch, s.state.epoch, lease === s.lease)) return;
      await this.step(nextHoldStep(rec.hold, s.state.held, rec.holdSeen ?? false), lease);
      // The contract changes rarely and a late acknowledgement only keeps the controller on the
      // tighter rule: read it on the first poll and every CONTRACT_POLL_EVERY-th one after (issue 9:
      // a steady-state agent's reads), or while this host relies on none, or whenever the record
      // lacks the version this host relies on.
      const due = this.polls++ % CONTRACT_POLL_EVERY === 0 || this.held === undefined || rec.freezeContractSeen !== this.held.version;
      if (due) await this.contractStep(rec, lease);
    } catch (err) {
      s.ctx.logger.debug({ err: messageOf(err) }, 'hold sync failed; the next poll retries');
    }
  }

  private async step(step: ReturnType<typeof nextHoldStep>, lease: LeaseId): Promise<void> {
    const s = this.s;
    for (const a of holdActions(step)) {
      if (a.kind === 'apply') {
        this.apply(a.held);
        continue;
      }
      const r = await s.store.ackHold(s.ctx.hostId, s.state.epoch, lease, a.seen, s.t.heartbeatInterval);
      if (!r.ok) s.ctx.logger.warn({ held: a.seen, detail: r.detail }, 'hold acknowledgement refused');
      if (a.gate && (!r.ok || lease !== s.lease || !admitsWork(s.state.phase))) return;
    }
  }

  /** Reads the published contract; relies on it once the record shows its version (writing the acknowledgement first). */
  private async contractStep(rec: HostRecord, lease: LeaseId): Promise<void> {
    const s = this.s;
    if (lease !== s.lease) return;
    const published = await s.store.getFreezeContract(s.t.heartbeatInterval);
    const st = nextContractStep(this.held, rec.freezeContractSeen, published);
    if (st.kind === 'none') return;
    if (st.kind === 'adopt') return this.rely(st.contract);
    this.rely(st.interim);
    const r = await s.store.ackFreezeContract(s.ctx.hostId, s.state.epoch, lease, st.next.version, s.t.heartbeatInterval);
    if (!r.ok) {
      s.ctx.logger.warn({ version: st.next.version, detail: r.detail }, 'freeze contract acknowledgement refused');
      return;
    }
    if (lease === s.lease) this.rely(st.next);
  }

  private rely(c: FreezeContract | undefined): void {
    const prev = this.held;
    this.held = c;
    this.s.ctx.inventory.setMeta(META_FREEZE_CONTRACT, c === undefined ? '' : JSON.stringify(c));
    if (c !== undefined && (prev === undefined || prev.version !== c.version || prev.share !== c.share || prev.resumeDelay !== c.resumeDelay)) {
      this.s.ctx.logger.info({ version: c.version, share: c.share, resumeDelay: c.resumeDelay, poolSize: c.poolSize }, 'freeze contract acknowledged: the peer check relies on it');
    }
  }

  private apply(held: boolean): void {
    const { logger, inventory, clock } = this.s.ctx;
    if (this.s.state.held === held) return;
    logger.info({ held }, held ? 'hold acknowledged in the cluster and applied: watchdog and guardian suspended' : 'hold released: watchdog and guardian armed again');
    inventory.addEvent('gc-hold-applied', clock.now(), { held });
    this.s.dispatch({ kind: 'hold-changed', held });
  }

  /**
   * `tether gc hold` / `release` on this host. While the host takes work (attached), the hold goes
   * through the cluster: the request is written to the host record, then the hold protocol
   * acknowledges and applies it, and this resolves once the host applies what was asked (or says
   * why not). While detached the cluster cannot learn of a hold and will fence on schedule (the VMs
   * could run twice), so a local hold then needs `acceptSplitBrainRisk`; a local release while
   * detached resumes the watchdog at once.
   */
  async request(held: boolean, acceptSplitBrainRisk: boolean): Promise<void> {
    const s = this.s;
    const { inventory, clock, logger } = s.ctx;
    const phase = s.state.phase;
    const route = routeHoldRequest(phase, s.lease !== undefined, held, acceptSplitBrainRisk, localHoldSet(inventory));
    switch (route.kind) {
      case 'cluster':
        await s.store.setHold(s.ctx.hostId, held, s.t.heartbeatInterval * 2);
        inventory.addEvent('gc-hold-requested', clock.now(), { held });
        if (route.clearLocal) setLocalHold(inventory, false);
        await this.sync();
        if (s.state.held !== held) {
          throw new TetherError('UNAVAILABLE', `the hold was ${held ? 'requested' : 'released'} in the cluster, but this host could not acknowledge it yet (it retries every ${this.pollEvery} heartbeats): the hold is ${held ? 'NOT in force' : 'still in force'} until then`, { retryable: true });
        }
        return;
      case 'nothing':
        return;
      case 'release-local':
        setLocalHold(inventory, false);
        logger.warn({ phase }, 'local hold released while not attached: the watchdog resumes');
        inventory.addEvent('gc-local-hold-released', clock.now(), { phase });
        s.dispatch({ kind: 'hold-changed', held: false, forceWhileDetached: true });
        return;
      case 'refuse-local':
        throw new TetherError(
          'FAILED_PRECONDITION',
          `refusing a local hold while ${phase}: the controller cannot learn of it and will fence this host on schedule, so its VMs could run twice. Pass --i-accept-split-brain-risk to force it.`,
        );
      case 'hold-local':
        setLocalHold(inventory, true);
        logger.warn({ phase }, 'LOCAL HOLD SET WHILE DETACHED: split-brain risk accepted by the operator');
        inventory.addEvent('gc-local-hold-split-brain-risk', clock.now(), { phase });
        s.dispatch({ kind: 'hold-changed', held: true, forceWhileDetached: true });
        return;
    }
  }
}
