import type { Step } from '../../domain/plan.js';
import type { ResourceKind } from '../../ports/inventory.js';
import type { HostContext } from '../host-context.js';

/** A resource to create: how to make it (idempotently) and how to check it exists. */
export interface CreateSpec {
  readonly vmUid: string;
  readonly kind: ResourceKind;
  readonly key: string;
  readonly detail?: Record<string, unknown>;
  /** Makes the resource; must succeed when it already exists and is ours. */
  readonly make: () => Promise<void>;
  /** True when the resource exists on the host and is ours. */
  readonly exists: () => Promise<boolean>;
}

/** A resource to remove: how to remove it (idempotently) and how to check it is gone. */
export interface RemoveSpec {
  readonly vmUid: string;
  readonly kind: ResourceKind;
  readonly key: string;
  /** Removes the resource; must succeed when it is already gone. */
  readonly remove: () => Promise<void>;
  /** True when the resource is gone from the host. */
  readonly gone: () => Promise<boolean>;
}

/**
 * Write-ahead create step: the inventory row is written as `creating` BEFORE the resource is
 * made, and becomes `present` only after the resource was checked on the host.
 */
export function createResourceStep(ctx: HostContext, spec: CreateSpec): Step {
  const { vmUid, kind, key } = spec;
  return {
    name: `${kind}-create:${key}`,
    shouldDo: async () => ctx.inventory.getResource(vmUid, kind, key)?.state !== 'present',
    do: async () => {
      ctx.inventory.putResource({ vmUid, kind, key, state: 'creating', detail: spec.detail ?? {} }, ctx.clock.now());
      await spec.make();
      if (await spec.exists()) {
        ctx.inventory.putResource({ vmUid, kind, key, state: 'present', detail: spec.detail ?? {} }, ctx.clock.now());
      }
    },
    verify: spec.exists,
  };
}

/**
 * Remove step: the row is marked `removing` before the removal, and deleted only once the
 * resource was checked gone on the host.
 */
export function removeResourceStep(ctx: HostContext, spec: RemoveSpec): Step {
  const { vmUid, kind, key } = spec;
  return {
    name: `${kind}-remove:${key}`,
    shouldDo: async () => ctx.inventory.getResource(vmUid, kind, key) !== undefined,
    do: async () => {
      const row = ctx.inventory.getResource(vmUid, kind, key);
      ctx.inventory.putResource({ vmUid, kind, key, state: 'removing', detail: row?.detail ?? {} }, ctx.clock.now());
      await spec.remove();
      if (await spec.gone()) ctx.inventory.deleteResource(vmUid, kind, key);
    },
    verify: spec.gone,
  };
}
