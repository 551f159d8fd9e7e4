/**
 * The agent's VM service as `ClusterVmSync` and `ClusterVmService` use it, on a fake substrate (dev
 * tooling: the fleet bench and the tests of the cluster sync; never imported by production code):
 * an accepted VM is an inventory row in phase `running` at once, a deleted one is gone at once.
 *
 * Invariant: one inventory row per accepted VM, with the uid it was given; `delete` of an unknown
 * uid is NOT_FOUND, like the real service.
 */
import type { HostContext } from '../agent/host-context.js';
import { NotFoundError } from '../domain/errors.js';
import type { VmRecord, VmSpec } from '../domain/vm.js';

/** See the module doc. */
export class InstantVmService {
  /** Time a local create takes on the context's clock (0: instant). */
  createMs = 0;

  constructor(private readonly ctx: HostContext) {}

  async createWithUid(spec: VmSpec, uid: string): Promise<VmRecord> {
    if (this.createMs > 0) await this.ctx.clock.sleep(this.createMs);
    const now = this.ctx.clock.now();
    const row = this.ctx.inventory.addVm(uid, spec, now);
    this.ctx.inventory.setPhase(uid, 'running', now);
    return { ...row, phase: 'running' };
  }

  async delete(uid: string): Promise<void> {
    if (!this.ctx.inventory.getVm(uid)) throw new NotFoundError(`microvm ${uid}`);
    this.ctx.inventory.removeVm(uid);
  }

  async get(uid: string): Promise<VmRecord> {
    const row = this.ctx.inventory.getVm(uid);
    if (!row) throw new NotFoundError(`microvm ${uid}`);
    return row as unknown as VmRecord;
  }

  async checkImages(): Promise<void> {}
}
