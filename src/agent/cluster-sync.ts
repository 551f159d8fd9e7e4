import { hostRecordKey } from '../domain/codec.js';
import type { InvalidRecordReport } from '../domain/codec/invalid-record-log.js';
import { toRecordText } from '../domain/codec/names.js';
import { isRetryable, messageOf } from '../domain/errors.js';
import { HostVmCache, planIsEmpty, planSync, type IndexChange, type UnreadableVm } from '../domain/cluster-vm-sync.js';
import { DEFAULT_TXN_LIMITS, type ClusterChange } from '../domain/cluster-change.js';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import { groupBySize, merge } from '../domain/controller/batch.js';
import type { ControllerStore, HostEntry, VmEntry } from '../ports/controller-store.js';
import type { TimerHandle } from '../ports/clock.js';
import type { HostVmBatch, HostVmEvent, HostVmIndexStore } from '../ports/host-vm-index.js';
import type { HostContext } from './host-context.js';
import type { AgentVmService } from './vm-service.js';
import { WatchFeed } from './watch-feed.js';

/** What the sync needs of the cluster store: its host record, commits, and its own VM index (never `vms/` whole). */
export type AgentClusterStore = Pick<ControllerStore, 'getHost' | 'commit' | 'invalidRecords'> & Partial<Pick<ControllerStore, 'txnLimits'>> & HostVmIndexStore;

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

/** How the sync's view of its index is fed (for tests and metrics). */
export interface IndexFeedStats {
  /** Lists of the index (the first, and one after each compaction that outran the watch). */
  readonly lists: number;
  /** Watches established (the first after each list, and each resume after an error). */
  readonly watches: number;
  /** Watch errors seen. */
  readonly watchErrors: number;
  /** Host-record reads made to guard a round's writes (none when a round has nothing to do). */
  readonly guardReads: number;
  /** Single-key record reads before deleting a local VM absent from the index (see `missingFromIndex`). */
  readonly recordReads: number;
}

