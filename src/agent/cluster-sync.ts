import { messageOf } from '../domain/errors.js';
import { planSync } from '../domain/cluster-vm-sync.js';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import type { ControllerStore, HostEntry } from '../ports/controller-store.js';
import type { TimerHandle } from '../ports/clock.js';
import type { HostContext } from './host-context.js';
import type { AgentVmService } from './vm-service.js';

/** What the sync needs of the cluster store. */
export type AgentClusterStore = Pick<ControllerStore, 'getHost' | 'listVms' | 'commit'>;

/** What the sync needs to know of the host's lifecycle. */
export interface HostStanding {
  /** True while attached (or merely suspect): the only times the host acts on cluster records. */
  readonly attached: boolean;
  readonly epoch: number;
}

/**
 * Keeps this host's VMs in line with the cluster's `vms/` records placed on it at its current
 * epoch (ARCHITECTURE.md section 2), every `intervalMs`:
 * - a record placed here and unknown locally is created, with the record's uid;
 * - a local VM whose record is gone, moved, lost or being deleted is deleted;
 * - status (phase) goes back to the record in a txn guarded by this host's record revision read in
 *   the same round — so a host whose record was fenced, or moved to another epoch, writes nothing.
 * Nothing runs while the host is not attached.
 */
export class ClusterVmSync {
  private timer: TimerHandle | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;

  constructor(
    private readonly ctx: HostContext,
    private readonly store: AgentClusterStore,
    private readonly service: AgentVmService,
    private readonly standing: () => HostStanding,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) this.ctx.clock.clearTimer(this.timer);
  }

  /** One round now (also used by the API right after it wrote a record). */
  async syncOnce(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.round().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** The host's own entry, if its record is attached or ready at `epoch` (else undefined: write nothing). */
  async guard(epoch: number): Promise<HostEntry | undefined> {
    const host = await this.store.getHost(this.ctx.hostId, this.intervalMs);
    const rec = host.record;
    if (!rec || host.recordRevision === undefined || rec.epoch !== epoch || (rec.state !== 'attached' && rec.state !== 'ready')) return undefined;
    return host;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = this.ctx.clock.setTimer(ms, () => {
      void this.syncOnce().finally(() => this.schedule(this.intervalMs));
    });
  }

  private async round(): Promise<void> {
    const { attached, epoch } = this.standing();
    if (!attached || epoch === 0) return;
    const { inventory, clock, logger } = this.ctx;
    try {
      const host = await this.guard(epoch);
      if (!host) return;
      const records = await this.store.listVms(this.intervalMs);
      const plan = planSync(this.ctx.hostId, epoch, records.map((r) => ({ key: r.key, record: r.record })), inventory.listVms());
      const rev = new Map(records.map((r) => [r.key, r.revision]));
      const guards = [{ hostId: this.ctx.hostId, expectRevision: host.recordRevision! }];
      for (const v of plan.create) {
        try {
          await this.service.createWithUid(v.record.spec, v.record.uid);
        } catch (err) {
          // Refused here (unknown image, name taken): the record says why instead of waiting forever.
          logger.warn({ vm: v.key, err: messageOf(err) }, 'cluster VM could not be accepted');
          const next: ClusterVmRecord = { ...v.record, phase: 'failed', reason: messageOf(err), generation: v.record.generation + 1, updatedAt: clock.now() };
          await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, next }] }, this.intervalMs);
        }
      }
      for (const uid of plan.deleteLocal) {
        logger.info({ vmUid: uid }, 'cluster record gone, moved or lost: deleting the local VM');
        await this.service.delete(uid).catch(() => undefined);
      }
      for (const v of plan.removeRecord) {
        await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, next: null }] }, this.intervalMs);
      }
      for (const v of plan.release) {
        const { drain: _drain, ...rest } = v.record;
        const next: ClusterVmRecord = { ...rest, phase: 'lost', reason: `drained from ${this.ctx.hostId}: stopped and cleaned there`, generation: v.record.generation + 1, updatedAt: clock.now() };
        await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, next }] }, this.intervalMs);
      }
      for (const s of plan.status) {
        const next: ClusterVmRecord = { ...s.view.record, phase: s.phase, generation: s.view.record.generation + 1, updatedAt: clock.now() };
        const res = await this.store.commit({ guards, vms: [{ key: s.view.key, expectRevision: rev.get(s.view.key)!, next }] }, this.intervalMs);
        if (!res.ok) logger.debug({ vm: s.view.key, reason: res.reason }, 'status write lost a race; next round retries');
      }
    } catch (err) {
      logger.debug({ err: messageOf(err) }, 'cluster sync round failed; next round retries');
    }
  }
}
