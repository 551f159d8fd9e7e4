import type { Planner, Step } from '../../domain/plan.js';
import { guestMac } from '../../domain/naming.js';
import { tapName } from '../../domain/tap-name.js';
import type { VmRow } from '../../ports/inventory.js';
import type { VmLaunchSpec } from '../../ports/vmm.js';
import { isName, nameRule, quoteForLog } from '../../domain/codec/names.js';
import { InvalidArgumentError } from '../../domain/errors.js';
import { pathUnder, vmDir, type HostContext } from '../host-context.js';
import { createResourceStep } from '../steps/resource-steps.js';

/** Kernel command line for a VM: Tether's own settings, the guest's network, then the user's. */
export function kernelCmdline(vm: VmRow): string {
  const parts = ['console=ttyS0', 'quiet', 'panic=-1', `tether.uid=${vm.uid}`];
  const first = vm.spec.interfaces[0];
  if (first?.address) parts.push(`tether.ip=${first.address}`);
  if (first?.gateway) parts.push(`tether.gw=${first.gateway}`);
  for (const [k, v] of Object.entries(vm.spec.kernelCmdline)) parts.push(v === '' ? k : `${k}=${v}`);
  return parts.join(' ');
}

/** Path of the qcow2 overlay of a volume: `<dir>/vol-<id>.qcow2`; INVALID_ARGUMENT (`spec.volumes.id`) unless `volumeId` is a volume id and the path stays in `dir`. */
export function overlayPath(dir: string, volumeId: string): string {
  if (!isName('volume-id', volumeId)) throw new InvalidArgumentError('spec.volumes.id', `${JSON.stringify(quoteForLog(String(volumeId), 80))} ${nameRule('volume-id')}`);
  return pathUnder(dir, [`vol-${volumeId}.qcow2`], 'spec.volumes.id');
}

/**
 * Planner that drives a VM to `running`: state dir, disk overlays, taps, QEMU process, ready
 * marker — each a write-ahead, idempotent step. Returns only the steps still to do, so that
 * re-planning converges; returns [] once the VM is running with every resource present.
 */
export function createPlanner(ctx: HostContext, uid: string): Planner {
  return async () => {
    const vm = ctx.inventory.getVm(uid);
    if (!vm || vm.desired !== 'present') return [];
    const steps = await allCreateSteps(ctx, vm);
    const todo: Step[] = [];
    for (const s of steps) if (await s.shouldDo()) todo.push(s);
    return todo;
  };
}

async function allCreateSteps(ctx: HostContext, vm: VmRow): Promise<Step[]> {
  const { uid, spec } = vm;
  const dir = vmDir(ctx.files, spec.id.namespace, spec.id.name, uid);
  const owner = { hostId: ctx.hostId, vmUid: uid };
  const steps: Step[] = [
    createResourceStep(ctx, {
      vmUid: uid,
      kind: 'state-dir',
      key: dir,
      make: () => ctx.files.ensureDir(dir),
      exists: () => ctx.files.exists(dir),
    }),
  ];

  const disks: { path: string; readOnly: boolean; format: 'qcow2' }[] = [];
  for (const vol of [...spec.volumes].sort((a, b) => Number(b.isRoot) - Number(a.isRoot))) {
    const base = (await ctx.images.disk(vol.image)).path;
    const path = overlayPath(dir, vol.id);
    disks.push({ path, readOnly: vol.readOnly, format: 'qcow2' });
    steps.push(
      createResourceStep(ctx, {
        vmUid: uid,
        kind: 'overlay',
        key: path,
        detail: { base },
        make: () => ctx.volumes.createOverlay(base, path),
        exists: () => ctx.volumes.isOverlay(path, base),
      }),
    );
  }

  const nics = spec.interfaces.map((iface, i) => ({
    guestDeviceName: iface.guestDeviceName,
    hostDeviceName: tapName(uid, i),
    mac: iface.guestMac ?? guestMac(uid, i),
  }));
  if (JSON.stringify(vm.nics) !== JSON.stringify(nics)) ctx.inventory.setNics(uid, nics, ctx.clock.now());
  for (const nic of nics) {
    steps.push(
      createResourceStep(ctx, {
        vmUid: uid,
        kind: 'tap',
        key: nic.hostDeviceName,
        make: () => ctx.network.createTap(nic.hostDeviceName, owner),
        exists: async () => {
          const tap = await ctx.network.getTap(nic.hostDeviceName);
          return tap?.owner?.hostId === ctx.hostId && tap.owner.vmUid === uid;
        },
      }),
    );
  }

  const launch: VmLaunchSpec = {
    uid,
    hostId: ctx.hostId,
    vcpu: spec.vcpu,
    memoryMb: spec.memoryMb,
    kernelPath: (await ctx.images.kernel(spec.kernelImage)).path,
    initrdPath: (await ctx.images.initrd(spec.initrdImage)).path,
    kernelCmdline: kernelCmdline(vm),
    stateDir: dir,
    disks,
    nics: nics.map((n) => ({ tap: n.hostDeviceName, mac: n.mac })),
  };
  const running = async () => (await ctx.vmm.status(uid, dir)).running;
  steps.push(
    createResourceStep(ctx, {
      vmUid: uid,
      kind: 'process',
      key: `${dir}/qemu.pid`,
      make: async () => {
        if (!(await running())) await ctx.vmm.start(launch);
      },
      exists: running,
    }),
  );

  steps.push({
    name: `vm-ready:${uid}`,
    shouldDo: async () => ctx.inventory.getVm(uid)?.phase !== 'running',
    do: async () => {
      // A delete (or the host GC's wipe) while the guest boots ends the wait: it must not wait for the boot.
      await ctx.vmm.waitReady(dir, ctx.readyTimeoutMs, () => ctx.inventory.getVm(uid)?.desired !== 'present');
      ctx.inventory.setPhase(uid, 'running', ctx.clock.now());
    },
    verify: async () => (await ctx.vmm.status(uid, dir)).ready,
  });
  return steps;
}