/**
 * Keeps this host's VMs in line with the cluster's `vms/` records placed on it at its current
 * epoch (ARCHITECTURE.md section 2):
 * - a record placed here and unknown locally is created, with the record's uid;
 * - a local VM whose record is gone, moved, lost or being deleted is deleted;
 * - status (phase) goes back to the records in txns guarded by this host's record revision read in
 *   the same round — so a host whose record was fenced, or moved to another epoch, writes nothing;
 *   many statuses share a txn, within etcd's limits (a batch that lost a race is retried VM by VM).
 * Nothing runs while the host is not attached.
 *
 * Its view of the records is the host's OWN index (`hostvms/<hostId>/`, a copy of each record placed
 * here, written in the record's txn): listed once, then watched from the list's revision + 1
 * ({@link HostVmCache}) through a {@link WatchFeed}: a watch error resumes from the last revision seen;
 * only COMPACTED (that revision is gone) lists again. A round runs on each watch batch and every
 * `intervalMs` (to follow local phase changes); it plans from the cache and the local inventory only,
 * and touches etcd (one host-record read as the guard, then its writes) only when the plan asks for
 * something: a steady-state host costs etcd nothing but its watch. A round acts only while its watch
 * is up (a view known to be current up to the watch).
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
  /** A watch batch or a kick arrived while a round ran: run one more right after. */
  private again = false;
  private readonly unsubscribe: () => void;
  /** Local uid -> revision of its unreadable record, already reported as kept. */
  private readonly keptReported = new Map<string, string>();
  private lastFailure: string | undefined;
  private cache: HostVmCache | undefined;
  /** The feed of the cache (list, watch, resume, list again after a compaction). */
  private readonly feed: WatchFeed<HostVmBatch>;
  private readonly reads = { guardReads: 0, recordReads: 0 };
  /** Whether the previous round found the host attached (a new attachment re-establishes the watch). */
  private wasAttached = false;
  /** Local uids kept because their record is missing from the index, already reported. */
  private readonly unindexedReported = new Set<string>();

  constructor(
    private readonly ctx: HostContext,
    private readonly store: AgentClusterStore,
    private readonly service: AgentVmService,
    private readonly standing: () => HostStanding,
    private readonly intervalMs: number,
  ) {
    this.unsubscribe = store.invalidRecords.subscribe((r) => this.reportInvalid(r));
    const { hostId } = ctx;
    this.feed = new WatchFeed<HostVmBatch>(
      {
        revision: () => this.cache?.revision,
        relist: async (deadlineMs) => {
          const list = await store.listHostVms(hostId, deadlineMs);
          this.cache = new HostVmCache(
            Number(list.revision),
            list.entries.map((e) => ({ key: e.key, record: e.record, revision: e.revision })),
            list.invalid.map((e) => ({ key: e.key.slice('vms/'.length), revision: e.revision ?? '', field: e.field, message: e.message })),
          );
        },
        watch: (from, handlers, deadlineMs) => store.watchHostVms(hostId, from, handlers, deadlineMs),
        apply: (b) => {
          if (this.cache?.apply(Number(b.revision), b.events.map(toIndexChange))) void this.syncOnce();
        },
      },
      ctx.logger,
      'index watch',
    );
  }

  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe();
    if (this.timer) this.ctx.clock.clearTimer(this.timer);
    void this.feed.close();
  }

  /** How the index view was fed so far. */
  feedStats(): IndexFeedStats {
    return { ...this.feed.stats, ...this.reads };
  }

  /** The cached copy of this host's incarnation `uid` (undefined when not cached or unknown). */
  cachedByUid(uid: string): VmEntry | undefined {
    return this.cache?.byUid(uid);
  }

  /** One round now (also used by the API right after it wrote a record). */
  async syncOnce(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.round();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** The host's own entry, if its record is attached or ready at `epoch` (else undefined: write nothing). */
  async guard(epoch: number): Promise<HostEntry | undefined> {
    this.reads.guardReads++;
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
    if (!attached || epoch === 0) {
      this.wasAttached = false;
      return;
    }
    const { inventory, clock, logger } = this.ctx;
    try {
      // Attached again (after a detach, a fence or a rejoin): the watch may have outlived a partition
      // without an error on its stream; it is re-opened from the cache's revision (a watch, not a list).
      if (!this.wasAttached) await this.feed.reattached();
      this.wasAttached = true;
      await this.feed.ensure(this.intervalMs);
      const cache = this.cache;
      if (!this.feed.up || !cache) return;
      const unreadable = cache.unreadable();
      const records = cache.entries();
      const local = inventory.listVms().map((vm) => ({ uid: vm.uid, phase: vm.phase, desired: vm.desired, key: `${vm.spec.id.namespace}/${vm.spec.id.name}` }));
      const plan = planSync(this.ctx.hostId, epoch, records, local, [...unreadable.keys()]);
      this.reportKept(plan.kept, local, unreadable);
      if (planIsEmpty(plan)) {
        this.lastFailure = undefined;
        return;
      }
      const host = await this.guard(epoch);
      if (!host) return;
      const rev = new Map(records.map((r) => [r.key, r.revision]));
      const guards = [{ hostId: this.ctx.hostId, expectRevision: host.recordRevision! }];
      for (const v of plan.create) {
        // Started meanwhile by the API's create of this very record (it runs it right after its txn).
        if (inventory.getVm(v.record.uid)) continue;
        try {
          await this.service.createWithUid(v.record.spec, v.record.uid);
        } catch (err) {
          if (inventory.getVm(v.record.uid)) continue; // the same race, lost inside createWithUid: ours, not a failure
          // Refused here (unknown image, name taken): the record says why instead of waiting forever.
          logger.warn({ vm: v.key, err: messageOf(err) }, 'cluster VM could not be accepted');
          const next: ClusterVmRecord = { ...v.record, phase: 'failed', reason: toRecordText(messageOf(err)), generation: v.record.generation + 1, updatedAt: clock.now() };
          await this.store.commit({ guards, vms: [{ key: v.key, expectRevision: rev.get(v.key)!, prevHostId: v.record.hostId ?? null, next }] }, this.intervalMs);
        }
      }
      const keyOf = new Map(local.map((l) => [l.uid, l.key]));
      for (const uid of plan.deleteLocal) {
        if (!cache.byUid(uid) && (await this.missingFromIndex(uid, keyOf.get(uid)!, epoch))) continue;
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
      // Status writes batched within etcd's txn limits (after a mass reschedule a host reports tens of
      // VMs at once: one txn each was most of etcd's load); a batch that lost a race is written VM by
      // VM, so one changed record delays only itself (to the next round).
      const statusWrites: ClusterChange[] = plan.status.map((s) => ({
        guards,
        vms: [{ key: s.view.key, expectRevision: rev.get(s.view.key)!, prevHostId: s.view.record.hostId ?? null, next: { ...s.view.record, phase: s.phase, generation: s.view.record.generation + 1, updatedAt: clock.now() } }],
      }));
      for (const group of groupBySize(statusWrites, (c) => c, this.store.txnLimits ?? DEFAULT_TXN_LIMITS)) {
        const res = await this.store.commit(merge(group), this.intervalMs);
        if (res.ok || group.length === 1) {
          if (!res.ok) logger.debug({ vm: group[0]!.vms![0]!.key, reason: res.reason }, 'status write lost a race; next round retries');
          continue;
        }
        for (const one of group) {
          const r = await this.store.commit(one, this.intervalMs);
          if (!r.ok) logger.debug({ vm: one.vms![0]!.key, reason: r.reason }, 'status write lost a race; next round retries');
        }
      }
      this.lastFailure = undefined;
    } catch (err) {
      const msg = messageOf(err);
      if (isRetryable(err) || msg === this.lastFailure) logger.debug({ err: msg }, 'cluster sync round failed; next round retries');
      else logger.error({ err: msg, code: (err as { code?: string }).code }, 'cluster sync round failed and retrying may not help; next round retries');
      this.lastFailure = msg;
    }
  }

  /**
   * True when the record of local VM `uid` (not in this host's index) still exists placed on this host
   * at `epoch`: the index lacks it (a cluster written before the index, not yet reindexed), so the VM
   * is NOT deleted. One single-key read, only when a local VM is about to be deleted for want of a
   * record: never in a steady state. Said once per uid at error level.
   */
  private async missingFromIndex(uid: string, key: string, epoch: number): Promise<boolean> {
    this.reads.recordReads++;
    const read = await this.store.getVm(key, this.intervalMs);
    if (read.kind === 'invalid') return true; // exists, unreadable: kept, as planSync keeps one it sees (reported by the store's log)
    const r = read.kind === 'found' ? read.entry.record : undefined;
    if (!r || r.uid !== uid || r.hostId !== this.ctx.hostId || r.hostEpoch !== epoch || r.phase === 'lost' || r.phase === 'deleting') return false;
    if (!this.unindexedReported.has(uid)) {
      this.unindexedReported.add(uid);
      this.ctx.logger.error({ vm: key, vmUid: uid }, "this VM's record is placed here but missing from this host's index (hostvms/): kept running; run `tether admin reindex`");
    }
    return true;
  }

  /** One bad record (already deduplicated per key and revision by the store): error log + inventory event. */
  private reportInvalid(r: InvalidRecordReport): void {
    const { logger, inventory, clock } = this.ctx;
    const detail = { key: r.key, field: r.error.field, revision: r.revision, error: r.error.message };
    logger.error(detail, 'cluster record read from etcd is invalid: skipped (a VM under it is kept as it is)');
    inventory.addEvent(EVENT_RECORD_INVALID, clock.now(), detail);
  }

  /** Local VMs kept because their record is unreadable: said once per record revision. */
  private reportKept(kept: readonly string[], local: readonly { uid: string; key: string }[], unreadable: ReadonlyMap<string, UnreadableVm>): void {
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

/** A watch event of the index as the pure cache applies it. */
function toIndexChange(e: HostVmEvent): IndexChange {
  if (e.kind === 'put') return { kind: 'put', entry: { key: e.entry.key, record: e.entry.record, revision: e.entry.revision } };
  if (e.kind === 'invalid') return { kind: 'invalid', key: e.key, revision: e.revision, field: e.error.field, message: e.error.message };
  return e;
}

