import type { VmPhase, VmRecord, VmSpec } from '../domain/vm.js';

/** Kinds of host resources a VM owns. */
export type ResourceKind = 'state-dir' | 'tap' | 'overlay' | 'process';

/**
 * Write-ahead life of a resource row: recorded as `creating` BEFORE the resource is made,
 * `present` once made and verified, `removing` before removal; the row is deleted only after
 * removal was verified. A crash at any instant leaves a row that says what to look for.
 */
export type ResourceState = 'creating' | 'present' | 'removing';

/** One host resource, as recorded. */
export interface ResourceRow {
  readonly vmUid: string;
  readonly kind: ResourceKind;
  /** What identifies the resource on the host: tap name, file path, pid-file path. */
  readonly key: string;
  readonly state: ResourceState;
  /** Kind-specific facts (e.g. the base image of an overlay). */
  readonly detail: Readonly<Record<string, unknown>>;
  readonly updatedAt: number;
}

/** What should become of a VM: the create plan drives towards `present`, delete towards `absent`. */
export type DesiredState = 'present' | 'absent';

/** A VM row: record + desired state. */
export interface VmRow extends VmRecord {
  readonly desired: DesiredState;
}

/** A journaled event (lifecycle, plan progress, GC). */
export interface InventoryEvent {
  readonly id: number;
  /** Wall-clock ms. */
  readonly at: number;
  readonly kind: string;
  readonly vmUid?: string;
  readonly detail: Readonly<Record<string, unknown>>;
}

/**
 * The host's local inventory (SQLite in production): the source of truth for what this host
 * created. Every mutation is durable when the call returns.
 */
export interface Inventory {
  /** Records a new VM (phase `pending`, desired `present`); ALREADY_EXISTS when namespace/name is taken by a live VM. */
  addVm(uid: string, spec: VmSpec, now: number): VmRow;
  getVm(uid: string): VmRow | undefined;
  /** Every VM row not yet deleted, ordered by namespace, name. */
  listVms(): VmRow[];
  /** Sets phase (and error), bumps generation. */
  setPhase(uid: string, phase: VmPhase, now: number, error?: string): void;
  /** Sets desired state, bumps generation. */
  setDesired(uid: string, desired: DesiredState, now: number): void;
  /** Sets the host devices of the VM's NICs. */
  setNics(uid: string, nics: VmRecord['nics'], now: number): void;
  /** Removes the VM row; refuses (FAILED_PRECONDITION) while resource rows remain. */
  removeVm(uid: string): void;

  /** Inserts or updates a resource row. */
  putResource(row: Omit<ResourceRow, 'updatedAt'>, now: number): void;
  getResource(vmUid: string, kind: ResourceKind, key: string): ResourceRow | undefined;
  listResources(vmUid?: string): ResourceRow[];
  /** Deletes a resource row (after the resource was verified gone). */
  deleteResource(vmUid: string, kind: ResourceKind, key: string): void;

  /** Appends an event; returns its id. */
  addEvent(kind: string, now: number, detail: Record<string, unknown>, vmUid?: string): number;
  /** Latest events first, at most `limit`. */
  listEvents(limit: number, vmUid?: string): InventoryEvent[];

  /** Small key-value store for host-level facts (epoch, last GC report, hold). */
  getMeta(key: string): string | undefined;
  setMeta(key: string, value: string): void;

  close(): void;
}
