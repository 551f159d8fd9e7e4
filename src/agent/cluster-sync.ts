import { hostRecordKey } from '../domain/codec.js';
import type { InvalidRecordReport } from '../domain/codec/invalid-record-log.js';
import { toRecordText } from '../domain/codec/names.js';
import { isRetryable, messageOf } from '../domain/errors.js';
import { planSync } from '../domain/cluster-vm-sync.js';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import type { ControllerStore, HostEntry } from '../ports/controller-store.js';
import type { TimerHandle } from '../ports/clock.js';
import type { HostContext } from './host-context.js';
import type { AgentVmService } from './vm-service.js';

/** What the sync needs of the cluster store. */
export type AgentClusterStore = Pick<ControllerStore, 'getHost' | 'listVms' | 'scanVms' | 'commit' | 'invalidRecords'>;

/** Inventory event kind of a cluster record that failed the codec (detail: key, field, revision, error). */
export const EVENT_RECORD_INVALID = 'cluster-record-invalid';
/** Inventory event kind of a local VM kept as it is because its cluster record cannot be read. */
export const EVENT_VM_KEPT_UNREADABLE = 'cluster-record-unreadable-vm-kept';

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
 *
 * Records read from etcd are trusted for nothing: each passes the codec (domain/codec.ts) in the
 * store. A record that fails it is skipped, and reported ONCE per key and revision as an error log
 * line and an inventory event ({@link EVENT_RECORD_INVALID}) naming the key and the field. Such a
 * record is "exists, unreadable", never "deleted": a local VM under its key keeps running untouched
 * ({@link EVENT_VM_KEPT_UNREADABLE}), and an unreadable record of this host itself stops the round
 * (nothing is written or deleted). A round that keeps failing for a reason retrying cannot fix is
 * logged at error level whenever the reason changes, never only at debug.
 */
export class ClusterVmSync {
  private timer: TimerHandle | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;
  private readonly unsubscribe: () => void;
  /** Local uid -> revision of its unreadable record, already reported as kept. */
  private readonly keptReported = new Map<string, string>();
  private lastFailure: string | undefined;

  constructor(
    private readonly ctx: HostContext,
    private readonly store: AgentClusterStore,
    private readonly service: AgentVmService,
    private readonly standing: () => HostStanding,
    private readonly intervalMs: number,
  ) {
    this.unsubscribe = store.invalidRecords.subscribe((r) => this.reportInvalid(r));
  }

  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe();
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
    // An unreadable own record (reported by the store's log) is no guard: write nothing, delete nothing.
    if (!rec && this.store.invalidRecords.isBad(hostRecordKey(this.ctx.hostId))) return undefined;
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
      const { entries: records, invalid } = await this.store.scanVms(this.intervalMs);
      const unreadable = new Map(invalid.map((e) => [e.key.slice('vms/'.length), e]));
      const local = inventory.listVms().map((vm) => ({ uid: vm.uid, phase: vm.phase, desired: vm.desired, key: `${vm.spec.id.namespace}/${vm.spec.id.name}` }));
      const plan = planSync(this.ctx.hostId, epoch, records.map((r) => ({ key: r.key, record: r.record })), local, [...unreadable.keys()]);
      this.reportKept(plan.kept, local, unreadable);
      const rev = new Map(records.map((r) => [r.key, r.revision]));
      const guards = [{ hostId: this.ctx.hostId, expectRevision: host.recordRevision! }];
      for (const v of plan.create) {
        try {
          await this.service.createWithUid(v.record.spec, v.record.uid);
        } catch (err) {
          // Refused here (unknown image, name taken): the record says why instead of waiting forever.
          logger.warn({ vm: v.key, err: messageOf(err) }, 'cluster VM could not be accepted');
          const next: ClusterVmRecord = { ...v.record, phase: 'failed', reason: toRecordText(messageOf(err)), generation: v.record.generation + 1, updatedAt: clock.now() };
          await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, prevHostId: v.record.hostId ?? null, next }] }, this.intervalMs);
        }
      }
      for (const uid of plan.deleteLocal) {
        logger.info({ vmUid: uid }, 'cluster record gone, moved or lost: deleting the local VM');
        await this.service.delete(uid).catch(() => undefined);
      }
      for (const v of plan.removeRecord) {
        await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, prevHostId: v.record.hostId ?? null, next: null }] }, this.intervalMs);
      }
      for (const v of plan.release) {
        const { drain: _drain, ...rest } = v.record;
        const next: ClusterVmRecord = { ...rest, phase: 'lost', reason: `drained from ${this.ctx.hostId}: stopped and cleaned there`, generation: v.record.generation + 1, updatedAt: clock.now() };
        await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, prevHostId: v.record.hostId ?? null, next }] }, this.intervalMs);
      }
      for (const s of plan.status) {
        const next: ClusterVmRecord = { ...s.view.record, phase: s.phase, generation: s.view.record.generation + 1, updatedAt: clock.now() };
        const res = await this.store.commit({ guards, vms: [{ key: s.view.key, expectRevision: rev.get(s.view.key)!, prevHostId: s.view.record.hostId ?? null, next }] }, this.intervalMs);
        if (!res.ok) logger.debug({ vm: s.view.key, reason: res.reason }, 'status write lost a race; next round retries');
      }
      this.lastFailure = undefined;
    } catch (err) {
      const msg = messageOf(err);
      if (isRetryable(err) || msg === this.lastFailure) logger.debug({ err: msg }, 'cluster sync round failed; next round retries');
      else logger.error({ err: msg, code: (err as { code?: string }).code }, 'cluster sync round failed and retrying may not help; next round retries');
      this.lastFailure = msg;
    }
  }

  /** One bad record (already deduplicated per key and revision by the store): error log + inventory event. */
  private reportInvalid(r: InvalidRecordReport): void {
    const { logger, inventory, clock } = this.ctx;
    const detail = { key: r.key, field: r.error.field, revision: r.revision, error: r.error.message };
    logger.error(detail, 'cluster record read from etcd is invalid: skipped (a VM under it is kept as it is)');
    inventory.addEvent(EVENT_RECORD_INVALID, clock.now(), detail);
  }

  /** Local VMs kept because their record is unreadable: said once per record revision. */
  private reportKept(kept: readonly string[], local: readonly { uid: string; key: string }[], unreadable: ReadonlyMap<string, { message: string; field: string; revision: string | undefined }>): void {
    const keys = new Map(local.map((l) => [l.uid, l.key]));
    for (const uid of [...this.keptReported.keys()]) if (!kept.includes(uid)) this.keptReported.delete(uid);
    for (const uid of kept) {
      const key = keys.get(uid)!;
      const e = unreadable.get(key)!;
      const revision = e.revision ?? '';
      if (this.keptReported.get(uid) === revision) continue;
      this.keptReported.set(uid, revision);
      const detail = { key: `vms/${key}`, field: e.field, revision, error: e.message };
      this.ctx.logger.warn({ vmUid: uid, ...detail }, 'cluster record unreadable: the local VM is kept as it is (not stopped, not deleted)');
      this.ctx.inventory.addEvent(EVENT_VM_KEPT_UNREADABLE, this.ctx.clock.now(), detail, uid);
    }
  }
}
