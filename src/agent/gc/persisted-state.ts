import type { HostState } from '../../domain/host-lifecycle.js';
import { decodeHostState, encodeHostState, type RestoredHostState } from '../../domain/persisted-host-state.js';
import type { Inventory } from '../../ports/inventory.js';

/** Inventory meta keys of the host GC. */
const META_STATE = 'gc.state';
const META_LOCAL_HOLD = 'gc.localHold';
const META_SILENCE = 'gc.witnessPromise';

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
 * The promise this agent made its peers as a witness (docs/peer-check.md "The witness"): never renew
 * `lease` again, and register again only once etcd no longer knows it and not before `until`
 * (monotonic ms of boot `bootId`; on another boot, `promisedMs` from the agent's start). It survives
 * restarts, so a restarted agent keeps the promise.
 */
export interface Silence {
  readonly lease?: string;
  readonly until: number;
  readonly promisedMs: number;
  readonly bootId: string;
}

/** The persisted promise, with `until` on this boot's clock (`nowMono` + `promisedMs` for another boot), or undefined. */
export function loadSilence(inventory: Inventory, bootId: string, nowMono: number): Silence | undefined {
  const v = inventory.getMeta(META_SILENCE);
  if (v === undefined || v === '') return undefined;
  try {
    const p = JSON.parse(v) as Partial<Silence>;
    const promisedMs = Number(p.promisedMs);
    const until = Number(p.until);
    if (!Number.isFinite(promisedMs) || !Number.isFinite(until)) return { until: nowMono + 3_600_000, promisedMs: 3_600_000, bootId };
    return { ...(typeof p.lease === 'string' ? { lease: p.lease } : {}), promisedMs, bootId, until: p.bootId === bootId ? until : nowMono + promisedMs };
  } catch {
    // unreadable: keep the longest promise a question may ask for
    return { until: nowMono + 3_600_000, promisedMs: 3_600_000, bootId };
  }
}

/** Records (or clears, with undefined) the promise; written before the answer that makes it. */
export function saveSilence(inventory: Inventory, s: Silence | undefined): void {
  inventory.setMeta(META_SILENCE, s === undefined ? '' : JSON.stringify(s));
}
