import { NotFoundError, TetherError } from '../domain/errors.js';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import type { VmRecord, VmSpec } from '../domain/vm.js';
import type { MicroVmService, VmFilter } from '../ports/microvm-service.js';
import type { AgentClusterStore, ClusterVmSync, HostStanding } from './cluster-sync.js';
import { newVmUid, type AgentVmService } from './vm-service.js';

/**
 * The Flintlock-compatible API of a clustered agent: a create becomes a cluster record placed on
 * this host at its current epoch (written in a txn guarded by this host's record, so a fenced or
 * re-epoched host cannot add work), then runs locally; a delete marks the record `deleting`.
 * Reads are served from the local inventory. The cluster is read by name only (one single-key read
 * per create that lost its txn, one per delete), never as a whole prefix.
 */
export class ClusterVmService implements MicroVmService {
  constructor(
    private readonly hostId: string,
    private readonly local: AgentVmService,
    private readonly store: AgentClusterStore,
    private readonly sync: ClusterVmSync,
    private readonly standing: () => HostStanding,
    private readonly deadlineMs: number,
    private readonly now: () => number,
  ) {}

  async create(spec: VmSpec): Promise<VmRecord> {
    const { attached, epoch } = this.standing();
    if (!attached) return this.local.create(spec); // refused by the local admission gate, with the reason
    await this.local.checkImages(spec);
    const host = await this.sync.guard(epoch);
    if (!host) throw new TetherError('UNAVAILABLE', `this host's cluster record is not attached at epoch ${epoch}; not taking new microvms`, { retryable: true });
    const key = `${spec.id.namespace}/${spec.id.name}`;
    const uid = newVmUid();
    const record: ClusterVmRecord = { uid, spec, hostId: this.hostId, hostEpoch: epoch, phase: 'pending', generation: 1, updatedAt: this.now() };
    const res = await this.store.commit(
      // capacityGuards: no capacity check here (the VM goes where it was asked), but the bump of
      // placements/<host> makes any placement onto this host decided without this VM conflict
      { guards: [{ hostId: this.hostId, expectRevision: host.recordRevision! }], capacityGuards: [{ hostId: this.hostId, seenRevision: String(Number.MAX_SAFE_INTEGER) }], vms: [{ key, expectRevision: null, prevHostId: null, next: record }], events: [] },
      this.deadlineMs,
    );
    if (!res.ok) {
      // One single-key read tells "name taken" from "this host's record moved".
      const exists = await this.store.getVm(key, this.deadlineMs);
      if (exists.kind === 'found') throw new TetherError('ALREADY_EXISTS', `microvm ${key} already exists in the cluster (uid ${exists.entry.record.uid}, host ${exists.entry.record.hostId ?? 'none'})`);
      if (exists.kind === 'invalid') throw new TetherError('ALREADY_EXISTS', `microvm ${key} already exists in the cluster (its record is unreadable: ${exists.error.message})`);
      throw new TetherError('UNAVAILABLE', `this host's cluster record changed while creating ${key}; try again`, { retryable: true });
    }
    try {
      return await this.local.createWithUid(spec, uid);
    } catch (err) {
      // The sync, woken by this very record's watch event, may have started it first: same uid, ours.
      const mine = await this.local.get(uid).catch(() => undefined);
      if (mine) return mine;
      throw err;
    }
  }

  async delete(uid: string): Promise<void> {
    const vm = await this.local.get(uid).catch(() => undefined);
    // The record's name: the local VM's, else this host's index cache (no read of vms/ as a whole).
    const key = vm ? `${vm.spec.id.namespace}/${vm.spec.id.name}` : this.sync.cachedByUid(uid)?.key;
    const read = key !== undefined ? await this.store.getVm(key, this.deadlineMs) : undefined;
    const entry = read?.kind === 'found' && read.entry.record.uid === uid ? read.entry : undefined;
    if (!vm && !entry) throw new NotFoundError(`microvm ${uid}`);
    const { attached, epoch } = this.standing();
    const host = attached ? await this.sync.guard(epoch) : undefined;
    if (host && entry && entry.record.phase !== 'deleting' && entry.record.hostId === this.hostId && entry.record.hostEpoch === epoch) {
      const next: ClusterVmRecord = { ...entry.record, phase: 'deleting', generation: entry.record.generation + 1, updatedAt: this.now() };
      await this.store.commit({ guards: [{ hostId: this.hostId, expectRevision: host.recordRevision! }], vms: [{ key: entry.key, expectRevision: entry.revision, prevHostId: entry.record.hostId ?? null, next }] }, this.deadlineMs);
    }
    if (vm) await this.local.delete(uid);
    void this.sync.syncOnce();
  }

  get(uid: string): Promise<VmRecord> {
    return this.local.get(uid);
  }

  list(filter: VmFilter): Promise<VmRecord[]> {
    return this.local.list(filter);
  }
}
