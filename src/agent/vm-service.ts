import { randomBytes } from 'node:crypto';
import { InvalidArgumentError, NotFoundError, TetherError } from '../domain/errors.js';
import type { VmRecord, VmSpec } from '../domain/vm.js';
import type { MicroVmService, VmFilter } from '../ports/microvm-service.js';
import type { VmRow } from '../ports/inventory.js';
import type { HostContext } from './host-context.js';
import type { Reconciler } from './reconciler.js';

/** Says why the host does not take new VMs right now (e.g. "host is detached"), or undefined. */
export type AdmissionGate = () => string | undefined;

/**
 * The agent's {@link MicroVmService}: records the request in the inventory, then lets the
 * {@link Reconciler} do the work in the background. Create returns as soon as the VM is recorded
 * (phase `pending`), like Flintlock's asynchronous create.
 */
export class AgentVmService implements MicroVmService {
  constructor(
    private readonly ctx: HostContext,
    private readonly reconciler: Reconciler,
    private readonly admission: AdmissionGate = () => undefined,
  ) {}

  async create(spec: VmSpec): Promise<VmRecord> {
    return this.createWithUid(spec, newVmUid());
  }

  /** Creates a VM under a given uid (a cluster record's); same checks as {@link create}. */
  async createWithUid(spec: VmSpec, uid: string): Promise<VmRecord> {
    const refusal = this.admission();
    if (refusal) throw new TetherError('UNAVAILABLE', `this host does not take new microvms now: ${refusal}`, { retryable: true });
    await this.checkImages(spec);
    const row = this.ctx.inventory.addVm(uid, spec, this.ctx.clock.now());
    this.ctx.inventory.addEvent('vm-accepted', this.ctx.clock.now(), { namespace: spec.id.namespace, name: spec.id.name }, uid);
    void this.reconciler.kick(uid);
    return strip(row);
  }

  async delete(uid: string): Promise<void> {
    const vm = this.ctx.inventory.getVm(uid);
    if (!vm) throw new NotFoundError(`microvm ${uid}`);
    if (vm.desired !== 'absent') this.ctx.inventory.setDesired(uid, 'absent', this.ctx.clock.now());
    void this.reconciler.kick(uid);
  }

  async get(uid: string): Promise<VmRecord> {
    const vm = this.ctx.inventory.getVm(uid);
    if (!vm) throw new NotFoundError(`microvm ${uid}`);
    return strip(vm);
  }

  async list(filter: VmFilter): Promise<VmRecord[]> {
    return this.ctx.inventory
      .listVms()
      .filter((vm) => (!filter.namespace || vm.spec.id.namespace === filter.namespace) && (!filter.name || vm.spec.id.name === filter.name))
      .map(strip);
  }

  /** Unknown images are INVALID_ARGUMENT naming the field and the image. */
  async checkImages(spec: VmSpec): Promise<void> {
    const { images } = this.ctx;
    await field('microvm.kernel.image', () => images.kernel(spec.kernelImage));
    await field('microvm.initrd.image', () => images.initrd(spec.initrdImage));
    let extra = 0;
    for (const vol of spec.volumes) {
      const path = vol.isRoot ? 'microvm.root_volume.source.container_source' : `microvm.additional_volumes[${extra++}].source.container_source`;
      await field(path, () => images.disk(vol.image));
    }
  }
}

/** A fresh VM uid: 32 lowercase hex chars. */
export function newVmUid(): string {
  return randomBytes(16).toString('hex');
}

async function field(path: string, resolve: () => Promise<unknown>): Promise<void> {
  try {
    await resolve();
  } catch (err) {
    if (err instanceof TetherError && (err.code === 'NOT_FOUND' || err.code === 'INVALID_ARGUMENT')) {
      throw new InvalidArgumentError(path, err.message, { cause: err });
    }
    throw err;
  }
}

function strip(row: VmRow): VmRecord {
  const { desired, ...rec } = row;
  return desired === 'absent' && rec.phase !== 'deleting' ? { ...rec, phase: 'deleting' } : rec;
}
