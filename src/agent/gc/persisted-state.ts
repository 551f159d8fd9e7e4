import type { HostState } from '../../domain/host-lifecycle.js';
import { decodeHostState, encodeHostState, type RestoredHostState } from '../../domain/persisted-host-state.js';
import type { Inventory } from '../../ports/inventory.js';

/** Inventory meta keys of the host GC. */
const META_STATE = 'gc.state';
const META_LOCAL_HOLD = 'gc.localHold';
const META_SILENCED_LEASE = 'gc.silencedLease';

/**
 * The lifecycle state as persisted in the inventory (what it holds: src/domain/persisted-host-state.ts).
 * Throws INVENTORY_ERROR when the persisted text does not read back.
 */
export function loadHostState(inventory: Inventory, bootId: string): RestoredHostState {
  return decodeHostState(inventory.getMeta(META_STATE), bootId);
}

/** Persists `s` (called after every change of the lifecycle state). */
export function saveHostState(inventory: Inventory, s: HostState, bootId: string): void {
  inventory.setMeta(META_STATE, encodeHostState(s, bootId));
}

/** Whether an operator forced a local hold while detached (split-brain risk accepted); it survives restarts. */
export function localHoldSet(inventory: Inventory): boolean {
  return inventory.getMeta(META_LOCAL_HOLD) === '1';
}

/** Sets or clears the local hold flag. */
export function setLocalHold(inventory: Inventory, on: boolean): void {
  inventory.setMeta(META_LOCAL_HOLD, on ? '1' : '0');
}

/**
 * The lease this agent promised its peers never to renew (docs/peer-check.md "The witness"); it
 * survives restarts, so a restarted agent keeps the promise. '' or absent: none.
 */
export function silencedLease(inventory: Inventory): string | undefined {
  const v = inventory.getMeta(META_SILENCED_LEASE);
  return v === undefined || v === '' ? undefined : v;
}

/** Records (or clears, with undefined) the silenced lease; written before the answer that promises it. */
export function setSilencedLease(inventory: Inventory, lease: string | undefined): void {
  inventory.setMeta(META_SILENCED_LEASE, lease ?? '');
}
