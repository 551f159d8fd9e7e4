import type { Planner, Step } from '../../domain/plan.js';
import type { ResourceKind, ResourceRow } from '../../ports/inventory.js';
import { vmDirOfResource, type HostContext } from '../host-context.js';
import { removeResourceStep } from '../steps/resource-steps.js';

/** Removal order: the process first (it holds the taps and disks), the state folder last. */
const ORDER: Record<ResourceKind, number> = { process: 0, tap: 1, overlay: 2, 'state-dir': 3 };

/** Options of {@link deletePlanner}. */
export interface DeletePlanOptions {
  /** Keep the VM row (a failed create keeps its record, with the error, for Get/List). */
  readonly keepRecord?: boolean;
  /** Called with how each VM process was stopped (for the GC report). */
  readonly onStopped?: (uid: string, method: string, tookMs: number) => void;
}

/**
 * Planner that removes every resource recorded for a VM, in dependency order, each by a
 * check-act-verify step, then forgets the VM. Driven by the inventory rows, so it also finishes
 * a create or delete interrupted by a crash. Returns [] once nothing of the VM is left.
 */
export function deletePlanner(ctx: HostContext, uid: string, opts: DeletePlanOptions = {}): Planner {
  return async () => {
    const rows = [...ctx.inventory.listResources(uid)].sort((a, b) => ORDER[a.kind] - ORDER[b.kind]);
    const steps = rows.map((row) => removeStep(ctx, row, opts));
    if (rows.length === 0 && !opts.keepRecord && ctx.inventory.getVm(uid)) {
      steps.push({
        name: `vm-forget:${uid}`,
        shouldDo: async () => ctx.inventory.getVm(uid) !== undefined,
        do: async () => ctx.inventory.removeVm(uid),
        verify: async () => ctx.inventory.getVm(uid) === undefined,
      });
    }
    return steps;
  };
}

function removeStep(ctx: HostContext, row: ResourceRow, opts: DeletePlanOptions): Step {
  const { vmUid, kind, key } = row;
  const owner = { hostId: ctx.hostId, vmUid };
  switch (kind) {
    case 'process': {
      const dir = key.replace(/\/qemu\.pid$/, '');
      return removeResourceStep(ctx, {
        vmUid,
        kind,
        key,
        remove: async () => {
          const r = await ctx.vmm.stop(vmUid, dir, ctx.stop);
          ctx.inventory.addEvent('vm-stopped', ctx.clock.now(), { method: r.method, tookMs: Math.round(r.tookMs) }, vmUid);
          opts.onStopped?.(vmUid, r.method, r.tookMs);
        },
        gone: async () => !(await ctx.vmm.status(vmUid, dir)).running,
      });
    }
    case 'tap':
      return removeResourceStep(ctx, {
        vmUid,
        kind,
        key,
        remove: async () => {
          try {
            await ctx.network.deleteTap(key, owner);
          } catch (err) {
            if ((err as { code?: string }).code !== 'NOT_OWNED') throw err;
            // Never delete what lacks our mark (e.g. a crash between creating the device and
            // marking it): leave it, say so loudly, and stop tracking it as ours.
            ctx.logger.warn({ vmUid, tap: key, err: String(err) }, 'tap not owned by this VM: left in place');
            ctx.inventory.addEvent('resource-not-owned', ctx.clock.now(), { kind, key, reason: String(err) }, vmUid);
          }
        },
        gone: async () => {
          const tap = await ctx.network.getTap(key);
          // A device under this name that is not ours is not our resource: it is "gone" for us.
          return tap === undefined || tap.owner?.hostId !== ctx.hostId || tap.owner.vmUid !== vmUid;
        },
      });
    case 'overlay':
      return removeResourceStep(ctx, {
        vmUid,
        kind,
        key,
        remove: async () => {
          vmDirOfResource(ctx.files, { vmUid, kind, key }); // only a file in this VM's own folder
          await ctx.volumes.deleteOverlay(key);
        },
        gone: async () => !(await ctx.files.exists(key)),
      });
    case 'state-dir':
      return removeResourceStep(ctx, {
        vmUid,
        kind,
        key,
        remove: async () => {
          vmDirOfResource(ctx.files, { vmUid, kind, key }); // only this VM's own folder, whatever the row says
          await ctx.files.removeTree(key);
          // Empty <name> and <namespace> folders go too (rmdir: never removes a sibling VM's folder).
          const name = key.slice(0, key.lastIndexOf('/'));
          await ctx.files.removeEmptyDir(name);
          await ctx.files.removeEmptyDir(name.slice(0, name.lastIndexOf('/')));
        },
        gone: async () => !(await ctx.files.exists(key)),
      });
  }
}
